"""GPU time of a quantized matmul against dequantize + dense matmul (issue
18, session 14: prefill of 4-bit checkpoints). For each weight of the
llama-3.2-1b shape (affine, bits/group as given, bfloat16) and each row
count M: MLX's `quantized_matmul(x, w, s, b, transpose=True)` and
`x @ dequantize(w, s, b).T`, each evaluated alone R times after a warm-up,
interleaved; prints the minimum and median wall time per call (ms), their
ratio and the largest absolute difference between the two results relative
to the largest |y|.

    [QMM_ROWS="8 256"] python scripts/qmm_cost.py [R] [BITS] [GROUP]
"""
import os
import statistics
import sys
import time

import mlx.core as mx

R = int(sys.argv[1]) if len(sys.argv) > 1 else 20
BITS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
GROUP = int(sys.argv[3]) if len(sys.argv) > 3 else 64
# (name, N, K): q|k|v stacked, o, gate|up stacked, down, tied LM head
SHAPES = [
  ("qkv", 3072, 2048),
  ("o", 2048, 2048),
  ("gate_up", 16384, 2048),
  ("down", 2048, 8192),
  ("head", 128256, 2048),
]
ROWS = [int(r) for r in os.environ.get("QMM_ROWS", "8 32 64 128 256 512 2048").split()]

mx.random.seed(0)
print(mx.default_device(), f"bits {BITS} group {GROUP}, {R} repetitions, ms per call")
print(f"{'weight':8s} {'M':>5s} {'qmm min':>9s} {'qmm med':>9s} {'deq min':>9s} {'deq med':>9s} "
      f"{'qmm/deq':>8s} {'rel diff':>9s}")
for name, n, k in SHAPES:
  w = mx.random.normal((n, k), dtype=mx.float32) * 0.02
  wq, s, b = mx.quantize(w.astype(mx.bfloat16), group_size=GROUP, bits=BITS)
  mx.eval(wq, s, b)
  del w
  for m in ROWS:
    x = mx.random.normal((m, k)).astype(mx.bfloat16)
    mx.eval(x)
    qmm = lambda: mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=GROUP, bits=BITS)
    deq = lambda: x @ mx.dequantize(wq, s, b, group_size=GROUP, bits=BITS).T
    a, d = qmm(), deq()
    mx.eval(a, d)
    diff = (mx.abs(a.astype(mx.float32) - d.astype(mx.float32)).max() /
            mx.abs(a.astype(mx.float32)).max()).item()
    tq, td = [], []
    for _ in range(R):
      for f, t in ((qmm, tq), (deq, td)):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(f())
        mx.synchronize()
        t.append((time.perf_counter() - t0) * 1e3)
    print(f"{name:8s} {m:5d} {min(tq):9.3f} {statistics.median(tq):9.3f} {min(td):9.3f} "
          f"{statistics.median(td):9.3f} {min(tq) / min(td):8.2f} {diff:9.2e}")
