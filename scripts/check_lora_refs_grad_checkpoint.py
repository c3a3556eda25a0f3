"""mlx-lm's own trainer with `grad_checkpoint=True` on the cases of
`make_lora_refs.py` gives the committed reference losses
(crates/mlxrs-lm/tests/data/lora/losses.json, made without it): so those
references are also the ones for `mlxrs lora --grad-checkpoint`
(crates/mlxrs-lm/tests/lora.rs `grad_checkpoint_*`).

Run: .venv/bin/python scripts/check_lora_refs_grad_checkpoint.py
"""

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("refs", ROOT / "scripts/make_lora_refs.py")
refs_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refs_mod)
_TrainingArgs = refs_mod.TrainingArgs


def training_args(**kw):
    kw["grad_checkpoint"] = True
    return _TrainingArgs(**kw)


def main():
    refs_mod.TrainingArgs = training_args
    data = ROOT / "crates/mlxrs-lm/tests/data/lora"
    refs = json.loads((data / "losses.json").read_text())
    batches = json.loads((data / "batches.json").read_text())
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        refs_mod.OUT = Path(tmp)  # initial adapters / temp files go here
        for name, model_dir, ftype, nl, lr, accum in refs_mod.CASES:
            _, _, losses, _ = refs_mod.run_case(name, model_dir, ftype, nl, lr, accum, batches)
            want = refs["cases"][name]["losses"]
            worst = max(abs(a - b) for a, b in zip(losses, want))
            worst_all = max(worst_all, worst)
            print(f"{name}: mlx-lm with grad_checkpoint vs the committed losses: max |d| = {worst:.2e}")
    sys.exit(0 if worst_all <= 1e-6 else 1)


if __name__ == "__main__":
    main()
