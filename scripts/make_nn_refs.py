#!/usr/bin/env python3
"""References for the mlxrs-nn tests, made with Python `mlx.nn` / mlx-lm.

Writes into crates/mlxrs-nn/tests/data/:

- nn_refs.safetensors: inputs, weights and outputs of layers (Linear,
  quantized Linear/Embedding, nn.quantize, norms, convolutions, dropout with a
  fixed key, MultiHeadAttention, sinusoidal encoding, pooling, upsampling,
  activations, mlx-lm RoPE families, quantized SDPA over a QuantizedKVCache,
  ChunkedKVCache), losses, optimizer steps on fixed gradients, schedules,
  clip_grad_norm, LoRA / DoRA, and the init weights + data of a tiny MLP.
- nn_refs.json: scalars, configs, and the MLP's loss curves.
- prompt_cache_{llama,llama_rotating,qwen3_q8}.safetensors + prompt_cache.json:
  mlx-lm `save_prompt_cache` files for the tiny fixtures in models/tiny after a
  prompt, with the greedy continuation mlx-lm produces from that cache.

Deterministic (explicit random keys). Run with the project venv:

    .venv/bin/python scripts/make_nn_refs.py
"""

import json
import math
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "mlxrs-nn" / "tests" / "data"

A = {}  # name -> array
J = {}  # json


def key(i):
    return mx.random.key(i)


def rnd(shape, i, scale=1.0):
    return mx.random.normal(shape, key=key(i)) * scale


def put(name, a):
    if name in A:
        raise ValueError(f"duplicate {name}")
    A[name] = a


def put_params(prefix, module):
    for k, v in tree_flatten(module.parameters()):
        put(f"{prefix}.{k}", v)


