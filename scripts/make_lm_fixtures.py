#!/usr/bin/env python3
"""Tiny, real-format LM checkpoints + Python references for the mlxrs LM tests.

Regenerate (from the repository root, after ``scripts/py_env.sh``)::

    .venv/bin/python scripts/make_lm_fixtures.py            # writes models/tiny/
    .venv/bin/python scripts/make_lm_fixtures.py --verify   # + reload/compare every folder
    .venv/bin/python scripts/make_lm_fixtures.py --out /tmp/x  # somewhere else

What it does, for every architecture in ``ARCHS``:

1. Builds one shared byte-level BPE tokenizer (``tokenizers`` library, Qwen2 /
   Llama-3 style: NFC normaliser, the Qwen2 split regex, ByteLevel bytes,
   ByteLevel decoder), trained deterministically on ``CORPUS`` below, with the
   special tokens of all the families appended after the 477 learned tokens
   (512 tokens in all).  Every family gets the same vocabulary/merges; the
   ``post_processor`` (BOS or not), the bos/eos/pad tokens and the chat
   template differ per family (``FAMILIES``).
2. Instantiates mlx-lm's own model class (``mlx_lm.models.<arch>.Model``
   through ``mlx_lm.utils._get_classes``) from a tiny HF-style config, fills
   every parameter from a seeded numpy RNG (``init_params``: seed =
   [crc32(arch name), salt], std ~ 1/sqrt(fan_in), norms ~ 1, routers and
   lm-head scaled up so logits are not degenerate; tied-embedding models get
   a small embedding and a large (gemma: zero-mean) final-norm scale,
   otherwise greedy decoding just repeats the last prompt token).  The
   per-arch ``salt`` values were picked once (lowest salt such that the
   float32 and 4-bit greedy runs have >= 10 / 8 distinct tokens and every
   top1-top2 logprob margin >= 0.03, so the argmax is not fragile) and are
   hard-coded.  The weights go into a staging "HF checkpoint" folder.
3. Runs ``mlx_lm.convert`` on the staging folder twice: float32 ->
   ``models/tiny/<name>/`` and ``quantize=True, q_group_size=32, q_bits=4``
   -> ``models/tiny/<name>-4bit/`` (mlx-lm's own quantisation including the
   model's ``quant_predicate``, e.g. 8-bit/g64 routers).  For llama a
   bfloat16 copy ``models/tiny/llama-bf16/`` is converted as well.
   transformers 5's ``save_pretrained`` (called inside convert) writes
   ``chat_template.jinja`` and a minimal tokenizer_config.json; the script
   replaces the tokenizer files afterwards by the canonical ones
   (tokenizer.json, tokenizer_config.json *with* ``chat_template``,
   special_tokens_map.json), i.e. the layout of the (transformers 4.x era)
   mlx-community repos.  Everything else (config.json, model.safetensors,
   model.safetensors.index.json, generation_config.json, README.md model
   card) is exactly what ``mlx_lm.convert`` wrote.
4. Reloads each folder with ``mlx_lm.load`` and ``transformers.AutoTokenizer``
   and writes ``reference.json`` (schema in ``models/tiny/README.md``):
   prompt ids, float32 last-position logits of a full (cache-less) forward,
   20 greedy tokens from ``mlx_lm.generate.generate_step`` (KV cache, argmax,
   EOS not honoured), and the chat template rendering + ids.
5. Writes ``models/tiny/README.md``.

Everything is deterministic: the output is byte-identical across runs on the
same package versions (checked by running twice and comparing sha256s).
Only the folders listed in ``ARCHS`` (+ ``-4bit`` / ``llama-bf16``) and the
README are touched inside the output directory.
"""

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import tokenizers
import transformers
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.convert import convert as mlx_convert
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import _get_classes
from mlx_lm.utils import load as mlx_load
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "tiny"

VOCAB_SIZE = 512
Q_GROUP_SIZE = 32
Q_BITS = 4
N_GREEDY = 20

# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you very much.",
    "You are a helpful assistant. Answer the question of the user.",
    "The user asked a question and the assistant gave a short answer.",
    "What is the capital of France? The capital of France is Paris.",
    "What is the capital of Japan? The capital of Japan is Tokyo.",
    "Machine learning models read tokens and predict the next token.",
    "A language model is trained on text from books, code and the web.",
    "In the beginning there was nothing, and then there was something.",
    "She sells sea shells by the sea shore; the shells she sells are sea shells.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 2024 3.14159 -7 1e-5",
    "def main():\n    print('hello, world')\n    return 0\n",
    "for i in range(10):\n    total += i * i\n",
    "if x > 0 and y < 0:\n    return x - y\nelse:\n    return None\n",
    '{"role": "user", "content": "hi"} [1, 2, 3] <tag> </tag> a+b=c',
    "Café, naïve, résumé, déjà vu, crème brûlée, façade, jalapeño.",
    "Über die Straße gehen wir schön langsam, grüß Gott!",
    "¿Dónde está la biblioteca? Está allí, señor.",
    "日本語のテキストです。東京は日本の首都です。",
    "中文测试：北京是中国的首都。你好，世界！",
    "Привет, мир! Москва — столица России.",
    "Emoji: 🙂 🚀 ❤️ 👍 🎉 — and math: ∑ ∫ √ π ≈ 3.14 ≤ ≥ ≠ ∞",
    "Réponds en français, s'il te plaît. Merci beaucoup !",
    "It's, I'm, you're, we've, they'll, he'd — contractions are common.",
]

# Appended after the BPE vocabulary, in this order (ids 477..511).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<s>",
    "</s>",
    "<unk>",
    "[INST]",
    "[/INST]",
    "<bos>",
    "<eos>",
    "<pad>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|startoftext|>",
    "<|start|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    "<|call|>",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",  # <｜begin▁of▁sentence｜>
    "<\uff5cend\u2581of\u2581sentence\uff5c>",  # <｜end▁of▁sentence｜>
    "<\uff5cUser\uff5c>",  # <｜User｜>
    "<\uff5cAssistant\uff5c>",  # <｜Assistant｜>
    "<|pad|>",
]
# Added but not special (decoded, not skipped), like Qwen3's think tags.
ADDED_TOKENS = ["<think>", "</think>"]

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_base_tokenizer() -> str:
    n_added = len(SPECIAL_TOKENS) + len(ADDED_TOKENS)
    tok = Tokenizer(models.BPE(byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(
                add_prefix_space=False, trim_offsets=False, use_regex=False
            ),
        ]
    )
    tok.decoder = decoders.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - n_added,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE - n_added, tok.get_vocab_size()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in SPECIAL_TOKENS
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False)
            for t in ADDED_TOKENS
        ]
    )
    assert tok.get_vocab_size() == VOCAB_SIZE
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    return tok.to_str()


def family_tokenizer_json(base: str, bos_in_post_processor) -> str:
    tok = Tokenizer.from_str(base)
    if bos_in_post_processor:
        b = bos_in_post_processor
        bid = tok.token_to_id(b)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(
                    add_prefix_space=False, trim_offsets=False, use_regex=False
                ),
                processors.TemplateProcessing(
                    single=f"{b}:0 $A:0",
                    pair=f"{b}:0 $A:0 {b}:1 $B:1",
                    special_tokens=[(b, bid)],
                ),
            ]
        )
    # compact (tokenizers' own serialisation, not pretty-printed) to keep the
    # 27 copies small
    return tok.to_str(pretty=False)


# --------------------------------------------------------------------------
# Chat templates (in the spirit of the real family templates)
# --------------------------------------------------------------------------

LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Only user and assistant roles are supported after the system message!') }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

MISTRAL_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'].strip() + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

