#!/usr/bin/env python3
"""numpy's legacy `np.random.seed(s)` + successive `np.random.permutation(n)`
draws (what mlx-lm's `iterate_batches` uses for batch order), for
`cargo test -p mlxrs-lm --test batch_order`.

    .venv/bin/python scripts/make_permutation_refs.py
"""
import json
from pathlib import Path

import numpy as np

cases = []
for seed, sizes in [(0, [16, 2, 16, 16]), (1, [64, 3, 64]), (7, [100, 1, 0, 100]),
                    (123456789, [1000, 5]), (2**32 - 1, [33, 33])]:
    np.random.seed(seed)
    cases.append({"seed": seed, "draws": [[int(v) for v in np.random.permutation(n)] for n in sizes]})
out = Path(__file__).resolve().parent.parent / "crates/mlxrs-lm/tests/data/numpy_permutations.json"
out.write_text(json.dumps({"numpy": np.__version__, "cases": cases}))
print(f"wrote {out}")