# ------------------------------------------------------------------ layers
def layers():
    # Linear
    lin = nn.Linear(8, 16)
    lin.update({"weight": rnd((16, 8), 1), "bias": rnd((16,), 2)})
    x = rnd((2, 3, 8), 3)
    put_params("linear", lin)
    put("linear.x", x)
    put("linear.y", lin(x))

    # Quantized Linear (affine 4-bit g32, 8-bit g64) and mxfp4
    lin = nn.Linear(64, 32)
    lin.update({"weight": rnd((32, 64), 4, 0.1), "bias": rnd((32,), 5)})
    x = rnd((2, 64), 6)
    put_params("qlinear", lin)
    put("qlinear.x", x)
    for gs, bits, mode in [(32, 4, "affine"), (64, 8, "affine"), (32, 4, "mxfp4")]:
        q = nn.QuantizedLinear.from_linear(lin, gs, bits, mode=mode)
        tag = f"{mode}_{gs}_{bits}"
        put(f"qlinear.{tag}.y", q(x))
        put(f"qlinear.{tag}.weight", q.weight)
        put(f"qlinear.{tag}.scales", q.scales)

    # Embedding, quantized embedding
    emb = nn.Embedding(20, 64)
    emb.update({"weight": rnd((20, 64), 7)})
    ids = mx.array([[1, 5, 19, 0, 7], [3, 3, 12, 18, 2]], dtype=mx.int32)
    h = rnd((2, 64), 8)
    put_params("embedding", emb)
    put("embedding.ids", ids)
    put("embedding.y", emb(ids))
    put("embedding.h", h)
    put("embedding.as_linear", emb.as_linear(h))
    qe = nn.QuantizedEmbedding.from_embedding(emb, 32, 4)
    put("qembedding.y", qe(ids))
    put("qembedding.as_linear", qe.as_linear(h))

    # nn.quantize over a small model; the head (in 48) is skipped by the
    # predicate (48 % 32 != 0), as mlxrs's default predicate does.
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 64)
            self.layers = [nn.Linear(64, 64), nn.Linear(64, 48)]
            self.head = nn.Linear(48, 10)

        def __call__(self, ids):
            h = self.embed(ids)
            for l in self.layers:
                h = nn.gelu(l(h))
            return self.head(h)

    m = Small()
    ps = {k: rnd(v.shape, 100 + i, 0.2) for i, (k, v) in enumerate(tree_flatten(m.parameters()))}
    from mlx.utils import tree_unflatten

    m.update(tree_unflatten(list(ps.items())))
    put_params("small", m)
    put("small.y_dense", m(ids))
    nn.quantize(
        m,
        32,
        4,
        class_predicate=lambda p, mod: hasattr(mod, "to_quantized") and mod.weight.shape[-1] % 32 == 0,
    )
    put("small.y_quant", m(ids))
    J["small.quantized_paths"] = sorted(
        k.rsplit(".", 1)[0] for k, _ in tree_flatten(m.parameters()) if k.endswith(".scales")
    )

    # Norms
    x = rnd((2, 3, 16), 10)
    put("norm.x", x)
    rms = nn.RMSNorm(16, eps=1e-5)
    rms.update({"weight": rnd((16,), 11)})
    put_params("rms", rms)
    put("rms.y", rms(x))
    ln = nn.LayerNorm(16, eps=1e-5)
    ln.update({"weight": rnd((16,), 12), "bias": rnd((16,), 13)})
    put_params("ln", ln)
    put("ln.y", ln(x))
    xg = rnd((2, 3, 5, 16), 14)
    put("gn.x", xg)
    for pt in [False, True]:
        gn = nn.GroupNorm(4, 16, eps=1e-5, pytorch_compatible=pt)
        gn.update({"weight": rnd((16,), 15), "bias": rnd((16,), 16)})
        tag = "pt" if pt else "mlx"
        put_params(f"gn_{tag}", gn)
        put(f"gn_{tag}.y", gn(xg))
    gn = nn.GroupNorm(2, 16, affine=False)
    put("gn_noaffine.y", gn(xg))
    bn = nn.BatchNorm(16, eps=1e-5, momentum=0.1)
    bn.update(
        {
            "weight": rnd((16,), 17),
            "bias": rnd((16,), 18),
            "running_mean": rnd((16,), 19),
            "running_var": mx.abs(rnd((16,), 20)) + 0.5,
        }
    )
    put_params("bn", bn)
    bn.eval()
    put("bn.y_eval", bn(xg))
    bn.train()
    put("bn.y_train", bn(xg))
    put("bn.running_mean_after", bn.running_mean)
    put("bn.running_var_after", bn.running_var)

    # Convolutions
    c1 = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)
    c1.update({"weight": rnd((6, 3, 2), 21), "bias": rnd((6,), 22)})
    x = rnd((2, 9, 4), 23)
    put_params("conv1d", c1)
    put("conv1d.x", x)
    put("conv1d.y", c1(x))
    c1d = nn.Conv1d(4, 5, 3, stride=1, padding=2, dilation=2, bias=False)
    c1d.update({"weight": rnd((5, 3, 4), 24)})
    put_params("conv1d_dil", c1d)
    put("conv1d_dil.y", c1d(x))
    c2 = nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(1, 0))
    c2.update({"weight": rnd((4, 3, 2, 3), 25), "bias": rnd((4,), 26)})
    x2 = rnd((2, 6, 7, 3), 27)
    put_params("conv2d", c2)
    put("conv2d.x", x2)
    put("conv2d.y", c2(x2))
    ct = nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1)
    ct.update({"weight": rnd((3, 3, 4), 28), "bias": rnd((3,), 29)})
    xt = rnd((2, 5, 4), 30)
    put_params("convt1d", ct)
    put("convt1d.x", xt)
    put("convt1d.y", ct(xt))
    ct2 = nn.ConvTranspose2d(3, 2, (2, 3), stride=2)
    ct2.update({"weight": rnd((2, 2, 3, 3), 31), "bias": rnd((2,), 32)})
    put_params("convt2d", ct2)
    put("convt2d.y", ct2(x2))

    # Dropout with an explicit key (python's layer uses the global key; its
    # computation is exactly this)
    x = rnd((4, 8), 33)
    k = key(34)
    put("dropout.x", x)
    put("dropout.key", k)
    p1 = 1 - 0.3
    put("dropout.y", (mx.random.bernoulli(p1, x.shape, key=k) * x) * (1 / p1))
    x4 = rnd((2, 3, 3, 5), 35)
    put("dropout2d.x", x4)
    put("dropout2d.y", (mx.random.bernoulli(p1, (2, 1, 1, 5), key=k) * x4) * (1 / p1))

    # MultiHeadAttention
    mha = nn.MultiHeadAttention(16, 4, key_input_dims=12, bias=True)
    ps = {k_: rnd(v.shape, 200 + i, 0.3) for i, (k_, v) in enumerate(tree_flatten(mha.parameters()))}
    from mlx.utils import tree_unflatten

    mha.update(tree_unflatten(list(ps.items())))
    q = rnd((2, 5, 16), 36)
    kv = rnd((2, 7, 12), 37)
    mask = rnd((5, 7), 38)
    put_params("mha", mha)
    put("mha.q", q)
    put("mha.kv", kv)
    put("mha.mask", mask)
    put("mha.y", mha(q, kv, kv, mask))
    put("mha.y_nomask", mha(q, kv, kv))
    put("mha.causal", nn.MultiHeadAttention.create_additive_causal_mask(5))

    # Sinusoidal positional encoding
    pos = mx.arange(6, dtype=mx.float32)
    put("sin.pos", pos)
    put("sin.y", nn.SinusoidalPositionalEncoding(16)(pos))
    put("sin.y2", nn.SinusoidalPositionalEncoding(16, scale=1.0, cos_first=True, full_turns=True)(pos))

    # Pooling
    x1 = rnd((2, 9, 3), 39)
    x2 = rnd((2, 6, 7, 3), 40)
    put("pool.x1", x1)
    put("pool.x2", x2)
    put("pool.max1d", nn.MaxPool1d(3, 2, 1)(x1))
    put("pool.avg1d", nn.AvgPool1d(2)(x1))
    put("pool.avg1d_pad", nn.AvgPool1d(3, 2, 1)(x1))
    put("pool.max2d", nn.MaxPool2d((2, 3), (1, 2), (1, 1))(x2))
    put("pool.avg2d", nn.AvgPool2d(2)(x2))
    put("pool.max2d_tiled", nn.MaxPool2d(3, 3)(rnd((1, 6, 9, 2), 41)))
    put("pool.x3", rnd((1, 6, 9, 2), 41))

    # Upsample
    xu = rnd((1, 3, 4, 2), 42)
    put("up.x", xu)
    put("up.nearest2", nn.Upsample(2, "nearest")(xu))
    put("up.nearest_frac", nn.Upsample((1.5, 2.5), "nearest")(xu))
    put("up.nearest_down", nn.Upsample(0.5, "nearest")(rnd((1, 4, 6, 2), 43)))
    put("up.xd", rnd((1, 4, 6, 2), 43))
    put("up.linear2", nn.Upsample(2, "linear")(xu))
    put("up.linear2_ac", nn.Upsample(2, "linear", align_corners=True)(xu))
    put("up.linear_frac", nn.Upsample((1.5, 0.75), "linear")(xu))
    x1u = rnd((2, 5, 3), 44)
    put("up.x1", x1u)
    put("up.linear1d", nn.Upsample(3, "linear")(x1u))

    # Activations
    xa = mx.linspace(-4, 4, 33)
    put("act.x", xa)
    for n in ["gelu", "gelu_approx", "gelu_fast_approx", "silu", "softplus", "mish", "relu", "relu2", "sigmoid"]:
        put(f"act.{n}", getattr(nn, n)(xa))


