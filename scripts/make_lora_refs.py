"""Reference losses for `mlxrs lora` (crates/mlxrs-lm/tests/lora.rs).

Drives mlx-lm's own trainer (`mlx_lm.tuner.trainer.train`) on the tiny
fixtures with fixed batches (a custom `iterate_batches`) and initial
adapters saved here, recording the per-step training loss
(steps_per_report=1). The Rust test loads the same initial adapters and
batches and compares. Also trains a small adapter kept as an mlx-lm-made
fixture (adapter_config.json + adapters.safetensors) with its greedy tokens
from `mlx_lm.generate.stream_generate`.

Run: .venv/bin/python scripts/make_lora_refs.py
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/mlxrs-lm/tests/data/lora"
STEPS = 20
BATCH = 2
VOCAB = 512


def make_batches():
    rng = np.random.default_rng(1234)
    out = []
    for _ in range(STEPS):
        lens = sorted(int(x) for x in rng.integers(6, 30, size=BATCH))
        width = 1 + 32 * ((max(lens) + 31) // 32)
        toks = np.zeros((BATCH, width), np.int32)
        rows = []
        for j, n in enumerate(lens):
            toks[j, :n] = rng.integers(1, VOCAB, size=n)
            off = int(rng.integers(0, 4))
            rows.append([off, n])
        out.append({"tokens": toks.tolist(), "lengths": rows})
    return out


class Losses(TrainingCallback):
    def __init__(self):
        self.losses = []

    def on_train_loss_report(self, info):
        self.losses.append(info["train_loss"])


CASES = [
    # name, model, fine_tune_type, num_layers, lr, grad_accum[, lora keys]
    ("lora", "llama", "lora", 2, 1e-3, 1),
    ("dora", "llama", "dora", 2, 1e-3, 1),
    ("full", "llama", "full", 1, 1e-3, 1),
    ("qlora", "llama-4bit", "lora", 2, 1e-3, 1),
    ("lora_accum", "qwen3", "lora", 1, 1e-3, 2),
    # MoE experts (LoRASwitchLinear), dense and 4-bit
    ("lora_moe", "qwen3_moe", "lora", 2, 1e-3, 1),
    ("qlora_moe", "qwen3_moe-4bit", "lora", 1, 1e-3, 1),
    # embeddings (LoRAEmbedding / DoRAEmbedding) and the output head, named
    # by keys; qwen3 ties its head to the embedding (as_linear)
    ("lora_embed", "llama", "lora", 1, 1e-3, 1,
     ["self_attn.q_proj", "model.embed_tokens", "lm_head"]),
    ("lora_embed_tied", "qwen3", "lora", 1, 1e-3, 1,
     ["self_attn.v_proj", "model.embed_tokens"]),
    ("dora_embed_tied", "qwen3", "dora", 1, 1e-3, 1,
     ["mlp.down_proj", "model.embed_tokens"]),
    # a bfloat16 base (the GPU's dtype): bf16 layers, float32 adapters
    ("lora_bf16", "llama-bf16", "lora", 2, 1e-3, 1),
    # blocks under `h.N` (mlx-lm's `layers` property)
    ("lora_gpt2", "gpt2", "lora", 2, 1e-3, 1),
]
LORA = {"rank": 4, "scale": 10.0, "dropout": 0.0}


def run_case(name, model_dir, ftype, num_layers, lr, accum, batches, keys=None):
    model, tok = load(str(ROOT / "models/tiny" / model_dir))
    mx.random.seed(0)
    model.freeze()
    if ftype == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
    else:
        cfg = dict(LORA)
        if keys is not None:
            cfg["keys"] = keys
        linear_to_lora_layers(model, num_layers, cfg, use_dora=ftype == "dora")
    init = dict(tree_flatten(model.trainable_parameters()))
    if ftype != "full":
        mx.save_safetensors(str(OUT / f"{name}_init.safetensors"), init)
    else:
        (OUT / f"{name}_trainable.json").write_text(json.dumps(sorted(init.keys()), indent=0))

    def it(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        for b in batches:
            yield mx.array(b["tokens"], dtype=mx.int32), mx.array(b["lengths"], dtype=mx.int32)

    cb = Losses()
    tmp = OUT / f".{name}_tmp"
    tmp.mkdir(exist_ok=True)
    args = TrainingArgs(
        batch_size=BATCH,
        iters=STEPS,
        steps_per_report=1,
        steps_per_eval=10**9,
        steps_per_save=10**9,
        adapter_file=str(tmp / "adapters.safetensors"),
        grad_accumulation_steps=accum,
    )
    train(
        model=model,
        optimizer=optim.Adam(learning_rate=lr),
        train_dataset=[0] * 4,
        val_dataset=None,
        args=args,
        iterate_batches=it,
        training_callback=cb,
    )
    return model, tok, cb.losses, tmp


DATA = {
    "completions": [
        {"prompt": "What is two plus two?", "completion": "Four."},
        {"prompt": "Name a colour.", "completion": "Teal, for example."},
    ],
    "chat": [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
        ]},
        {"messages": [{"role": "user", "content": "Weather?"},
                      {"role": "assistant", "content": "Sunny."}],
         "tools": [{"type": "function", "function": {"name": "get_weather",
                    "description": "Weather", "parameters": {"type": "object",
                    "properties": {"city": {"type": "string"}}}}}]},
    ],
    "text": [{"text": "Plain text to learn."}, {"text": "Another line."}],
}


def dataset_refs():
    """Tokens and prompt offsets of mlx-lm's datasets for each format."""
    import types
    from mlx_lm.tuner.datasets import create_dataset
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(ROOT / "models/tiny/llama")
    out = {}
    for name, rows in DATA.items():
        for mask in (False, True):
            if name == "text" and mask:
                continue
            ds = create_dataset(rows, tok, types.SimpleNamespace(mask_prompt=mask))
            out[f"{name}_{'mask' if mask else 'nomask'}"] = {
                "rows": rows,
                "mask_prompt": mask,
                "examples": [list(map(int, t)) + [o] for t, o in (ds.process(r) for r in rows)],
            }
    (OUT / "datasets.json").write_text(json.dumps(out))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    dataset_refs()
    batches = make_batches()
    (OUT / "batches.json").write_text(json.dumps(batches))
    refs = {"steps": STEPS, "lora_parameters": LORA, "cases": {}}
    for name, model_dir, ftype, nl, lr, accum, *keys in CASES:
        keys = keys[0] if keys else None
        model, tok, losses, tmp = run_case(name, model_dir, ftype, nl, lr, accum, batches, keys)
        refs["cases"][name] = {
            "model": model_dir,
            "fine_tune_type": ftype,
            "num_layers": nl,
            "learning_rate": lr,
            "grad_accumulation_steps": accum,
            "losses": losses,
        }
        if keys is not None:
            refs["cases"][name]["keys"] = keys
        print(name, ["%.4f" % l for l in losses[:3]], "...", "%.4f" % losses[-1])
        if name == "lora":
            # The mlx-lm-trained adapter fixture + its greedy tokens.
            d = OUT / "mlx_adapter"
            d.mkdir(exist_ok=True)
            shutil.copy(tmp / "adapters.safetensors", d / "adapters.safetensors")
            cfg = {
                "fine_tune_type": "lora",
                "num_layers": nl,
                "lora_parameters": LORA,
                "model": "models/tiny/llama",
            }
            (d / "adapter_config.json").write_text(json.dumps(cfg, indent=4))
            prompt = [5, 17, 99, 240, 3]
            toks = [
                r.token
                for r in stream_generate(
                    model, tok, prompt, max_tokens=12, sampler=make_sampler(0.0)
                )
            ]
            (d / "expected.json").write_text(
                json.dumps({"prompt": prompt, "tokens": toks}, indent=0)
            )
        shutil.rmtree(tmp)
    (OUT / "losses.json").write_text(json.dumps(refs, indent=1))


if __name__ == "__main__":
    main()
