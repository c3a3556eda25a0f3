"""Per-kernel host cost of MLX's CUDA encoder under the process's
MLX_MAX_OPS_PER_BUFFER / MLX_USE_CUDA_GRAPHS settings (session 13, issue
18): a chain of N dependent bfloat16 [1, 2048] kernels (add, rms_norm,
one-row matmul, in turn: a decode step's mix), evaluated R times; prints
min and median microseconds per kernel of the evaluation (the graph is
built before the clock starts). Run it once per setting, interleaved:

    for e in X=1 MLX_MAX_OPS_PER_BUFFER=200 ...; do env $e python scripts/buffer_cost.py; done
"""
import os
import statistics
import sys
import time

import mlx.core as mx

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
R = int(sys.argv[2]) if len(sys.argv) > 2 else 15
D = 2048
x = mx.random.normal((1, D)).astype(mx.bfloat16)
w = mx.random.normal((D,)).astype(mx.bfloat16)
m = (mx.random.normal((D, D)) * 0.02).astype(mx.bfloat16)
mt = m.T
mx.eval(x, w, m, mt)


def build():
    y = x
    for i in range(N):
        k = i % 3
        y = y + x if k == 0 else mx.fast.rms_norm(y, w, 1e-5) if k == 1 else y @ mt
    return y


mx.eval(build())
ts = []
for _ in range(R):
    y = build()
    t0 = time.perf_counter()
    mx.eval(y)
    ts.append((time.perf_counter() - t0) / N * 1e6)
env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MLX_")) or "defaults"
print(f"{env:40s} eval per kernel: min {min(ts):.2f} median {statistics.median(ts):.2f} us")
