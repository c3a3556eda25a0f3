#!/usr/bin/env python3
"""References for `mlxrs convert`: what Python `mlx_lm.convert` writes.

Regenerate (from the repository root, after ``scripts/py_env.sh``)::

    .venv/bin/python scripts/make_convert_refs.py
        # writes crates/mlxrs-lm/tests/data/convert/refs.json
    .venv/bin/python scripts/make_convert_refs.py --verify target/debug/mlxrs
        # also runs `mlxrs convert` on every case, compares the tensors, and
        # checks that Python mlx-lm loads the mlxrs output and greedily
        # generates the same tokens as from its own conversion

For every case in ``CASES`` (a tiny fixture from ``models/tiny`` and the
command-line flags, the same for both tools) the script runs
``mlx_lm.convert`` with those flags and records, per output tensor, its
dtype, shape and the SHA-256 of its bytes as stored in the safetensors file,
plus the parsed ``config.json`` and ``model.safetensors.index.json`` and the
SHA-256 of the config.json text. ``hf_mixtral`` is the ``mixtral`` fixture
written back in the Hugging Face layout (per-expert
``block_sparse_moe.experts.{e}.w1/w2/w3``) so that the conversion has to run
the model's ``sanitize``; the Rust test builds the same folder.

The Rust test (``crates/mlxrs-lm/tests/convert.rs``) converts with mlxrs
and compares against this file; it needs no Python.
"""

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny"
OUT = ROOT / "crates" / "mlxrs-lm" / "tests" / "data" / "convert" / "refs.json"

# (case name, fixture, flags)
CASES = [
    ("qwen3_plain", "qwen3", []),
    ("qwen3_bf16", "qwen3", ["--dtype", "bfloat16"]),
    ("qwen3_q4", "qwen3", ["-q"]),
    ("qwen3_q8_g32", "qwen3", ["-q", "--q-bits", "8", "--q-group-size", "32"]),
    ("qwen3_mxfp4", "qwen3", ["-q", "--q-mode", "mxfp4"]),
    ("qwen3_nvfp4", "qwen3", ["-q", "--q-mode", "nvfp4"]),
    ("qwen3_mxfp8", "qwen3", ["-q", "--q-mode", "mxfp8"]),
    ("qwen3_mixed_3_6", "qwen3", ["-q", "--quant-predicate", "mixed_3_6"]),
    ("llama_q4_f16", "llama", ["-q", "--dtype", "float16"]),
    ("llama_mixed_2_6", "llama", ["-q", "--quant-predicate", "mixed_2_6"]),
    ("llama_mixed_3_4_g32", "llama", ["-q", "--quant-predicate", "mixed_3_4", "--q-group-size", "32"]),
    ("llama_mixed_4_6", "llama", ["-q", "--quant-predicate", "mixed_4_6"]),
    ("gemma3_text_q4", "gemma3_text", ["-q", "--q-group-size", "32"]),
    ("qwen3_moe_q4", "qwen3_moe", ["-q"]),
    ("qwen3_moe_q4_g32", "qwen3_moe", ["-q", "--q-group-size", "32"]),
    ("qwen3_moe_mxfp4", "qwen3_moe", ["-q", "--q-mode", "mxfp4"]),
    ("qwen3_moe_nvfp4", "qwen3_moe", ["-q", "--q-mode", "nvfp4"]),
    ("qwen3_moe_mixed_3_6", "qwen3_moe", ["-q", "--quant-predicate", "mixed_3_6"]),
    ("mixtral_q4", "mixtral", ["-q"]),
    ("mixtral_mxfp8", "mixtral", ["-q", "--q-mode", "mxfp8"]),
    ("hf_mixtral_plain", "hf_mixtral", []),
    ("hf_mixtral_q4_bf16", "hf_mixtral", ["-q", "--q-group-size", "32", "--dtype", "bfloat16"]),
    ("gpt_oss_q4", "gpt_oss", ["-q", "--q-group-size", "32"]),
    ("deepseek_v3_q4_bf16", "deepseek_v3", ["-q", "--q-group-size", "32", "--dtype", "bfloat16"]),
    ("qwen3_dequant", "qwen3-4bit", ["-d"]),
    ("qwen3_moe_dequant", "qwen3_moe-4bit", ["-d"]),
    ("qwen3_moe_dequant_bf16", "qwen3_moe-4bit", ["-d", "--dtype", "bfloat16"]),
    ("qwen3_4bit_requant", "qwen3-4bit", ["-q", "--q-mode", "mxfp8"]),
]


