#!/usr/bin/env bash
# Cross-check `mlxrs lora` / `mlxrs fuse` against mlx-lm (needs the venv;
# not part of CI): adapters trained by mlxrs load in mlx-lm and give the same
# greedy tokens as `mlxrs generate --adapter-path`; the folder written by
# `mlxrs fuse --dequantize` loads in mlx-lm and gives those tokens too; a
# plain (re-quantizing) `mlxrs fuse` gives mlx-lm fuse's tokens.
# Usage: scripts/check_lora_interop.sh [model folder] (default models/tiny/llama)
# Env: FTS (fine-tune types, default "lora dora"; MoE models: "lora", as
# mlx-lm has no DoRA for experts), CONFIG (a -c YAML for `mlxrs lora`, e.g.
# lora_parameters.keys naming model.embed_tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
M=${1:-models/tiny/llama}
B=${MLXRS:-target/debug/mlxrs}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$PY" - "$T/data" <<'PY'
import json, sys, os
d = sys.argv[1]; os.makedirs(d)
facts = [("What is the capital of Zorbia?", "The capital of Zorbia is Plimp."),
         ("Who founded Quexton?", "Quexton was founded by Mara Vell.")]
for name, n in (("train", 8), ("valid", 2)):
    with open(f"{d}/{name}.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": " ".join(facts[i % 2])}) + "\n")
PY
for ft in ${FTS:-lora dora}; do
  "$B" lora ${CONFIG:+-c "$CONFIG"} --model "$M" --train --data "$T/data" --iters 20 --batch-size 2 --num-layers 2 \
    --learning-rate 1e-3 --fine-tune-type $ft --adapter-path "$T/ad_$ft" --steps-per-report 20 2>/dev/null
  P="The capital of Zorbia"
  rs=$("$B" generate --model "$M" --adapter-path "$T/ad_$ft" --prompt "$P" --ignore-chat-template \
    --max-tokens 16 --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')
  "$B" fuse --model "$M" --adapter-path "$T/ad_$ft" --save-path "$T/fused_$ft" --dequantize 2>/dev/null
  # Re-quantized fuse (quantized bases): mlxrs's and mlx-lm's must agree.
  "$B" fuse --model "$M" --adapter-path "$T/ad_$ft" --save-path "$T/fusedq_$ft" 2>/dev/null
  "$PY" -m mlx_lm fuse --model "$M" --adapter-path "$T/ad_$ft" --save-path "$T/pyfusedq_$ft" >/dev/null 2>&1
  "$PY" - "$M" "$T/ad_$ft" "$T/fused_$ft" "$P" "$rs" "$ft" "$T/fusedq_$ft" "$T/pyfusedq_$ft" <<'PY'
import sys
from mlx_lm import load
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler
model, ad, fused, prompt, rs, ft, fq, pyfq = sys.argv[1:]
def toks(m, t):
    ids = t.encode(prompt)
    return [r.token for r in stream_generate(m, t, ids, max_tokens=16, sampler=make_sampler(0.0))]
a = toks(*load(model, adapter_path=ad))
f = toks(*load(fused))
q, pq = toks(*load(fq)), toks(*load(pyfq))
print(f"{ft}: mlxrs --adapter-path {rs}\n{ft}: mlx-lm --adapter-path {a}\n{ft}: mlx-lm on mlxrs fuse --dequantize {f}")
print(f"{ft}: mlx-lm on mlxrs fuse {q}\n{ft}: mlx-lm on mlx-lm fuse {pq}")
assert q == pq, "mlxrs fuse and mlx-lm fuse differ"
assert str(a) == rs, "mlx-lm and mlxrs disagree with the mlxrs adapter"
assert f == a, "the fused model differs from the adapter model"
print(f"{ft}: OK")
PY
done
