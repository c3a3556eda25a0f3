#!/usr/bin/env python3
"""Tiny GGUF fixtures for mlxrs's GGUF loader, written with the `gguf` PyPI
package from the tiny HF checkpoints in models/tiny/<arch>, following
llama.cpp's `convert_hf_to_gguf.py` conventions (tensor names, `{arch}.*`
metadata keys, the Q/K row permutation of llama-family files, llama3 rope
factors as the `rope_freqs.weight` tensor, tied output = no `output.weight`).

Per architecture it writes models/tiny-gguf/<name>.gguf and <name>.json:
- `<arch>-mixed` (llama, qwen2, qwen3, mixtral, phi3, gemma2, gemma3_text, qwen2_moe,
  qwen3_moe): every tensor type MLX loads, mixed: Q4_0 (q/k, gate/up),
  Q8_0 (embedding, v/o, down, experts), Q4_1 (llama's down_proj), F16
  (lm_head), F32 (norms, biases, rope factors);
- `llama-f32`: all float32, whose logits must equal the HF folder's own
  reference (models/tiny/llama/reference.json) to float rounding.

The reference in <name>.json is independent of mlxrs: the stored tensors
are dequantized with the `gguf` package (`gguf.quants.dequantize`), the
permutation undone here, and the HF folder's model run by mlx-lm with those
weights: `logits_last` for the HF reference's `prompt_ids`, and 10 greedy
tokens with their top-2 margins.

Gemma 2/3: norm weights are stored as 1 + w (as convert_hf_to_gguf.py does)
and the reference runs with query_pre_attn_scalar = head_dim, the value
llama.cpp derives (GGUF has no key for it).

Usage: .venv/bin/python scripts/make_gguf_fixtures.py [arch ... | spm | kquant]
       .venv/bin/python scripts/make_gguf_fixtures.py mistral path/to/tokenizer.model.v1
"""

import json
import math
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as Q
from mlx_lm import load as mlx_load
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models/tiny"
OUT = ROOT / "models/tiny-gguf"

GGUF_ARCH = {
    "llama": "llama",
    "mixtral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
}
PERMUTED = {"llama", "mixtral"}
GEMMA = {"gemma2", "gemma3_text"}

HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_up_proj": "ffn_up",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "block_sparse_moe.gate": "ffn_gate_inp",
    "block_sparse_moe.switch_mlp.gate_proj": "ffn_gate_exps",
    "block_sparse_moe.switch_mlp.up_proj": "ffn_up_exps",
    "block_sparse_moe.switch_mlp.down_proj": "ffn_down_exps",
    "mlp.gate": "ffn_gate_inp",
    "mlp.switch_mlp.gate_proj": "ffn_gate_exps",
    "mlp.switch_mlp.up_proj": "ffn_up_exps",
    "mlp.switch_mlp.down_proj": "ffn_down_exps",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
}
# Gemma 2/3 have four norms per block (llama.cpp's Gemma2Model tensor map).
GEMMA_NORMS = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(hf, arch=None):
    module, suffix = hf.rsplit(".", 1)
    if module in HF_TO_GGUF:
        return f"{HF_TO_GGUF[module]}.{suffix}"
    parts = module.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    part = ".".join(parts[3:])
    table = {**HF_TO_GGUF, **GEMMA_NORMS} if arch in GEMMA else HF_TO_GGUF
    return f"blk.{parts[2]}.{table[part]}.{suffix}"


def permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute(w, n_head):
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def qtype_for(hf, arr, mixed):
    if not mixed or arr.ndim == 1:
        return Q.F32
    if hf == "lm_head.weight":
        return Q.F16
    if hf.endswith("block_sparse_moe.gate.weight") or hf.endswith("mlp.gate.weight"):
        return Q.F16
    if arr.shape[-1] % 32 != 0 or hf.endswith("shared_expert_gate.weight"):
        return Q.F16
    if any(k in hf for k in ("q_proj", "k_proj", "gate_proj.", "up_proj.")) and "switch_mlp" not in hf:
        return Q.Q4_0
    if hf.endswith("mlp.down_proj.weight") and "switch_mlp" not in hf:
        return Q.Q4_1
    return Q.Q8_0