# ------------------------------------------------------------------ rope
def ropes():
    from mlx_lm.models.rope_utils import initialize_rope

    x = rnd((1, 2, 7, 16), 50)
    put("rope.x", x)
    cfgs = {
        "default": (None, None),
        "linear": ({"type": "linear", "factor": 2.0}, None),
        "dynamic": ({"type": "dynamic", "factor": 2.0}, 4),
        "llama3": (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            128,
        ),
        "yarn": (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.0},
            256,
        ),
        "longrope": (
            {
                "type": "longrope",
                "original_max_position_embeddings": 64,
                "short_factor": [1.0] * 8,
                "long_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
            },
            256,
        ),
    }
    J["rope"] = {}
    for name, (cfg, maxpos) in cfgs.items():
        for trad in [False, True]:
            if name == "longrope" and trad:
                continue
            r = initialize_rope(16, 10000.0, trad, cfg, maxpos)
            tag = f"{name}_{'trad' if trad else 'half'}"
            put(f"rope.{tag}", r(x, offset=3))
            J["rope"][tag] = {"config": cfg, "max_position_embeddings": maxpos, "traditional": trad}


# ------------------------------------------------------------------ caches
def caches():
    from mlx_lm.models.base import quantized_scaled_dot_product_attention
    from mlx_lm.models.cache import ChunkedKVCache, QuantizedKVCache

    q = rnd((1, 4, 5, 64), 60)
    k = rnd((1, 2, 6, 64), 61)
    v = rnd((1, 2, 6, 64), 62)
    put("qsdpa.q", q)
    put("qsdpa.k", k)
    put("qsdpa.v", v)
    c = QuantizedKVCache(group_size=64, bits=8)
    kq, vq = c.update_and_fetch(k[:, :, :5], v[:, :, :5])
    scale = 64**-0.5
    # (the python function scales its `queries` argument in place: pass copies)
    put("qsdpa.y1", quantized_scaled_dot_product_attention(q * 1, kq, vq, scale, "causal", 64, 8))
    kq, vq = c.update_and_fetch(k[:, :, 5:], v[:, :, 5:])
    put("qsdpa.y2", quantized_scaled_dot_product_attention(q[:, :, :1] * 1, kq, vq, scale, None, 64, 8))

    c = ChunkedKVCache(4)
    k1, _ = c.update_and_fetch(k[:, :, :3], v[:, :, :3])
    c.maybe_trim_front()
    k2, _ = c.update_and_fetch(k[:, :, 3:5], v[:, :, 3:5])
    c.maybe_trim_front()
    k3, _ = c.update_and_fetch(k[:, :, 5:6], v[:, :, 5:6])
    put("chunked.k1", k1)
    put("chunked.k2", k2)
    put("chunked.k3", k3)
    J["chunked.start_position"] = c.start_position
    J["chunked.offset"] = c.offset


