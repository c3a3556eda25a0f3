"""Host cost of the fused residual add + RMSNorm kernel against MLX's add +
rms_norm (session 13, issue 18): chains of N dependent calls on a [1, 2048]
bfloat16 row, build and evaluation timed apart, R interleaved repetitions;
prints min and median per call. The kernel is the one mlxrs carried from
c00be46 to 0cc4f14 (crates/mlxrs-core/src/fast/add_rms_norm.rs there):
bit-identical to MLX's add + rms_norm, dropped for the cost this measures.

    python scripts/fused_cost.py [N] [R]
"""
import statistics
import struct
import sys
import time

import mlx.core as mx

N = int(sys.argv[1]) if len(sys.argv) > 1 else 64
R = int(sys.argv[2]) if len(sys.argv) > 2 else 30
body = """
  auto block = cg::this_thread_block();
  auto warp = cg::tiled_partition<32>(block);
  __shared__ float partial[BLOCK / 32];
  size_t row = blockIdx.x;
  x += row * D; r += row * D; h += row * D; y += row * D;
  T v[CHUNKS * NR];
  float sum = 0;
#pragma unroll
  for (int i = 0; i < CHUNKS; i++) {
#pragma unroll
    for (int j = 0; j < NR; j++) {
      int k = (BLOCK * i + (int)threadIdx.x) * NR + j;
      T a = T(0);
      if (k < D) { a = x[k] + r[k]; h[k] = a; }
      v[i * NR + j] = a;
      float t = static_cast<float>(a);
      sum += t * t;
    }
  }
  sum = cg::reduce(warp, sum, cg::plus<float>());
  if (BLOCK > 32) {
    if (warp.thread_rank() == 0) { partial[warp.meta_group_rank()] = sum; }
    block.sync();
    sum = warp.thread_rank() < warp.meta_group_size() ? partial[warp.thread_rank()] : 0.0f;
    sum = cg::reduce(warp, sum, cg::plus<float>());
  }
  float n = rsqrt(sum / D + __int_as_float(EPS));
#pragma unroll
  for (int i = 0; i < CHUNKS; i++) {
#pragma unroll
    for (int j = 0; j < NR; j++) {
      int k = (BLOCK * i + (int)threadIdx.x) * NR + j;
      if (k < D) {
        float z = static_cast<float>(v[i * NR + j]) * n;
        y[k] = w[k] * static_cast<T>(z);
      }
    }
  }
"""
kernel = mx.fast.cuda_kernel(
    name="mlxrs_add_rms_norm", input_names=["x", "r", "w"], output_names=["h", "y"],
    source=body, header="#include <cooperative_groups/reduce.h>\n")
D, eps = 2048, 1e-5
eps_bits = struct.unpack("<i", struct.pack("<f", eps))[0]
x = mx.random.normal((1, D)).astype(mx.bfloat16)
r = mx.random.normal((1, D)).astype(mx.bfloat16)
w = mx.random.normal((D,)).astype(mx.bfloat16)
mx.eval(x, r, w)
tmpl = [("T", mx.bfloat16), ("D", D), ("BLOCK", 128), ("CHUNKS", 2), ("NR", 8), ("EPS", eps_bits)]


def fused(h, y):
    return kernel(inputs=[h, y, w], template=tmpl, grid=(128, 1, 1), threadgroup=(128, 1, 1),
                  output_shapes=[h.shape, h.shape], output_dtypes=[h.dtype, h.dtype])


def plain(h, y):
    h = h + y
    return h, mx.fast.rms_norm(h, w, eps)


def chain(f):
    t0 = time.perf_counter()
    h, y = x, r
    for _ in range(N):
        h, y = f(h, y)
    t1 = time.perf_counter()
    mx.eval(h, y)
    t2 = time.perf_counter()
    return (t1 - t0) / N * 1e6, (t2 - t1) / N * 1e6


a, b = fused(x, r), plain(x, r)
print("same values:", all(mx.array_equal(p, q).item() for p, q in zip(a, b)))
res = {"fused": [], "add + rms_norm": []}
for _ in range(R):
    for name, f in (("fused", fused), ("add + rms_norm", plain)):
        res[name].append(chain(f))
for name, v in res.items():
    bld, ev = [p[0] for p in v], [p[1] for p in v]
    print(f"{name:16s} per call: build min {min(bld):.2f} median {statistics.median(bld):.2f} us, "
          f"eval min {min(ev):.2f} median {statistics.median(ev):.2f} us")
