"""Python mlx-lm side of the side-by-side generation benchmark.

Builds the model of a config.json (written by `mlxrs bench --dump-config`)
with mlx-lm's own classes and random weights, optionally quantized with
`nn.quantize`, and times `mlx_lm.generate.generate_step` the way
`mlxrs bench` times its generator: prompt tokens/s up to the first sampled
token, generation tokens/s over the remaining tokens (greedy).

With `-b B` (B > 1), B random prompts go through mlx-lm's continuous
batching `BatchGenerator` (what `mlx_lm.benchmark -b` and `batch_generate`
run), timed as `mlxrs bench -b` times its own: prompt tokens/s up to the
point where every row has its first token, generation tokens/s summed over
rows after that (aggregate decode throughput).

usage: python scripts/bench_lm.py CONFIG.json -p 512 -g 256 -n 3 --dtype bfloat16 [-q 4 --group-size 64] [-b 8]
Prints one JSON line: {"prompt_tps": .., "generation_tps": .., "peak_memory_gb": ..}.
"""

import argparse
import json
import os
import sys
import time

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.utils import _get_classes


def batch_trial(model, cfg, a, trial):
    from mlx_lm.generate import BatchGenerator

    mx.random.seed(trial)
    prompts = mx.random.randint(0, cfg["vocab_size"], (a.batch_size, a.p)).tolist()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    gen = BatchGenerator(model, max_tokens=a.g)
    gen.insert(prompts, [a.g] * a.batch_size)
    seen, n, n_first, t1 = set(), 0, 0, None
    while responses := gen.next_generated():
        for r in responses:
            n += 1
            seen.add(r.uid)
        if t1 is None and len(seen) == a.batch_size:
            t1, n_first = time.perf_counter(), n
    t2 = time.perf_counter()
    gen.close()
    return {
        "prompt_tps": a.batch_size * a.p / (t1 - t0),
        "generation_tps": (n - n_first) / (t2 - t1) if n > n_first else 0.0,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-g", type=int, default=256)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("-q", "--bits", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("-b", "--batch-size", type=int, default=1)
    a = ap.parse_args()

    cfg = json.load(open(a.config))
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    model.set_dtype(getattr(mx, a.dtype))
    if a.bits:
        nn.quantize(model, group_size=a.group_size, bits=a.bits)
    mx.eval(model.parameters())

    results = []
    for trial in range(a.n):
        if a.batch_size > 1:
            results.append(batch_trial(model, cfg, a, trial))
            continue
        mx.random.seed(trial)
        prompt = mx.random.randint(0, cfg["vocab_size"], (a.p,))
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        n = 0
        t1 = t0
        for _tok, _lp in generate_step(prompt, model, max_tokens=a.g):
            n += 1
            if n == 1:
                t1 = time.perf_counter()
        t2 = time.perf_counter()
        results.append(
            {
                "prompt_tps": a.p / (t1 - t0),
                "generation_tps": (n - 1) / (t2 - t1) if n > 1 else 0.0,
                "peak_memory_gb": mx.get_peak_memory() / 1e9,
            }
        )
    used = results[1:] if len(results) > 1 else results
    avg = {k: sum(r[k] for r in used) / len(used) for k in ("prompt_tps", "generation_tps")}
    avg["peak_memory_gb"] = max(r["peak_memory_gb"] for r in used)
    avg["device"] = str(mx.default_device())
    avg["mlx"] = mx.__version__
    print(json.dumps(avg))


if __name__ == "__main__":
    main()
    # Leave without the libraries' exit handlers: with two OpenBLAS copies
    # loaded (numpy's and the one MLX links), OpenBLAS's shutdown can wait
    # forever on its own threads after the result was printed.
    sys.stdout.flush()
    os._exit(0)
