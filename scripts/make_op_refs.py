#!/usr/bin/env python3
"""Regenerates the differential-test references of mlxrs-core.

    .venv/bin/python scripts/make_op_refs.py

Runs Python `mlx.core` on small generated cases for every generated Rust
wrapper of `ops`, `fft`, `linalg` (CPU stream), `random` (explicit keys) and
`fast`, plus the hand-written `ops::einsum` / `fast::scaled_dot_product_attention_full`,
and writes into crates/mlxrs-core/tests/data/op_refs/:

- `<module>.safetensors` (one per module): the input tensors (deduplicated by
  content, named `i<hash>`) and the expected outputs (`c<case>_o<k>`);
- `manifest.json`: per case the Rust op name (`ops::sum_axes`), its argument
  list in the Rust wrapper's order, the output tensor names (or `error` with
  Python's message when Python raises), and optional tolerance overrides.

Argument encoding (decoded by crates/mlxrs-core/tests/differential.rs):
  {"t": name}            an array             {"tl": [names]}  a list of arrays
  {"dtype": "float32"}   a Dtype              {"norm": "ortho"} an FftNorm
  null                   None (Option)        numbers, bools, strings, int lists as is

Each case calls Python through an adapter with the Rust wrapper's signature,
so the argument list in the manifest is exactly what Rust passes. Ops that
Python does not expose (`gather`, `scatter*`, `masked_scatter`,
`number_of_elements`, `random.bits`, ...) get a reference computed with
numpy or with the Python ops that use them (`ref` says which); `check:
"meta"` compares only dtype and shape (random bits without a Python
equivalent).

It also writes the GGUF references of tests/gguf.rs into
crates/mlxrs-core/tests/data/gguf/ (see `make_gguf_refs`) and the fuzz seed
corpus into fuzz/seeds/.

Everything is seeded; a rerun on the same MLX version reproduces the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import mlx.core as mx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "mlxrs-core", "tests", "data", "op_refs")

# Default tolerances (rtol, atol) per output dtype; integer and bool outputs
# are compared exactly. Cases may override per dtype.
TOL = {
    "float32": [1e-5, 1e-6],
    "complex64": [1e-5, 1e-6],
    "float64": [1e-12, 1e-14],
    "float16": [2e-3, 1e-3],
    "bfloat16": [1.6e-2, 1e-2],
}

rng = np.random.default_rng(20240611)

DT = {
    "bool": mx.bool_, "uint8": mx.uint8, "uint16": mx.uint16, "uint32": mx.uint32,
    "uint64": mx.uint64, "int8": mx.int8, "int16": mx.int16, "int32": mx.int32,
    "int64": mx.int64, "float16": mx.float16, "float32": mx.float32,
    "float64": mx.float64, "bfloat16": mx.bfloat16, "complex64": mx.complex64,
}
DT_NAME = {v: k for k, v in DT.items()}


# ------------------------------------------------------------------ inputs

def rn(*shape, dtype="float32", scale=1.0):
    """Standard-normal values rounded to 1/64, as `dtype`."""
    x = np.round(rng.standard_normal(shape) * scale * 64) / 64
    return mx.array(x.astype(np.float32)).astype(DT[dtype])


def ru(lo, hi, *shape, dtype="float32"):
    x = np.round(rng.uniform(lo, hi, shape) * 64) / 64
    return mx.array(x.astype(np.float32)).astype(DT[dtype])


def ri(lo, hi, *shape, dtype="int32"):
    return mx.array(rng.integers(lo, hi, shape)).astype(DT[dtype])


def rb(*shape):
    return mx.array(rng.random(shape) < 0.5)


def cplx(*shape):
    re, im = rn(*shape), rn(*shape)
    return re.astype(mx.complex64) + mx.array(1j, mx.complex64) * im.astype(mx.complex64)


def spd(n, batch=()):
    a = rn(*batch, n, n)
    return a @ mx.swapaxes(a, -1, -2) + n * mx.eye(n)


def arr(v, dtype=None):
    return mx.array(v, dtype=DT[dtype] if dtype else None)


# ------------------------------------------------------------------ cases

class Case:
    def __init__(self, op, args, py, **opts):
        self.op, self.args, self.py, self.opts = op, args, py, opts


CASES: list[Case] = []
ADAPT = {}


def op(name, fn, **opts):
    """Register the Python adapter of Rust op `name` (same argument order)."""
    ADAPT[name] = (fn, opts)


def c(name, *args, **opts):
    fn, defaults = ADAPT[name]
    CASES.append(Case(name, list(args), fn, **{**defaults, **opts}))


class D(str):
    """A dtype argument."""


class N(str):
    """An FftNorm argument."""


def py_value(v):
    if isinstance(v, D):
        return DT[v]
    if isinstance(v, N):
        return str(v)
    return v


# Python-side helpers for ops Python does not expose.

def np_of(a):
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


def np_gather(a, idx, axes, sizes):
    a_np = np_of(a)
    idx = np.broadcast_arrays(*[np.array(i) for i in idx]) if idx else []
    ishape = idx[0].shape if idx else ()
    out = np.zeros(ishape + tuple(sizes), dtype=a_np.dtype)
    for pos in np.ndindex(*ishape):
        sl = [slice(0, s) for s in sizes]
        for k, ax in enumerate(axes):
            st = int(idx[k][pos]) % a_np.shape[ax]
            sl[ax] = slice(st, st + sizes[ax])
        out[pos] = a_np[tuple(sl)]
    return mx.array(out).astype(a.dtype)


def np_scatter(a, idx, upd, axes, mode):
    a_np = np_of(a).copy()
    u_np = np_of(upd)
    idx = np.broadcast_arrays(*[np.array(i) for i in idx])
    ishape = idx[0].shape
    ushape = u_np.shape[len(ishape):]
    for pos in np.ndindex(*ishape):
        sl = [slice(0, s) for s in ushape]
        for k, ax in enumerate(axes):
            st = int(idx[k][pos]) % a_np.shape[ax]
            sl[ax] = slice(st, st + ushape[ax])
        sl = tuple(sl)
        u = u_np[pos]
        if mode == "set":
            a_np[sl] = u
        elif mode == "add":
            a_np[sl] += u
        elif mode == "prod":
            a_np[sl] *= u
        elif mode == "max":
            a_np[sl] = np.maximum(a_np[sl], u)
        elif mode == "min":
            a_np[sl] = np.minimum(a_np[sl], u)
    return mx.array(a_np).astype(a.dtype)


def np_scatter_add_axis(a, idx, vals, axis):
    a_np = np_of(a).copy()
    i_np = np.array(idx)
    v_np = np.broadcast_to(np_of(vals), i_np.shape)
    for pos in np.ndindex(*i_np.shape):
        tgt = list(pos)
        tgt[axis] = int(i_np[pos]) % a_np.shape[axis]
        a_np[tuple(tgt)] += v_np[pos]
    return mx.array(a_np).astype(a.dtype)


def static_slices(start, stop, strides):
    return tuple(slice(b, e, s) for b, e, s in zip(start, stop, strides))


def slice_update(src, upd, start, stop, strides):
    out = mx.array(src)
    out[static_slices(start, stop, strides)] = upd
    return out


def masked_scatter(a, mask, src):
    out = mx.array(a)
    out[mask] = src
    return out


def full_pad(a, axes, lo, hi, value, mode):
    pw = [(0, 0)] * a.ndim
    for ax, l, h in zip(axes, lo, hi):
        pw[ax] = (l, h)
    return mx.pad(a, pw, mode, value)


def number_of_elements(a, axes, inverted, dtype):
    """The product of the sizes of `axes` (its reciprocal when `inverted`)."""
    n = int(np.prod([a.shape[x] for x in axes]))
    return mx.array(1.0 / n if inverted else n).astype(dtype)


# ---------------------------------------------------------------- ops: creation

op("ops::arange", lambda s, e, st, dt: mx.arange(s, e, st, dt))
c("ops::arange", 0.0, 5.0, 1.0, D("float32"))
c("ops::arange", -3.0, 7.0, 2.5, D("float16"))
c("ops::arange", 2.0, 11.0, 3.0, D("int32"))
c("ops::arange", 0.0, 1.0, 0.0, D("float32"))  # zero step: error in MLX
op("ops::linspace", lambda s, e, n, ep, dt: mx.linspace(s, e, n, dtype=dt) if ep else mx.linspace(s, e, n + 1, dtype=dt)[:-1])
c("ops::linspace", 0.0, 1.0, 5, True, D("float32"))
c("ops::linspace", -2.0, 3.0, 7, True, D("bfloat16"))
c("ops::linspace", 0.0, 1.0, -1, True, D("float32"))
op("ops::astype", lambda a, dt: a.astype(dt))
c("ops::astype", rn(2, 3, scale=3), D("int32"))
c("ops::astype", rn(4), D("bfloat16"))
c("ops::astype", ri(-5, 5, 3, 2), D("float16"))
c("ops::astype", rn(3), D("bool"))
c("ops::astype", cplx(3), D("float32"))
op("ops::as_strided", lambda a, sh, st, off: mx.as_strided(a, sh, st, off))
c("ops::as_strided", mx.arange(12, dtype=mx.float32), [3, 3], [2, 1], 1)
c("ops::as_strided", ri(0, 9, 10, dtype="int16"), [2, 2, 2], [4, 2, 1], 0)
op("ops::copy", lambda a: mx.array(a))
c("ops::copy", rn(2, 3))
c("ops::copy", ri(0, 100, 5, dtype="uint8"))
# Python's mx.full ignores `dtype` when `vals` is an array (it calls the
# C++ overload without dtype); the C++ full(shape, vals, dtype) casts first.
op("ops::full", lambda sh, v, dt: mx.full(sh, v.astype(dt)), ref="python mlx full(shape, vals.astype(dtype))")
c("ops::full", [2, 3], arr(1.5), D("float32"))
c("ops::full", [3, 2], rn(2), D("float16"))  # broadcast vals
c("ops::full", [2, 2], arr(7), D("int64"))
c("ops::full", [2, 2], rn(3), D("float32"))  # not broadcastable
op("ops::full_like", lambda a, v, dt: mx.full_like(a, v, dt))
c("ops::full_like", rn(2, 2), arr(3.0), D("float32"))
c("ops::full_like", ri(0, 3, 2, 3), rn(3), D("bfloat16"))
op("ops::zeros", lambda sh, dt: mx.zeros(sh, dt))
c("ops::zeros", [2, 3], D("float32"))
c("ops::zeros", [0, 4], D("int8"))
c("ops::zeros", [2, -1], D("float32"))
op("ops::zeros_like", lambda a: mx.zeros_like(a))
c("ops::zeros_like", ri(0, 5, 3, 1, dtype="uint16"))
op("ops::ones", lambda sh, dt: mx.ones(sh, dt))
c("ops::ones", [3], D("bfloat16"))
c("ops::ones", [], D("bool"))
op("ops::ones_like", lambda a: mx.ones_like(a))
c("ops::ones_like", rn(2, 1, 2, dtype="float16"))
op("ops::eye", lambda n, m, k, dt: mx.eye(n, m, k, dt))
c("ops::eye", 3, 4, 1, D("float32"))
c("ops::eye", 4, 2, -1, D("int32"))
op("ops::identity", lambda n, dt: mx.identity(n, dt))
c("ops::identity", 3, D("float16"))
op("ops::tri", lambda n, m, k, dt: mx.tri(n, m, k, dt))
c("ops::tri", 3, 5, 0, D("float32"))
c("ops::tri", 4, 3, -1, D("bool"))
op("ops::tril", lambda x, k: mx.tril(x, k))
c("ops::tril", rn(3, 4), 0)
c("ops::tril", ri(0, 9, 2, 3, 3), 1)
c("ops::tril", rn(4), 0)  # needs >= 2 dims
op("ops::triu", lambda x, k: mx.triu(x, k))
c("ops::triu", rn(4, 3), -1)
c("ops::triu", rn(2, 3, 3, dtype="bfloat16"), 1)

# ---------------------------------------------------------------- ops: shape

op("ops::reshape", lambda a, s: mx.reshape(a, s))
c("ops::reshape", rn(2, 3, 4), [4, -1])
c("ops::reshape", ri(0, 5, 6, dtype="uint32"), [3, 2])
c("ops::reshape", rn(2, 3), [4, 2])
op("ops::unflatten", lambda a, ax, s: mx.unflatten(a, ax, s))
c("ops::unflatten", rn(2, 6), 1, [2, 3])
c("ops::unflatten", rn(6, 2, dtype="float16"), 0, [-1, 2])
op("ops::flatten", lambda a, s, e: mx.flatten(a, s, e))
c("ops::flatten", rn(2, 3, 4), 0, -1)
c("ops::flatten", rn(2, 3, 4, 5), 1, 2)
c("ops::flatten", rn(2, 3), 1, 0)
op("ops::hadamard_transform", lambda a, sc: mx.hadamard_transform(a, sc))
c("ops::hadamard_transform", rn(3, 8), None)
c("ops::hadamard_transform", rn(2, 16, dtype="float16"), 0.25, tol={"float16": [4e-3, 4e-3]})
c("ops::hadamard_transform", rn(2, 6), None)
op("ops::squeeze_axes", lambda a, ax: mx.squeeze(a, ax))
c("ops::squeeze_axes", rn(1, 3, 1, 2), [0, 2])
c("ops::squeeze_axes", rn(2, 3), [0])
op("ops::squeeze_axis", lambda a, ax: mx.squeeze(a, ax))
c("ops::squeeze_axis", ri(0, 3, 2, 1), -1)
op("ops::squeeze", lambda a: mx.squeeze(a))
c("ops::squeeze", rn(1, 2, 1, 3, 1))
op("ops::expand_dims_axes", lambda a, ax: mx.expand_dims(a, ax))
c("ops::expand_dims_axes", rn(2, 3), [0, 3])
c("ops::expand_dims_axes", rn(2), [0, 0])
op("ops::expand_dims", lambda a, ax: mx.expand_dims(a, ax))
c("ops::expand_dims", rb(2, 2), -1)
op("ops::flip_axes", lambda a, ax: mx.flip(a, ax))
c("ops::flip_axes", rn(2, 3, 4), [0, 2])
op("ops::flip_axis", lambda a, ax: mx.flip(a, ax))
c("ops::flip_axis", ri(0, 9, 3, 2), -1)
op("ops::flip", lambda a: mx.flip(a))
c("ops::flip", rn(2, 3, dtype="bfloat16"))
op("ops::slice", lambda a, st, sp, strd: a[static_slices(st, sp, strd)])
c("ops::slice", rn(4, 5), [1, 0], [3, 5], [1, 2])
c("ops::slice", ri(0, 9, 6, 3), [5, 2], [0, -4], [-2, -1])
op("ops::slice_dynamic", lambda a, st, ax, sz: mx.slice(a, st, ax, sz))
c("ops::slice_dynamic", rn(4, 5), arr([1, 2]), [0, 1], [2, 2])
c("ops::slice_dynamic", rn(6, 3, dtype="float16"), arr([3]), [0], [2, 3])
op("ops::slice_update", slice_update)
c("ops::slice_update", rn(4, 4), rn(2, 2), [1, 0], [3, 4], [1, 2])
c("ops::slice_update", ri(0, 9, 5, 3), ri(0, 9, 1, 3), [2, 0], [3, 3], [1, 1])
op("ops::slice_update_dynamic", lambda s, u, st, ax: mx.slice_update(s, u, st, ax))
c("ops::slice_update_dynamic", rn(4, 4), rn(2, 4), arr([1]), [0])
for kind, meth in [("add", "add"), ("prod", "multiply"), ("max", "maximum"), ("min", "minimum")]:
    op(f"ops::slice_update_{kind}",
       (lambda m: lambda s, u, st, sp, strd: getattr(s.at[static_slices(st, sp, strd)], m)(u))(meth),
       ref="python mlx .at[] (scatter)")
    c(f"ops::slice_update_{kind}", rn(4, 3), rn(2, 3), [0, 0], [4, 3], [2, 1])
    c(f"ops::slice_update_{kind}", ri(1, 5, 3, 4), ri(1, 5, 1, 2), [1, 1], [2, 4], [1, 2])
op("ops::split", lambda a, n, ax: mx.split(a, n, ax))
c("ops::split", rn(6, 2), 3, 0)
c("ops::split", rn(2, 5), 2, 1)
op("ops::split_sections", lambda a, idx, ax: mx.split(a, idx, ax))
c("ops::split_sections", rn(2, 7), [2, 5], 1)
c("ops::split_sections", ri(0, 9, 5, dtype="int64"), [1, 1, 4], 0)
op("ops::unstack_axis", lambda a, ax: list(mx.unstack(a, axis=ax)))
c("ops::unstack_axis", rn(2, 3, 2), 1)
op("ops::unstack", lambda a: list(mx.unstack(a)))
c("ops::unstack", ri(0, 5, 3, 2))
op("ops::meshgrid", lambda arrs, sp, ix: list(mx.meshgrid(*arrs, sparse=sp, indexing=ix)))
c("ops::meshgrid", [rn(3), rn(2)], False, "xy")
c("ops::meshgrid", [ri(0, 5, 2), rn(3), rn(2)], True, "ij")
c("ops::meshgrid", [rn(3), rn(2)], False, "zz")
op("ops::clip", lambda a, lo, hi: mx.clip(a, lo, hi))
c("ops::clip", rn(3, 4), arr(-0.5), arr(0.5))
c("ops::clip", rn(3, 4), None, rn(4))
c("ops::clip", ri(-9, 9, 5), arr(-2), None)
c("ops::clip", rn(3), None, None)
op("ops::concatenate_axis", lambda arrs, ax: mx.concatenate(arrs, ax))
c("ops::concatenate_axis", [rn(2, 3), rn(2, 1)], 1)
c("ops::concatenate_axis", [rn(2, 3), ri(0, 5, 1, 3)], 0)  # type promotion
c("ops::concatenate_axis", [rn(2, 3), rn(2, 2)], 0)
# The C++ overload without an axis concatenates the flattened arrays.
op("ops::concatenate", lambda arrs: mx.concatenate(arrs, axis=None))
c("ops::concatenate", [rn(1, 2), rn(3, 2), rn(2, 2)])
op("ops::stack_axis", lambda arrs, ax: mx.stack(arrs, ax))
c("ops::stack_axis", [rn(2, 3), rn(2, 3)], -1)
c("ops::stack_axis", [rn(2, 3), rn(3, 2)], 0)
op("ops::stack", lambda arrs: mx.stack(arrs))
c("ops::stack", [ri(0, 5, 3, dtype="int8"), ri(0, 5, 3, dtype="int8")])
op("ops::repeat_axis", lambda a, r, ax: mx.repeat(a, r, ax))
c("ops::repeat_axis", rn(2, 3), 2, 1)
op("ops::repeat", lambda a, r: mx.repeat(a, r))
c("ops::repeat", ri(0, 5, 2, 2), 3)
op("ops::tile", lambda a, r: mx.tile(a, r))
c("ops::tile", rn(2, 3), [2, 1])
c("ops::tile", rn(3, dtype="float16"), [2, 1, 2])
op("ops::transpose_axes", lambda a, ax: mx.transpose(a, ax))
c("ops::transpose_axes", rn(2, 3, 4), [2, 0, 1])
c("ops::transpose_axes", rn(2, 3), [0, 0])
op("ops::transpose", lambda a: mx.transpose(a))
c("ops::transpose", ri(0, 9, 2, 3, 4))
op("ops::matrix_transpose", lambda a: mx.matrix_transpose(a))
c("ops::matrix_transpose", rn(2, 3, 4))
op("ops::swapaxes", lambda a, x, y: mx.swapaxes(a, x, y))
c("ops::swapaxes", rn(2, 3, 4), 0, -1)
op("ops::moveaxis", lambda a, s, d: mx.moveaxis(a, s, d))
c("ops::moveaxis", rn(2, 3, 4), 0, 2)
c("ops::moveaxis", rn(2, 3), 0, 5)
op("ops::pad", full_pad)
c("ops::pad", rn(2, 3), [0, 1], [1, 0], [0, 2], arr(0.5), "constant")
c("ops::pad", ri(0, 9, 3, 4), [1], [2], [1], arr(0), "edge")
c("ops::pad", rn(4, 5), [0, 1], [2, 1], [1, 3], arr(0.0), "reflect")
c("ops::pad", rn(3, 3), [0], [1], [1], arr(0.0), "symmetric")
c("ops::pad", rn(3, 3), [0], [1], [1], arr(0.0), "wrap")
op("ops::pad_symmetric", lambda a, w, v, mode: mx.pad(a, w, mode, v))
c("ops::pad_symmetric", rn(2, 2), 1, arr(-1.0), "constant")
c("ops::pad_symmetric", rn(3, 4, dtype="bfloat16"), 2, arr(0.0), "edge")
op("ops::broadcast_to", lambda a, s: mx.broadcast_to(a, s))
c("ops::broadcast_to", rn(3, 1), [2, 3, 4])
c("ops::broadcast_to", rn(3), [2, 4])
op("ops::broadcast_arrays", lambda arrs: list(mx.broadcast_arrays(*arrs)))
c("ops::broadcast_arrays", [rn(3, 1), ri(0, 3, 4), rn(2, 1, 1)])
op("ops::atleast_1d", lambda a: mx.atleast_1d(a))
c("ops::atleast_1d", arr(2.5))
op("ops::atleast_2d", lambda a: mx.atleast_2d(a))
c("ops::atleast_2d", rn(3))
op("ops::atleast_3d", lambda a: mx.atleast_3d(a))
c("ops::atleast_3d", rn(2, 3))
c("ops::atleast_3d", rn(3))
op("ops::contiguous", lambda a, cm: mx.contiguous(a, cm))
c("ops::contiguous", rn(3, 4), False)
c("ops::contiguous", rn(3, 4), True)
op("ops::view", lambda a, dt: mx.view(a, dt))
c("ops::view", rn(2, 4), D("int32"))
c("ops::view", rn(2, 4), D("uint8"))
c("ops::view", ri(0, 9, 3, dtype="int8"), D("int32"))
op("ops::roll", lambda a, sh: mx.roll(a, tuple(sh)))
c("ops::roll", rn(2, 3), [2])
c("ops::roll", rn(2, 3), [1, 2])
op("ops::roll_axis", lambda a, sh, ax: mx.roll(a, tuple(sh), ax))
c("ops::roll_axis", rn(3, 4), [1], 1)
op("ops::roll_axes", lambda a, sh, ax: mx.roll(a, tuple(sh), tuple(ax)))
c("ops::roll_axes", ri(0, 9, 3, 4), [1, -1], [0, 1])
c("ops::roll_axes", rn(3, 4), [1], [0, 1])
op("ops::depends", lambda ins, deps: list(mx.depends(ins, deps)))
c("ops::depends", [rn(2), rn(3)], [rn(1)])
op("ops::number_of_elements", number_of_elements, ref="python shape product")
c("ops::number_of_elements", rn(2, 3, 4), [0, 2], False, D("int32"))
c("ops::number_of_elements", rn(2, 3, 4), [1], True, D("float32"))
op("ops::stop_gradient", lambda a: mx.stop_gradient(a))
c("ops::stop_gradient", rn(3))

# ---------------------------------------------------------------- ops: elementwise

UNARY = {
    "abs": (mx.abs, [rn(3, 4), ri(-9, 9, 5, dtype="int16"), cplx(3)]),
    "positive": (mx.positive, [rn(4)]),
    "negative": (mx.negative, [rn(2, 3, dtype="float16"), ri(-5, 5, 4, dtype="int64"), rb(3)]),
    "sign": (mx.sign, [rn(5), ri(-3, 3, 5), ri(0, 3, 4, dtype="uint8")]),
    "logical_not": (mx.logical_not, [rb(2, 3), rn(4)]),
    "reciprocal": (mx.reciprocal, [ru(0.5, 3, 4)]),
    "floor": (mx.floor, [rn(5, scale=3), rn(4, dtype="bfloat16", scale=3)]),
    "ceil": (mx.ceil, [rn(5, scale=3), ri(-5, 5, 3)]),
    "trunc": (getattr(mx, "trunc", None) or (lambda a: mx.array(np.trunc(np_of(a))).astype(a.dtype)), [rn(5, scale=3)]),
    "square": (mx.square, [rn(2, 3), ri(-5, 5, 4), cplx(2)]),
    "exp": (mx.exp, [rn(2, 3), rn(4, dtype="float16"), cplx(3)]),
    "sin": (mx.sin, [rn(5), cplx(2)]),
    "cos": (mx.cos, [rn(5, dtype="bfloat16")]),
    "tan": (mx.tan, [ru(-1, 1, 5)]),
    "arcsin": (mx.arcsin, [ru(-0.9, 0.9, 5), arr([2.0])]),
    "arccos": (mx.arccos, [ru(-0.9, 0.9, 5)]),
    "arctan": (mx.arctan, [rn(5, scale=3)]),
    "sinh": (mx.sinh, [rn(5)]),
    "cosh": (mx.cosh, [rn(5)]),
    "tanh": (mx.tanh, [rn(5), rn(3, dtype="float16")]),
    "arcsinh": (mx.arcsinh, [rn(5)]),
    "arccosh": (mx.arccosh, [ru(1, 4, 5)]),
    "arctanh": (mx.arctanh, [ru(-0.9, 0.9, 5)]),
    "degrees": (mx.degrees, [rn(4)]),
    "radians": (mx.radians, [rn(4, scale=90)]),
    "log": (mx.log, [ru(0.1, 5, 5), arr([0.0, -1.0]), cplx(2)]),
    "log2": (mx.log2, [ru(0.1, 5, 5)]),
    "log10": (mx.log10, [ru(0.1, 5, 5, dtype="float16")]),
    "log1p": (mx.log1p, [ru(-0.5, 3, 5)]),
    "sigmoid": (mx.sigmoid, [rn(5, scale=3), rn(3, dtype="bfloat16")]),
    "erf": (mx.erf, [rn(5)]),
    "erfinv": (mx.erfinv, [ru(-0.9, 0.9, 5)]),
    "expm1": (mx.expm1, [rn(5)]),
    "sqrt": (mx.sqrt, [ru(0, 4, 5), ri(0, 9, 4), cplx(2)]),
    "rsqrt": (mx.rsqrt, [ru(0.1, 4, 5)]),
    "isnan": (mx.isnan, [arr([1.0, float("nan"), float("inf")]), ri(0, 3, 2)]),
    "isinf": (mx.isinf, [arr([1.0, float("nan"), float("-inf")], "float16")]),
    "isfinite": (mx.isfinite, [arr([1.0, float("nan"), float("inf")])]),
    "isposinf": (mx.isposinf, [arr([1.0, float("-inf"), float("inf")])]),
    "isneginf": (mx.isneginf, [arr([1.0, float("-inf"), float("inf")])]),
    "conjugate": (mx.conjugate, [cplx(3), rn(2)]),
    "real": (mx.real, [cplx(2, 2)]),
    "imag": (mx.imag, [cplx(3)]),
    "bitwise_invert": (mx.bitwise_invert, [ri(0, 255, 4, dtype="uint8"), ri(-9, 9, 3), rn(2)]),
}
for name, (fn, inputs) in UNARY.items():
    op(f"ops::{name}", (lambda f: lambda a: f(a))(fn))
    for x in inputs:
        c(f"ops::{name}", x)
op("ops::round", lambda a, d: mx.round(a, d))
c("ops::round", rn(5, scale=10), 0)
c("ops::round", rn(5, scale=10), 1)
c("ops::round", ri(-99, 99, 3), -1)
op("ops::nan_to_num", lambda a, n, p, q: mx.nan_to_num(a, n, p, q))
c("ops::nan_to_num", arr([1.0, float("nan"), float("inf"), float("-inf")]), 0.0, None, None)
c("ops::nan_to_num", arr([float("nan"), float("inf"), float("-inf")], "float16"), -1.0, 9.0, -9.0)

BINARY = {
    "add": mx.add, "subtract": mx.subtract, "multiply": mx.multiply, "divide": mx.divide,
    "maximum": mx.maximum, "minimum": mx.minimum, "power": mx.power,
    "logaddexp": mx.logaddexp, "arctan2": mx.arctan2,
    "floor_divide": mx.floor_divide, "remainder": mx.remainder,
    "equal": mx.equal, "not_equal": mx.not_equal, "greater": mx.greater,
    "greater_equal": mx.greater_equal, "less": mx.less, "less_equal": mx.less_equal,
    "logical_and": mx.logical_and, "logical_or": mx.logical_or,
    "logical_xor": getattr(mx, "logical_xor", None),
}
for name, fn in BINARY.items():
    op(f"ops::{name}", (lambda f: lambda a, b: f(a, b))(fn))
    pos = name in ("power", "divide", "floor_divide", "remainder")
    c(f"ops::{name}", ru(0.5, 3, 2, 3) if pos else rn(2, 3), ru(0.5, 3, 2, 3) if pos else rn(2, 3))
    c(f"ops::{name}", ru(0.5, 3, 3, 1) if pos else rn(3, 1), ru(0.5, 3, 4) if pos else rn(4))  # broadcast
    c(f"ops::{name}", ri(1, 9, 4, dtype="int16"), ri(1, 5, 4, dtype="int16"))
    c(f"ops::{name}", ri(1, 9, 2, 2, dtype="uint8"), ru(0.5, 2, 2, dtype="bfloat16"))  # promotion
    c(f"ops::{name}", rn(2, 3), rn(3, 2))  # not broadcastable
c("ops::add", cplx(3), rn(3))
c("ops::multiply", cplx(2, 2), cplx(2))
c("ops::divide", ri(1, 9, 4), ri(1, 5, 4))  # int / int -> float
c("ops::remainder", ri(-9, 9, 6), ri(1, 5, 6))
c("ops::floor_divide", rn(5, scale=5), ru(0.5, 2, 5, dtype="float16"))
op("ops::divmod", lambda a, b: list(mx.divmod(a, b)))
c("ops::divmod", ri(-9, 9, 5), ri(1, 4, 5))
c("ops::divmod", rn(2, 3, scale=5), ru(0.5, 2, 3))
for name, fn in [("bitwise_and", mx.bitwise_and), ("bitwise_or", mx.bitwise_or),
                 ("bitwise_xor", mx.bitwise_xor), ("left_shift", mx.left_shift),
                 ("right_shift", mx.right_shift)]:
    op(f"ops::{name}", (lambda f: lambda a, b: f(a, b))(fn))
    c(f"ops::{name}", ri(0, 64, 5), ri(0, 4, 5))
    c(f"ops::{name}", ri(0, 255, 2, 3, dtype="uint8"), ri(0, 4, 3, dtype="uint8"))
    c(f"ops::{name}", rb(4), rb(4))
    c(f"ops::{name}", rn(3), ri(0, 3, 3))  # float: error
op("ops::where_", lambda cnd, x, y: mx.where(cnd, x, y))
c("ops::where_", rb(2, 3), rn(2, 3), rn(3))
c("ops::where_", rb(3, 1), ri(0, 9, 1, 2), rn(2, dtype="float16"))
c("ops::where_", rb(2, 2), rn(3), rn(3))
op("ops::array_equal", lambda a, b, en: mx.array_equal(a, b, equal_nan=en))
nan3 = arr([1.0, float("nan"), 2.0])
c("ops::array_equal", nan3, nan3, False)
c("ops::array_equal", nan3, nan3, True)
c("ops::array_equal", ri(0, 3, 3), ri(0, 3, 2), False)
op("ops::allclose", lambda a, b, rt, at, en: mx.allclose(a, b, rt, at, equal_nan=en))
x5 = rn(5)
c("ops::allclose", x5, x5 + 1e-7, 1e-5, 1e-8, False)
c("ops::allclose", x5, x5 + 0.1, 1e-5, 1e-8, False)
c("ops::allclose", nan3, nan3, 1e-5, 1e-8, True)
op("ops::isclose", lambda a, b, rt, at, en: mx.isclose(a, b, rt, at, equal_nan=en))
c("ops::isclose", x5, x5 + arr([0.0, 1e-7, 0.1, 0.0, 1.0]), 1e-5, 1e-8, False)
c("ops::isclose", nan3, rn(3, 1), 1e-2, 0.5, True)
op("ops::kron", lambda a, b: mx.kron(a, b))
c("ops::kron", rn(2, 2), rn(2, 3))
c("ops::kron", ri(0, 5, 3), ri(0, 5, 2, 1))

# ---------------------------------------------------------------- ops: reductions

RED = ["all", "any", "sum", "mean", "median", "prod", "max", "min", "logsumexp"]
for name in RED:
    fn = getattr(mx, name)
    op(f"ops::{name}", (lambda f: lambda a, kd: f(a, keepdims=kd))(fn))
    op(f"ops::{name}_axes", (lambda f: lambda a, ax, kd: f(a, ax, kd))(fn))
    op(f"ops::{name}_axis", (lambda f: lambda a, ax, kd: f(a, ax, kd))(fn))
    boolish = name in ("all", "any")
    x = rb(2, 3, 4) if boolish else rn(2, 3, 4)
    c(f"ops::{name}", x, False)
    c(f"ops::{name}", ri(0, 3, 3, 2, dtype="int32") if name != "logsumexp" else rn(3, 2, dtype="float16"), True)
    c(f"ops::{name}_axes", x, [0, 2], False)
    c(f"ops::{name}_axes", rn(2, 3, 4, dtype="bfloat16") if not boolish else rn(2, 3), [-1], True)
    c(f"ops::{name}_axis", x, 1, False)
    c(f"ops::{name}_axis", ri(1, 4, 4, 3, dtype="uint8") if name not in ("mean", "median", "logsumexp") else rn(4, 3), 0, True)
    c(f"ops::{name}_axis", x, 3, False)  # axis out of range
# Not compared: reductions of empty arrays (sum, prod, all, ...) return
# uninitialized memory on MLX 0.32.4's CPU backend (e.g. sum -7035756.0,
# prod -1.3e19, all False, depending on the allocator's recycled buffers).
c("ops::max", rn(0, 3), False)  # empty max: error
for name in ["var", "std"]:
    fn = getattr(mx, name)
    op(f"ops::{name}", (lambda f: lambda a, kd, dd: f(a, keepdims=kd, ddof=dd))(fn))
    op(f"ops::{name}_axes", (lambda f: lambda a, ax, kd, dd: f(a, ax, kd, dd))(fn))
    op(f"ops::{name}_axis", (lambda f: lambda a, ax, kd, dd: f(a, ax, kd, dd))(fn))
    c(f"ops::{name}", rn(3, 4), False, 0)
    c(f"ops::{name}", ri(0, 9, 5), True, 1)
    c(f"ops::{name}_axes", rn(2, 3, 4), [0, 2], True, 1)
    c(f"ops::{name}_axis", rn(4, 3, dtype="float16"), 0, False, 0)
op("ops::count_nonzero", lambda a, kd: mx.count_nonzero(a, keepdims=kd))
c("ops::count_nonzero", ri(0, 2, 3, 4), False)
c("ops::count_nonzero", rb(2, 3), True)
op("ops::count_nonzero_axis", lambda a, ax, kd: mx.count_nonzero(a, axis=ax, keepdims=kd))
c("ops::count_nonzero_axis", ri(0, 2, 3, 4), 1, False)
op("ops::count_nonzero_axes", lambda a, ax, kd: mx.count_nonzero(a, axis=ax, keepdims=kd))
c("ops::count_nonzero_axes", rn(2, 3, 4) * ri(0, 2, 2, 3, 4), [0, 2], True)
op("ops::minmax", lambda a, kd: list(mx.minmax(a, keepdims=kd)))
c("ops::minmax", rn(3, 4), False)
c("ops::minmax", ri(-9, 9, 2, 2, dtype="int8"), True)
op("ops::minmax_axes", lambda a, ax, kd: list(mx.minmax(a, ax, kd)))
c("ops::minmax_axes", rn(2, 3, 4), [0, 2], False)
op("ops::minmax_axis", lambda a, ax, kd: list(mx.minmax(a, ax, kd)))
c("ops::minmax_axis", rn(3, 4, dtype="bfloat16"), 1, True)
for name in ["argmin", "argmax"]:
    fn = getattr(mx, name)
    op(f"ops::{name}", (lambda f: lambda a, kd: f(a, keepdims=kd))(fn))
    op(f"ops::{name}_axis", (lambda f: lambda a, ax, kd: f(a, ax, kd))(fn))
    c(f"ops::{name}", rn(3, 4), False)
    c(f"ops::{name}", ri(0, 99, 2, 3, dtype="uint16"), True)
    c(f"ops::{name}_axis", rn(3, 4), 1, False)
    c(f"ops::{name}_axis", rn(3, 4, dtype="float16"), 0, True)
for name in ["hanning", "hamming", "bartlett", "blackman"]:
    op(f"ops::{name}", (lambda f: lambda m: f(m))(getattr(mx, name)))
    c(f"ops::{name}", 7)
    c(f"ops::{name}", 1)

# ---------------------------------------------------------------- ops: sort / scan

op("ops::sort", lambda a: mx.sort(a, axis=None))
c("ops::sort", rn(3, 4))
c("ops::sort", ri(-9, 9, 7, dtype="int64"))
op("ops::sort_axis", lambda a, ax: mx.sort(a, ax))
c("ops::sort_axis", rn(3, 4), 0)
c("ops::sort_axis", rn(3, 4, dtype="bfloat16"), -1)
op("ops::argsort", lambda a: mx.argsort(a, axis=None))
c("ops::argsort", rn(3, 4))
op("ops::argsort_axis", lambda a, ax: mx.argsort(a, ax))
c("ops::argsort_axis", rn(3, 4), 1)
c("ops::argsort_axis", ri(0, 99, 4, 3, dtype="uint8"), 0)
# partition / argpartition: only the kth element's position is defined, so
# compare the sorted partition (Rust side: `sort` in the harness? no: compare
# exact outputs, MLX is deterministic on one backend).
op("ops::partition", lambda a, k: mx.partition(a, k, axis=None))
c("ops::partition", rn(3, 4), 5)
op("ops::partition_axis", lambda a, k, ax: mx.partition(a, k, ax))
c("ops::partition_axis", rn(3, 5), 2, 1)
op("ops::argpartition", lambda a, k: mx.argpartition(a, k, axis=None))
c("ops::argpartition", rn(12), 3)
op("ops::argpartition_axis", lambda a, k, ax: mx.argpartition(a, k, ax))
c("ops::argpartition_axis", rn(4, 3), 1, 0)
c("ops::argpartition_axis", rn(4, 3), 5, 0)
op("ops::topk", lambda a, k: mx.topk(a, k, axis=None))
c("ops::topk", rn(3, 4), 3)
op("ops::topk_axis", lambda a, k, ax: mx.topk(a, k, ax))
c("ops::topk_axis", rn(3, 6), 2, -1)
c("ops::topk_axis", ri(0, 99, 5, 2), 2, 0)
op("ops::searchsorted", lambda s, v, side: mx.searchsorted(s, v, side=side))
srt = mx.sort(rn(8))
c("ops::searchsorted", srt, rn(5), "left")
c("ops::searchsorted", arr([1, 2, 2, 3]), arr([2, 0, 5]), "right")
c("ops::searchsorted", srt, rn(3), "middle")
op("ops::unique", lambda a, n, ri_, rv, rc, fv: (lambda r: list(r) if isinstance(r, (tuple, list)) else r)(mx.unique(a, n, ri_, rv, rc, fv)))
c("ops::unique", ri(0, 5, 10), 6, False, False, False, None)
c("ops::unique", ri(0, 4, 3, 3), 5, True, True, True, arr(-1))
c("ops::unique", rn(6), 6, False, True, False, None)
for name in ["cumsum", "cumprod"]:
    fn = getattr(mx, name)
    op(f"ops::{name}", (lambda f: lambda a, rv, inc, dt: f(a, reverse=rv, inclusive=inc, dtype=dt))(fn))
    op(f"ops::{name}_axis", (lambda f: lambda a, ax, rv, inc, dt: f(a, ax, reverse=rv, inclusive=inc, dtype=dt))(fn))
    c(f"ops::{name}", ru(0.5, 1.5, 2, 3), False, True, None)
    c(f"ops::{name}", ri(1, 4, 5), True, False, D("int64"))
    c(f"ops::{name}_axis", ru(0.5, 1.5, 3, 4), 1, False, True, None)
    c(f"ops::{name}_axis", ri(1, 4, 3, 2, dtype="uint8"), 0, True, True, D("float32"))
for name in ["cummax", "cummin", "logcumsumexp"]:
    fn = getattr(mx, name)
    op(f"ops::{name}", (lambda f: lambda a, rv, inc: f(a, reverse=rv, inclusive=inc))(fn))
    op(f"ops::{name}_axis", (lambda f: lambda a, ax, rv, inc: f(a, ax, reverse=rv, inclusive=inc))(fn))
    c(f"ops::{name}", rn(2, 3), False, True)
    c(f"ops::{name}", rn(5, dtype="float16"), True, False)
    c(f"ops::{name}_axis", rn(3, 4), 1, False, True)
    c(f"ops::{name}_axis", rn(3, 4) if name == "logcumsumexp" else ri(0, 9, 4, 2), 0, True, False)
op("ops::diff", lambda a, n, ax: mx.diff(a, n, ax))
c("ops::diff", rn(3, 5), 1, -1)
c("ops::diff", ri(0, 99, 5, 2), 2, 0)
c("ops::diff", rn(3), -1, 0)

# ---------------------------------------------------------------- ops: softmax

op("ops::softmax_axes", lambda a, ax, p: mx.softmax(a, ax, precise=p))
c("ops::softmax_axes", rn(2, 3, 4), [0, 2], False)
op("ops::softmax", lambda a, p: mx.softmax(a, precise=p))
c("ops::softmax", rn(3, 4), False)
c("ops::softmax", rn(3, 4, dtype="float16"), True)
op("ops::softmax_axis", lambda a, ax, p: mx.softmax(a, ax, precise=p))
c("ops::softmax_axis", rn(3, 4), -1, False)
c("ops::softmax_axis", rn(3, 4, dtype="bfloat16"), 0, True)

# ---------------------------------------------------------------- ops: indexing

op("ops::take_axis", lambda a, i, ax: mx.take(a, i, ax))
c("ops::take_axis", rn(4, 3), arr([0, 3, 1]), 0)
c("ops::take_axis", rn(4, 3), ri(-3, 3, 2, 2), 1)
op("ops::take", lambda a, i: mx.take(a, i))
c("ops::take", rn(3, 4), arr([[0, 11], [5, 2]]))
op("ops::take_along_axis", lambda a, i, ax: mx.take_along_axis(a, i, ax))
c("ops::take_along_axis", rn(3, 4), ri(0, 4, 3, 2), 1)
c("ops::take_along_axis", rn(3, 4), ri(0, 3, 1, 4), 0)
op("ops::put_along_axis", lambda a, i, v, ax: mx.put_along_axis(a, i, v, ax))
c("ops::put_along_axis", rn(3, 4), arr([[0], [2], [3]]), rn(3, 1), 1)
c("ops::put_along_axis", ri(0, 9, 3, 4), arr([[1, 0, 2, 1]]), arr(-1), 0)
op("ops::scatter_add_axis", np_scatter_add_axis, ref="numpy np.add.at")
c("ops::scatter_add_axis", rn(3, 4), arr([[0, 0], [2, 1], [3, 3]]), rn(3, 2), 1)
c("ops::scatter_add_axis", ri(0, 9, 3, 2), arr([[1, 0], [1, 1]]), ri(0, 9, 2, 2), 0)
op("ops::gather", np_gather, ref="numpy")
c("ops::gather", rn(4, 5), [arr([0, 3, 1])], [0], [1, 5])
c("ops::gather", rn(4, 5), [arr([0, 3]), arr([1, 2])], [0, 1], [1, 2])
c("ops::gather", ri(0, 99, 3, 4, 2, dtype="int16"), [arr([[2], [0]])], [1], [3, 1, 2])
op("ops::gather_single", lambda a, i, ax, sz: np_gather(a, [i], [ax], sz), ref="numpy")
c("ops::gather_single", rn(4, 5), arr([1, 2]), 1, [4, 1])
c("ops::gather_single", rn(4, 5), arr([1, 2]), 1, [5, 1], error="MLX: slice sizes must fit the array")
for kind in ["", "_add", "_prod", "_max", "_min"]:
    mode = kind[1:] or "set"
    op(f"ops::scatter{kind}", (lambda m: lambda a, i, u, ax: np_scatter(a, i, u, ax, m))(mode), ref="numpy")
    op(f"ops::scatter{kind}_single", (lambda m: lambda a, i, u, ax: np_scatter(a, [i], u, [ax], m))(mode), ref="numpy")
    c(f"ops::scatter{kind}", rn(4, 3), [arr([0, 2])], rn(2, 1, 3), [0])
    c(f"ops::scatter{kind}", ri(1, 9, 4, 3), [arr([3, 1]), arr([0, 2])], ri(1, 9, 2, 1, 1), [0, 1])
    c(f"ops::scatter{kind}_single", rn(3, 4), arr([1, 3]), rn(2, 3, 1), 1)
    c(f"ops::scatter{kind}_single", rn(3, 4, dtype="float16"), arr([2]), rn(1, 1, 4, dtype="float16"), 0)
c("ops::scatter", rn(4, 3), [arr([0, 2])], rn(2, 3), [0], error="MLX: updates rank must be indices + array rank")
op("ops::masked_scatter", masked_scatter, ref="python mlx a[mask] = src")
c("ops::masked_scatter", rn(2, 3), arr([[True, False, True], [False, False, True]]), rn(5))
c("ops::masked_scatter", ri(0, 9, 2, 2), arr([[False, True], [True, False]]), ri(10, 20, 4))
op("ops::diagonal", lambda a, o, x, y: mx.diagonal(a, o, x, y))
c("ops::diagonal", rn(3, 4), 1, 0, 1)
c("ops::diagonal", rn(2, 3, 3), -1, 1, 2)
c("ops::diagonal", rn(3, 3), 0, 0, 0)
op("ops::diag", lambda a, k: mx.diag(a, k))
c("ops::diag", rn(3), 1)
c("ops::diag", rn(3, 4), -1)
op("ops::trace", lambda a, o, x, y, dt: mx.trace(a, o, x, y, dt))
c("ops::trace", rn(3, 4), 0, 0, 1, D("float32"))
c("ops::trace", ri(0, 9, 2, 3, 3), 1, 1, 2, D("int32"))

# ---------------------------------------------------------------- ops: linear algebra

op("ops::matmul", lambda a, b: mx.matmul(a, b))
c("ops::matmul", rn(3, 4), rn(4, 2))
c("ops::matmul", rn(2, 1, 3, 4), rn(3, 4, 5))  # batched broadcast
c("ops::matmul", rn(4), rn(4, 3))
c("ops::matmul", rn(3, 4, dtype="float16"), rn(4, 2, dtype="float16"), tol={"float16": [5e-3, 5e-3]})
c("ops::matmul", rn(3, 4), rn(3, 4))
op("ops::tensordot_axis", lambda a, b, n: mx.tensordot(a, b, n))
c("ops::tensordot_axis", rn(2, 3, 4), rn(3, 4, 5), 2)
op("ops::tensordot", lambda a, b, x, y: mx.tensordot(a, b, [x, y]))
c("ops::tensordot", rn(3, 4, 2), rn(4, 3), [0, 1], [1, 0])
op("ops::outer", lambda a, b: mx.outer(a, b))
c("ops::outer", rn(3), rn(4))
op("ops::inner", lambda a, b: mx.inner(a, b))
c("ops::inner", rn(2, 3), rn(4, 3))
op("ops::vecdot", lambda a, b, ax: mx.vecdot(a, b, axis=ax))
c("ops::vecdot", rn(2, 3), rn(2, 3), -1)
c("ops::vecdot", rn(2, 3), rn(3), -1)  # MLX checks the axis before broadcasting
c("ops::vecdot", cplx(3, 2), cplx(3, 2), 0)
op("ops::addmm", lambda c_, a, b, al, be: mx.addmm(c_, a, b, al, be))
c("ops::addmm", rn(3, 2), rn(3, 4), rn(4, 2), 1.0, 1.0)
c("ops::addmm", rn(2), rn(3, 4), rn(4, 2), 0.5, 2.0)
op("ops::block_masked_mm", lambda a, b, bs, mo, ml, mr: mx.block_masked_mm(a, b, bs, mo, ml, mr))
c("ops::block_masked_mm", rn(64, 64), rn(64, 64), 32, arr([[True, False], [False, True]]), None, None, tol={"float32": [1e-4, 1e-4]})
c("ops::block_masked_mm", rn(64, 32), rn(32, 64), 32, None, arr([[True], [False]]), arr([[True, True]]), tol={"float32": [1e-4, 1e-4]})
op("ops::gather_mm", lambda a, b, l, r, s: mx.gather_mm(a, b, l, r, sorted_indices=s))
c("ops::gather_mm", rn(3, 2, 4), rn(2, 4, 5), arr([0, 2]), arr([1, 0]), False)
c("ops::gather_mm", rn(2, 4), rn(3, 4, 2), None, arr([0, 2, 2]), True)
op("ops::segmented_mm", lambda a, b, s: mx.segmented_mm(a, b, s))
c("ops::segmented_mm", rn(2, 6), rn(6, 3), arr([[0, 2], [2, 6]], "uint32"), tol={"float32": [1e-5, 1e-5]})
op("ops::einsum", lambda s, xs: mx.einsum(s, *xs))
c("ops::einsum", "ij,jk->ik", [rn(2, 3), rn(3, 4)])
c("ops::einsum", "bii->bi", [rn(2, 3, 3)])
c("ops::einsum", "i,i", [rn(4), rn(4)])
c("ops::einsum", "...ij,...jk", [rn(2, 2, 3), rn(3, 2)])
c("ops::einsum", "ij,jk,kl->il", [rn(2, 3), rn(3, 4), rn(4, 2)])
c("ops::einsum", "ij->ji", [ri(0, 9, 2, 3)])
c("ops::einsum", "ij,jk->ik", [rn(2, 3), rn(2, 4)])

# ---------------------------------------------------------------- ops: conv

op("ops::conv1d", lambda x, w, s, p, d, g: mx.conv1d(x, w, s, p, d, g))
c("ops::conv1d", rn(2, 9, 4), rn(3, 3, 4), 1, 1, 1, 1)
c("ops::conv1d", rn(1, 10, 4), rn(4, 3, 2), 2, 0, 2, 2)
c("ops::conv1d", rn(1, 10, 4), rn(4, 3, 3), 1, 0, 1, 1)  # channel mismatch
op("ops::conv2d", lambda x, w, s, p, d, g: mx.conv2d(x, w, tuple(s), tuple(p), tuple(d), g))
c("ops::conv2d", rn(1, 6, 5, 3), rn(2, 3, 3, 3), [1, 1], [1, 0], [1, 1], 1, tol={"float32": [1e-5, 1e-5]})
c("ops::conv2d", rn(2, 7, 7, 4), rn(4, 2, 2, 2), [2, 1], [0, 1], [1, 2], 2, tol={"float32": [1e-5, 1e-5]})
op("ops::conv3d", lambda x, w, s, p, d, g: mx.conv3d(x, w, tuple(s), tuple(p), tuple(d), g))
c("ops::conv3d", rn(1, 4, 4, 4, 2), rn(2, 2, 2, 2, 2), [1, 1, 1], [0, 1, 0], [1, 1, 1], 1, tol={"float32": [1e-5, 1e-5]})
op("ops::conv_transpose1d", lambda x, w, s, p, d, op_, g: mx.conv_transpose1d(x, w, s, p, d, op_, g))
c("ops::conv_transpose1d", rn(1, 5, 3), rn(2, 3, 3), 2, 1, 1, 1, 1)
op("ops::conv_transpose2d", lambda x, w, s, p, d, op_, g: mx.conv_transpose2d(x, w, tuple(s), tuple(p), tuple(d), tuple(op_), g))
c("ops::conv_transpose2d", rn(1, 4, 3, 2), rn(3, 2, 2, 2), [2, 1], [0, 1], [1, 1], [1, 0], 1, tol={"float32": [1e-5, 1e-5]})
op("ops::conv_transpose3d", lambda x, w, s, p, d, op_, g: mx.conv_transpose3d(x, w, tuple(s), tuple(p), tuple(d), tuple(op_), g))
c("ops::conv_transpose3d", rn(1, 3, 3, 3, 2), rn(2, 2, 2, 2, 2), [1, 2, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0], 1, tol={"float32": [1e-5, 1e-5]})
op("ops::conv_general", lambda x, w, s, lo, hi, kd, idl, g, fl: mx.conv_general(x, w, s, (lo, hi), kd, idl, g, fl))
c("ops::conv_general", rn(1, 6, 6, 2), rn(3, 3, 2, 2), [1, 2], [1, 0], [0, 1], [1, 1], [1, 1], 1, False, tol={"float32": [1e-5, 1e-5]})
c("ops::conv_general", rn(1, 5, 2), rn(2, 3, 2), [1], [2], [2], [2], [2], 1, True, tol={"float32": [1e-5, 1e-5]})

# ---------------------------------------------------------------- ops: quantization

wq = rn(8, 64)
qw, qs, qb = mx.quantize(wq, 32, 4)
qw8, qs8, qb8 = mx.quantize(wq, 64, 8)
op("ops::quantize", lambda w, gs, b, m, g: list(mx.quantize(w, gs, b, m, global_scale=g)))
c("ops::quantize", wq, 32, 4, "affine", None)
c("ops::quantize", rn(4, 64, dtype="bfloat16"), 64, 8, "affine", None)
c("ops::quantize", rn(4, 64), None, None, "mxfp4", None)
c("ops::quantize", rn(4, 64), 32, 4, "bogus", None)
c("ops::quantize", rn(4, 30), 32, 4, "affine", None)
op("ops::dequantize", lambda w, s, b, gs, bits, m, g, dt: mx.dequantize(w, s, b, gs, bits, m, g, dt))
c("ops::dequantize", qw, qs, qb, 32, 4, "affine", None, None)
c("ops::dequantize", qw8, qs8, qb8, 64, 8, "affine", None, D("float16"))
op("ops::quantized_matmul", lambda x, w, s, b, t, gs, bits, m: mx.quantized_matmul(x, w, s, b, t, gs, bits, m))
c("ops::quantized_matmul", rn(3, 64), qw, qs, qb, True, 32, 4, "affine", tol={"float32": [1e-4, 1e-4]})
c("ops::quantized_matmul", rn(2, 8), qw8, qs8, qb8, False, 64, 8, "affine", tol={"float32": [1e-4, 1e-4]})
op("ops::gather_qmm", lambda x, w, s, b, l, r, t, gs, bits, m, g, so: mx.gather_qmm(x, w, s, b, l, r, t, gs, bits, m, g, sorted_indices=so))
qw3, qs3, qb3 = mx.quantize(rn(2, 8, 64), 32, 4)
c("ops::gather_qmm", rn(3, 1, 64), qw3, qs3, qb3, None, arr([1, 0, 1], "uint32"), True, 32, 4, "affine", None, False, tol={"float32": [1e-4, 1e-4]})
op("ops::to_fp8", lambda x: mx.to_fp8(x))
c("ops::to_fp8", rn(5))
c("ops::to_fp8", arr([0.0, 1.0, -448.0, 1e6], "bfloat16"))
op("ops::from_fp8", lambda x, dt: mx.from_fp8(x, dt))
c("ops::from_fp8", mx.to_fp8(rn(6)), D("float32"))
c("ops::from_fp8", ri(0, 255, 5, dtype="uint8"), D("bfloat16"))
c("ops::from_fp8", rn(3), D("float32"))
op("ops::qqmm", lambda x, w, s, gs, b, m, gx, gw: mx.qqmm(x, w, s, gs, b, m, gx, gw))
c("ops::qqmm", rn(2, 64), rn(8, 64), None, 16, 4, "nvfp4", None, None)
op("ops::gather_qqmm", lambda x, w, s, l, r, gs, b, m, gx, gw, so: mx.gather_qqmm(x, w, s, l, r, gs, b, m, gx, gw, sorted_indices=so))
c("ops::gather_qqmm", rn(2, 1, 64), rn(2, 8, 64), None, None, arr([0, 1], "uint32"), 16, 4, "nvfp4", None, None, False)

# ---------------------------------------------------------------- fft

op("fft::fft", lambda a, n, ax, nm: mx.fft.fft(a, n, ax, nm))
c("fft::fft", rn(3, 8), 8, -1, N("backward"))
c("fft::fft", cplx(5, 2), 4, 0, N("ortho"))
c("fft::fft", rn(6), 9, 0, N("forward"))
c("fft::fft", rn(6), 0, 0, N("backward"))
op("fft::ifft", lambda a, n, ax, nm: mx.fft.ifft(a, n, ax, nm))
c("fft::ifft", cplx(2, 6), 6, 1, N("backward"))
c("fft::ifft", rn(7), 7, 0, N("ortho"))
op("fft::fft2", lambda a, n, ax, nm: mx.fft.fft2(a, n, ax, nm))
c("fft::fft2", rn(4, 6), [4, 6], [0, 1], N("backward"))
c("fft::fft2", cplx(2, 3, 4), [3, 5], [-2, -1], N("ortho"))
op("fft::ifft2", lambda a, n, ax, nm: mx.fft.ifft2(a, n, ax, nm))
c("fft::ifft2", cplx(3, 4), [3, 4], [0, 1], N("forward"))
op("fft::fftn", lambda a, n, ax, nm: mx.fft.fftn(a, n, ax, nm))
c("fft::fftn", rn(2, 3, 4), [2, 3, 4], [0, 1, 2], N("backward"))
c("fft::fftn", rn(2, 3), [2], [0, 1], N("backward"))  # len mismatch
op("fft::fftn_axes", lambda a, ax, nm: mx.fft.fftn(a, axes=ax, norm=nm))
c("fft::fftn_axes", cplx(2, 3, 4), [0, 2], N("ortho"))
op("fft::ifftn", lambda a, n, ax, nm: mx.fft.ifftn(a, n, ax, nm))
c("fft::ifftn", cplx(2, 3, 4), [2, 4], [1, 2], N("backward"))
op("fft::ifftn_axes", lambda a, ax, nm: mx.fft.ifftn(a, axes=ax, norm=nm))
c("fft::ifftn_axes", cplx(3, 4), [1], N("backward"))
op("fft::rfft", lambda a, n, ax, nm: mx.fft.rfft(a, n, ax, nm))
c("fft::rfft", rn(3, 8), 8, -1, N("backward"))
c("fft::rfft", rn(7, 2), 6, 0, N("ortho"))
c("fft::rfft", rn(5, dtype="float16"), 5, 0, N("backward"))
op("fft::irfft", lambda a, n, ax, nm: mx.fft.irfft(a, n, ax, nm))
c("fft::irfft", cplx(2, 5), 8, -1, N("backward"))
c("fft::irfft", cplx(4, 2), 7, 0, N("forward"))
op("fft::rfft2", lambda a, n, ax, nm: mx.fft.rfft2(a, n, ax, nm))
c("fft::rfft2", rn(4, 6), [4, 6], [0, 1], N("backward"))
op("fft::irfft2", lambda a, n, ax, nm: mx.fft.irfft2(a, n, ax, nm))
c("fft::irfft2", cplx(4, 4), [4, 6], [0, 1], N("backward"))
op("fft::rfftn", lambda a, n, ax, nm: mx.fft.rfftn(a, n, ax, nm))
c("fft::rfftn", rn(2, 4, 6), [2, 4, 6], [0, 1, 2], N("ortho"))
op("fft::rfftn_axes", lambda a, ax, nm: mx.fft.rfftn(a, axes=ax, norm=nm))
c("fft::rfftn_axes", rn(3, 4, 5), [0, 2], N("backward"))
c("fft::rfftn_axes", cplx(3, 4), [0, 1], N("backward"))  # complex input: error
op("fft::irfftn", lambda a, n, ax, nm: mx.fft.irfftn(a, n, ax, nm))
c("fft::irfftn", cplx(2, 3, 4), [2, 3, 6], [0, 1, 2], N("backward"))
op("fft::irfftn_axes", lambda a, ax, nm: mx.fft.irfftn(a, axes=ax, norm=nm))
c("fft::irfftn_axes", cplx(3, 5), [0, 1], N("backward"))
op("fft::fftfreq", lambda n, d: mx.fft.fftfreq(n, d))
c("fft::fftfreq", 8, 0.5)
c("fft::fftfreq", 5, 1.0)
op("fft::rfftfreq", lambda n, d: mx.fft.rfftfreq(n, d))
c("fft::rfftfreq", 9, 0.1)
op("fft::fftshift", lambda a: mx.fft.fftshift(a))
c("fft::fftshift", rn(3, 4))
op("fft::fftshift_axes", lambda a, ax: mx.fft.fftshift(a, ax))
c("fft::fftshift_axes", ri(0, 9, 3, 5), [1])
op("fft::ifftshift", lambda a: mx.fft.ifftshift(a))
c("fft::ifftshift", rn(5))
op("fft::ifftshift_axes", lambda a, ax: mx.fft.ifftshift(a, ax))
c("fft::ifftshift_axes", rn(3, 4), [0, 1])
op("fft::stft", lambda x, nf, hop, wl, win, ctr, pm, nm, one: mx.fft.stft(x, nf, hop, wl, win, ctr, pm, nm, one))
c("fft::stft", rn(64), 16, 4, None, None, True, "reflect", N("backward"), None, tol={"complex64": [1e-4, 1e-5]})
c("fft::stft", rn(2, 40), 8, None, 6, mx.hanning(6), False, "constant", N("ortho"), False, tol={"complex64": [1e-4, 1e-5]})
op("fft::istft", lambda s, nf, hop, wl, win, ctr, nm, one, ln: mx.fft.istft(s, nf, hop, wl, win, ctr, nm, one, ln))
st = mx.fft.stft(rn(64), 16, 4)
c("fft::istft", st, 16, 4, None, None, True, N("backward"), None, None, tol={"float32": [1e-4, 1e-5]})
c("fft::istft", st, 16, 4, None, None, True, N("backward"), None, 60, tol={"float32": [1e-4, 1e-5]})

# ---------------------------------------------------------------- linalg (CPU)

LT = {"float32": [1e-4, 1e-5]}
op("linalg::norm", lambda a, o, ax, kd: mx.linalg.norm(a, o, ax, kd))
c("linalg::norm", rn(3, 4), 2.0, None, False)
c("linalg::norm", rn(3, 4), 1.0, [1], True)
c("linalg::norm", rn(3, 4), float("inf"), [0, 1], False)
c("linalg::norm", rn(2, 3, 4), 3.0, [2], False)
op("linalg::norm_matrix", lambda a, o, ax, kd: mx.linalg.norm(a, o, ax, kd))
c("linalg::norm_matrix", rn(3, 4), "fro", None, False)
c("linalg::norm_matrix", rn(2, 3, 3), "nuc", [1, 2], True, tol=LT)
c("linalg::norm_matrix", rn(3), "fro", [0], False)
op("linalg::norm_l2", lambda a, ax, kd: mx.linalg.norm(a, None, ax, kd))
c("linalg::norm_l2", rn(5), None, False)
c("linalg::norm_l2", rn(3, 4, dtype="float16"), [1], True)
op("linalg::qr", lambda a: list(mx.linalg.qr(a, stream=mx.cpu)), tol=LT)
c("linalg::qr", rn(4, 3))
c("linalg::qr", rn(2, 3, 3))
op("linalg::svd", lambda a, uv: (lambda r: list(r) if isinstance(r, (list, tuple)) else r)(mx.linalg.svd(a, uv, stream=mx.cpu)), tol=LT)
c("linalg::svd", rn(4, 3), True)
c("linalg::svd", rn(3, 5), False)
op("linalg::inv", lambda a: mx.linalg.inv(a, stream=mx.cpu), tol=LT)
c("linalg::inv", spd(3))
c("linalg::inv", spd(2, (2,)))
c("linalg::inv", rn(2, 3))
op("linalg::tri_inv", lambda a, up: mx.linalg.tri_inv(a, up, stream=mx.cpu), tol=LT)
c("linalg::tri_inv", mx.tril(spd(3)), False)
c("linalg::tri_inv", mx.triu(spd(3)), True)
op("linalg::cholesky", lambda a, up: mx.linalg.cholesky(a, up, stream=mx.cpu), tol=LT)
c("linalg::cholesky", spd(3), False)
c("linalg::cholesky", spd(4), True)
op("linalg::pinv", lambda a: mx.linalg.pinv(a, stream=mx.cpu), tol=LT)
c("linalg::pinv", rn(4, 3))
op("linalg::cholesky_inv", lambda a, up: mx.linalg.cholesky_inv(a, up, stream=mx.cpu), tol=LT)
c("linalg::cholesky_inv", mx.linalg.cholesky(spd(3), stream=mx.cpu), False)
op("linalg::lu", lambda a: list(mx.linalg.lu(a, stream=mx.cpu)), tol=LT)
c("linalg::lu", rn(4, 4))
op("linalg::lu_factor", lambda a: list(mx.linalg.lu_factor(a, stream=mx.cpu)), tol=LT)
c("linalg::lu_factor", rn(3, 3))
op("linalg::solve", lambda a, b: mx.linalg.solve(a, b, stream=mx.cpu), tol=LT)
c("linalg::solve", spd(3), rn(3))
c("linalg::solve", spd(3), rn(3, 2))
c("linalg::solve", rn(3, 4), rn(3))
op("linalg::solve_triangular", lambda a, b, up: mx.linalg.solve_triangular(a, b, upper=up, stream=mx.cpu), tol=LT)
c("linalg::solve_triangular", mx.tril(spd(3)), rn(3), False)
c("linalg::solve_triangular", mx.triu(spd(3)), rn(3, 2), True)
op("linalg::cross", lambda a, b, ax: mx.linalg.cross(a, b, ax))
c("linalg::cross", rn(4, 3), rn(4, 3), -1)
c("linalg::cross", rn(3, 2), rn(3, 1), 0)
c("linalg::cross", rn(4), rn(4), 0)
op("linalg::eig", lambda a: list(mx.linalg.eig(a, stream=mx.cpu)), tol={"complex64": [1e-4, 1e-5]})
c("linalg::eig", rn(3, 3))
op("linalg::eigvals", lambda a: mx.linalg.eigvals(a, stream=mx.cpu), tol={"complex64": [1e-4, 1e-5]})
c("linalg::eigvals", rn(4, 4))
op("linalg::eigvalsh", lambda a, up: mx.linalg.eigvalsh(a, up, stream=mx.cpu), tol=LT)
c("linalg::eigvalsh", spd(3), "L")
c("linalg::eigvalsh", spd(3), "U")
op("linalg::eigh", lambda a, up: list(mx.linalg.eigh(a, up, stream=mx.cpu)), tol=LT)
c("linalg::eigh", spd(3), "L")
c("linalg::eigh", spd(3), "X")
op("linalg::det", lambda a: mx.linalg.det(a, stream=mx.cpu), tol=LT)
c("linalg::det", rn(3, 3))
c("linalg::det", rn(2, 2, 2))
op("linalg::slogdet", lambda a: list(mx.linalg.slogdet(a, stream=mx.cpu)), tol=LT)
c("linalg::slogdet", rn(3, 3))

# ---------------------------------------------------------------- random (explicit keys)

K = mx.random.key
op("random::key", lambda s: K(s))
c("random::key", 0)
c("random::key", 2**40 + 7)
op("random::seed", lambda s: mx.random.seed(s))
c("random::seed", 42)
op("random::bits", lambda sh, w, k: mx.zeros(sh, {1: mx.uint8, 2: mx.uint16, 4: mx.uint32}[w]), check="meta", ref="no python equivalent: dtype and shape only")
c("random::bits", [3, 2], 4, K(1))
c("random::bits", [5], 1, K(2))
op("random::split", lambda k: [mx.random.split(k)[0], mx.random.split(k)[1]])
c("random::split", K(3))
op("random::split_num", lambda k, n: mx.random.split(k, n))
c("random::split_num", K(4), 3)
op("random::uniform", lambda lo, hi, sh, dt, k: mx.random.uniform(lo, hi, sh, dt, k))
c("random::uniform", arr(0.0), arr(1.0), [3, 4], D("float32"), K(5))
c("random::uniform", arr([-1.0, 0.0, 5.0]), arr(10.0), [2, 3], D("bfloat16"), K(6))
c("random::uniform", arr(0.0), arr(1.0), [3], D("int32"), K(6))
op("random::normal", lambda sh, dt, loc, sc, k: mx.random.normal(sh, dt, loc, sc, k))
c("random::normal", [3, 4], D("float32"), 0.0, 1.0, K(7))
c("random::normal", [5], D("float16"), 2.0, 0.5, K(8))
op("random::normal_broadcast", lambda sh, dt, loc, sc, k: mx.random.normal(sh, dt, loc, sc, k))
c("random::normal_broadcast", [2, 3], D("float32"), rn(3), arr(2.0), K(9))
c("random::normal_broadcast", [4], D("float32"), None, None, K(10))
op("random::multivariate_normal", lambda m, cv, sh, dt, k: mx.random.multivariate_normal(m, cv, sh, dt, k, stream=mx.cpu), tol={"float32": [1e-4, 1e-5]})
c("random::multivariate_normal", rn(3), spd(3), [4], D("float32"), K(11))
op("random::randint", lambda lo, hi, sh, dt, k: mx.random.randint(lo, hi, sh, dt, k))
c("random::randint", arr(0), arr(10), [3, 4], D("int32"), K(12))
c("random::randint", arr([0, 100]), arr([5, 200]), [3, 2], D("int16"), K(13))
op("random::bernoulli", lambda p, sh, k: mx.random.bernoulli(p, sh, k))
c("random::bernoulli", arr(0.3), [4, 4], K(14))
c("random::bernoulli", ru(0, 1, 3), [2, 3], K(15))
op("random::truncated_normal", lambda lo, hi, sh, dt, k: mx.random.truncated_normal(lo, hi, sh, dt, k))
c("random::truncated_normal", arr(-1.0), arr(1.0), [3, 3], D("float32"), K(16))
op("random::gumbel", lambda sh, dt, k: mx.random.gumbel(sh, dt, k))
c("random::gumbel", [2, 5], D("float32"), K(17))
op("random::categorical_shape", lambda lg, ax, sh, k: mx.random.categorical(lg, ax, shape=sh, key=k))
c("random::categorical_shape", rn(2, 5), -1, [3, 2], K(18))
op("random::categorical_num_samples", lambda lg, ax, n, k: mx.random.categorical(lg, ax, num_samples=n, key=k))
c("random::categorical_num_samples", rn(3, 4), 1, 5, K(19))
op("random::categorical", lambda lg, ax, k: mx.random.categorical(lg, ax, key=k))
c("random::categorical", rn(6, 3), 0, K(20))
op("random::laplace", lambda sh, dt, loc, sc, k: mx.random.laplace(sh, dt, loc, sc, k))
c("random::laplace", [3, 3], D("float32"), 0.5, 2.0, K(21))
op("random::permutation", lambda x, ax, k: mx.random.permutation(x, ax, k))
c("random::permutation", ri(0, 99, 6, 2), 0, K(22))
c("random::permutation", rn(3, 5), 1, K(23))
op("random::permutation_arange", lambda n, k: mx.random.permutation(n, key=k))
c("random::permutation_arange", 8, K(24))

# ---------------------------------------------------------------- fast

op("fast::rms_norm", lambda x, w, eps: mx.fast.rms_norm(x, w, eps))
c("fast::rms_norm", rn(3, 8), rn(8), 1e-5)
c("fast::rms_norm", rn(2, 8, dtype="float16"), None, 1e-6)
op("fast::layer_norm", lambda x, w, b, eps: mx.fast.layer_norm(x, w, b, eps))
c("fast::layer_norm", rn(3, 8), rn(8), rn(8), 1e-5)
c("fast::layer_norm", rn(2, 8), None, None, 1e-5)
op("fast::cross_entropy", lambda lg, t: mx.fast.cross_entropy(lg, t))
c("fast::cross_entropy", rn(4, 6), ri(0, 6, 4))
op("fast::rope", lambda x, d, tr, b, sc, off, fr: mx.fast.rope(x, d, traditional=tr, base=b, scale=sc, offset=off, freqs=fr))
c("fast::rope", rn(1, 2, 4, 8), 8, False, 10000.0, 1.0, 3, None)
c("fast::rope", rn(1, 2, 4, 8), 6, True, 500.0, 0.5, 0, None)
op("fast::rope_dynamic", lambda x, d, tr, b, sc, off, fr: mx.fast.rope(x, d, traditional=tr, base=b, scale=sc, offset=off, freqs=fr))
c("fast::rope_dynamic", rn(1, 2, 4, 8), 8, False, 10000.0, 1.0, arr(5), None)
op("fast::gated_delta_update", lambda q, k, v, g, b, s, m: list(mx.fast.gated_delta_update(q, k, v, g, b, s, m)))
c("fast::gated_delta_update", rn(1, 3, 2, 4), rn(1, 3, 2, 4), rn(1, 3, 2, 4), ru(0.5, 1, 1, 3, 2), ru(0, 1, 1, 3, 2), None, None, tol={"float32": [1e-4, 1e-5]})
op("fast::scaled_dot_product_attention_full", lambda q, k, v, sc, mm, m, sk: mx.fast.scaled_dot_product_attention(q, k, v, scale=sc, mask=(m if mm == "array" else (mm or None)), sinks=sk))
c("fast::scaled_dot_product_attention_full", rn(1, 2, 3, 8), rn(1, 2, 5, 8), rn(1, 2, 5, 8), 0.35, "", None, None)
c("fast::scaled_dot_product_attention_full", rn(1, 4, 3, 8), rn(1, 2, 3, 8), rn(1, 2, 3, 8), 0.35, "causal", None, None)
c("fast::scaled_dot_product_attention_full", rn(1, 2, 2, 8), rn(1, 2, 4, 8), rn(1, 2, 4, 8), 0.35, "array", rb(2, 4), rn(2))


# ------------------------------------------------------------------ GGUF

GGUF_OUT = os.path.join(ROOT, "crates", "mlxrs-core", "tests", "data", "gguf")


def gguf_bytes(kvs, tensors, align=32):
    """A GGUF v3 file: `kvs` [(key, type, packed value)], `tensors`
    [(name, ggml dims, ggml type, data bytes)]; data aligned to `align`."""
    import struct

    def gstr(b):
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k.encode()) + struct.pack("<I", t) + v
    off, blobs = 0, b""
    for name, dims, t, data in tensors:
        pad = (align - off % align) % align
        off += pad
        blobs += b"\0" * pad
        out += gstr(name.encode()) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, off)
        blobs += data
        off += len(data)
    out += b"\0" * ((align - len(out) % align) % align)
    return out + blobs


def quant_blocks(n_blocks, size, f16_at):
    """Random quant blocks with sane float16 scales at byte offsets `f16_at`."""
    b = bytearray(rng.integers(0, 256, n_blocks * size, dtype=np.uint8).tobytes())
    for i in range(n_blocks):
        for at in f16_at:
            v = np.float16(rng.uniform(0.01, 0.1)).tobytes()
            b[i * size + at:i * size + at + 2] = v
    return bytes(b)


def make_gguf_refs():
    """`mlx_saved.gguf` (mx.save_gguf), `crafted.gguf` (hand-packed: the
    quantized / converted tensor types MLX loads, 64-byte alignment), and
    Python's `mx.load` of both in `expected.safetensors` (tensors as
    `<file>/<name>`, array metadata as `<file>/meta/<key>`) plus
    `expected.json` (string metadata)."""
    import struct

    os.makedirs(GGUF_OUT, exist_ok=True)
    saved = os.path.join(GGUF_OUT, "mlx_saved.gguf")
    arrays = {
        "tok_embd.weight": rn(3, 4),
        "blk.0.norm": rn(4, dtype="float16"),
        "i8": ri(-100, 100, 3, dtype="int8"),
        "i16": ri(-999, 999, 2, 2, dtype="int16"),
        "i32": ri(-99999, 99999, 5, dtype="int32"),
        "scalar": arr(2.5),
    }
    meta = {
        "general.name": "tiny",
        "tokenizer.ggml.tokens": ["<s>", "a", "bb", ""],
        "llama.block_count": mx.array(3, dtype=mx.uint32),
        "llama.rope.freq_base": mx.array(10000.0),
        "ids": mx.array([1, -2, 3], dtype=mx.int64),
        "flags": mx.array([True, False, True]),
        "u8s": mx.array([0, 255], dtype=mx.uint8),
    }
    mx.save_gguf(saved, arrays, meta)
    f16 = lambda *v: struct.pack(f"<{len(v)}e", *v)  # noqa: E731
    crafted = gguf_bytes(
        [("general.alignment", 4, struct.pack("<I", 64)),
         ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
         ("answer", 5, struct.pack("<i", -42)),
         ("scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.5, -1.0, 2.0))],
        [("q4_0.weight", [64, 2], 2, quant_blocks(4, 18, [0])),
         ("q4_1.weight", [32, 3], 3, quant_blocks(3, 20, [0, 2])),
         ("q8_0.weight", [32, 2], 8, quant_blocks(2, 34, [0])),
         ("q4_k.weight", [256], 12, quant_blocks(1, 144, [0, 2])),
         ("q6_k.weight", [256, 2], 14, quant_blocks(2, 210, [208])),
         ("q2_k.weight", [256], 10, quant_blocks(1, 82, [80, 82 - 4])),
         ("bf16", [3, 2], 30, np.array([1.0, -2.5, 0.5, 3.0, 0.0, -1.0], np.float32).view(np.uint32).__rshift__(16).astype(np.uint16).tobytes()),
         ("f32", [2, 2], 0, struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)),
         ("f16", [3], 1, f16(0.5, -1.5, 2.0)),
         ("i32", [2], 26, struct.pack("<2i", 7, -7)),
         ("empty", [0], 0, b"")],
        align=64,
    )
    with open(os.path.join(GGUF_OUT, "crafted.gguf"), "wb") as f:
        f.write(crafted)
    expected, strings = {}, {}
    for stem in ("mlx_saved", "crafted"):
        ts, md = mx.load(os.path.join(GGUF_OUT, f"{stem}.gguf"), return_metadata=True)
        for k, v in ts.items():
            expected[f"{stem}/{k}"] = v
        for k, v in md.items():
            if isinstance(v, mx.array):
                expected[f"{stem}/meta/{k}"] = v
            else:
                strings[f"{stem}/{k}"] = v
    mx.save_safetensors(os.path.join(GGUF_OUT, "expected.safetensors"), expected, {"generator": "scripts/make_op_refs.py"})
    with open(os.path.join(GGUF_OUT, "expected.json"), "w") as f:
        json.dump({"mlx_version": mx.__version__, "strings": strings}, f, indent=1, sort_keys=True)
        f.write("\n")


def make_fuzz_seeds():
    """Small valid inputs for the fuzz targets (fuzz/seeds/)."""
    import shutil

    d = os.path.join(ROOT, "fuzz", "seeds")
    os.makedirs(os.path.join(d, "safetensors"), exist_ok=True)
    os.makedirs(os.path.join(d, "gguf"), exist_ok=True)
    mx.save_safetensors(os.path.join(d, "safetensors", "mixed.safetensors"),
                        {"a": rn(2, 3), "b": ri(0, 9, 4, dtype="int64"), "c": rn(3, dtype="bfloat16"),
                         "d": rb(2), "e": cplx(2), "s": arr(1.5)},
                        {"format": "mlx"})
    mx.save_safetensors(os.path.join(d, "safetensors", "no_meta.safetensors"),
                        {"x": ri(0, 255, 5, dtype="uint8"), "empty": mx.zeros((0, 2))})
    for stem in ("mlx_saved", "crafted"):
        shutil.copy(os.path.join(GGUF_OUT, f"{stem}.gguf"), os.path.join(d, "gguf", f"{stem}.gguf"))


# ------------------------------------------------------------------ run

def main():
    os.makedirs(OUT, exist_ok=True)
    tensors: dict[str, dict[str, mx.array]] = {}
    manifest = []
    counts: dict[str, int] = {}

    def put(module, a):
        a = mx.array(a)
        mx.eval(a)
        raw = np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()
        h = hashlib.sha1(raw + str((a.shape, a.dtype)).encode()).hexdigest()[:10]
        name = f"i{h}"
        tensors.setdefault(module, {})[name] = a
        return name

    def enc(module, v):
        if isinstance(v, mx.array):
            return {"t": put(module, v)}
        if isinstance(v, D):
            return {"dtype": str(v)}
        if isinstance(v, N):
            return {"norm": str(v)}
        if isinstance(v, list) and v and all(isinstance(x, mx.array) for x in v):
            return {"tl": [put(module, x) for x in v]}
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return {"f": str(v)}
        return v

    for case in CASES:
        module = case.op.split("::")[0]
        n = counts.get(case.op, 0)
        counts[case.op] = n + 1
        cid = f"{case.op.replace('::', '.')}.{n}"
        entry = {"id": cid, "op": case.op, "args": [enc(module, a) for a in case.args]}
        for k in ("tol", "check", "ref"):
            if k in case.opts:
                entry[k] = case.opts[k]
        pyargs = [py_value(a) for a in case.args]
        if "error" in case.opts:
            # An MLX check of an op Python does not expose (numpy reference).
            entry["error"] = case.opts["error"]
            manifest.append(entry)
            continue
        try:
            res = case.py(*pyargs)
            if res is None:
                outs = []
            elif isinstance(res, (list, tuple)):
                outs = list(res)
            else:
                outs = [res]
            mx.eval(outs)
            names = []
            for k, o in enumerate(outs):
                nm = f"c{len(manifest)}_o{k}"
                tensors.setdefault(module, {})[nm] = o
                names.append(nm)
            entry["out"] = names
        except Exception as e:  # noqa: BLE001 - recorded as an expected error
            entry["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        manifest.append(entry)

    total = 0
    for module, ts in tensors.items():
        path = os.path.join(OUT, f"{module}.safetensors")
        mx.save_safetensors(path, ts)
        total += os.path.getsize(path)
    doc = {
        "generator": "scripts/make_op_refs.py",
        "mlx_version": mx.__version__,
        "tolerances": TOL,
        "modules": sorted(tensors),
        "cases": manifest,
    }
    mpath = os.path.join(OUT, "manifest.json")
    with open(mpath, "w") as f:
        json.dump(doc, f, indent=0, separators=(",", ":"))
        f.write("\n")
    total += os.path.getsize(mpath)
    errs = sum("error" in m for m in manifest)
    print(f"{len(manifest)} cases ({errs} expected errors) over {len(counts)} ops; "
          f"{total / 1024:.0f} KiB in {OUT}", file=sys.stderr)
    make_gguf_refs()
    make_fuzz_seeds()
    make_index_refs()
    print(f"GGUF references in {GGUF_OUT}; fuzz seeds in fuzz/seeds/", file=sys.stderr)


# ------------------------------------------------------------------ indexing

IDX_OUT = os.path.join(OUT, "index")


def make_index_refs():
    """Python `a[idx]` / `a[idx] = v` / `mx.pad(pad_width=[(lo, hi), ...])`
    references for crates/mlxrs-core/tests/indexing.rs, in op_refs/index/.

    An index is a list of items: {"int": k}, {"slice": [start, stop, step]}
    (null = omitted), "none", "...", {"arr": tensor name}. A case is
    {"kind": "get" | "put" | "pad", "src": name, "index": [...], "value": name,
    "out": name} or "error" (Python's message) instead of "out"; a case with
    "ref" was not computed by python mlx (which does not check integer
    bounds and reads out of bounds) and says what gives the expectation.
    Uses its own seeded generator, so the other references do not change.
    """
    g = np.random.default_rng(7)
    tensors, cases = {}, []

    def t(x):
        name = f"t{len(tensors)}"
        tensors[name] = x
        return name

    def fa(*shape):
        return mx.array((np.round(g.standard_normal(shape) * 64) / 64).astype(np.float32))

    def ia(lo, hi, *shape, dtype=np.int32):
        return mx.array(g.integers(lo, hi, shape).astype(dtype))

    def enc(item):
        if isinstance(item, int):
            return {"int": item}
        if isinstance(item, slice):
            return {"slice": [item.start, item.stop, item.step]}
        if item is None:
            return "none"
        if item is Ellipsis:
            return "..."
        return {"arr": t(item)}

    def run(case, fn):
        try:
            out = fn()
            mx.eval(out)
            case["out"] = t(out)
        except Exception as e:  # noqa: BLE001 - the message is the reference
            case["error"] = str(e).splitlines()[0][:200] or type(e).__name__
        cases.append(case)

    def get(src, idx, **kw):
        idx = idx if isinstance(idx, tuple) else (idx,)
        case = {"kind": "get", "src": t(src), "index": [enc(i) for i in idx], **kw}
        run(case, lambda: src[idx])

    def put(src, idx, value, **kw):
        idx = idx if isinstance(idx, tuple) else (idx,)
        case = {"kind": "put", "src": t(src), "index": [enc(i) for i in idx],
                "value": t(value), **kw}

        def f():
            b = mx.array(src)
            b[idx] = value
            return b
        run(case, f)

    def pad(src, pairs, value, mode):
        case = {"kind": "pad", "src": t(src), "pairs": pairs, "pad_value": value, "mode": mode}
        run(case, lambda: mx.pad(src, pad_width=pairs, mode=mode, constant_values=value))

    A = fa(2, 3, 4, 5)
    B = ia(-50, 50, 5, 6)
    C = fa(4, 3, 2)
    i3 = mx.array([0, 2, -1], dtype=mx.int32)
    j2 = mx.array([[1, 0], [2, 1]], dtype=mx.int32)
    E = mx.arange(6).reshape(2, 3)
    # ---- __getitem__
    get(A, 1)
    get(A, -1)
    get(A, slice(1, 3))
    get(B, slice(None, None, -1))
    get(A, (Ellipsis, slice(1, 3), None, slice(None, None, 2), -1))
    get(A, (None, 0, Ellipsis, -2))
    get(B, slice(-100, 100))                              # clamps
    get(B, (slice(5, -10, -1), slice(100, 2, -2)))        # clamps, negative steps
    get(B, (slice(None), slice(None, None, -2)))
    get(A, (slice(None), slice(None, None, -2), 1))
    get(A, Ellipsis)
    get(A, ())
    get(B, slice(3, 1))                                   # empty
    get(B, (slice(-2, None), slice(None, -4, 3)))
    get(A, (0, 0, 0, 0))
    get(C, i3)
    get(C, (slice(None), i3[:2], slice(0, 1)))
    get(C, (i3, slice(None), mx.array([1, 0, 1], dtype=mx.int32)))   # arrays split: gathered axes first
    get(B, (j2, mx.array([5, 0], dtype=mx.int32)))        # broadcast array indices
    get(C, (1, slice(None), mx.array([1, 0], dtype=mx.uint32)))
    get(C, (None, i3, None))
    get(C, (i3, slice(None, None, -1)))
    get(C, (slice(None, None, 2), j2))
    get(A, (Ellipsis, mx.array([4, 0], dtype=mx.int64)))
    get(C, (i3, 1, None, 0))
    get(A, (0, 0, 0, 0, 0))                               # too many
    get(A, (Ellipsis, 0, Ellipsis))                       # two ellipses
    get(C, mx.array([True, False, True, False]))          # bool index
    get(mx.array(3.0), 0)                                 # 0-d
    cases.append({"kind": "get", "src": t(B), "index": [{"int": 5}],
                  "error": "index 5 is out of bounds for axis 0 with size 5",
                  "ref": "numpy IndexError (python mlx reads out of bounds)"})
    cases.append({"kind": "get", "src": t(A), "index": [{"int": 0}, {"int": -4}],
                  "error": "index -4 is out of bounds for axis 1 with size 3",
                  "ref": "numpy IndexError (python mlx reads out of bounds)"})
    # ---- __setitem__
    put(B, 1, mx.array(7, dtype=mx.int32))
    put(A, slice(0, 1), fa(3, 4, 5))
    put(B, slice(None, None, -1), mx.arange(6, dtype=mx.int32))
    put(A, (Ellipsis, -1), fa(4))
    put(A, (None, 0), fa(1, 1, 3, 4, 5))                  # leading ones ignored
    put(A, (slice(None), slice(None, None, 2), 1), fa(2, 2, 5))
    put(B, (slice(5, None, -2), slice(-3, None)), ia(-9, 9, 3, 3))
    put(B, slice(-100, 100), mx.array(1, dtype=mx.int32))  # clamps
    put(B, slice(3, 1), mx.array(1, dtype=mx.int32))      # empty
    put(B, (slice(1, 3), 2), mx.array(2.75))              # float into int: cast
    put(C, i3, fa(3, 2))
    put(C, (i3, slice(None), mx.array([1, 0, 1], dtype=mx.int32)), fa(3, 3))
    put(C, (slice(None), mx.array([2, 0], dtype=mx.int32)), fa(4, 2, 2))
    put(C, (slice(1, 3), mx.array([1], dtype=mx.int32)), fa(2))
    put(C, (slice(None, None, 2), mx.array([0, 2], dtype=mx.int32), 1), fa(2, 2))
    put(C, (1, mx.array([0, 2], dtype=mx.int32)), fa(2, 2))
    put(C, (None, mx.array([3, 0], dtype=mx.int32)), fa(2, 3, 2))
    # No repeated indices in scatters: which write wins is unspecified (GPU).
    put(B, mx.array([[1, 0], [4, 3]], dtype=mx.int32), ia(-9, 9, 2, 2, 6))
    put(B, (slice(0, 2), slice(0, 2)), fa(3, 3))          # shape mismatch
    put(A, (0, 0, 0, 0, 0), mx.array(1.0))                # too many
    put(E, (slice(None), -1), mx.array([10, 20]))
    # ---- pad with (lo, hi) pairs
    pad(fa(2, 3), [(1, 2), (0, 1)], 0.5, "constant")
    pad(ia(0, 9, 3, 2), [(2, 0), (1, 3)], 0, "edge")
    pad(fa(2, 2, 2), [(1, 1)], -1.0, "constant")
    pad(fa(3, 4), [(0, 0), (2, 2)], 0.0, "edge")

    os.makedirs(IDX_OUT, exist_ok=True)
    mx.save_safetensors(os.path.join(IDX_OUT, "index.safetensors"), tensors)
    with open(os.path.join(IDX_OUT, "cases.json"), "w") as f:
        json.dump({"generator": "scripts/make_op_refs.py (make_index_refs)",
                   "mlx_version": mx.__version__, "cases": cases}, f, indent=0)
        f.write("\n")
    errs = sum("error" in c for c in cases)
    print(f"{len(cases)} indexing/pad cases ({errs} expected errors) in {IDX_OUT}", file=sys.stderr)


IO_OUT = os.path.join(OUT, "io")


def make_io_refs():
    """Python `mx.save_safetensors` / `mx.save` into file objects
    (`io.BytesIO`), the bytes written as `one.safetensors` (one tensor and
    metadata), `multi.safetensors` (several dtypes, no metadata) and
    `a.npy`, plus `expected.json`: the arrays as python reads them back with
    `mx.load(file_object)`, for the Rust stream loaders / savers."""
    import io

    os.makedirs(IO_OUT, exist_ok=True)
    mx.random.seed(7)
    one = {"w": mx.random.normal((3, 4))}
    meta = {"format": "mlx", "note": "written to a BytesIO"}
    multi = {
        "f32": mx.random.normal((2, 3)),
        "f16": mx.random.normal((5,)).astype(mx.float16),
        "i32": mx.arange(-3, 9, dtype=mx.int32).reshape(3, 4),
        "u8": mx.array([0, 7, 255], dtype=mx.uint8),
    }
    npy = mx.random.uniform(shape=(2, 2, 3))
    files = {}
    b = io.BytesIO()
    mx.save_safetensors(b, one, metadata=meta)
    files["one.safetensors"] = b.getvalue()
    b = io.BytesIO()
    mx.save_safetensors(b, multi)
    files["multi.safetensors"] = b.getvalue()
    b = io.BytesIO()
    mx.save(b, npy)
    files["a.npy"] = b.getvalue()
    for name, data in files.items():
        with open(os.path.join(IO_OUT, name), "wb") as f:
            f.write(data)

    def enc(a):
        return {"dtype": str(a.dtype).split(".")[-1], "shape": list(a.shape),
                "values": np.array(a.astype(mx.float32)).reshape(-1).tolist()}

    got_one, got_meta = mx.load(io.BytesIO(files["one.safetensors"]), format="safetensors",
                                return_metadata=True)
    got_multi = mx.load(io.BytesIO(files["multi.safetensors"]), format="safetensors")
    got_npy = mx.load(io.BytesIO(files["a.npy"]), format="npy")
    exp = {
        "one": {k: enc(v) for k, v in got_one.items()},
        "one_metadata": got_meta,
        "multi": {k: enc(v) for k, v in got_multi.items()},
        "npy": enc(got_npy),
    }
    with open(os.path.join(IO_OUT, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1)
        f.write("\n")
    print(f"io stream refs in {IO_OUT}", file=sys.stderr)


EXPORT_OUT = os.path.join(OUT, "export")


def make_export_refs():
    """A function of positional and keyword arrays exported by python,
    `kw.mlxfn` = `mx.export_function(f, x, y=y, z=z)` with
    `f(x, y, z) = [x * y + sin(z), sum(x - z, axis=1)]`, and in
    `kw_io.safetensors` the example inputs, a second set of inputs
    (`x2`, `y2`, `z2`) and python's outputs of the imported function on
    both (`out{0,1}`, `out{0,1}_2`), for the Rust kwargs export tests."""
    os.makedirs(EXPORT_OUT, exist_ok=True)
    mx.random.seed(11)

    def f(x, y, z):
        return [x * y + mx.sin(z), mx.sum(x - z, axis=1)]

    x, y, z = mx.random.normal((2, 3)), mx.random.normal((2, 3)), mx.random.normal((2, 3))
    x2, y2, z2 = mx.random.normal((2, 3)), mx.random.normal((2, 3)), mx.random.normal((2, 3))
    path = os.path.join(EXPORT_OUT, "kw.mlxfn")
    mx.export_function(path, f, x, y=y, z=z)
    g = mx.import_function(path)
    o = g(x, y=y, z=z)
    o2 = g(x2, y=y2, z=z2)
    mx.save_safetensors(os.path.join(EXPORT_OUT, "kw_io.safetensors"), {
        "x": x, "y": y, "z": z, "x2": x2, "y2": y2, "z2": z2,
        "out0": o[0], "out1": o[1], "out0_2": o2[0], "out1_2": o2[1],
    })

    # Export callback: the events python's callback receives for
    # g(x, *, y) = [exp(x) * y + 2.0, sum(x, axis=1), astype(x, int32)],
    # traced at x, y of shape (2, 3), as JSON (tuples as lists, dtypes as
    # {"dtype": name}, arrays as {"array": values, "dtype": name}).
    def g(x, y):
        return [mx.exp(x) * y + 2.0, mx.sum(x, axis=1), x.astype(mx.int32)]

    def enc(v):
        if isinstance(v, mx.Dtype):
            return {"dtype": str(v).split(".")[-1]}
        if isinstance(v, mx.array):
            return {"array": np.array(v).reshape(-1).tolist(), "dtype": str(v.dtype).split(".")[-1]}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        return v

    events = []
    mx.export_function(lambda d: events.append({k: enc(v) for k, v in d.items()}), g,
                       mx.ones((2, 3)), y=mx.ones((2, 3)))
    with open(os.path.join(EXPORT_OUT, "callback_events.json"), "w") as f:
        json.dump(events, f, indent=1)
        f.write("\n")
    print(f"export kwargs refs in {EXPORT_OUT}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:] == ["--only", "index"]:
        make_index_refs()
    elif sys.argv[1:] == ["--only", "io"]:
        make_io_refs()
    elif sys.argv[1:] == ["--only", "export"]:
        make_export_refs()
    else:
        main()
