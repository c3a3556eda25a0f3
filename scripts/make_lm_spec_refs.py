#!/usr/bin/env python3
"""mlx-lm references for the mlxrs generation features (logprobs,
speculative decoding, batch generation), on the tiny fixtures of
``scripts/make_lm_fixtures.py``.

Regenerate (from the repository root)::

    .venv/bin/python scripts/make_lm_spec_refs.py

Writes, next to each fixture's ``reference.json``:

- ``models/tiny/<main>/reference_logprobs.json``: per generated token of
  ``mlx_lm.generate.generate_step`` (greedy, float32): the token, its
  log-probability and the top-5 ``(id, logprob)`` of the step's
  log-softmax vector (``GenerationResponse.logprobs``); once plain and once
  with ``repetition_penalty=1.3`` (log-probabilities after the processor).
- ``models/tiny/<main>/reference_speculative.json``: the
  ``(token, from_draft)`` stream of ``speculative_generate_step(prompt,
  main, draft, num_draft_tokens=N)`` (greedy) for a draft checkpoint with
  the same tokenizer, and the plain greedy ``generate_step`` tokens.
- ``models/tiny/<main>/reference_batch.json``: ``batch_generate`` on prompts
  of different lengths (greedy, ``return_token_ids=True``) and each
  prompt's own ``generate_step`` greedy tokens.
"""

import json
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import batch_generate, generate_step, speculative_generate_step
from mlx_lm.sample_utils import make_logits_processors

ROOT = Path(__file__).resolve().parent.parent / "models" / "tiny"
TOP = 5
SPEC_PAIRS = [("qwen3", "qwen3-4bit"), ("llama", "llama-4bit")]
# Every architecture mlxrs batches with standard caches. Not gemma2: mlx-lm's
# own batch_generate fails on it (gemma2.py's GQA-reshaped scores do not
# broadcast with the batch mask: "[broadcast_shapes] Shapes (4,1,32,32) and
# (4,2,2,32,32)"); the Rust test checks gemma2 rows against single prompts.
BATCH_MODELS = [
    "qwen3",
    "llama",
    "qwen2",
    "mistral",
    "smollm3",
    "olmo2",
    "phi3",
    "mixtral",
    "qwen3_moe",
    "deepseek_v3",
    "qwen3-4bit",
    "llama-4bit",
]
BATCH_PROMPTS = [
    "The quick brown fox",
    "Hello",
    "def main():\n    print('hello, world')",
    "One two three four five six seven eight nine ten",
]


def ids_of(tok, text):
    return tok.encode(text)


def versions():
    import importlib.metadata as md

    return {p: md.version(p) for p in ("mlx", "mlx-lm")}


def write(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    print("wrote", path)


def logprobs_ref(name: str):
    model, tok = load(str(ROOT / name))
    ref = json.loads((ROOT / name / "reference.json").read_text())
    prompt = ref["prompt_ids"]
    cases = []
    for label, procs in (("plain", None), ("repetition_penalty_1.3", make_logits_processors(repetition_penalty=1.3))):
        steps = []
        gen = generate_step(mx.array(prompt), model, max_tokens=12, logits_processors=procs)
        for token, lp in gen:
            token = int(token)
            order = mx.argsort(-lp).tolist()[:TOP]
            steps.append(
                {
                    "token": token,
                    "logprob": float(lp[token].item()),
                    "top_ids": [int(i) for i in order],
                    "top_logprobs": [float(lp[i].item()) for i in order],
                }
            )
        cases.append({"label": label, "repetition_penalty": 1.3 if procs else None, "steps": steps})
    write(
        ROOT / name / "reference_logprobs.json",
        {"versions": versions(), "model": name, "prompt_ids": prompt, "top": TOP, "max_tokens": 12, "cases": cases},
    )


def speculative_ref(main: str, draft: str):
    model, tok = load(str(ROOT / main))
    dmodel, _ = load(str(ROOT / draft))
    ref = json.loads((ROOT / main / "reference.json").read_text())
    prompt = ref["prompt_ids"]
    runs = []
    for n_draft in (3, 2):
        out = []
        for token, _lp, from_draft in speculative_generate_step(
            mx.array(prompt), model, dmodel, num_draft_tokens=n_draft, max_tokens=20
        ):
            out.append([int(token), bool(from_draft)])
        runs.append({"num_draft_tokens": n_draft, "max_tokens": 20, "tokens": [t for t, _ in out], "from_draft": [d for _, d in out]})
    plain = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=20)]
    write(
        ROOT / main / "reference_speculative.json",
        {"versions": versions(), "model": main, "draft_model": draft, "prompt_ids": prompt, "plain_greedy": plain, "runs": runs},
    )


def batch_ref(name: str):
    model, tok = load(str(ROOT / name))
    prompts = [ids_of(tok, p) for p in BATCH_PROMPTS]
    max_tokens = 16
    r = batch_generate(model, tok, prompts, max_tokens=max_tokens, return_token_ids=True)
    singles = []
    for p in prompts:
        toks = []
        for t, _ in generate_step(mx.array(p), model, max_tokens=max_tokens):
            t = int(t)
            if t in tok.eos_token_ids:
                break
            toks.append(t)
        singles.append(toks)
    write(
        ROOT / name / "reference_batch.json",
        {
            "versions": versions(),
            "model": name,
            "max_tokens": max_tokens,
            "prompts": BATCH_PROMPTS,
            "prompt_ids": prompts,
            "eos_token_ids": sorted(int(e) for e in tok.eos_token_ids),
            "batch_tokens": [[int(t) for t in row] for row in r.token_ids],
            "single_tokens": singles,
        },
    )


def main():
    logprobs_ref("qwen3")
    for m, d in SPEC_PAIRS:
        speculative_ref(m, d)
    for n in BATCH_MODELS:
        batch_ref(n)


if __name__ == "__main__":
    main()
