#!/usr/bin/env python3
"""A random-weight Hugging Face style checkpoint of a real model shape, for
measuring `mlxrs convert`'s peak memory on a model larger than its shard
limit (docs/convert.md) and for serving benchmarks (scripts/bench_serve.sh).

    .venv/bin/python scripts/make_random_checkpoint.py --out /tmp/llama1b
        # llama-3.2-1b shape (1.24 B parameters), bfloat16, ~2.5 GB in
        # 4 input shards + index, the tiny llama fixture's tokenizer with
        # its vocabulary padded to vocab_size

Weights are normal(0, 0.02) (norms 1) from a seeded torch generator,
written one input shard at a time so this script itself stays small.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # the same config as `mlxrs bench --shape llama-3.2-1b --dump-config`
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
}


def tensors(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (v, h)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (q, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, q)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    c = SHAPES[a.shape]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    items = list(tensors(c))
    total = sum(torch.Size(s).numel() for _, s in items) * 2
    per = total / a.shards
    groups, cur, size = [], [], 0
    for name, s in items:
        cur.append((name, s))
        size += torch.Size(s).numel() * 2
        if size >= per and len(groups) < a.shards - 1:
            groups.append(cur)
            cur, size = [], 0
    groups.append(cur)
    weight_map = {}
    for gi, grp in enumerate(groups):
        fname = f"model-{gi + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name, s in grp:
            if len(s) == 1:
                shard[name] = torch.ones(s, dtype=torch.bfloat16)
            else:
                shard[name] = (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
            weight_map[name] = fname
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        print(f"wrote {fname}")
        del shard
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (out / "config.json").write_text(json.dumps(c, indent=2))
    tiny = ROOT / "models" / "tiny" / "llama"
    for f in ["tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tiny / f, out / f)
    # The tiny tokenizer knows ~500 ids but random weights sample any of
    # vocab_size: give every other id a plain word (" w123"), so generated
    # text streams token by token as a real model's does (ids a tokenizer
    # cannot decode produce no text, which would make servers' time to the
    # first text chunk meaningless in scripts/bench_serve.sh).
    tok = json.loads((tiny / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    for i in range(c["vocab_size"]):
        if i not in used:
            vocab[f"\u0120w{i}"] = i
    # Added tokens keep their ids only if the model vocabulary has them too
    # (tokenizers renumbers the others past the vocabulary's size).
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    print(f"{a.shape}: {total / 1e9:.2f} GB in {len(groups)} shards -> {out}")


if __name__ == "__main__":
    main()
