"""Reference for quantized-KV-cache generation: mlx-lm's generate_step with
kv_bits=8, kv_group_size=32 (head_dim 32), quantized_kv_start=0 on the tiny
qwen3 fixture (llama's head_dim 16 is below any group size); writes models/tiny/<name>/reference_kv8.json.

usage: .venv/bin/python scripts/make_kv_quant_ref.py
"""
import json
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step

root = Path(__file__).resolve().parent.parent / "models" / "tiny"
for name in ["qwen3"]:
    ref = json.loads((root / name / "reference.json").read_text())
    model, _ = load(str(root / name))
    model.set_dtype(mx.float32)
    prompt = mx.array(ref["prompt_ids"])
    toks = [
        t
        for t, _ in generate_step(
            prompt, model, max_tokens=20, kv_bits=8, kv_group_size=32, quantized_kv_start=0
        )
    ]
    out = {"kv_bits": 8, "kv_group_size": 32, "quantized_kv_start": 0, "greedy_tokens": toks,
           "mlx": mx.__version__}
    (root / name / "reference_kv8.json").write_text(json.dumps(out, indent=1) + "\n")
    print(name, toks)