def make_hf_mixtral(dst: Path):
    """The mixtral fixture in the Hugging Face layout (experts unstacked)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    src = TINY / "mixtral"
    dst.mkdir(parents=True, exist_ok=True)
    w = load_file(str(src / "model.safetensors"))
    out = {}
    names = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    for k, v in w.items():
        if ".block_sparse_moe.switch_mlp." in k:
            pre, rest = k.split(".switch_mlp.")
            proj, leaf = rest.split(".")
            for e in range(v.shape[0]):
                out[f"{pre}.experts.{e}.{names[proj]}.{leaf}"] = np.ascontiguousarray(v[e])
        else:
            out[k] = v
    save_file(out, str(dst / "model.safetensors"))
    for f in src.iterdir():
        if f.suffix == ".json" and f.name not in (
            "model.safetensors.index.json",
        ) and not f.name.startswith("reference"):
            shutil.copy(f, dst / f.name)


def fixture_path(name: str, tmp: Path) -> Path:
    if name == "hf_mixtral":
        p = tmp / "hf_mixtral"
        if not p.exists():
            make_hf_mixtral(p)
        return p
    return TINY / name


def tensor_records(folder: Path) -> dict:
    """name -> {dtype, shape, sha256, file} for every safetensors file."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        data = f.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            out[name] = {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "sha256": hashlib.sha256(data[base + a : base + b]).hexdigest(),
                "file": f.name,
            }
    return out


def metadata_of(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        data = f.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        out[f.name] = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return out


def record(folder: Path) -> dict:
    cfg_text = (folder / "config.json").read_text()
    return {
        "tensors": tensor_records(folder),
        "metadata": metadata_of(folder),
        "config": json.loads(cfg_text),
        "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
        "index": json.loads((folder / "model.safetensors.index.json").read_text()),
    }


def run_python(src: Path, dst: Path, flags):
    from mlx_lm.convert import configure_parser, convert

    args = configure_parser().parse_args(["--hf-path", str(src), "--mlx-path", str(dst), *flags])
    convert(**vars(args))


def greedy_tokens(folder: Path, n=12):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    model, tok = load(str(folder))
    ids = []
    prompt = tok.encode("Hello there, tell me")
    from mlx_lm.generate import generate_step
    import mlx.core as mx

    for (t, _), _ in zip(generate_step(mx.array(prompt), model, sampler=make_sampler(0.0)), range(n)):
        ids.append(int(t))
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", metavar="MLXRS_BIN", help="also run `mlxrs convert` and compare")
    ap.add_argument("--only", nargs="*", help="case names")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()

    import mlx.core as mx
    import mlx_lm

    refs = {
        "versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__},
        "cases": {},
    }
    failures = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name, fixture, flags in CASES:
            if a.only and name not in a.only:
                continue
            src = fixture_path(fixture, tmp)
            py_out = tmp / f"py_{name}"
            run_python(src, py_out, flags)
            rec = record(py_out)
            rec["fixture"] = fixture
            rec["flags"] = flags
            refs["cases"][name] = rec
            if a.verify:
                rs_out = tmp / f"rs_{name}"
                r = subprocess.run(
                    [a.verify, "convert", "--hf-path", str(src), "--mlx-path", str(rs_out), *flags],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    failures.append(name)
                    print(f"{name}: mlxrs failed: {r.stderr.strip()[-500:]}")
                    continue
                got = record(rs_out)
                same_t = got["tensors"] == rec["tensors"]
                same_c = got["config"] == rec["config"]
                same_cb = got["config_sha256"] == rec["config_sha256"]
                same_i = got["index"] == rec["index"]
                try:
                    py_tokens = greedy_tokens(py_out)
                    rs_tokens = greedy_tokens(rs_out)
                except RuntimeError as e:
                    # e.g. MLX's CPU GatherMM is float32-only (bf16 MoE)
                    py_tokens = rs_tokens = f"not run: {e}"
                ok = same_t and same_c and same_i and py_tokens == rs_tokens
                print(
                    f"{name:28s} tensors={same_t} config={same_c} config_bytes={same_cb} "
                    f"index={same_i} tokens_equal={py_tokens == rs_tokens} {rs_tokens}"
                )
                if not ok:
                    failures.append(name)
                    if not same_t:
                        for k in sorted(set(rec["tensors"]) | set(got["tensors"])):
                            if rec["tensors"].get(k) != got["tensors"].get(k):
                                print("   ", k, rec["tensors"].get(k), got["tensors"].get(k))
                    if not same_c or not same_i:
                        print("    py config:", json.dumps(rec["config"].get("quantization"))[:400])
                        print("    rs config:", json.dumps(got["config"].get("quantization"))[:400])
                        print("    py index meta:", rec["index"]["metadata"], "rs:", got["index"]["metadata"])
    if not a.no_write and not a.only:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(refs, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"wrote {OUT.relative_to(ROOT)} ({len(refs['cases'])} cases)")
    if failures:
        print("FAILED:", ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
