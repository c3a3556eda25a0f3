#!/usr/bin/env python3
"""A small random-weight qwen3 for scripts/bench_serve.sh (not committed):
the tiny fixture's tokenizer (models/tiny/qwen3) with a wider, deeper
network (hidden 512, 8 layers, 8 heads / 4 KV heads, context 4096), so that
the model's compute, not only the server's overhead, shows in the figures.

Usage: /work/main/.venv/bin/python scripts/make_bench_serve_model.py [OUT]
       (default OUT: /tmp/mlxrs-bench-qwen3-small)
"""

import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3

src = Path(__file__).resolve().parent.parent / "models/tiny/qwen3"
out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mlxrs-bench-qwen3-small")
out.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "generation_config.json"):
        shutil.copy(f, out / f.name)
cfg = json.loads((src / "config.json").read_text())
cfg.update(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    max_position_embeddings=4096,
    max_window_layers=8,
)
(out / "config.json").write_text(json.dumps(cfg, indent=2))
mx.random.seed(0)
model = qwen3.Model(qwen3.ModelArgs.from_dict(cfg))
weights = dict(tree_flatten(model.parameters()))
mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
print(out)