QWEN2_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role != "system" %}
        {{- raise_exception('Unknown role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role != "system" %}
        {{- raise_exception('Unknown role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

SMOLLM3_TEMPLATE = r"""{%- if enable_thinking is defined and enable_thinking is false %}
    {%- set reasoning_mode = "/no_think" %}
{%- else %}
    {%- set reasoning_mode = "/think" %}
{%- endif %}
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content | trim %}
    {%- if "/no_think" in system_message %}
        {%- set reasoning_mode = "/no_think" %}
    {%- elif "/think" in system_message %}
        {%- set reasoning_mode = "/think" %}
    {%- endif %}
    {%- set system_message = system_message.replace("/no_think", "").replace("/think", "").rstrip() %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: " + reasoning_mode + "\n\n## Custom Instructions\n\n" + system_message + "\n\n<|im_end|>\n" }}
{%- for message in loop_messages %}
    {%- if message.role == "user" %}
        {{- "<|im_start|>user\n" + message.content + "<|im_end|>\n" }}
    {%- elif message.role == "assistant" %}
        {%- if reasoning_mode == "/think" %}
            {{- "<|im_start|>assistant\n" + message.content.lstrip("\n") + "<|im_end|>\n" }}
        {%- else %}
            {{- "<|im_start|>assistant\n<think>\n\n</think>\n" + message.content.lstrip("\n") + "<|im_end|>\n" }}
        {%- endif %}
    {%- else %}
        {{- raise_exception("Unknown role: " + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {%- if reasoning_mode == "/think" %}
        {{- "<|im_start|>assistant\n" }}
    {%- else %}
        {{- "<|im_start|>assistant\n<think>\n\n</think>\n" }}
    {%- endif %}
{%- endif %}
"""

OLMO2_TEMPLATE = r"""{{- bos_token }}
{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\nYou are OLMo 2, a helpful and harmless AI Assistant built by the Allen Institute for AI.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

PHI3_TEMPLATE = r"""{%- for message in messages %}
    {%- if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}
        {{- '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}
    {%- elif message['role'] in ['system', 'user', 'assistant'] %}
        {{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}
    {%- else %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- else %}
    {{- eos_token }}
{%- endif %}
"""

GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

GEMMA2_TEMPLATE = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_prefix = messages[0]['content'].strip() + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set system_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (system_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"""

GPT_OSS_TEMPLATE = r"""{#- Simplified harmony format (gpt-oss) -#}
{%- if reasoning_effort is not defined %}
    {%- set reasoning_effort = "medium" %}
{%- endif %}
{{- "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: " + reasoning_effort + "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>" }}
{%- if messages[0].role == "system" or messages[0].role == "developer" %}
    {{- "<|start|>developer<|message|># Instructions\n\n" + messages[0].content.strip() + "<|end|>" }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == "user" %}
        {{- "<|start|>user<|message|>" + message.content + "<|end|>" }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if "</think>" in content %}
            {%- set content = content.split("</think>")[-1].strip() %}
        {%- endif %}
        {{- "<|start|>assistant<|channel|>final<|message|>" + content + "<|end|>" }}
    {%- else %}
        {{- raise_exception("Unsupported role: " + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start|>assistant" }}
{%- endif %}
"""

DEEPSEEK_V3_TEMPLATE = r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_first_sp=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- elif message['role'] == 'assistant' %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- elif message['role'] != 'system' %}{{ raise_exception('Unknown role: ' + message['role']) }}{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜>'}}{% endif %}"""

BOS_DS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS_DS = "<\uff5cend\u2581of\u2581sentence\uff5c>"

# bos_pp: BOS token the tokenizer.json post_processor prepends on encode (None: none)
FAMILIES = {
    "llama3": dict(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        unk=None,
        bos_pp="<|begin_of_text|>",
        gen_eos=["<|end_of_text|>", "<|eot_id|>"],
        template=LLAMA3_TEMPLATE,
    ),
    "mistral": dict(
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        bos_pp="<s>",
        gen_eos=["</s>"],
        template=MISTRAL_TEMPLATE,
        extra={"add_bos_token": True, "add_eos_token": False},
    ),
    "qwen2": dict(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|im_end|>", "<|endoftext|>"],
        template=QWEN2_TEMPLATE,
        extra={"errors": "replace", "split_special_tokens": False},
    ),
    "qwen3": dict(
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|im_end|>", "<|endoftext|>"],
        template=QWEN3_TEMPLATE,
        extra={"errors": "replace", "split_special_tokens": False},
    ),
    "smollm3": dict(
        bos=None,
        eos="<|im_end|>",
        pad="<|pad|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|im_end|>"],
        template=SMOLLM3_TEMPLATE,
    ),
    "olmo2": dict(
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        pad="<|pad|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|endoftext|>", "<|im_end|>"],
        template=OLMO2_TEMPLATE,
    ),
    "phi3": dict(
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|endoftext|>", "<|end|>"],
        template=PHI3_TEMPLATE,
        extra={"add_bos_token": False, "add_eos_token": False},
    ),
    "gemma2": dict(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        bos_pp="<bos>",
        gen_eos=["<eos>", "<end_of_turn>"],
        template=GEMMA2_TEMPLATE,
        extra={"add_bos_token": True, "add_eos_token": False},
    ),
    "gemma3": dict(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        bos_pp="<bos>",
        gen_eos=["<eos>", "<end_of_turn>"],
        template=GEMMA3_TEMPLATE,
        extra={"add_bos_token": True, "add_eos_token": False},
    ),
    "gpt_oss": dict(
        bos="<|startoftext|>",
        eos="<|return|>",
        pad="<|endoftext|>",
        unk=None,
        bos_pp=None,
        gen_eos=["<|return|>", "<|endoftext|>", "<|call|>"],
        template=GPT_OSS_TEMPLATE,
    ),
    "deepseek_v3": dict(
        bos=BOS_DS,
        eos=EOS_DS,
        pad=EOS_DS,
        unk=None,
        bos_pp=BOS_DS,
        gen_eos=[EOS_DS],
        template=DEEPSEEK_V3_TEMPLATE,
        extra={"add_bos_token": True, "add_eos_token": False},
    ),
}

PROMPT = (
    "The quick brown fox jumps over the lazy dog. "
    "Café déjà vu — 日本語 🙂 and 12345 tokens!"
)

MESSAGES = [
    {"role": "system", "content": "  You are a terse assistant. Answer in one sentence.  \n"},
    {"role": "user", "content": "What is the capital of France?"},
    {
        "role": "assistant",
        "content": "<think>\nEasy geography.\n</think>\n\nThe capital of France is Paris.",
    },
    {"role": "user", "content": "And of Japan? Réponds en français, s'il te plaît 🙂"},
]

# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------

COMMON = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=512,
    initializer_range=0.02,
    use_cache=True,
    torch_dtype="float32",
)

ARCHS = [
    dict(
        name="llama",
        init=dict(salt=0),
        family="llama3",
        notes="Llama-3.1 style: GQA 4q/2kv, rope_scaling llama3 (factor 8, original 64 so all three frequency bands occur at head_dim 16), rope_theta 5e5, untied lm_head",
        config=dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_bias=False,
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            mlp_bias=False,
            pretraining_tp=1,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                factor=8.0,
                high_freq_factor=4.0,
                low_freq_factor=1.0,
                original_max_position_embeddings=64,
                rope_type="llama3",
            ),
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="mistral",
        init=dict(salt=4),
        family="mistral",
        notes="Mistral-7B-v0.3 style (model_type mistral -> mlx_lm.models.llama): rope_theta 1e6, sliding_window null, untied, [INST] template",
        config=dict(
            architectures=["MistralForCausalLM"],
            model_type="mistral",
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="qwen2",
        init=dict(emb_std=0.1, final_norm=4.0, salt=12),
        family="qwen2",
        notes="Qwen2.5 style: q/k/v biases (no o bias), tied embeddings, rope_theta 1e6, use_sliding_window false",
        config=dict(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            attention_dropout=0.0,
            hidden_act="silu",
            max_window_layers=2,
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=1000000.0,
            sliding_window=512,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    ),
    dict(
        name="qwen3",
        init=dict(emb_std=0.1, final_norm=4.0, salt=0),
        family="qwen3",
        notes="Qwen3 style: per-head q_norm/k_norm (RMSNorm over head_dim), head_dim 32 != hidden/heads, tied, rope_theta 1e6",
        config=dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            attention_bias=False,
            attention_dropout=0.0,
            head_dim=32,
            hidden_act="silu",
            max_window_layers=2,
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=1000000.0,
            sliding_window=None,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    ),
    dict(
        name="qwen3_moe",
        init=dict(salt=2),
        family="qwen3",
        notes="Qwen3-MoE style: 4 experts top-2, norm_topk_prob, moe_intermediate 32, per-head q/k norm, untied; 4-bit: router 8-bit/g64 via quant_predicate",
        config=dict(
            architectures=["Qwen3MoeForCausalLM"],
            model_type="qwen3_moe",
            attention_bias=False,
            attention_dropout=0.0,
            decoder_sparse_step=1,
            head_dim=16,
            hidden_act="silu",
            max_window_layers=2,
            mlp_only_layers=[],
            moe_intermediate_size=32,
            norm_topk_prob=True,
            num_experts=4,
            num_experts_per_tok=2,
            output_router_logits=False,
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=1000000.0,
            router_aux_loss_coef=0.001,
            sliding_window=None,
            tie_word_embeddings=False,
            use_sliding_window=False,
        ),
    ),
    dict(
        name="gemma",
        init=dict(emb_std=0.1, final_norm=0.0, final_norm_std=2.0, salt=0),
        family="gemma2",
        notes="Gemma (1) style: (1+w) RMSNorm, embed*sqrt(hidden), exact-GELU gated MLP (mlx-lm's gemma.py; hidden_act gelu), MQA 4q/1kv, head_dim 32 != hidden/heads, tied; also PaliGemma's text side",
        config=dict(
            architectures=["GemmaForCausalLM"],
            model_type="gemma",
            num_key_value_heads=1,
            attention_bias=False,
            attention_dropout=0.0,
            head_dim=32,
            hidden_act="gelu",
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="gemma2",
        init=dict(emb_std=0.1, qk_gain=2.0, final_norm=0.0, final_norm_std=4.0, salt=0),
        family="gemma2",
        notes="Gemma-2 style: (1+w) RMSNorm, 4 norms per block, embed*sqrt(hidden), gelu_tanh, attn softcap 50, final softcap 30, query_pre_attn_scalar 64 != head_dim 32, tied; sliding_window 4096 (ignored by mlx-lm)",
        config=dict(
            architectures=["Gemma2ForCausalLM"],
            model_type="gemma2",
            attention_bias=False,
            attention_dropout=0.0,
            attn_logit_softcapping=50.0,
            cache_implementation="hybrid",
            final_logit_softcapping=30.0,
            head_dim=32,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=64,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            sliding_window=4096,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="gemma3_text",
        init=dict(emb_std=0.1, final_norm=0.0, final_norm_std=2.0, salt=2),
        family="gemma3",
        notes="Gemma-3 text style: hidden 96 (sqrt(96) rounded to bf16 for the embed scale), MQA 4q/1kv, head_dim 16 != hidden/heads, q/k (1+w) norms, layer 0 sliding (window 16, local rope base 1e4) / layer 1 global (rope 1e6), tied (no lm_head in file)",
        config=dict(
            architectures=["Gemma3ForCausalLM"],
            model_type="gemma3_text",
            hidden_size=96,
            num_key_value_heads=1,
            attention_bias=False,
            attention_dropout=0.0,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            head_dim=16,
            hidden_activation="gelu_pytorch_tanh",
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
            rms_norm_eps=1e-6,
            rope_local_base_freq=10000.0,
            rope_scaling=None,
            rope_theta=1000000.0,
            sliding_window=16,
            sliding_window_pattern=2,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="phi3",
        init=dict(emb_std=0.1, final_norm=4.0, salt=1),
        family="phi3",
        notes="Phi-4-mini style: fused qkv_proj and gate_up_proj, partial_rotary_factor 0.75 (12 of 16 dims), longrope (mlx-lm always uses long_factor + mscale), tied",
        config=dict(
            architectures=["Phi3ForCausalLM"],
            model_type="phi3",
            attention_bias=False,
            attention_dropout=0.0,
            embd_pdrop=0.0,
            hidden_act="silu",
            original_max_position_embeddings=32,
            partial_rotary_factor=0.75,
            resid_pdrop=0.0,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                long_factor=[1.0, 1.25, 1.5, 2.5, 4.0, 6.0],
                short_factor=[1.0, 1.0, 1.05, 1.1, 1.2, 1.4],
                type="longrope",
            ),
            rope_theta=10000.0,
            sliding_window=None,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="mixtral",
        init=dict(branch_gain=2.0, salt=1),
        family="mistral",
        notes="Mixtral style: 4 experts top-2 (top-k on router logits, softmax over the k), block_sparse_moe naming, untied",
        config=dict(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            attention_dropout=0.0,
            hidden_act="silu",
            intermediate_size=32,
            num_experts_per_tok=2,
            num_local_experts=4,
            output_router_logits=False,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
            router_aux_loss_coef=0.02,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="olmo2",
        init=dict(salt=1),
        family="olmo2",
        notes="OLMo-2 style: no pre-norms, post_attention/post_feedforward norms on the branch outputs, q_norm/k_norm over the whole projection (n_heads*head_dim), untied",
        config=dict(
            architectures=["Olmo2ForCausalLM"],
            model_type="olmo2",
            attention_bias=False,
            attention_dropout=0.0,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="smollm3",
        init=dict(emb_std=0.1, final_norm=4.0, salt=4),
        family="smollm3",
        notes="SmolLM3 style: llama body, no_rope_layers [1, 0] (layer 1 is NoPE), tied, rope_theta 5e6",
        config=dict(
            architectures=["SmolLM3ForCausalLM"],
            model_type="smollm3",
            attention_bias=False,
            attention_dropout=0.0,
            hidden_act="silu",
            layer_types=["full_attention", "full_attention"],
            mlp_bias=False,
            no_rope_layer_interval=4,
            no_rope_layers=[1, 0],
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=5000000.0,
            sliding_window=None,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    ),
    dict(
        name="gpt_oss",
        init=dict(salt=2),
        family="gpt_oss",
        notes="gpt-oss style: attention sinks, q/k/v/o biases, alternating sliding(8)/full layers, yarn rope (factor 8, original 64), 4 experts top-2 with biases and clamped SwiGLU (alpha 1.702, limit 7, (up+1)), router with bias (8-bit/g64 in 4-bit), untied",
        config=dict(
            architectures=["GptOssForCausalLM"],
            model_type="gpt_oss",
            attention_bias=True,
            attention_dropout=0.0,
            experts_per_token=2,
            head_dim=16,
            hidden_act="silu",
            initial_context_length=64,
            intermediate_size=32,
            layer_types=["sliding_attention", "full_attention"],
            num_experts_per_tok=2,
            num_local_experts=4,
            output_router_logits=False,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                beta_fast=32.0,
                beta_slow=1.0,
                factor=8.0,
                original_max_position_embeddings=64,
                rope_type="yarn",
                truncate=False,
            ),
            rope_theta=150000,
            router_aux_loss_coef=0.9,
            sliding_window=8,
            swiglu_limit=7.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="deepseek_v3",
        init=dict(salt=2),
        family="deepseek_v3",
        notes="DeepSeek-V3 style: MLA (q_lora 32, kv_lora 32, qk_nope 32, qk_rope 16 interleaved/traditional rope, v_head 16; kv_b_proj pre-split to embed_q/unembed_out), yarn (factor 8, mscale_all_dim 1), layer 0 dense / layer 1 MoE: 8 routed experts top-2 in 4 groups (topk_group 2), sigmoid + e_score_correction_bias, routed_scaling 2.5, 1 shared expert, untied",
        config=dict(
            architectures=["DeepseekV3ForCausalLM"],
            model_type="deepseek_v3",
            num_key_value_heads=4,
            attention_bias=False,
            attention_dropout=0.0,
            ep_size=1,
            first_k_dense_replace=1,
            hidden_act="silu",
            kv_lora_rank=32,
            moe_intermediate_size=32,
            moe_layer_freq=1,
            n_group=4,
            n_routed_experts=8,
            n_shared_experts=1,
            norm_topk_prob=True,
            num_experts_per_tok=2,
            num_nextn_predict_layers=0,
            q_lora_rank=32,
            qk_nope_head_dim=32,
            qk_rope_head_dim=16,
            rms_norm_eps=1e-6,
            rope_scaling=dict(
                beta_fast=32,
                beta_slow=1,
                factor=8.0,
                mscale=1.0,
                mscale_all_dim=1.0,
                original_max_position_embeddings=64,
                type="yarn",
            ),
            rope_theta=10000.0,
            routed_scaling_factor=2.5,
            scoring_func="sigmoid",
            tie_word_embeddings=False,
            topk_group=2,
            topk_method="noaux_tc",
            v_head_dim=16,
        ),
    ),
    dict(
        name="granite",
        init=dict(salt=1),
        family="llama3",
        notes="Granite-3 style: llama body with embedding_multiplier 4, attention_multiplier 0.2 (the attention scale), residual_multiplier 0.5, logits divided by logits_scaling 2, q/k/v/o + mlp biases, untied",
        config=dict(
            architectures=["GraniteForCausalLM"],
            model_type="granite",
            attention_bias=True,
            attention_dropout=0.0,
            attention_multiplier=0.2,
            embedding_multiplier=4.0,
            hidden_act="silu",
            logits_scaling=2.0,
            mlp_bias=True,
            residual_multiplier=0.5,
            rms_norm_eps=1e-5,
            rope_scaling=None,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="helium",
        init=dict(salt=0),
        family="mistral",
        notes="Helium style: llama body with interleaved (traditional) RoPE, q/k/v biases but no o_proj bias, mlp bias, always an lm_head",
        config=dict(
            architectures=["HeliumForCausalLM"],
            model_type="helium",
            attention_bias=True,
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            mlp_bias=True,
            rms_norm_eps=1e-8,
            rope_theta=20000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="internlm3",
        init=dict(salt=3),
        family="qwen2",
        notes="InternLM3 style: llama body, qkv_bias on q/k/v/o, bias on the MLP, rope_scaling linear (factor 2), untied",
        config=dict(
            architectures=["InternLM3ForCausalLM"],
            model_type="internlm3",
            bias=True,
            head_dim=16,
            hidden_act="silu",
            qkv_bias=True,
            rms_norm_eps=1e-5,
            rope_scaling=dict(factor=2.0, rope_type="linear"),
            rope_theta=50000000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="olmo3",
        init=dict(salt=9),
        family="olmo2",
        notes="OLMo-3 style: OLMo-2 blocks (post-branch norms, q/k norms over the whole projection), layer 0 sliding (window 16, plain rope), layer 1 full (yarn rope factor 8, original 64), untied",
        config=dict(
            architectures=["Olmo3ForCausalLM"],
            model_type="olmo3",
            attention_bias=False,
            attention_dropout=0.0,
            hidden_act="silu",
            layer_types=["sliding_attention", "full_attention"],
            rms_norm_eps=1e-6,
            rope_scaling=dict(
                attention_factor=1.0,
                beta_fast=32.0,
                beta_slow=1.0,
                factor=8.0,
                original_max_position_embeddings=64,
                rope_type="yarn",
            ),
            rope_theta=500000.0,
            sliding_window=16,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="starcoder2",
        init=dict(salt=10),
        family="qwen2",
        notes="StarCoder2 style: pre-LayerNorm (with bias) blocks, biased q/k/v/o, GQA 4q/2kv, exact-GELU MLP c_fc/c_proj with biases, rope_theta 1e5, untied",
        config=dict(
            architectures=["Starcoder2ForCausalLM"],
            model_type="starcoder2",
            attention_dropout=0.0,
            hidden_act="gelu_pytorch_tanh",
            norm_epsilon=1e-5,
            rope_theta=100000.0,
            sliding_window=None,
            tie_word_embeddings=False,
            use_bias=True,
        ),
    ),
    dict(
        name="stablelm",
        init=dict(salt=13),
        family="qwen2",
        notes="StableLM-2 style: pre-LayerNorm blocks, partial_rotary_factor 0.25 (4 of 16 dims), q/k/v biases (no o bias), SwiGLU MLP, untied lm_head",
        config=dict(
            architectures=["StableLmForCausalLM"],
            model_type="stablelm",
            hidden_act="silu",
            layer_norm_eps=1e-5,
            partial_rotary_factor=0.25,
            qk_layernorm=False,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            use_parallel_residual=False,
            use_qkv_bias=True,
        ),
    ),
    dict(
        name="phi",
        init=dict(salt=2),
        family="phi3",
        notes="Phi-2 style: one LayerNorm feeding attention and MLP in parallel, biased q/k/v/dense, partial_rotary_factor 0.5 (8 of 16 dims), tanh-GELU MLP fc1/fc2, final_layernorm, lm_head with bias, MHA",
        config=dict(
            architectures=["PhiForCausalLM"],
            model_type="phi",
            num_key_value_heads=4,
            attention_dropout=0.0,
            embd_pdrop=0.0,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            partial_rotary_factor=0.5,
            qk_layernorm=False,
            resid_pdrop=0.0,
            rope_scaling=None,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="cohere",
        init=dict(emb_std=0.1, final_norm=4.0, salt=2),
        family="llama3",
        notes="Command-R style: one bias-free LayerNorm feeding attention and SwiGLU MLP in parallel, interleaved (traditional) RoPE, always tied, logits * logit_scale 0.5",
        config=dict(
            architectures=["CohereForCausalLM"],
            model_type="cohere",
            attention_bias=False,
            attention_dropout=0.0,
            hidden_act="silu",
            layer_norm_bias=False,
            layer_norm_eps=1e-5,
            logit_scale=0.5,
            rope_theta=8000000.0,
            tie_word_embeddings=True,
            use_qk_norm=False,
        ),
    ),
    dict(
        name="glm4",
        init=dict(salt=2),
        family="qwen2",
        notes="GLM-4-0414 style: four RMSNorms per block (post-branch norms), q/k/v biases (no o bias), partial_rotary_factor 0.5 interleaved RoPE, fused gate_up_proj, head_dim 16, untied",
        config=dict(
            architectures=["Glm4ForCausalLM"],
            model_type="glm4",
            attention_bias=True,
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            partial_rotary_factor=0.5,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="minicpm",
        init=dict(final_norm=4.0, salt=0),
        family="llama3",
        notes="MiniCPM style: llama body without biases, muP scales (scale_emb 4, residual scale_depth 1.4 / sqrt(2 layers), hidden / (hidden / dim_model_base 16) before the untied lm_head)",
        config=dict(
            architectures=["MiniCPMForCausalLM"],
            model_type="minicpm",
            attention_bias=False,
            dim_model_base=16,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_scaling=None,
            rope_theta=10000.0,
            scale_depth=1.4,
            scale_emb=4.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="seed_oss",
        init=dict(salt=9),
        family="qwen2",
        notes="Seed-OSS style: llama body with q/k/v biases (attention_bias) but no o bias (attention_out_bias false), head_dim 32 != hidden/heads, untied",
        config=dict(
            architectures=["SeedOssForCausalLM"],
            model_type="seed_oss",
            attention_bias=True,
            attention_dropout=0.0,
            attention_out_bias=False,
            head_dim=32,
            hidden_act="silu",
            mlp_bias=False,
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=10000000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="ernie4_5",
        init=dict(emb_std=0.1, final_norm=4.0, salt=10),
        family="llama3",
        notes="ERNIE-4.5 dense style: llama body with use_bias on q/k/v/o and the MLP, interleaved (traditional) RoPE, tied",
        config=dict(
            architectures=["Ernie4_5ForCausalLM"],
            model_type="ernie4_5",
            head_dim=16,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            use_bias=True,
        ),
    ),
    dict(
        name="gpt2",
        # salt 3: the best of 0..39 (tied, 2 layers: the 4-bit copy gives only
        # 6 distinct greedy tokens; every margin >= 0.06)
        init=dict(emb_std=0.1, final_norm=4.0, salt=3),
        family="qwen2",
        notes="GPT-2 style: learned positions (wpe, n_positions 128), pre-LayerNorm blocks, fused c_attn (MHA 4 heads), tanh-GELU MLP 4x, ln_f, tied wte (n_embd 64, n_layer 2)",
        config=dict(
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            n_ctx=128,
            n_embd=64,
            n_head=4,
            n_layer=2,
            n_positions=128,
            num_key_value_heads=4,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="gpt_bigcode",
        init=dict(salt=5),
        family="qwen2",
        notes="GPT-BigCode (StarCoder 1) style: learned positions (n_positions 128), multi-query fused c_attn (4 q heads, 1 k/v head), exact-GELU MLP n_inner 64, weights under transformer., untied lm_head",
        config=dict(
            architectures=["GPTBigCodeForCausalLM"],
            model_type="gpt_bigcode",
            activation_function="gelu_pytorch_tanh",
            attention_bias=True,
            layer_norm_epsilon=1e-5,
            mlp_bias=True,
            multi_query=True,
            n_embd=64,
            n_head=4,
            n_inner=64,
            n_layer=2,
            n_positions=128,
            num_key_value_heads=1,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="qwen2_moe",
        init=dict(salt=0),
        family="qwen2",
        notes="Qwen1.5-MoE style: q/k/v biases, 4 experts top-2 (softmax, no renormalisation), moe_intermediate 32, shared expert (intermediate 48) gated by sigmoid(shared_expert_gate), untied; 4-bit: routers 8-bit/g64",
        config=dict(
            architectures=["Qwen2MoeForCausalLM"],
            model_type="qwen2_moe",
            attention_dropout=0.0,
            decoder_sparse_step=1,
            hidden_act="silu",
            mlp_only_layers=[],
            moe_intermediate_size=32,
            norm_topk_prob=False,
            num_experts=4,
            num_experts_per_tok=2,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            shared_expert_intermediate_size=48,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="exaone",
        init=dict(salt=4),
        family="llama3",
        notes="EXAONE-3.5 style: llama body under transformer.wte / h.{i}.attn.attention.{q,k,v,out}_proj / mlp.c_fc_0,c_fc_1,c_proj / ln_f, rope_scaling llama3 (factor 8, original 64), untied",
        config=dict(
            architectures=["ExaoneForCausalLM"],
            model_type="exaone",
            activation_function="silu",
            attention_dropout=0.0,
            head_dim=16,
            layer_norm_epsilon=1e-5,
            num_layers=2,
            rope_scaling=dict(
                factor=8.0,
                high_freq_factor=4.0,
                low_freq_factor=1.0,
                original_max_position_embeddings=64,
                rope_type="llama3",
            ),
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="gpt_neox",
        init=dict(salt=3),
        family="qwen2",
        notes="Pythia / GPT-NeoX style: fused query_key_value laid out per head, rotary_pct 0.25 (4 of 16 dims), parallel residual with two LayerNorms, tanh-GELU MLP 4x, biased dense, output projection model.embed_out, MHA",
        config=dict(
            architectures=["GPTNeoXForCausalLM"],
            model_type="gpt_neox",
            attention_bias=True,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            num_key_value_heads=4,
            rotary_emb_base=10000,
            rotary_pct=0.25,
            tie_word_embeddings=False,
            use_parallel_residual=True,
        ),
    ),
    dict(
        name="mimo",
        init=dict(salt=6),
        family="qwen2",
        notes="MiMo style: Qwen2 block (q/k/v biases, no o bias), num_nextn_predict_layers 1 (MTP layers dropped by sanitize), rope_theta 640000, untied",
        config=dict(
            architectures=["MiMoForCausalLM"],
            model_type="mimo",
            attention_dropout=0.0,
            hidden_act="silu",
            num_nextn_predict_layers=1,
            rms_norm_eps=1e-5,
            rope_theta=640000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="exaone4",
        init=dict(salt=12),
        family="llama3",
        notes="EXAONE-4 style: no pre-norms (post-branch RMSNorms), per-head q/k RMSNorm, sliding_window_pattern LG: layer 0 local (window 16, RoPE), layer 1 global without positional encoding (NoPE), head_dim 16, untied",
        config=dict(
            architectures=["Exaone4ForCausalLM"],
            model_type="exaone4",
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_scaling=None,
            rope_theta=1000000.0,
            # layer_types too: transformers' Exaone4Config derives them from an
            # integer pattern and fails on mlx-lm's string one
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=16,
            sliding_window_pattern="LG",
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="cohere2",
        init=dict(emb_std=0.1, final_norm=4.0, salt=5),
        family="llama3",
        notes="Command-R7B style: cohere's parallel bias-free-LayerNorm blocks, sliding_window_pattern 2: layer 0 sliding (window 16, interleaved RoPE), layer 1 global without positional encoding, head_dim 16, always tied, logit_scale 0.5",
        config=dict(
            architectures=["Cohere2ForCausalLM"],
            model_type="cohere2",
            attention_bias=False,
            attention_dropout=0.0,
            head_dim=16,
            hidden_act="silu",
            layer_norm_bias=False,
            layer_norm_eps=1e-5,
            layer_types=["sliding_attention", "full_attention"],
            logit_scale=0.5,
            rope_theta=50000.0,
            sliding_window=16,
            sliding_window_pattern=2,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="internlm2",
        init=dict(final_norm=3.0, salt=2),
        family="qwen2",
        notes="InternLM2.5 style: fused wqkv grouped per kv head ([2 kv heads, 2 q + k + v, 16]), biases on wqkv/wo, w1/w3/w2 SwiGLU, InternLM names (tok_embeddings, attention_norm, ffn_norm, output), rope_scaling dynamic (factor 2.0), untied",
        config=dict(
            architectures=["InternLM2ForCausalLM"],
            model_type="internlm2",
            bias=True,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_scaling=dict(factor=2.0, type="dynamic"),
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="nemotron",
        init=dict(salt=0),
        family="llama3",
        notes="Nemotron / Minitron style: LayerNorm1P (scale stored minus one, with bias), partial_rotary_factor 0.5 (8 of 16 dims), squared-ReLU MLP up/down, rope_scaling linear (factor 2), untied",
        config=dict(
            architectures=["NemotronForCausalLM"],
            model_type="nemotron",
            attention_bias=False,
            head_dim=16,
            hidden_act="relu2",
            mlp_bias=False,
            norm_eps=1e-5,
            partial_rotary_factor=0.5,
            rope_scaling=dict(factor=2.0, type="linear"),
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="granitemoe",
        init=dict(salt=12),
        family="llama3",
        notes="Granite-3 MoE style: granite multipliers (embedding 4, attention 0.2, residual 0.5, logits / 2), 4 experts top-2 (top-k on router logits, softmax over the k), intermediate 64 (the quant_predicate's 8-bit/g64 experts' down_proj needs a multiple of 64), untied; 4-bit: router, o_proj, experts' down_proj 8-bit/g64",
        config=dict(
            architectures=["GraniteMoeForCausalLM"],
            model_type="granitemoe",
            attention_bias=False,
            attention_dropout=0.0,
            attention_multiplier=0.2,
            embedding_multiplier=4.0,
            hidden_act="silu",
            intermediate_size=64,
            logits_scaling=2.0,
            num_experts_per_tok=2,
            num_local_experts=4,
            residual_multiplier=0.5,
            rms_norm_eps=1e-6,
            rope_scaling=None,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="olmoe",
        init=dict(salt=5),
        family="olmo2",
        notes="OLMoE style: pre-norm blocks, q/k RMSNorm over the whole projection, 4 experts top-2 (softmax, norm_topk_prob false), intermediate 32, untied; 4-bit: router 8-bit/g64",
        config=dict(
            architectures=["OlmoeForCausalLM"],
            model_type="olmoe",
            attention_bias=False,
            attention_dropout=0.0,
            clip_qkv=None,
            hidden_act="silu",
            intermediate_size=32,
            norm_topk_prob=False,
            num_experts=4,
            num_experts_per_tok=2,
            rms_norm_eps=1e-5,
            rope_scaling=None,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    # ---- state-space / hybrid models (``ssm=True``: reference.json also
    # gets a long prompt (> one SSD chunk of 256 and several prefill chunks
    # of SSM_PREFILL_STEP) and the f32 folder a prompt_cache.safetensors
    # written by mlx-lm's save_prompt_cache) ----
    dict(
        name="mamba",
        ssm=True,
        init=dict(final_norm=2.0, salt=3),
        family="qwen2",
        notes="Mamba-1 style: no attention; in_proj -> depthwise causal conv (kernel 4, bias) -> selective scan (d_inner 128, d_state 16, dt_rank 4) gated by silu(z) -> out_proj; tied embeddings; caches ArraysCache(2) per layer",
        config=dict(
            architectures=["MambaForCausalLM"],
            model_type="mamba",
            conv_kernel=4,
            intermediate_size=128,
            state_size=16,
            time_step_rank=4,
            use_bias=False,
            use_conv_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="mamba2",
        ssm=True,
        init=dict(final_norm=2.0, salt=3),
        family="qwen2",
        notes="Mamba-2 style: no attention; in_proj -> gate | conv(x, B, C) | dt; depthwise causal conv (kernel 4, bias); chunked SSD scan (8 heads x 16, 2 groups, d_state 16, time_step_limit [0.001, 100]); gated RMSNorm; out_proj; untied lm_head; caches ArraysCache(2) per layer",
        config=dict(
            architectures=["Mamba2ForCausalLM"],
            model_type="mamba2",
            conv_kernel=4,
            head_dim=16,
            layer_norm_epsilon=1e-5,
            n_groups=2,
            num_heads=8,
            state_size=16,
            time_step_limit=[0.001, 100.0],
            time_step_rank=4,
            use_bias=False,
            use_conv_bias=True,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="lfm2",
        ssm=True,
        init=dict(emb_std=0.1, final_norm=4.0, salt=2),
        family="qwen2",
        notes="LFM2 style: 3 layers, layer 1 attention (GQA 4q/2kv, q/k_layernorm, RoPE via rope_parameters), layers 0 and 2 gated short convolutions (conv_L_cache 3, bias) with ArraysCache(1); SwiGLU w1/w3/w2 with auto-adjusted ff dim (block_ff_dim 96 -> 64); final embedding_norm; tied",
        config=dict(
            architectures=["Lfm2ForCausalLM"],
            model_type="lfm2",
            block_auto_adjust_ff_dim=True,
            block_dim=64,
            block_ff_dim=96,
            block_ffn_dim_multiplier=1.0,
            block_multiple_of=32,
            conv_L_cache=3,
            conv_bias=True,
            layer_types=["conv", "full_attention", "conv"],
            norm_eps=1e-5,
            num_hidden_layers=3,
            rope_parameters=dict(rope_theta=1000000.0, rope_type="default"),
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="qwen3_next",
        ssm=True,
        init=dict(salt=2),
        family="qwen2",
        notes="Qwen3-Next style: 3 layers, full_attention_interval 2 (layers 0, 2 GatedDeltaNet: 2 key / 4 value heads of 16, conv kernel 4, gated delta rule, gated RMSNorm; layer 1 gated attention 4q/2kv head_dim 16, q/k norm, partial RoPE 0.5); layer 0 dense SwiGLU (mlp_only_layers), layers 1-2 MoE 4 experts top-2 + sigmoid-gated shared expert; untied; 4-bit: routers 8-bit/g64",
        config=dict(
            architectures=["Qwen3NextForCausalLM"],
            model_type="qwen3_next",
            decoder_sparse_step=1,
            full_attention_interval=2,
            head_dim=16,
            hidden_act="silu",
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_value_head_dim=16,
            mlp_only_layers=[0],
            moe_intermediate_size=32,
            norm_topk_prob=True,
            num_experts=4,
            num_experts_per_tok=2,
            num_hidden_layers=3,
            partial_rotary_factor=0.5,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            shared_expert_intermediate_size=32,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="qwen3_5",
        ssm=True,
        init=dict(salt=5),
        family="qwen2",
        notes="Qwen3.5 (text) style: 3 layers, full_attention_interval 2 (layers 0, 2 GatedDeltaNet with separate in_proj_qkv / z / b / a: 2 key / 4 value heads of 16, conv kernel 4; layer 1 gated attention 4q/2kv head_dim 16, RoPE from rope_parameters, partial 0.5); dense SwiGLU; weights under language_model.; untied",
        config=dict(
            architectures=["Qwen3_5ForConditionalGeneration"],
            model_type="qwen3_5",
            full_attention_interval=2,
            head_dim=16,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_value_head_dim=16,
            num_hidden_layers=3,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="qwen3_5_moe",
        ssm=True,
        init=dict(emb_std=0.1, final_norm=4.0, salt=0),
        family="qwen2",
        notes="Qwen3.5-MoE (text) style: as qwen3_5 with every MLP a 4-expert top-2 softmax MoE (renormalised) + sigmoid-gated shared expert; tied embeddings; 4-bit: routers 8-bit/g64",
        config=dict(
            architectures=["Qwen3_5MoeForConditionalGeneration"],
            model_type="qwen3_5_moe",
            full_attention_interval=2,
            head_dim=16,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_value_head_dim=16,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            num_hidden_layers=3,
            rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
            shared_expert_intermediate_size=32,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="nemotron_h",
        ssm=True,
        init=dict(salt=1),
        family="qwen2",
        notes="Nemotron-H style: hybrid_override_pattern ME*M- (Mamba-2 mixers: 8 heads x 16, 2 groups, d_state 16, conv kernel 4, group-wise gated RMSNorm; attention without positional encoding 4q/2kv; a squared-ReLU MLP; an MoE block: 4 squared-ReLU experts top-2 in a 32-wide latent space, sigmoid router + correction bias, 2 groups top-1, renormalised, scaling 2, one shared expert; MLP / MoE blocks have no cache); untied lm_head",
        config=dict(
            architectures=["NemotronHForCausalLM"],
            model_type="nemotron_h",
            attention_bias=False,
            conv_kernel=4,
            head_dim=16,
            hybrid_override_pattern="ME*M-",
            layer_norm_epsilon=1e-5,
            mamba_head_dim=16,
            mamba_num_heads=8,
            mamba_proj_bias=False,
            mlp_bias=False,
            moe_intermediate_size=32,
            moe_latent_size=32,
            moe_shared_expert_intermediate_size=32,
            n_group=2,
            n_routed_experts=4,
            n_shared_experts=1,
            norm_topk_prob=True,
            num_experts_per_tok=2,
            routed_scaling_factor=2.0,
            topk_group=1,
            n_groups=2,
            num_hidden_layers=5,
            ssm_state_size=16,
            time_step_limit=[0.0, 1000.0],
            use_bias=False,
            use_conv_bias=True,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="falcon_h1",
        ssm=True,
        init=dict(emb_std=0.1, final_norm=4.0, salt=5),
        family="qwen2",
        notes="Falcon-H1 style: every layer a Mamba-2 mixer (8 heads x 16, 2 groups, d_state 16, conv kernel 4, mamba_rms_norm with norm_before_gate) in parallel with RoPE attention (4q/2kv, head_dim 16), then SwiGLU; tied head scaled by lm_head_multiplier / embedding_multiplier; caches CacheList(ArraysCache(2), KVCache()) per layer",
        config=dict(
            architectures=["FalconH1ForCausalLM"],
            model_type="falcon_h1",
            embedding_multiplier=2.0,
            head_dim=16,
            lm_head_multiplier=3.0,
            mamba_chunk_size=128,
            mamba_conv_bias=True,
            mamba_d_conv=4,
            mamba_d_head=16,
            mamba_d_ssm=128,
            mamba_d_state=16,
            mamba_n_groups=2,
            mamba_n_heads=8,
            mamba_norm_before_gate=True,
            mamba_proj_bias=False,
            mamba_rms_norm=True,
            projectors_bias=False,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="jamba",
        ssm=True,
        init=dict(salt=2),
        family="qwen2",
        notes="Jamba style: 3 layers, attention (no positional encoding, 4q/2kv) at layer 1 (attn_layer_period 2, offset 1), Mamba-1 mixers (expand 2, d_state 16, conv kernel 4, dt_rank auto, weighted RMSNorms on dt/B/C) at layers 0, 2; MoE (4 experts top-2, softmax over the chosen router logits) at layer 1 (expert_layer_period 2, offset 1), SwiGLU elsewhere; untied; 4-bit: router 8-bit/g64",
        config=dict(
            architectures=["JambaForCausalLM"],
            model_type="jamba",
            attn_layer_offset=1,
            attn_layer_period=2,
            expert_layer_offset=1,
            expert_layer_period=2,
            mamba_conv_bias=True,
            mamba_d_conv=4,
            mamba_d_state=16,
            mamba_dt_rank="auto",
            mamba_expand=2,
            mamba_proj_bias=False,
            num_experts=4,
            num_experts_per_tok=2,
            num_hidden_layers=3,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="granitemoehybrid",
        ssm=True,
        init=dict(salt=1),
        family="llama3",
        notes="Granite 4.0 hybrid style: layer_types mamba / attention / mamba (Mamba-2 mixers 8 heads x 16, 2 groups, d_state 16, conv kernel 4; attention 4q/2kv with RoPE and scale attention_multiplier 0.2); every MLP a 4-expert top-2 MoE (softmax over the chosen router logits) + shared fused SwiGLU; muP embedding_multiplier 2, residual_multiplier 0.5, logits / logits_scaling 0.5; untied; 4-bit: routers 8-bit/g64",
        config=dict(
            architectures=["GraniteMoeHybridForCausalLM"],
            model_type="granitemoehybrid",
            attention_bias=False,
            attention_multiplier=0.2,
            embedding_multiplier=2.0,
            intermediate_size=32,
            layer_types=["mamba", "attention", "mamba"],
            logits_scaling=0.5,
            mamba_conv_bias=True,
            mamba_d_conv=4,
            mamba_d_head=16,
            mamba_d_state=16,
            mamba_n_groups=2,
            mamba_n_heads=8,
            mamba_proj_bias=False,
            num_experts_per_tok=2,
            num_hidden_layers=3,
            num_local_experts=4,
            position_embedding_type="rope",
            residual_multiplier=0.5,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            shared_intermediate_size=32,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="recurrent_gemma",
        ssm=True,
        init=dict(emb_std=0.03, final_norm=0.0, final_norm_std=16.0, salt=1),
        family="gemma2",
        notes="RecurrentGemma (Griffin) style: block_types recurrent, recurrent, attention (3 layers): RG-LRU recurrent blocks (4 heads, conv1d_width 4) and local MQA attention over a 16-token window (rotating cache; the 58-token prompt and the long prompt wrap it), 1 + weight RMSNorms, sqrt(hidden) embedding scale, tanh logit soft cap 30, tied (no lm_head in the checkpoint)",
        config=dict(
            architectures=["RecurrentGemmaForCausalLM"],
            model_type="recurrent_gemma",
            attention_bias=False,
            attention_window_size=16,
            block_types=["recurrent", "recurrent", "attention"],
            conv1d_width=4,
            embeddings_scale_by_sqrt_dim=True,
            intermediate_size=128,
            logits_soft_cap=30.0,
            num_hidden_layers=3,
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="rwkv7",
        ssm=True,
        init=dict(salt=3),
        family="qwen2",
        notes="RWKV-7 style: 2 layers of time mixing (4 heads x 16, token shift, low-rank w/a/v/g of rank 64, WKV-7 state, per-head LayerNorm, v_first from layer 0) and squared-ReLU channel mixing (128); LayerNorms; untied; caches ArraysCache(3) per layer; 4-bit: lora.2 and embeddings 8-bit",
        config=dict(
            architectures=["RWKV7ForCausalLM"],
            model_type="rwkv7",
            a_low_rank_dim=64,
            decay_low_rank_dim=64,
            gate_low_rank_dim=64,
            head_dim=16,
            intermediate_size=128,
            norm_eps=1e-5,
            num_hidden_layers=2,
            tie_word_embeddings=False,
            v_low_rank_dim=64,
        ),
    ),
    dict(
        name="kimi_linear",
        ssm=True,
        init=dict(salt=6),
        family="qwen2",
        notes="Kimi-Linear style: 3 layers, kda_layers [1, 3] (layers 0, 2 Kimi Delta Attention: 4 heads x 16, short convs of 4 on q/k/v, per-channel gated delta rule, sigmoid-gated output RMSNorm) and layer 1 NoPE MLA (4 heads, nope 16 + rope 8, v 16, kv_lora_rank 32); layer 0 dense SwiGLU (first_k_dense_replace 1), layers 1-2 MoE: 4 experts top-2, sigmoid router + correction bias, 2 groups top-1, scaling 2.5, one shared expert; untied; 4-bit: routers 8-bit/g64",
        config=dict(
            architectures=["KimiLinearForCausalLM"],
            model_type="kimi_linear",
            first_k_dense_replace=1,
            head_dim=16,
            kv_lora_rank=32,
            linear_attn_config=dict(head_dim=16, kda_layers=[1, 3], num_heads=4, short_conv_kernel_size=4),
            mla_use_nope=True,
            model_max_length=512,
            moe_intermediate_size=32,
            moe_layer_freq=1,
            moe_renormalize=True,
            moe_router_activation_func="sigmoid",
            num_expert_group=2,
            num_experts=4,
            num_experts_per_token=2,
            num_hidden_layers=3,
            num_key_value_heads=4,
            num_shared_experts=1,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            routed_scaling_factor=2.5,
            tie_word_embeddings=False,
            topk_group=1,
            use_grouped_topk=True,
            v_head_dim=16,
        ),
    ),
    # ---- issue #19, third batch (crates/mlxrs-lm/tests/fixtures_archs3.rs)
    dict(
        name="deepseek_v2",
        init=dict(salt=6),
        family="deepseek_v3",
        notes="DeepSeek-V2 style: MLA with kv_b_proj (q_lora 32, kv_lora 32, qk_nope 32, qk_rope 16, v_head 16), DeepSeek yarn RoPE (factor 8, mscale 0.707 = mscale_all_dim), layer 0 dense / layer 1 MoE: 8 experts top-2 group_limited_greedy (4 groups, topk_group 2), softmax, routed_scaling 2, 1 shared expert, untied",
        config=dict(
            architectures=["DeepseekV2ForCausalLM"],
            model_type="deepseek_v2",
            num_key_value_heads=4,
            attention_bias=False,
            first_k_dense_replace=1,
            kv_lora_rank=32,
            moe_intermediate_size=32,
            moe_layer_freq=1,
            n_group=4,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            q_lora_rank=32,
            qk_nope_head_dim=32,
            qk_rope_head_dim=16,
            rms_norm_eps=1e-6,
            rope_scaling=dict(
                beta_fast=32,
                beta_slow=1,
                factor=8.0,
                mscale=0.707,
                mscale_all_dim=0.707,
                original_max_position_embeddings=64,
                type="yarn",
            ),
            rope_theta=10000.0,
            routed_scaling_factor=2.0,
            tie_word_embeddings=False,
            topk_group=2,
            topk_method="group_limited_greedy",
            v_head_dim=16,
        ),
    ),
    dict(
        name="glm4_moe",
        init=dict(salt=6),
        family="llama3",
        notes="GLM-4.5 style: q/k/v biases, per-head q/k RMSNorm, RoPE over half of each head, layer 0 dense / layer 1 MoE: 8 experts top-2, sigmoid + e_score_correction_bias, 2 groups (topk_group 1), norm_topk_prob, routed_scaling 1.5, 1 shared expert, untied",
        config=dict(
            architectures=["Glm4MoeForCausalLM"],
            model_type="glm4_moe",
            attention_bias=True,
            first_k_dense_replace=1,
            head_dim=16,
            moe_intermediate_size=32,
            n_group=2,
            n_routed_experts=8,
            n_shared_experts=1,
            norm_topk_prob=True,
            num_experts_per_tok=2,
            partial_rotary_factor=0.5,
            rms_norm_eps=1e-5,
            rope_scaling=None,
            rope_theta=10000.0,
            routed_scaling_factor=1.5,
            tie_word_embeddings=False,
            topk_group=1,
            use_qk_norm=True,
        ),
    ),
    dict(
        name="phimoe",
        init=dict(salt=1),
        family="phi3",
        notes="Phi-3.5-MoE style: LayerNorm blocks, q/k/v/o and lm_head biases, SuScaledRoPE (longrope factors, long_mscale 1.2), 4 experts top-2 routed by sparsemixer (jitter 0.01), untied",
        config=dict(
            architectures=["PhiMoEForCausalLM"],
            model_type="phimoe",
            num_local_experts=4,
            num_experts_per_tok=2,
            original_max_position_embeddings=64,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                type="longrope",
                short_factor=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
                long_factor=[1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
                short_mscale=1.2,
                long_mscale=1.2,
            ),
            rope_theta=10000.0,
            router_jitter_noise=0.01,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="minicpm3",
        init=dict(salt=12),
        family="llama3",
        notes="MiniCPM3 style: MLA with kv_b_proj (q_lora 32, kv_lora 32, qk_nope 16, qk_rope 16, v_head = hidden / heads), SuScaledRoPE (longrope, original 64), scale_emb 4, residual branches * scale_depth / sqrt(layers), logits of hidden / (hidden / dim_model_base), untied",
        config=dict(
            architectures=["MiniCPM3ForCausalLM"],
            model_type="minicpm3",
            dim_model_base=32,
            kv_lora_rank=32,
            q_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=16,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                type="longrope",
                short_factor=[1.0] * 8,
                long_factor=[1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
                original_max_position_embeddings=64,
            ),
            rope_theta=10000.0,
            scale_depth=1.4,
            scale_emb=4.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="hunyuan",
        init=dict(emb_std=0.1, final_norm=4.0, salt=0),
        family="llama3",
        notes="Hunyuan-A13B style: cross-layer attention (layer 1 reuses layer 0's k/v projections, cla_share_factor 2), per-head q/k RMSNorm after RoPE, DynamicNTKAlpha RoPE (alpha 1000), 4 experts top-2 (softmax, no renorm) + mixed shared MLP, tied",
        config=dict(
            architectures=["HunYuanMoEV1ForCausalLM"],
            model_type="hunyuan",
            attention_bias=False,
            cla_share_factor=2,
            moe_intermediate_size=32,
            moe_topk=2,
            num_experts=4,
            num_shared_expert=1,
            rms_norm_eps=1e-5,
            rope_scaling=dict(alpha=1000.0, factor=1.0, type="dynamic"),
            rope_theta=10000.0,
            tie_word_embeddings=True,
            use_cla=True,
            use_mixed_mlp_moe=True,
            use_qk_norm=True,
        ),
    ),
    dict(
        name="ministral3",
        init=dict(salt=0),
        family="mistral",
        notes="Ministral-3 style: llama body, yarn RoPE from rope_parameters (factor 16, original 64), queries scaled by 1 + 0.1 * log(1 + floor(pos / 64)) (llama_4_scaling_beta), layer 0 sliding (window 16) / layer 1 full, untied",
        config=dict(
            architectures=["Ministral3ForCausalLM"],
            model_type="ministral3",
            head_dim=16,
            layer_types=["sliding_attention", "full_attention"],
            rms_norm_eps=1e-5,
            rope_parameters=dict(
                beta_fast=32.0,
                beta_slow=1.0,
                factor=16.0,
                llama_4_scaling_beta=0.1,
                mscale=1.0,
                mscale_all_dim=1.0,
                original_max_position_embeddings=64,
                rope_theta=1000000.0,
                rope_type="yarn",
            ),
            sliding_window=16,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="llama4_text",
        init=dict(salt=29),
        family="llama3",
        notes="Llama-4 text style: layer 0 interleaved RoPE / layer 1 NoPE (no_rope_layers), weightless q/k RMSNorm, MLP width intermediate_size_mlp, head named output, untied",
        config=dict(
            architectures=["Llama4ForCausalLM"],
            model_type="llama4_text",
            head_dim=16,
            intermediate_size_mlp=64,
            no_rope_layers=[1, 0],
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            use_qk_norm=True,
        ),
    ),
    dict(
        name="apertus",
        init=dict(salt=2),
        family="llama3",
        notes="Apertus style: per-head q/k RMSNorm, llama3 RoPE scaling, non-gated MLP with the xIELU activation (trained alpha_p / alpha_n per layer), attention_layernorm / feedforward_layernorm, untied",
        config=dict(
            architectures=["ApertusForCausalLM"],
            model_type="apertus",
            attention_bias=False,
            mlp_bias=False,
            post_norm=False,
            qk_norm=True,
            rms_norm_eps=1e-5,
            rope_scaling=dict(
                factor=8.0,
                high_freq_factor=4.0,
                low_freq_factor=1.0,
                original_max_position_embeddings=64,
                rope_type="llama3",
            ),
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="ernie4_5_moe",
        init=dict(salt=0),
        family="llama3",
        notes="ERNIE-4.5 MoE style: interleaved RoPE, layer 0 dense / layer 1 MoE (moe_layer_start_index 1): 4 experts top-2, softmax, renormalized, 1 shared expert, untied",
        config=dict(
            architectures=["Ernie4_5_MoeForCausalLM"],
            model_type="ernie4_5_moe",
            head_dim=16,
            moe_intermediate_size=32,
            moe_k=2,
            moe_layer_interval=1,
            moe_layer_start_index=1,
            moe_num_experts=4,
            moe_num_shared_experts=1,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            use_bias=False,
        ),
    ),
    dict(
        name="bailing_moe",
        # norm_head shrinks the logits: a large final-norm scale restores them
        init=dict(final_norm=16.0, salt=7),
        family="llama3",
        notes="Ling / Bailing-MoE-2 style: fused query_key_value (+bias) and dense, per-head q/k RMSNorm, RoPE over half of each head, word_embeddings, layer 0 dense / layer 1 MoE: 8 experts top-2, sigmoid + expert_bias in 4 groups (topk_group 2), renormalized, routed_scaling 2.5, 1 shared expert, norm_head (lm_head columns normalized by sanitize), untied; 4-bit: router 8-bit/g64",
        config=dict(
            architectures=["BailingMoeV2ForCausalLM"],
            model_type="bailing_moe",
            first_k_dense_replace=1,
            moe_intermediate_size=32,
            moe_router_enable_expert_bias=True,
            n_group=4,
            norm_head=True,
            norm_topk_prob=True,
            num_experts=8,
            num_experts_per_tok=2,
            num_shared_experts=1,
            partial_rotary_factor=0.5,
            rms_norm_eps=1e-6,
            rope_theta=600000.0,
            routed_scaling_factor=2.5,
            score_function="sigmoid",
            tie_word_embeddings=False,
            topk_group=2,
            use_bias=False,
            use_qk_norm=True,
            use_qkv_bias=True,
        ),
    ),
    dict(
        name="dbrx",
        init=dict(salt=2),
        family="llama3",
        notes="DBRX style: transformer.wte / blocks / norm_f, bias-free LayerNorms, fused Wqkv clipped to +-1.5 (clip_qkv), 4 experts top-2 (softmax, L1-renormalized) kept as per-expert v1/w1/w2 MLPs, untied",
        config=dict(
            architectures=["DbrxForCausalLM"],
            model_type="dbrx",
            attn_config=dict(clip_qkv=1.5, kv_n_heads=2, rope_theta=10000.0),
            d_model=64,
            ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2),
            n_heads=4,
            n_layers=2,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="gemma4_text",
        init=dict(emb_std=0.1, final_norm=4.0, salt=2),
        family="gemma3",
        notes="Gemma-4 text style: 4 layers sliding (window 16, head 16, default RoPE) / full (global head 32, proportional RoPE over a quarter, k = v with 1 global kv head), the last 2 layers reuse the k/v of the last earlier layer of their type (num_kv_shared_layers 2, double-wide MLP), q/k RMSNorm + weightless v norm, attention scale 1, per-layer inputs (16 per layer), GeGLU MLP plus a 4-expert top-2 MoE (enable_moe_block), layer_scalar, final softcap 30, tied",
        config=dict(
            architectures=["Gemma4ForCausalLM"],
            model_type="gemma4_text",
            attention_k_eq_v=True,
            enable_moe_block=True,
            final_logit_softcapping=30.0,
            global_head_dim=32,
            head_dim=16,
            hidden_size_per_layer_input=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            moe_intermediate_size=32,
            num_experts=4,
            num_global_key_value_heads=1,
            num_hidden_layers=4,
            num_kv_shared_layers=2,
            rms_norm_eps=1e-6,
            rope_parameters={
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
                "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10000.0, "rope_type": "default"},
            },
            sliding_window=16,
            tie_word_embeddings=True,
            top_k_experts=2,
            use_double_wide_mlp=True,
            vocab_size_per_layer_input=512,
        ),
    ),
    dict(
        name="gemma3n",
        init=dict(emb_std=0.1, final_norm=4.0, salt=11),
        family="gemma3",
        logits_with_cache=True,
        notes="Gemma-3n text style (text_config): 4 layers sliding (window 16) / full, the last 2 KV-shared (they attend over the cache of the last earlier layer of their type), q/k RMSNorm + weightless v norm, scale 1, AltUp over 2 streams (coef clip 120, correct_output_scale), LAuReL rank 16, per-layer inputs (16), activation sparsity 0.95 on layer 0 (gelu over mean + std * sqrt(2) erfinv(0.9)), softcap 30, tied; reference logits through a prompt cache (mlx-lm's KV-shared layers use the cache only then)",
        config=dict(
            architectures=["Gemma3nForConditionalGeneration"],
            model_type="gemma3n",
            text_config=dict(
                model_type="gemma3n_text",
                activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0],
                altup_active_idx=0,
                altup_coef_clip=120.0,
                altup_correct_scale=True,
                altup_num_inputs=2,
                final_logit_softcapping=30.0,
                head_dim=16,
                hidden_size=64,
                hidden_size_per_layer_input=16,
                intermediate_size=64,
                laurel_rank=16,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                max_position_embeddings=512,
                num_attention_heads=4,
                num_hidden_layers=4,
                num_key_value_heads=2,
                num_kv_shared_layers=2,
                rms_norm_eps=1e-6,
                rope_local_base_freq=10000.0,
                rope_theta=1000000.0,
                sliding_window=16,
                vocab_size=VOCAB_SIZE,
                vocab_size_per_layer_input=VOCAB_SIZE,
            ),
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="phi3small",
        # muP multiplies the embeddings by 10: small ones, stronger branches
        init=dict(emb_std=0.03, final_norm=80.0, branch_gain=2.0, salt=6),
        family="phi3",
        # mlx-lm sets the logits of the fixed ids 100256..100351 to -inf; with
        # this 512-token vocabulary they do not exist (indexing them would
        # write out of bounds), so none is masked: mlxrs masks those inside
        # the vocabulary.
        model_patch=lambda m: setattr(m, "_dummy_tokenizer_ids", mx.array([], dtype=mx.int32)),
        # mlx-lm's block-sparse emulation aligns its block mask to the last
        # query rows, so one forward over prompt + greedy tokens does not
        # reproduce the step-by-step logits: --verify skips that check.
        prefix_inconsistent=True,
        notes="Phi-3-small style: fused query_key_value (per kv head: its query heads, k, v) and dense with biases, muP scalings (embeddings x10, attention scale mup_attn_multiplier / head_dim, logits / 8), layer 0 block-sparse attention (block 32, 1 local block, vertical stride 2, mlx-lm's dense emulation) / layer 1 dense, GeGELU MLP (limit 20), LayerNorms, tied; no dummy-token ids inside the 512 vocabulary",
        config=dict(
            architectures=["Phi3SmallForCausalLM"],
            model_type="phi3small",
            blocksparse_block_size=32,
            blocksparse_num_local_blocks=1,
            blocksparse_vert_stride=2,
            dense_attention_every_n_layers=2,
            ff_intermediate_size=64,
            gegelu_limit=20.0,
            layer_norm_epsilon=1e-5,
            mup_attn_multiplier=1.0,
            mup_embedding_multiplier=10.0,
            mup_use_scaling=True,
            mup_width_multiplier=8.0,
            rope_embedding_base=1000000.0,
            rope_position_scale=1.0,
            tie_word_embeddings=True,
        ),
    ),
]

# Prompt tokens per prefill chunk for the SSM long-prompt references.
SSM_PREFILL_STEP = 64
# The long prompt: PROMPT repeated to more than 256 tokens (one SSD chunk).
SSM_LONG_REPEAT = 7

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def token_ids(base_json: str):
    tok = Tokenizer.from_str(base_json)
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + ADDED_TOKENS}


def added_token_entry(content, special):
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def write_json(path: Path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer_files(folder: Path, base_json: str, fam: dict, ids: dict):
    """The canonical tokenizer files (replaces what save_pretrained wrote)."""
    for stale in ["chat_template.jinja", "chat_template.json"]:
        (folder / stale).unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text(
        family_tokenizer_json(base_json, fam["bos_pp"]), encoding="utf-8"
    )
    cfg = {}
    cfg.update(fam.get("extra", {}))
    cfg["added_tokens_decoder"] = {
        str(ids[t]): added_token_entry(t, t in SPECIAL_TOKENS)
        for t in SPECIAL_TOKENS + ADDED_TOKENS
    }
    cfg["bos_token"] = fam["bos"]
    cfg["chat_template"] = fam["template"]
    cfg["clean_up_tokenization_spaces"] = False
    cfg["eos_token"] = fam["eos"]
    cfg["extra_special_tokens"] = {}
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    cfg["model_max_length"] = 512
    cfg["pad_token"] = fam["pad"]
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if fam["unk"] is not None:
        cfg["unk_token"] = fam["unk"]
    write_json(folder / "tokenizer_config.json", dict(sorted(cfg.items())))
    stm = {}
    for key in ["bos", "eos", "pad", "unk"]:
        if fam[key] is not None:
            e = added_token_entry(fam[key], True)
            e.pop("special")
            stm[f"{key}_token"] = e
    write_json(folder / "special_tokens_map.json", stm)


BRANCH_OUT = ("o_proj.weight", "down_proj.weight", "unembed_out.weight")
POST_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")


def init_params(
    model: nn.Module,
    name: str,
    branch_gain: float = 1.0,
    post_norm: float = 1.0,
    final_norm: float = 1.0,
    emb_std: float = None,
    qk_gain: float = 1.0,
    final_norm_std: float = 0.1,
    salt: int = 0,
) -> dict:
    """Seeded random parameters, std ~ 1/sqrt(fan_in), norms ~ 1.

    ``branch_gain`` scales the residual-branch output projections and
    ``post_norm`` is the mean of the gemma post-branch norm scales: with tied
    embeddings the residual stream must not be dominated by the input token's
    own embedding, or greedy decoding just repeats the last prompt token.
    """
    rng = np.random.default_rng([zlib.crc32(name.encode()), salt])
    # norms whose weight is used as (1 + w) (gemma)
    offset_norms = set()
    for path, m in model.named_modules():
        if type(m).__name__ == "RMSNorm" and not isinstance(m, nn.RMSNorm):
            offset_norms.add(path)
    new = {}
    for k, v in tree_flatten(model.parameters()):
        shape = tuple(v.shape)
        mod = k.rsplit(".", 1)[0]
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "weight" and len(shape) == 1:  # RMSNorm weights
            w = 0.1 * rng.standard_normal(shape)
            if k.endswith(POST_NORMS) and mod in offset_norms:
                w = w + (post_norm - 1.0)
            if k in (
                "model.norm.weight",
                "model.ln_f.weight",
                "transformer.ln_f.weight",
                "backbone.norm_f.weight",
                "model.embedding_norm.weight",
                "language_model.model.norm.weight",
                "model.final_layernorm.weight",
                "model.final_norm.weight",
                "model.language_model.norm.weight",
            ):
                w = (final_norm_std / 0.1) * w + (final_norm - 1.0)
            if mod not in offset_norms:
                w = 1.0 + w
        elif leaf == "bias":
            w = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 0:  # xIELU alpha_p / alpha_n / beta / eps
            w = np.asarray(v, dtype=np.float64)
            if leaf in ("alpha_p", "alpha_n"):
                w = w + 0.2 * rng.standard_normal(shape)
        elif leaf == "sinks":
            w = rng.standard_normal(shape)
        elif leaf == "e_score_correction_bias":
            w = 0.05 * rng.standard_normal(shape)
        elif k.endswith(("embed_tokens.weight", "backbone.embeddings.weight")):
            std = emb_std if emb_std is not None else 3.0 / np.sqrt(shape[-1])
            w = std * rng.standard_normal(shape)
        elif k in ("lm_head.weight", "language_model.lm_head.weight"):
            w = (3.0 / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        elif k.endswith("mlp.gate.weight") or k.endswith("mlp.router.weight") or k.endswith(
            "block_sparse_moe.gate.weight"
        ) or k.endswith("feed_forward.router.weight"):
            w = (2.0 / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        else:
            gain = branch_gain if k.endswith(BRANCH_OUT) else 1.0
            if k.endswith(("q_proj.weight", "k_proj.weight")):
                gain = qk_gain
            w = (gain / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        new[k] = mx.array(w.astype(np.float32))
    model.update(tree_unflatten(list(new.items())))
    mx.eval(model.parameters())
    return new


def hf_config(arch: dict, fam: dict, ids: dict, dtype: str) -> dict:
    cfg = dict(COMMON)
    cfg.update(arch["config"])
    cfg["torch_dtype"] = dtype
    cfg["bos_token_id"] = ids[fam["bos"]] if fam["bos"] else None
    cfg["eos_token_id"] = ids[fam["eos"]]
    cfg["pad_token_id"] = ids[fam["pad"]] if fam["pad"] else None
    return dict(sorted(cfg.items()))


def generation_config(fam: dict, ids: dict) -> dict:
    g = {"_from_model_config": False}
    if fam["bos"]:
        g["bos_token_id"] = ids[fam["bos"]]
    eos = [ids[t] for t in fam["gen_eos"]]
    g["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if fam["pad"]:
        g["pad_token_id"] = ids[fam["pad"]]
    return g


def make_stage(stage: Path, arch: dict, base_json: str, ids: dict, dtype: str):
    fam = FAMILIES[arch["family"]]
    stage.mkdir(parents=True)
    cfg = hf_config(arch, fam, ids, dtype)
    write_json(stage / "config.json", cfg)
    write_json(stage / "generation_config.json", generation_config(fam, ids))
    write_tokenizer_files(stage, base_json, fam, ids)
    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict(cfg))
    weights = init_params(model, arch["name"], **arch.get("init", {}))
    if arch["name"] in ("gemma3_text", "recurrent_gemma"):
        # Gemma 3 / RecurrentGemma checkpoints are tied: the file has no
        # lm_head (mlx-lm's sanitize then drops the module and ties).
        weights.pop("lm_head.weight")
    mx.save_safetensors(str(stage / "model.safetensors"), weights, metadata={"format": "mlx"})


def quiet(fn, *a, **kw):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        return fn(*a, **kw)


def f32_list(a) -> list:
    return [float(x) for x in np.array(a, dtype=np.float32).tolist()]


def versions() -> dict:
    return {
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def forward_and_greedy(model, prompt_ids, with_cache=False):
    x = mx.array(prompt_ids, dtype=mx.int32)
    # with_cache: the prompt through a fresh prompt cache, the path generation
    # takes (gemma3n's KV-shared layers read their owner's cache only then).
    cache = make_prompt_cache(model) if with_cache else None
    logits = model(x[None], cache=cache)[0, -1].astype(mx.float32)
    mx.eval(logits)
    toks, lps, margins = [], [], []
    for (t, logprobs), _ in zip(generate_step(x, model, max_tokens=N_GREEDY), range(N_GREEDY)):
        lp = np.array(logprobs.astype(mx.float32))
        top2 = np.sort(lp)[-2:]
        toks.append(int(t))
        lps.append(float(lp[int(t)]))
        margins.append(float(top2[1] - top2[0]))
    assert len(toks) == N_GREEDY
    return np.array(logits), toks, lps, margins


def make_reference(folder: Path, name: str, arch: dict, extra_native_bf16=False) -> dict:
    model, wrapper, config = mlx_load(str(folder), return_config=True)
    if arch.get("model_patch"):
        arch["model_patch"](model)
    weights_dtype = {str(v.dtype).replace("mlx.core.", "") for _, v in tree_flatten(model.parameters())}
    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    raw_tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    prompt_ids = hf_tok.encode(PROMPT)
    assert prompt_ids == raw_tok.encode(PROMPT).ids, (name, "hf vs tokenizers")
    assert raw_tok.decode(prompt_ids, skip_special_tokens=True) == PROMPT

    rendered = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = hf_tok.encode(rendered, add_special_tokens=False)
    assert chat_ids == raw_tok.encode(rendered, add_special_tokens=False).ids
    # mlx-lm's own chat path must agree (it tokenizes with add_special_tokens=False)
    mlx_chat_ids = wrapper.apply_chat_template(MESSAGES, add_generation_prompt=True)
    if isinstance(mlx_chat_ids, dict) or hasattr(mlx_chat_ids, "input_ids"):
        mlx_chat_ids = mlx_chat_ids["input_ids"]
    assert list(mlx_chat_ids) == chat_ids, (name, "mlx-lm chat ids differ")

    native = None
    if extra_native_bf16:
        nl, nt, nlp, nm = forward_and_greedy(model, prompt_ids)
        native = {
            "forward_dtype": "bfloat16",
            "logits_last": f32_list(nl),
            "logits_max_abs": float(np.max(np.abs(nl))),
            "greedy_tokens": nt,
            "greedy_logprobs": nlp,
            "greedy_margins": nm,
        }
    # fixed float32 forward: upcast every floating parameter (exact for bf16),
    # quantized weights stay packed (their scales/biases are float32 already).
    model.set_dtype(mx.float32)
    logits, toks, lps, margins = forward_and_greedy(
        model, prompt_ids, with_cache=arch.get("logits_with_cache", False)
    )

    eos = config.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    ref = {
        "schema_version": 1,
        "name": name,
        "model_type": config["model_type"],
        "mlx_lm_module": type(model).__module__,
        "notes": arch["notes"],
        "versions": versions(),
        "weights_dtypes": sorted(weights_dtype),
        "quantization": config.get("quantization"),
        "forward_dtype": "float32",
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "add_special_tokens": True,
        "logits_last": f32_list(logits),
        "logits_last_argmax": int(np.argmax(logits)),
        "logits_max_abs": float(np.max(np.abs(logits))),
        "greedy_max_tokens": N_GREEDY,
        "greedy_tokens": toks,
        "greedy_logprobs": lps,
        "greedy_margins": margins,
        "chat": {
            "messages": MESSAGES,
            "add_generation_prompt": True,
            "rendered": rendered,
        },
        "chat_ids": chat_ids,
        "chat_ids_add_special_tokens": False,
        "bos_token": hf_tok.bos_token,
        "eos_token": hf_tok.eos_token,
        "eos_token_ids": eos,
    }
    if native is not None:
        ref["native_bf16"] = native
    if arch.get("ssm"):
        ref.update(ssm_extras(model, folder, prompt_ids, hf_tok, write_cache=not name.endswith("-4bit")))
    del model
    return ref


def ssm_extras(model, folder: Path, prompt_ids, hf_tok, write_cache: bool) -> dict:
    """A long prompt (logits + greedy with chunked prefill) and, if asked,
    mlx-lm's prompt cache of all prompt tokens but the last."""
    from mlx_lm.models.cache import make_prompt_cache, save_prompt_cache

    long_ids = hf_tok.encode(" ".join([PROMPT] * SSM_LONG_REPEAT))
    assert len(long_ids) > 256, len(long_ids)
    x = mx.array(long_ids, dtype=mx.int32)
    logits = model(x[None])[0, -1].astype(mx.float32)
    toks = []
    for (t, _), _ in zip(
        generate_step(x, model, max_tokens=N_GREEDY, prefill_step_size=SSM_PREFILL_STEP), range(N_GREEDY)
    ):
        toks.append(int(t))
    out = {
        "long_prompt_ids": long_ids,
        "long_prefill_step_size": SSM_PREFILL_STEP,
        "long_logits_last": f32_list(logits),
        "long_greedy_tokens": toks,
    }
    if write_cache:
        cache = make_prompt_cache(model)
        model(mx.array(prompt_ids[:-1], dtype=mx.int32)[None], cache=cache)
        mx.eval([c.state for c in cache])
        save_prompt_cache(str(folder / "prompt_cache.safetensors"), cache, {"tokens": str(len(prompt_ids) - 1)})
        out["prompt_cache"] = {
            "file": "prompt_cache.safetensors",
            "tokens": len(prompt_ids) - 1,
            "classes": [type(c).__name__ for c in cache],
        }
    return out


def convert_into(stage: Path, out: Path, base_json, fam, ids, **kw):
    if out.exists():
        shutil.rmtree(out)
    quiet(mlx_convert, str(stage), str(out), **kw)
    write_tokenizer_files(out, base_json, fam, ids)


def f32_repr(x: float) -> str:
    r = np.format_float_positional(np.float32(x), unique=True, trim="0")
    if "e" not in r and len(r) > 12:
        r = np.format_float_scientific(np.float32(x), unique=True, trim="0")
    assert np.float32(float(r)) == np.float32(x)
    return r


def write_reference(path: Path, ref: dict):
    """JSON with one top-level key per line group; number lists on one line."""
    parts = []
    for k, v in ref.items():
        flat = isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
        if flat and any(isinstance(x, float) for x in v):
            # shortest decimal that round-trips the float32 value
            body = "[" + ", ".join(f32_repr(x) for x in v) + "]"
        elif flat:
            body = json.dumps(v)
        else:
            body = json.dumps(v, ensure_ascii=False, indent=2)
        parts.append(f"  {json.dumps(k)}: " + body.replace("\n", "\n  "))
    path.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------


def write_readme(out: Path, rows, ids):
    v = versions()
    lines = [
        "# Tiny real-format LM fixtures",
        "",
        "Random-weight, tiny (hidden 64, 2 layers, vocab 512) checkpoints in the exact",
        "layout `mlx_lm.convert` produces, one per mlx-lm architecture, plus Python",
        "references (`reference.json`) the Rust LM implementations are checked against.",
        "The weights are random: the generated text is gibberish, only the numbers matter.",
        "",
        "Regenerate (deterministic, byte-identical on the same versions):",
        "",
        "```sh",
        "scripts/py_env.sh                              # creates .venv",
        ".venv/bin/python scripts/make_lm_fixtures.py   # add --verify to reload+recheck",
        "```",
        "",
        "Versions used: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "## Folders",
        "",
        "| folder | model_type | size | features |",
        "|---|---|---|---|",
    ]
    for r in rows:
        f = r["folder"]
        if f.endswith("-4bit"):
            notes = f"`{f[:-5]}` quantised: 4-bit affine, group {Q_GROUP_SIZE}"
        elif f.endswith("-bf16"):
            notes = f"`{f[:-5]}` in bfloat16"
        else:
            notes = r["notes"]
        lines.append(f"| `{f}` | {r['model_type']} | {r['size'] / 1024:.0f} KiB | {notes} |")
    lines.append(f"| total | | {sum(r['size'] for r in rows) / 1024 / 1024:.2f} MiB | |")
    lines += [
        "",
        "`<name>` folders hold float32 weights; `<name>-4bit` are",
        f"`mlx_lm.convert(quantize=True, q_group_size={Q_GROUP_SIZE}, q_bits={Q_BITS})` of the",
        "same weights (affine, float32 scales/biases; per-layer overrides from the model's",
        "`quant_predicate` are recorded in `config.json` `quantization`, e.g. MoE routers at",
        "8 bits / group 64); `llama-bf16` is the llama weights in bfloat16.",
        "",
        "Each folder: `config.json` (sorted, as written by mlx-lm `save_config`, eos ids",
        "merged from generation_config), `model.safetensors` (+ index, mlx-lm parameter",
        "names, metadata `format: mlx`), `generation_config.json`, `tokenizer.json`,",
        "`tokenizer_config.json` (with `chat_template`), `special_tokens_map.json`,",
        "`README.md` (mlx-lm model card), `reference.json`.",
        "",
        "## Tokenizer",
        "",
        "One byte-level BPE (NFC, Qwen2 split regex, ByteLevel) trained by the script on a",
        "small built-in corpus: ids 0-476 learned tokens (0-255 are the byte alphabet),",
        "477-511 added tokens (all special except `<think>`/`</think>`). Only the",
        "post_processor (BOS on encode or not), bos/eos/pad and the chat template differ",
        "between families:",
        "",
        "| family | folders | BOS added by encode | eos | template |",
        "|---|---|---|---|---|",
    ]
    fam_users = {}
    for a in ARCHS:
        fam_users.setdefault(a["family"], []).append(a["name"])
    style = {
        "llama3": "Llama-3.1 header style",
        "mistral": "Mistral [INST] (system folded into last user turn)",
        "qwen2": "ChatML (Qwen2.5)",
        "qwen3": "ChatML + `<think>` handling (Qwen3)",
        "smollm3": "ChatML + metadata system block (SmolLM3)",
        "olmo2": "ChatML with bos_token prefix",
        "phi3": "`<|user|>...<|end|>` (Phi-4-mini)",
        "gemma2": "`<start_of_turn>` (system merged into first user turn)",
        "gemma3": "`<start_of_turn>` (Gemma 3)",
        "gpt_oss": "simplified harmony",
        "deepseek_v3": "`<｜User｜>`/`<｜Assistant｜>` (DeepSeek-V3)",
    }
    for fname, fam in FAMILIES.items():
        if fname not in fam_users:
            continue
        lines.append(
            f"| {fname} | {', '.join(fam_users[fname])} | {fam['bos_pp'] or '-'} | {fam['eos']} | {style[fname]} |"
        )
    lines += [
        "",
        "Special token ids: " + ", ".join(f"`{t}`={i}" for t, i in ids.items()) + ".",
        "",
        "## reference.json",
        "",
        "```text",
        "schema_version    1",
        "name, model_type  folder name, config model_type; mlx_lm_module: python module used",
        "notes             the architecture features exercised",
        "versions          mlx, mlx_lm, transformers, tokenizers, numpy, python",
        "weights_dtypes    dtypes of the loaded parameters; quantization: config's",
        "forward_dtype     float32 (floating params upcast; bf16 -> f32 is exact)",
        "prompt            fixed plain text",
        "prompt_ids        AutoTokenizer(folder).encode(prompt) (add_special_tokens=True:",
        "                  BOS where the family's tokenizer.json post_processor adds one)",
        "logits_last       float32[vocab] last position of model(prompt_ids[None]) with no cache",
        "logits_last_argmax, logits_max_abs  (state tolerances relative to max_abs)",
        "greedy_tokens     first 20 tokens of mlx_lm.generate.generate_step(prompt_ids)",
        "                  (KV cache as model.make_cache(), argmax sampler, EOS not honoured;",
        "                  prefill = prompt[:-1] as one chunk, then the last prompt token)",
        "greedy_logprobs   log-softmax value of each chosen token",
        "greedy_margins    top1 - top2 logprob at each step (small = fragile argmax)",
        "chat.messages     [system, user, assistant, user]",
        "chat.rendered     AutoTokenizer.apply_chat_template(messages, tokenize=False,",
        "                  add_generation_prompt=True)",
        "chat_ids          encode(rendered, add_special_tokens=False) (= mlx-lm's chat ids)",
        "bos_token, eos_token, eos_token_ids (config.json eos_token_id, from generation_config)",
        "native_bf16       llama-bf16 only: the same in bfloat16 compute (informational:",
        "                  bf16 logits tie exactly at some greedy steps, margin 0)",
        "```",
        "",
        "Checked by `--verify`: every folder reloads with `mlx_lm.load` and",
        "`AutoTokenizer`, recomputes the reference bit-exactly, and the cached greedy",
        "tokens equal the argmax of one cache-less forward over",
        "`prompt_ids + greedy_tokens[:-1]` (observed logprob differences <= 6e-6), so",
        "either path may be tested (observed max |logprob difference| 6e-6 in float32;",
        "the smallest float32 greedy margin in any folder is 0.02, so exact token equality is",
        "a fair test; compare logits with a tolerance relative to `logits_max_abs`).",
        "",
        "## mlx-lm behaviours these references encode",
        "",
        "- RoPE is half-split (`traditional=False`) everywhere except deepseek_v3",
        "  (interleaved, on the qk_rope dims only); mlx `freqs` are periods:",
        "  angle = pos / freqs. llama3 / yarn / longrope frequencies come from",
        "  `mlx_lm/models/rope_utils.py`; yarn ignores `truncate` (always floor/ceil);",
        "  longrope always uses `long_factor` and scales the rotated dims of q and k by",
        "  sqrt(1 + ln(max/orig) / ln(orig)) (orig = top-level",
        "  `original_max_position_embeddings`).",
        "- Sliding windows: key j visible from query i iff i - window < j <= i.",
        "  mlx-lm applies windows only for gemma3_text (layer i sliding iff",
        "  (i+1) % sliding_window_pattern != 0; `layer_types` not read), gpt_oss",
        "  (`layer_types`) and llama/smollm3 when `layer_types` says so; gemma2, mistral,",
        "  qwen2, phi3, mixtral ignore `sliding_window`.",
        "- Default `tie_word_embeddings` when absent: True for llama/mistral/qwen2/olmo2/",
        "  smollm3 (HF Llama says False), False for phi3/mixtral; gemma2 is always tied,",
        "  gemma3_text is tied iff the file has no `lm_head.weight`; gpt_oss and",
        "  deepseek_v3 always have an lm_head.",
        "- Quantised layers: `<p>.weight` (uint32-packed), `<p>.scales`, `<p>.biases`",
        "  (w = scales*q + biases per group along the input dim); a layer is quantised",
        "  iff `<p>.scales` exists; bits/group come from the per-path entry in",
        "  `quantization` or are inferred from the shapes; layers whose input dim is not",
        "  a multiple of the group size stay float. Embeddings are quantised too (tied",
        "  heads use the quantised embedding as the output projection).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def verify(out: Path, names):
    """Reload each folder and recompute; must equal reference.json exactly."""
    by_name = {a["name"]: a for a in ARCHS}
    for n in names:
        folder = out / n
        ref = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
        arch = by_name[n.replace("-4bit", "").replace("-bf16", "")]
        again = make_reference(folder, n, arch, extra_native_bf16=n.endswith("-bf16"))
        again = json.loads(json.dumps(again, ensure_ascii=False))

        def same(a, b):
            if isinstance(a, dict) and isinstance(b, dict):
                return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
            if isinstance(a, float) or (isinstance(a, list) and a and isinstance(a[0], float)):
                return np.array_equal(np.float32(a), np.float32(b))
            return a == b

        bad = [k for k in ref if not same(ref[k], again.get(k))]
        assert not bad, (n, bad)
        tok = AutoTokenizer.from_pretrained(str(folder))
        assert tok.chat_template is not None
        # cached greedy == argmax of one cache-less forward over prompt + greedy[:-1]
        model, _ = mlx_load(str(folder))
        if arch.get("model_patch"):
            arch["model_patch"](model)
        model.set_dtype(mx.float32)
        if arch.get("prefix_inconsistent"):
            print(f"verified {n} (without the one-forward greedy check)")
            continue
        seq = ref["prompt_ids"] + ref["greedy_tokens"][:-1]
        cache = make_prompt_cache(model) if arch.get("logits_with_cache") else None
        lg = model(mx.array(seq)[None], cache=cache)[0, len(ref["prompt_ids"]) - 1 :]
        assert mx.argmax(lg, axis=-1).tolist() == ref["greedy_tokens"], n
        print(f"verified {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="architecture names (default: all)")
    ap.add_argument("--verify", action="store_true", help="reload every folder and recheck")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    mx.set_default_device(mx.cpu)

    base_json = build_base_tokenizer()
    ids = token_ids(base_json)
    archs = [a for a in ARCHS if not args.only or a["name"] in args.only]
    rows, made = [], []
    with tempfile.TemporaryDirectory(prefix="mlxrs_lm_fixtures_") as tmp:
        tmp = Path(tmp)
        for arch in archs:
            name = arch["name"]
            fam = FAMILIES[arch["family"]]
            stage = tmp / name
            make_stage(stage, arch, base_json, ids, "float32")
            jobs = [(name, stage, {}), (f"{name}-4bit", stage, dict(quantize=True, q_group_size=Q_GROUP_SIZE, q_bits=Q_BITS))]
            if name == "llama":
                stage16 = tmp / f"{name}-bf16"
                make_stage(stage16, arch, base_json, ids, "bfloat16")
                jobs.append((f"{name}-bf16", stage16, {}))
            for folder_name, st, kw in jobs:
                folder = out / folder_name
                convert_into(st, folder, base_json, fam, ids, **kw)
                ref = make_reference(folder, folder_name, arch, extra_native_bf16=folder_name.endswith("-bf16"))
                write_reference(folder / "reference.json", ref)
                size = folder_size(folder)
                rows.append(
                    dict(folder=folder_name, model_type=ref["model_type"], size=size, notes=arch["notes"])
                )
                made.append(folder_name)
                print(
                    f"{folder_name:18s} {size / 1024:7.0f} KiB  prompt {len(ref['prompt_ids'])} tok"
                    f"  max|logit| {ref['logits_max_abs']:.3f}  greedy {ref['greedy_tokens'][:8]}..."
                    f"  min margin {min(ref['greedy_margins']):.4f}",
                    flush=True,
                )
    if args.only:
        # README rows for every folder present (regenerated ones included)
        rows = []
        for a in ARCHS:
            names = [a["name"], f"{a['name']}-4bit"] + (["llama-bf16"] if a["name"] == "llama" else [])
            for n in names:
                if (out / n / "reference.json").is_file():
                    ref = json.loads((out / n / "reference.json").read_text(encoding="utf-8"))
                    rows.append(dict(folder=n, model_type=ref["model_type"], size=folder_size(out / n), notes=a["notes"]))
    write_readme(out, rows, ids)
    total = sum(folder_size(out / n) for n in made)
    print(f"total {total / 1024 / 1024:.2f} MiB in {len(made)} folders")
    if args.verify:
        verify(out, made)


if __name__ == "__main__":
    sys.exit(main())
