"""Host cost per graph node on the default device (session 10, #18).

Times building + evaluating chains of one kind of node (views: reshape /
slice; kernels: add; 1-row matmuls with a 3-D vs a 2-D input and a
transposed weight made per call vs once; and the other kernels of a decode
step: quantized matmul, RMSNorm, RoPE, attention over a cache, the cache
write, the compiled SwiGLU), so the decode step's node counts
(MLXRS_DECODE_DOT) can be priced. Usage: python3 scripts/node_cost.py
"""
import time

import mlx.core as mx

N = 512
K = 2048


def timed(build, reps=20):
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = build()
        t1 = time.perf_counter()
        mx.eval(out)
        t2 = time.perf_counter()
        best.append((t1 - t0, t2 - t1))
    best.sort(key=lambda b: b[0] + b[1])
    b, e = best[len(best) // 2]
    return b * 1e6 / N, e * 1e6 / N


x = mx.random.normal((1, 1, K)).astype(mx.bfloat16)
w = (mx.random.normal((K, K)) * 0.01).astype(mx.bfloat16)
wt = w.T
mx.eval(x, w, wt)


def views():
    y = x
    for i in range(N):
        y = y.reshape(1, K, 1) if i % 2 == 0 else y.reshape(1, 1, K)
    return y + 0


def slices():
    y = mx.concatenate([x, x], axis=-1)
    for i in range(N):
        y = y[..., : K + (N - i)]
    return y + 0


def adds():
    y = x
    for _ in range(N):
        y = y + x
    return y


def mm3_transpose_each():
    y = x
    for _ in range(N):
        y = y @ w.T
    return y


def mm3():
    y = x
    for _ in range(N):
        y = y @ wt
    return y


x2 = x.reshape(1, K)
mx.eval(x2)


def mm2():
    y = x2
    for _ in range(N):
        y = y @ wt
    return y


q = mx.random.normal((1, 32, 1, 64)).astype(mx.bfloat16)
kc = mx.random.normal((1, 8, 600, 64)).astype(mx.bfloat16)
vc = mx.random.normal((1, 8, 600, 64)).astype(mx.bfloat16)
buf = mx.zeros((1, 8, 768, 64), dtype=mx.bfloat16)
nw = mx.ones((K,), dtype=mx.bfloat16)
x4 = mx.random.normal((1, 40, 1, 64)).astype(mx.bfloat16)
gu = mx.random.normal((1, 2 * 8192)).astype(mx.bfloat16)
wq, sq, bq = mx.quantize(w, group_size=64, bits=4)
mx.eval(q, kc, vc, buf, nw, x4, gu, wq, sq, bq)


@mx.compile
def swiglu(g, u):
    return g * mx.sigmoid(g) * u


def rms():
    y = x2
    for _ in range(N):
        y = mx.fast.rms_norm(y, nw, 1e-5)
    return y


def rope():
    y = x4
    for i in range(N):
        y = mx.fast.rope(y, 64, traditional=False, base=500000.0, scale=1.0, offset=i)
    return y


def sdpa():
    y = q
    for _ in range(N):
        y = mx.fast.scaled_dot_product_attention(y, kc, vc, scale=0.125)
    return y


def slice_update():
    b = buf
    for i in range(N):
        b = mx.slice_update(b, kc[:, :, :1, :], mx.array([i % 700]), axes=(2,))
    return b


def compiled_swiglu():
    y = gu[:, :8192]
    for _ in range(N):
        y = swiglu(y, gu[:, 8192:])
    return y


def qmm():
    y = x2
    for _ in range(N):
        y = mx.quantized_matmul(y, wq, sq, bq, transpose=True, group_size=64, bits=4)
    return y


for name, f in [
    ("reshape (view)", views),
    ("slice (view)", slices),
    ("add (kernel)", adds),
    ("matmul 3-D x, w.T per call", mm3_transpose_each),
    ("matmul 3-D x, w.T once", mm3),
    ("matmul 2-D x, w.T once", mm2),
    ("quantized_matmul 2-D 4-bit", qmm),
    ("fast.rms_norm [1, 2048]", rms),
    ("fast.rope [1, 40, 1, 64]", rope),
    ("sdpa q1 over 600 keys", sdpa),
    ("slice_update (kv write)", slice_update),
    ("compiled swiglu + 1 slice", compiled_swiglu),
]:
    timed(f, 3)
    b, e = timed(f)
    print(f"{name:28s} per node: build {b:6.2f} us, eval {e:6.2f} us")
