#!/usr/bin/env bash
# Run every fuzz target in fuzz/ for a bounded time (docs/testing.md, "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# With cargo-fuzz (`cargo install cargo-fuzz`) each target runs under
# libFuzzer + AddressSanitizer from fuzz/seeds/<target> into
# fuzz/corpus/<target>; a crash leaves its input in fuzz/artifacts/ and makes
# this script fail. cargo-fuzz needs nightly compiler flags: a nightly
# toolchain is used when installed, otherwise the stable one with
# RUSTC_BOOTSTRAP=1 (the same compiler with its unstable flags unlocked;
# only for this fuzz build). Without cargo-fuzz, the stable mutation loop
# (fuzz/tests/mutate.rs) runs instead, for the same time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors gguf config tokenizer wav image)
fi
fuzz=()
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
elif cargo fuzz --version >/dev/null 2>&1; then
  fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi
if [ ${#fuzz[@]} -gt 0 ]; then
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== fuzz $t for ${secs}s"
    # -O: optimised build (debug assertions stay on).
    # -detect_leaks=0: MLX's buffer cache keeps memory across inputs.
    # -rss_limit_mb: MLX and the tokenizers legitimately use a few hundred MB.
    "${fuzz[@]}" run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -detect_leaks=0 -rss_limit_mb=4096 -timeout=20
  done
else
  echo "cargo-fuzz not installed: running the stable mutation loop" >&2
  filter=()
  for t in "${targets[@]}"; do filter+=("${t}_mutations"); done
  MLXRS_FUZZ_SECS="$secs" cargo test --release --manifest-path fuzz/Cargo.toml --test mutate -- \
    --test-threads=1 --nocapture "${filter[@]}"
fi
