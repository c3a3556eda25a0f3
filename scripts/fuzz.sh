#!/usr/bin/env bash
# Run every fuzz target in fuzz/ for a bounded time (docs/testing.md, "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`) each
# target runs under libFuzzer + AddressSanitizer from fuzz/seeds/<target>
# into fuzz/corpus/<target>; a crash leaves its input in fuzz/artifacts/ and
# makes this script fail. Without them, the stable-toolchain mutation loop
# (fuzz/tests/mutate.rs) runs instead, for the same time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors gguf config tokenizer wav image)
fi
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== fuzz $t for ${secs}s"
    # -detect_leaks=0: MLX's buffer cache keeps memory across inputs.
    # -rss_limit_mb: MLX and the tokenizers legitimately use a few hundred MB.
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -detect_leaks=0 -rss_limit_mb=4096 -timeout=20
  done
else
  echo "cargo-fuzz on nightly not available: running the stable mutation loop" >&2
  filter=()
  for t in "${targets[@]}"; do filter+=("${t}_mutations"); done
  MLXRS_FUZZ_SECS="$secs" cargo test --release --manifest-path fuzz/Cargo.toml --test mutate -- \
    --test-threads=1 --nocapture "${filter[@]}"
fi