# ------------------------------------------------------------------ losses
def losses():
    L = nn.losses
    logits = rnd((6, 5), 70)
    t = mx.array([0, 4, 2, 2, 1, 3], dtype=mx.int32)
    probs = mx.softmax(rnd((6, 5), 71), axis=-1)
    w = mx.abs(rnd((6,), 72))
    put("loss.logits", logits)
    put("loss.targets", t)
    put("loss.probs", probs)
    put("loss.weights", w)
    put("loss.ce_none", L.cross_entropy(logits, t))
    put("loss.ce_mean", L.cross_entropy(logits, t, reduction="mean"))
    put("loss.ce_ls", L.cross_entropy(logits, t, label_smoothing=0.1))
    put("loss.ce_w_sum", L.cross_entropy(logits, t, weights=w, reduction="sum"))
    put("loss.ce_probs", L.cross_entropy(logits, probs))
    # ignore_index (not in python mlx): masked mean over the kept targets
    ti = mx.array([0, -100, 2, 2, -100, 3], dtype=mx.int32)
    keep = ti != -100
    per = L.cross_entropy(logits, mx.where(keep, ti, 0)) * keep
    put("loss.ti", ti)
    put("loss.ce_ignore_none", per)
    put("loss.ce_ignore_mean", per.sum() / keep.sum())
    x = rnd((4, 6), 73)
    y = rnd((4, 6), 74)
    yb = (rnd((4, 6), 75) > 0).astype(mx.float32)
    put("loss.x", x)
    put("loss.y", y)
    put("loss.yb", yb)
    put("loss.bce_logits", L.binary_cross_entropy(x, yb))
    put("loss.bce_probs", L.binary_cross_entropy(mx.sigmoid(x), yb, with_logits=False, reduction="none"))
    put("loss.mse", L.mse_loss(x, y))
    put("loss.l1_sum", L.l1_loss(x, y, reduction="sum"))
    put("loss.smooth_l1", L.smooth_l1_loss(x, y, beta=0.5, reduction="none"))
    lp = nn.log_softmax(x, axis=-1)
    lq = nn.log_softmax(y, axis=-1)
    put("loss.kl", L.kl_div_loss(lp, lq))
    put("loss.nll", L.nll_loss(lp, mx.array([0, 5, 2, 3], dtype=mx.int32), reduction="mean"))
    put("loss.cos", L.cosine_similarity_loss(x, y, axis=1))
    put("loss.huber", L.huber_loss(x, y, delta=0.7, reduction="mean"))
    put("loss.hinge", L.hinge_loss(x, mx.sign(y)))
    put("loss.log_cosh", L.log_cosh_loss(x, y, reduction="mean"))


