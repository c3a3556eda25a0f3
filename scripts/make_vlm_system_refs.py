"""System-prompt rendering references for every tiny VLM fixture.

For each family in models/tiny-vlm, mlx-vlm's
``prompt_utils.apply_chat_template(processor, config, [system, user],
num_images=1)`` (what ``mlx_vlm.generate --system`` style callers build: the
system message goes through ``get_message_json`` like the user one, so
list-of-parts templates see it) is written to
crates/mlxrs-vlm/tests/data/system_prompt_refs.json; the Rust test
``system_prompt_reaches_every_template`` compares ``VlmModel::format_prompt``
with it.

Run: .venv/bin/python scripts/make_vlm_system_refs.py
"""

import json
from pathlib import Path

from mlx_vlm.prompt_utils import apply_chat_template
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "models" / "tiny-vlm"
OUT = ROOT / "crates" / "mlxrs-vlm" / "tests" / "data" / "system_prompt_refs.json"
SYSTEM = "You are a terse art critic."
PROMPT = "Describe this image."
FAMILIES = ["gemma3", "idefics3", "llava", "llava_next", "paligemma", "qwen2_5_vl", "qwen2_vl", "smolvlm"]


def main() -> None:
    cases = []
    for fam in FAMILIES:
        folder = FIXTURES / fam
        config = json.loads((folder / "config.json").read_text())
        # The processor's chat template is the tokenizer's (or
        # chat_template.json's); the tokenizer alone renders it (loading the
        # Qwen2-VL processor would need torchvision).
        processor = AutoTokenizer.from_pretrained(str(folder))
        ct = folder / "chat_template.json"
        if ct.exists():
            processor.chat_template = json.loads(ct.read_text())["chat_template"]
        # As `mlx_vlm.generate --system S --prompt P` builds it.
        msgs = [{"role": "system", "content": SYSTEM}, PROMPT]
        text = apply_chat_template(processor, config, msgs, num_images=1)
        if not isinstance(text, str):
            # PaliGemma: mlx-vlm keeps only the last message (no template).
            text = None
        cases.append({"family": fam, "text": text})
        print(fam, repr(text))
    OUT.write_text(json.dumps({"system": SYSTEM, "prompt": PROMPT, "cases": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
