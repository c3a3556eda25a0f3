#!/usr/bin/env bash
# Set up (idempotent), build the CLI, and run the main job on the bundled
# default: text generation with the tiny Qwen3-architecture checkpoint in
# models/tiny/qwen3 (random weights, so the text is gibberish; it exercises
# the real pipeline: config, safetensors, tokenizer, chat template, KV cache,
# sampling, streaming detokenizer). No network model download.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p mlxrs-cli
./target/release/mlxrs info
./target/release/mlxrs generate --model models/tiny/qwen3 \
  --prompt "Write a haiku about arrays." --max-tokens 32 --temp 0.7 --seed 0