# ------------------------------------------------------------------ optimizers
def optimizers():
    params = {"b": rnd((3,), 80), "w": rnd((4, 3), 81)}
    grads = [{"b": rnd((3,), 90 + 2 * i), "w": rnd((4, 3), 91 + 2 * i)} for i in range(5)]
    for n, p in params.items():
        put(f"opt.param.{n}", p)
    for i, g in enumerate(grads):
        for n, a in g.items():
            put(f"opt.grad.{i}.{n}", a)
    sched = optim.join_schedules([optim.linear_schedule(0.0, 0.1, 2), optim.cosine_decay(0.1, 3, 0.01)], [2])
    configs = {
        "sgd": lambda: optim.SGD(0.1),
        "sgd_momentum": lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.01, dampening=0.1),
        "sgd_nesterov": lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
        "sgd_sched": lambda: optim.SGD(sched, momentum=0.5),
        "adam": lambda: optim.Adam(0.01),
        "adam_bc": lambda: optim.Adam(0.01, betas=[0.8, 0.95], bias_correction=True),
        "adamw": lambda: optim.AdamW(0.01, weight_decay=0.1),
        "adamw_step": lambda: optim.AdamW(optim.step_decay(0.01, 0.5, 2), weight_decay=0.1),
        "adafactor": lambda: optim.Adafactor(),
        "adafactor_lr": lambda: optim.Adafactor(learning_rate=0.01, relative_step=False, beta_1=0.9, weight_decay=0.01),
        "lion": lambda: optim.Lion(0.01, weight_decay=0.1),
        "lion_exp": lambda: optim.Lion(optim.exponential_decay(0.01, 0.9)),
    }
    for name, make in configs.items():
        opt = make()
        p = dict(params)
        for i, g in enumerate(grads):
            p = opt.apply_gradients(g, p)
            mx.eval(p)
            for n, a in p.items():
                put(f"opt.{name}.{i}.{n}", a)
    J["schedules"] = {
        "join": [sched(mx.array(s)).item() for s in range(8)],
        "linear": [optim.linear_schedule(0.5, 0.1, 4)(mx.array(s)).item() for s in range(8)],
        "cosine": [optim.cosine_decay(0.1, 5, 0.001)(mx.array(s)).item() for s in range(8)],
        "step": [optim.step_decay(0.1, 0.9, 3)(mx.array(s)).item() for s in range(8)],
        "exp": [optim.exponential_decay(0.1, 0.9)(mx.array(s)).item() for s in range(8)],
    }
    clipped, norm = optim.clip_grad_norm(grads[0], 0.5)
    for n, a in clipped.items():
        put(f"clip.{n}", a)
    put("clip.norm", norm)
    clipped, norm = optim.clip_grad_norm(grads[0], 100.0)
    put("clip.big.w", clipped["w"])


# ------------------------------------------------------------------ lora
def lora():
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    lin = nn.Linear(16, 8, bias=True)
    lin.update({"weight": rnd((8, 16), 110, 0.3), "bias": rnd((8,), 111)})
    a = rnd((16, 4), 112, 0.2)
    b = rnd((4, 8), 113, 0.2)
    x = rnd((2, 3, 16), 114)
    put_params("lora.base", lin)
    put("lora.a", a)
    put("lora.b", b)
    put("lora.x", x)
    lo = LoRALinear.from_base(lin, r=4, scale=2.0)
    lo.lora_a, lo.lora_b = a, b
    put("lora.y", lo(x))
    put("lora.fused", lo.fuse().weight)
    do = DoRALinear.from_base(lin, r=4, scale=2.0)
    do.lora_a, do.lora_b = a, b
    put("dora.m", do.m)
    put("dora.y", do(x))
    put("dora.fused", do.fuse().weight)
    # LoRA over a 4-bit quantized base
    ql = nn.QuantizedLinear.from_linear(nn.Linear(64, 8, bias=False), 32, 4)
    base = nn.Linear(64, 8, bias=False)
    base.update({"weight": rnd((8, 64), 115, 0.3)})
    ql = nn.QuantizedLinear.from_linear(base, 32, 4)
    put("qlora.base.weight", base.weight)
    xq = rnd((2, 64), 116)
    aq = rnd((64, 4), 117, 0.1)
    put("qlora.x", xq)
    put("qlora.a", aq)
    loq = LoRALinear.from_base(ql, r=4, scale=2.0)
    loq.lora_a, loq.lora_b = aq, b
    put("qlora.y", loq(xq))


