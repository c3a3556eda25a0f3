"""Reference outputs of Python mlx's fused attention on random inputs, for
the seed's `fast::scaled_dot_product_attention` (GQA, causal, T_q = 1,
boolean mask). Writes crates/mlxrs-core/tests/data/sdpa_ref.safetensors.

usage: .venv/bin/python scripts/make_sdpa_refs.py
"""
from pathlib import Path

import mlx.core as mx

mx.random.seed(1234)
out = {}
cases = {
    # name: (B, Hq, Hkv, Tq, Tkv, D, mask)
    "gqa_none": (1, 8, 2, 5, 5, 16, None),
    "gqa_causal": (2, 4, 2, 6, 6, 32, "causal"),
    "decode_tq1_causal": (1, 8, 2, 1, 9, 64, "causal"),
    "bool_mask": (1, 2, 1, 3, 4, 8, "array"),
}
for name, (b, hq, hkv, tq, tkv, d, mask) in cases.items():
    q = mx.random.normal((b, hq, tq, d))
    k = mx.random.normal((b, hkv, tkv, d))
    v = mx.random.normal((b, hkv, tkv, d))
    scale = d**-0.5
    m = None
    if mask == "array":
        m = mx.random.bernoulli(0.7, (tq, tkv))
        m[:, 0] = True
        out[f"{name}.mask"] = m
    o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=m if m is not None else mask)
    out.update({f"{name}.q": q, f"{name}.k": k, f"{name}.v": v, f"{name}.out": o,
                f"{name}.scale": mx.array(scale, dtype=mx.float32)})
path = Path(__file__).resolve().parent.parent / "crates/mlxrs-core/tests/data/sdpa_ref.safetensors"
mx.save_safetensors(str(path), out, {"mlx": mx.__version__})
print("wrote", path)
