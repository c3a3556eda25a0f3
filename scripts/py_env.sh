#!/usr/bin/env bash
# Creates .venv with the Python references mlxrs is checked against
# (Python mlx / mlx-lm / mlx-vlm / mlx-embeddings / transformers /
# sentence-transformers / faster-whisper), the `openai` client and
# playwright (scripts/test_chat_page.py drives the system Chromium,
# `apt-get install -y chromium`; no browser download).
# Only the scripts that regenerate committed references and the side-by-side
# benchmarks need it; the Rust tests do not.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check --upgrade pip
pip install --quiet --disable-pip-version-check \
  "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" numpy safetensors tokenizers "transformers>=4.46" \
  jinja2 sentencepiece protobuf "sentence-transformers>=5" torch faster-whisper ctranslate2 \
  "mlx-vlm==0.7.10" "pillow==13.0.0" "mlx-embeddings==0.1.0" openai jsonschema "playwright==1.65.3" "${@}"