# ------------------------------------------------------------------ training
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 32)
        self.l2 = nn.Linear(32, 3)

    def __call__(self, x):
        return self.l2(nn.relu(self.l1(x)))


def training():
    x = rnd((64, 4), 120)
    proj = rnd((4, 3), 121)
    y = mx.argmax(x @ proj + 0.3 * rnd((64, 3), 122), axis=-1).astype(mx.int32)
    put("mlp.x", x)
    put("mlp.y", y)
    init = MLP()
    ps = {
        "l1.weight": rnd((32, 4), 123, 0.5),
        "l1.bias": rnd((32,), 124, 0.1),
        "l2.weight": rnd((3, 32), 125, 0.2),
        "l2.bias": mx.zeros((3,)),
    }
    for k_, v in ps.items():
        put(f"mlp.init.{k_}", v)
    from mlx.utils import tree_unflatten

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    runs = {
        "adamw": (
            lambda: optim.AdamW(
                optim.join_schedules([optim.linear_schedule(0.0, 0.01, 20), optim.cosine_decay(0.01, 280, 0.0)], [20]),
                weight_decay=0.01,
            ),
            1.0,
        ),
        "sgd": (lambda: optim.SGD(0.1, momentum=0.9, nesterov=True), None),
    }
    J["mlp"] = {}
    for name, (make, clip) in runs.items():
        model = MLP()
        model.update(tree_unflatten(list(ps.items())))
        opt = make()
        vg = nn.value_and_grad(model, loss_fn)
        curve = []
        for _ in range(300):
            loss, g = vg(model, x, y)
            if clip is not None:
                g, _ = optim.clip_grad_norm(g, clip)
            opt.update(model, g)
            mx.eval(model.parameters(), opt.state, loss)
            curve.append(loss.item())
        J["mlp"][name] = curve
        for k_, v in tree_flatten(model.parameters()):
            put(f"mlp.final.{name}.{k_}", v)


# ------------------------------------------------------------------ prompt caches
def prompt_caches():
    from mlx_lm.models.cache import KVCache, RotatingKVCache, save_prompt_cache
    from mlx_lm.utils import load_model

    out = {}
    prompt = [int(t) for t in mx.random.randint(3, 470, (12,), key=key(130)).tolist()]
    for name, folder in [("llama", "llama"), ("llama_rotating", "llama"), ("qwen3_q8", "qwen3")]:
        model, _ = load_model(ROOT / "models" / "tiny" / folder)
        n = len(model.layers)
        if name == "llama_rotating":
            cache = [RotatingKVCache(max_size=8, keep=4) for _ in range(n)]
        else:
            cache = [KVCache() for _ in range(n)]
        logits = model(mx.array([prompt]), cache=cache)
        if name == "qwen3_q8":
            cache = [c.to_quantized(group_size=32, bits=8) for c in cache]
        mx.eval(logits, [c.state for c in cache])
        first = int(mx.argmax(logits[0, -1]).item())
        save_prompt_cache(
            str(OUT / f"prompt_cache_{name}.safetensors"),
            cache,
            {"fixture": folder, "prompt_len": str(len(prompt))},
        )
        toks = [first]
        step_logits = None
        for i in range(10):
            lg = model(mx.array([[toks[-1]]]), cache=cache)
            if i == 0:
                step_logits = lg[0, -1].tolist()
            toks.append(int(mx.argmax(lg[0, -1]).item()))
        out[name] = {
            "fixture": folder,
            "prompt": prompt,
            "first_token": first,
            "continuation": toks[1:],
            "first_step_logits": step_logits,
            "classes": [type(c).__name__ for c in cache],
        }
    with open(OUT / "prompt_cache.json", "w") as f:
        json.dump(out, f)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    layers()
    ropes()
    caches()
    losses()
    optimizers()
    lora()
    training()
    mx.eval(list(A.values()))
    mx.save_safetensors(str(OUT / "nn_refs.safetensors"), A, {"made_by": "scripts/make_nn_refs.py"})
    J["versions"] = {"mlx": mx.__version__, "mlx_lm": __import__("mlx_lm").__version__}
    with open(OUT / "nn_refs.json", "w") as f:
        json.dump(J, f, indent=1, sort_keys=True)
    prompt_caches()
    total = sum(os.path.getsize(OUT / p) for p in os.listdir(OUT))
    print(f"{len(A)} arrays; {OUT} holds {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