def llama3_rope_factors(cfg, head_dim):
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") != "llama3":
        return None
    base = cfg["rope_theta"]
    factor = rs["factor"]
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def make(arch, mixed):
    src = TINY / arch
    cfg = json.loads((src / "config.json").read_text())
    # What the reference model runs with, where llama.cpp's reading of the
    # file differs from the HF config (see below).
    model_config = {}
    ref = json.loads((src / "reference.json").read_text())
    tj = json.loads((src / "tokenizer.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    weights = load_file(src / "model.safetensors")
    name = f"{arch}-{'mixed' if mixed else 'f32'}"
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.gguf"
    ga = GGUF_ARCH[arch]
    w = gguf.GGUFWriter(path, ga)

    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_name(f"tiny {arch}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(int(head_dim * cfg.get("partial_rotary_factor", 1.0)))
    if head_dim != cfg["hidden_size"] // heads or arch in GEMMA:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "mixtral":
        w.add_expert_count(cfg["num_local_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if arch == "qwen3_moe":
        # convert_hf_to_gguf.py's Qwen3MoeModel (a Qwen2MoeModel without
        # shared experts).
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if arch == "qwen2_moe":
        # convert_hf_to_gguf.py's Qwen2MoeModel.
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    if arch in GEMMA:
        # convert_hf_to_gguf.py's Gemma2Model / Gemma3Model: key/value length
        # (above), softcapping (Gemma 2), sliding window; no query_pre_attn_scalar:
        # llama.cpp uses head_dim (hidden/heads for the 27B models), so the
        # reference runs with that value too.
        w.add_sliding_window(cfg["sliding_window"])
        model_config["query_pre_attn_scalar"] = head_dim
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        else:
            # llama.cpp's default Gemma 3 pattern is 6 (5 local, 1 global);
            # the tiny model alternates, which this key states.
            w.add_sliding_window_pattern(cfg["sliding_window_pattern"])
            assert cfg.get("rope_local_base_freq", 10000.0) == 10000.0

    # Tokenizer: byte-level BPE, every id up to vocab_size present.
    n = cfg["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
        types[i] = gguf.TokenType.NORMAL
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    if tc.get("bos_token") in vocab:
        w.add_bos_token_id(vocab[tc["bos_token"]])
    if tc.get("eos_token") in vocab:
        w.add_eos_token_id(vocab[tc["eos_token"]])
    w.add_add_bos_token(False)
    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])

    if arch == "phi3":
        # convert_hf_to_gguf.py's Phi3MiniModel: longrope factors as tensors.
        rs = cfg["rope_scaling"]
        w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        w.add_tensor("rope_factors_long.weight", np.array(rs["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rs["short_factor"], dtype=np.float32))
    factors = llama3_rope_factors(cfg, head_dim)
    if factors is not None:
        w.add_tensor("rope_freqs.weight", factors)

    deq = {}
    for hf in sorted(weights):
        arr = weights[hf].astype(np.float32)
        gname = gguf_name(hf, arch)
        if arch in PERMUTED and (".q_proj." in hf or ".k_proj." in hf):
            arr_g = permute(arr, heads if ".q_proj." in hf else kv)
        else:
            arr_g = arr
        if arch in GEMMA and hf.endswith("norm.weight"):
            # convert_hf_to_gguf.py stores Gemma's (1 + w) norm weights as 1 + w.
            arr_g = arr_g + np.float32(1.0)
        qt = qtype_for(hf, arr, mixed)
        if qt == Q.F32:
            data = arr_g
        elif qt == Q.F16:
            data = arr_g.astype(np.float16)
        else:
            data = gguf.quants.quantize(arr_g, qt)
        w.add_tensor(gname, data, raw_dtype=qt if qt not in (Q.F32, Q.F16) else None)
        back = gguf.quants.dequantize(data, qt) if qt not in (Q.F32, Q.F16) else data.astype(np.float32)
        back = back.reshape(arr.shape).astype(np.float32)
        if arch in PERMUTED and (".q_proj." in hf or ".k_proj." in hf):
            back = unpermute(back, heads if ".q_proj." in hf else kv)
        if arch in GEMMA and hf.endswith("norm.weight"):
            back = back - np.float32(1.0)
        deq[hf] = back

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Reference: mlx-lm's model of the HF folder with the dequantized weights.
    model, _ = mlx_load(str(src), model_config=model_config)
    model.load_weights([(k, mx.array(v)) for k, v in deq.items()], strict=True)
    ids = ref["prompt_ids"]
    logits = model(mx.array([ids]))[0, -1].astype(mx.float32)
    greedy, margins = [], []
    cache = None
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    out = model(mx.array([ids]), cache=cache)[0, -1]
    for _ in range(10):
        top = np.sort(np.array(out.astype(mx.float32)))[::-1]
        t = int(mx.argmax(out).item())
        greedy.append(t)
        margins.append(float(top[0] - top[1]))
        out = model(mx.array([[t]]), cache=cache)[0, -1]
    info = {
        "name": name,
        "source": f"models/tiny/{arch}",
        "gguf_architecture": ga,
        "tensor_types": {gguf_name(k, arch): qtype_for(k, weights[k], mixed).name for k in sorted(weights)},
        "model_config_override": model_config,
        "prompt_ids": ids,
        "logits_last": [float(x) for x in np.array(logits)],
        "greedy_tokens": greedy,
        "greedy_margins": margins,
        "versions": {"mlx": mx.__version__, "gguf": "pypi gguf"},
    }
    (OUT / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


SPM_TEXTS = [
    "Hello world",
    "the quick brown fox jumps over the lazy dog",
    "  two leading spaces",
    " one leading space",
    "trailing spaces  ",
    "inner   spaces and\ttabs\nand newlines\n\n",
    "digits 12345 and 7, 3.14",
    "café naïve résumé",
    "日本語 and 🙂 emoji (byte fallback)",
    "Capitalized Words. Punctuation!?",
    "",
]
# Texts with special / user-defined tokens. sentencepiece itself reads "<s>"
# as characters; llama.cpp (`llama_tokenize_impl`, SPM with parse_special)
# cuts the text at control and user-defined tokens and sentencepiece-encodes
# each raw piece with the space prefix (every raw piece follows the start or
# a token), which is the reference here.
SPM_SPECIAL_TEXTS = ["x <s> y", "<tool>call", "a</s>", "<s><s> two"]


def train_spm():
    """A tiny SentencePiece BPE model like Llama's (byte fallback, digits
    split, identity normalization, no whitespace collapsing, dummy prefix),
    with one user-defined symbol."""
    import io
    import random

    import sentencepiece as spm

    random.seed(0)
    words = (
        "the quick brown fox jumps over lazy dog hello world tokenizer model language llama "
        "sentence piece byte fallback merge score token vocabulary space digit number"
    ).split()
    lines = []
    for i in range(3000):
        line = " ".join(random.choice(words) for _ in range(random.randint(3, 12)))
        if i % 7 == 0:
            line += f" {random.randint(0, 99999)}"
        if i % 11 == 0:
            line = line.capitalize() + "."
        if i % 13 == 0:
            line += " café naïve résumé"
        if i % 17 == 0:
            line = "  " + line
        lines.append(line)
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=m,
        vocab_size=512,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        user_defined_symbols=["<tool>"],
        add_dummy_prefix=True,
        num_threads=1,
        minloglevel=2,
    )
    return m.getvalue()


def make_spm():
    """llama-spm.gguf: the tiny llama's weights (Q8_0) with a SentencePiece
    vocabulary (`tokenizer.ggml.model = llama`) written the way
    convert_hf_to_gguf.py's `_set_vocab_sentencepiece` does: pieces, scores,
    token types (normal, unknown, control, user-defined, byte), bos / eos /
    unk ids, add_bos_token, add_space_prefix. Reference ids: sentencepiece
    itself (with BOS, as llama.cpp adds it) and transformers' GGUF tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    proto = train_spm()
    (OUT / "tiny-spm.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    src = TINY / "llama"
    cfg = json.loads((src / "config.json").read_text())
    assert sp.vocab_size() == cfg["vocab_size"]
    weights = load_file(src / "model.safetensors")
    path = OUT / "llama-spm.gguf"
    w = gguf.GGUFWriter(path, "llama")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_name("tiny llama, sentencepiece vocabulary")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        elif tokens[-1] == "<tool>":
            t = gguf.TokenType.USER_DEFINED
        else:
            t = gguf.TokenType.NORMAL
        types.append(t)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for hf in sorted(weights):
        arr = weights[hf].astype(np.float32)
        if ".q_proj." in hf or ".k_proj." in hf:
            arr = permute(arr, heads if ".q_proj." in hf else kv)
        if arr.ndim == 1:
            w.add_tensor(gguf_name(hf), arr)
        else:
            w.add_tensor(gguf_name(hf), gguf.quants.quantize(arr, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tf = AutoTokenizer.from_pretrained(OUT, gguf_file=path.name)
    cases = []
    for t in SPM_TEXTS:
        cases.append(
            {
                "text": t,
                "sentencepiece_ids": [sp.bos_id()] + sp.encode(t),
                "sentencepiece_pieces": sp.encode(t, out_type=str),
                "transformers_gguf_ids": tf(t)["input_ids"],
                "decoded": sp.decode(sp.encode(t)),
            }
        )
    import re

    whole = [tokens[i] for i, t in enumerate(types) if t in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)]
    cut = re.compile("(" + "|".join(re.escape(t) for t in sorted(whole, key=len, reverse=True)) + ")")
    special = []
    for t in SPM_SPECIAL_TEXTS:
        ids = [sp.bos_id()]
        for piece in cut.split(t):
            if piece in whole:
                ids.append(tokens.index(piece))
            elif piece:
                ids.extend(sp.encode(piece))
        special.append({"text": t, "llama_cpp_ids": ids, "transformers_gguf_ids": tf(t)["input_ids"]})
    info = {
        "name": "llama-spm",
        "tool": "sentencepiece (model in tiny-spm.model) and transformers' GGUF tokenizer",
        "versions": {"sentencepiece": spm.__version__, "transformers": __import__("transformers").__version__},
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "cases": cases,
        "special_cases": special,
    }
    (OUT / "llama-spm.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    for c in cases + special:
        sp_ids = c.get("sentencepiece_ids") or c.get("llama_cpp_ids")
        print(repr(c["text"]), "sp==tf" if sp_ids == c["transformers_gguf_ids"] else f"DIFF sp {sp_ids} tf {c['transformers_gguf_ids']}")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


# ---------------------------------------------------------------- K-quants
# gguf-py dequantizes K-quants but cannot quantize them; these simple
# quantizers (per sub-block min/max, not llama.cpp's optimised search) pack
# ggml's block layouts, checked against gguf-py's dequantization below. The
# test reference is the dequantized values, so their quality only has to be
# sensible.


def _f16(x):
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def _k_scale_bytes(sc, mn):
    """Inverse of gguf-py's Q4_K.get_scale_min: 8 six-bit scales and mins
    per block -> 12 bytes."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    d = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    m = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return np.concatenate([d, m, md], axis=1).astype(np.uint8)


def _affine_sub(x, levels):
    """Per sub-block (last axis) scale and min for q in [0, levels]."""
    lo = np.minimum(x.min(-1), 0)
    hi = x.max(-1)
    return (hi - lo) / levels, -lo


def _quant_q45k(x, bits):
    nb = x.shape[0]
    xs = x.reshape(nb, 8, 32)
    scale, mins = _affine_sub(xs, 2**bits - 1)
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1) / 63).astype(np.float16).astype(np.float32)
    d[d == 0] = 1e-4
    dmin[dmin == 0] = 1e-4
    sc = np.clip(np.round(scale / d[:, None]), 1, 63)
    mn = np.clip(np.round(mins / dmin[:, None]), 0, 63)
    q = np.round((xs + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None])
    q = np.clip(q, 0, 2**bits - 1).astype(np.uint8)
    # nibbles: chunk c of 32 bytes = sub-blocks 2c (low) and 2c+1 (high).
    lo4 = q & 15
    qs = (lo4[:, 0::2, :] | (lo4[:, 1::2, :] << 4)).reshape(nb, 128)
    parts = [_f16(d), _f16(dmin), _k_scale_bytes(sc, mn)]
    if bits == 5:
        hb = (q >> 4) & 1  # [nb, 8, 32]: bit j of qh[i]
        qh = np.zeros((nb, 32), dtype=np.uint8)
        for j in range(8):
            qh |= (hb[:, j, :] << j).astype(np.uint8)
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1)


def _quant_q6k(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    amax = np.abs(xs).max(-1)
    scale = amax / 31
    d = (np.abs(scale).max(-1) / 127).astype(np.float16).astype(np.float32)
    d[d == 0] = 1e-4
    sc = np.clip(np.round(scale / d[:, None]), 1, 127).astype(np.int8)
    q = np.clip(np.round(xs / (d[:, None] * sc)[..., None]) + 32, 0, 63).astype(np.uint8).reshape(nb, 256)
    ql = np.zeros((nb, 128), dtype=np.uint8)
    qh = np.zeros((nb, 64), dtype=np.uint8)
    for e in range(256):
        h, r = divmod(e, 128)
        ql[:, 64 * h + r % 64] |= (q[:, e] & 15) << (4 * (r // 64))
        qh[:, 32 * h + r % 32] |= ((q[:, e] >> 4) & 3) << (2 * (r // 32))
    return np.concatenate([ql, qh, sc.view(np.uint8), _f16(d)], axis=1)


def _quant_q2k(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    scale, mins = _affine_sub(xs, 3)
    d = (scale.max(-1) / 15).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1) / 15).astype(np.float16).astype(np.float32)
    d[d == 0] = 1e-4
    dmin[dmin == 0] = 1e-4
    sc = np.clip(np.round(scale / d[:, None]), 1, 15).astype(np.uint8)
    mn = np.clip(np.round(mins / dmin[:, None]), 0, 15).astype(np.uint8)
    q = np.round((xs + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None])
    q = np.clip(q, 0, 3).astype(np.uint8).reshape(nb, 256)
    qs = np.zeros((nb, 64), dtype=np.uint8)
    for e in range(256):
        h, r = divmod(e, 128)
        qs[:, 32 * h + r % 32] |= q[:, e] << (2 * (r // 32))
    return np.concatenate([sc | (mn << 4), qs, _f16(d), _f16(dmin)], axis=1)


def _quant_q3k(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    scale = np.abs(xs).max(-1) / 4
    d = (scale.max(-1) / 31).astype(np.float16).astype(np.float32)
    d[d == 0] = 1e-4
    sc = np.clip(np.round(scale / d[:, None]), 1, 31).astype(np.int32)
    q = np.clip(np.round(xs / (d[:, None] * sc)[..., None]), -4, 3).astype(np.int32).reshape(nb, 256)
    hbit = (q >= 0).astype(np.uint8)
    ql = (q + 4 * (1 - hbit)).astype(np.uint8)
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    qs = np.zeros((nb, 64), dtype=np.uint8)
    for e in range(256):
        h, r = divmod(e, 128)
        qs[:, 32 * h + r % 32] |= ql[:, e] << (2 * (r // 32))
        hmask[:, e % 32] |= hbit[:, e] << (e // 32)
    s6 = (sc + 32).astype(np.uint8)  # 16 six-bit values
    scales = np.zeros((nb, 12), dtype=np.uint8)
    for t in range(16):
        scales[:, t % 8] |= (s6[:, t] & 15) << (4 * (t // 8))
        scales[:, 8 + t % 4] |= ((s6[:, t] >> 4) & 3) << (2 * (t // 4))
    return np.concatenate([hmask, qs, scales, _f16(d)], axis=1)


K_QUANTIZERS = {
    Q.Q2_K: _quant_q2k,
    Q.Q3_K: _quant_q3k,
    Q.Q4_K: lambda x: _quant_q45k(x, 4),
    Q.Q5_K: lambda x: _quant_q45k(x, 5),
    Q.Q6_K: _quant_q6k,
}


def quantize_any(arr, qt):
    """gguf-py's quantize, or the K-quant packers above (checked against
    gguf-py's dequantization: within one quantization step)."""
    if qt not in K_QUANTIZERS:
        return gguf.quants.quantize(arr, qt)
    rows, cols = arr.shape
    data = K_QUANTIZERS[qt](arr.reshape(-1, 256)).reshape(rows, -1)
    back = gguf.quants.dequantize(data, qt).reshape(arr.shape)
    err = np.abs(back - arr).max() / np.abs(arr).max()
    assert err < {Q.Q2_K: 0.6, Q.Q3_K: 0.4}.get(qt, 0.15), (qt.name, err)
    return data


KQUANT_TYPES = {
    "model.embed_tokens.weight": Q.Q6_K,
    "self_attn.q_proj": Q.Q4_K,
    "self_attn.k_proj": Q.Q5_K,
    "self_attn.v_proj": Q.Q6_K,
    "self_attn.o_proj": Q.Q3_K,
    "mlp.gate_proj": Q.Q2_K,
    "mlp.up_proj": Q.Q5_0,
    "mlp.down_proj": Q.Q5_1,
}


def make_kquant():
    """llama-kquant.gguf: a 1-layer llama with hidden size 256 (K-quant rows
    are 256-element super-blocks), random weights, every tensor type mlxrs
    reads beyond MLX's own (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1).
    Reference: mlx-lm's llama with the gguf-py-dequantized weights."""
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    rng = np.random.default_rng(12)
    shapes = {
        "model.embed_tokens.weight": (512, 256),
        "model.norm.weight": (256,),
        "model.layers.0.input_layernorm.weight": (256,),
        "model.layers.0.post_attention_layernorm.weight": (256,),
        "model.layers.0.self_attn.q_proj.weight": (256, 256),
        "model.layers.0.self_attn.k_proj.weight": (128, 256),
        "model.layers.0.self_attn.v_proj.weight": (128, 256),
        "model.layers.0.self_attn.o_proj.weight": (256, 256),
        "model.layers.0.mlp.gate_proj.weight": (256, 256),
        "model.layers.0.mlp.up_proj.weight": (256, 256),
        "model.layers.0.mlp.down_proj.weight": (256, 256),
    }
    weights = {}
    for k, shp in shapes.items():
        if len(shp) == 1:
            weights[k] = (1.0 + 0.1 * rng.standard_normal(shp)).astype(np.float32)
        else:
            weights[k] = (rng.standard_normal(shp) * (0.5 if "embed" in k else 0.08)).astype(np.float32)
    src = Path(tempfile.mkdtemp())
    try:
        (src / "config.json").write_text(json.dumps(cfg))
        save_file(weights, str(src / "model.safetensors"))
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(TINY / "llama" / f, src / f)
        ref = json.loads((TINY / "llama/reference.json").read_text())
        tj = json.loads((TINY / "llama/tokenizer.json").read_text())
        path = OUT / "llama-kquant.gguf"
        w = gguf.GGUFWriter(path, "llama")
        heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        w.add_name("tiny llama, K-quants")
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
        w.add_rope_freq_base(cfg["rope_theta"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_vocab_size(cfg["vocab_size"])
        n = cfg["vocab_size"]
        tokens = [f"[PAD{i}]" for i in range(n)]
        types = [gguf.TokenType.UNUSED] * n
        for t, i in tj["model"]["vocab"].items():
            tokens[i] = t
            types[i] = gguf.TokenType.NORMAL
        for a in tj["added_tokens"]:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
        w.add_add_bos_token(False)
        deq, qtypes = {}, {}
        for hf in sorted(weights):
            arr = weights[hf]
            key = next((k for k in KQUANT_TYPES if k in hf), None)
            qt = KQUANT_TYPES[key] if key and arr.ndim == 2 else Q.F32
            arr_g = permute(arr, heads if ".q_proj." in hf else kv) if (".q_proj." in hf or ".k_proj." in hf) else arr
            if qt == Q.F32:
                data, back = arr_g, arr_g
            else:
                data = quantize_any(arr_g, qt)
                back = gguf.quants.dequantize(data, qt).reshape(arr.shape).astype(np.float32)
            w.add_tensor(gguf_name(hf), data, raw_dtype=None if qt == Q.F32 else qt)
            if ".q_proj." in hf or ".k_proj." in hf:
                back = unpermute(back, heads if ".q_proj." in hf else kv)
            deq[hf] = back
            qtypes[gguf_name(hf)] = qt.name
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

        from mlx_lm.models.cache import make_prompt_cache

        model, _ = mlx_load(str(src))
        model.load_weights([(k, mx.array(v)) for k, v in deq.items()], strict=True)
        ids = ref["prompt_ids"]
        logits = model(mx.array([ids]))[0, -1].astype(mx.float32)
        cache = make_prompt_cache(model)
        out = model(mx.array([ids]), cache=cache)[0, -1]
        greedy, margins = [], []
        for _ in range(10):
            top = np.sort(np.array(out.astype(mx.float32)))[::-1]
            t = int(mx.argmax(out).item())
            greedy.append(t)
            margins.append(float(top[0] - top[1]))
            out = model(mx.array([[t]]), cache=cache)[0, -1]
        # mlxrs's default load requantizes Q2_K / Q3_K / Q6_K (16-element
        # sub-blocks) to MLX affine 4 / 5 / 8 bits, group 32: the same
        # `mx.quantize` of the dequantized weights, here.
        requant_bits = {Q.Q2_K: 4, Q.Q3_K: 5, Q.Q6_K: 8}
        rq = []
        for k, v in deq.items():
            a = mx.array(v)
            bits = requant_bits.get(Q[qtypes[gguf_name(k)]])
            if bits:
                a = mx.dequantize(*mx.quantize(a, group_size=32, bits=bits), group_size=32, bits=bits)
            rq.append((k, a))
        model.load_weights(rq, strict=True)
        logits_rq = model(mx.array([ids]))[0, -1].astype(mx.float32)
    finally:
        shutil.rmtree(src)
    info = {
        "name": "llama-kquant",
        "source": "random weights (scripts/make_gguf_fixtures.py make_kquant), tokenizer of models/tiny/llama",
        "gguf_architecture": "llama",
        "tensor_types": qtypes,
        "prompt_ids": ids,
        "logits_last": [float(x) for x in np.array(logits)],
        "logits_last_requantized": [float(x) for x in np.array(logits_rq)],
        "greedy_tokens": greedy,
        "greedy_margins": margins,
        "versions": {"mlx": mx.__version__, "gguf": "pypi gguf"},
    }
    (OUT / "llama-kquant.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB; margins min {min(margins):.3f}")


MISTRAL_TEXTS = SPM_TEXTS + [
    "The capital of France is Paris.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Ünïcödé: ½ ¾ €100, naïve café — “quotes” and ‘apostrophes’",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    "    four spaces, then text\t\ttabs",
    "emoji 👩‍💻🚀 and symbols ∑∫√ and ☃",
    "1234567890 3.14159 -42 1e-5 0x1F",
    "Angle <brackets> as text, and <0x41> too.",
    "mixed\r\nline endings\rand\n\nblank lines",
    "ALL CAPS AND lowercase and MiXeD",
]


def make_mistral_vocab(model_path):
    """mistral-spm-vocab.gguf: a tokenizer-only GGUF (no tensors) with the
    real Mistral 7B v0.1 SentencePiece vocabulary (`tokenizer.model.v1` of
    the PyPI package mistral-common, Apache-2.0; `pip download
    mistral-common==1.13.1 --no-deps` and unzip `mistral_common/data/`),
    written as convert_hf_to_gguf.py's `_set_vocab_sentencepiece` does.
    Reference: sentencepiece's own ids (with BOS) on varied text."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    path = OUT / "mistral-spm-vocab.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("Mistral 7B v0.1 tokenizer (mistral-common tokenizer.model.v1)")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        else:
            t = gguf.TokenType.NORMAL
        types.append(t)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases = [
        {
            "text": t,
            "sentencepiece_ids": [sp.bos_id()] + sp.encode(t),
            "decoded": sp.decode(sp.encode(t)),
        }
        for t in MISTRAL_TEXTS
    ]
    info = {
        "name": "mistral-spm-vocab",
        "tool": "sentencepiece on mistral-common 1.13.1's tokenizer.model.v1",
        "versions": {"sentencepiece": spm.__version__},
        "vocab_size": sp.vocab_size(),
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "cases": cases,
    }
    (OUT / "mistral-spm-vocab.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


def main():
    import sys

    if sys.argv[1:] == ["spm"]:
        make_spm()
        return
    if sys.argv[1:] == ["kquant"]:
        make_kquant()
        return
    if sys.argv[1:2] == ["mistral"]:
        make_mistral_vocab(sys.argv[2])
        return
    archs = sys.argv[1:] or [
        "llama",
        "qwen2",
        "qwen3",
        "mixtral",
        "phi3",
        "gemma2",
        "gemma3_text",
        "qwen2_moe",
        "qwen3_moe",
    ]
    for arch in archs:
        make(arch, mixed=True)
    if not sys.argv[1:]:
        make("llama", mixed=False)
        make_spm()
        make_kquant()


if __name__ == "__main__":
    main()
