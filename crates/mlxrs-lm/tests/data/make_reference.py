"""Build the tiny tokenizer fixtures under tests/data/tokenizers/ and the
reference outputs the Rust tests compare against (reference.json in each
fixture folder, plus templates.json).

Run from the repo root with the project's Python env (scripts/py_env.sh):

    .venv/bin/python crates/mlxrs-lm/tests/data/make_reference.py

Fixtures (each ~ a few hundred tokens, trained on CORPUS below):
  bpe_bytelevel     Qwen2-style byte-level BPE        -> BPE detokenizer
  spm_bytefallback  Llama-2-style SPM BPE + byte fallback, <s> prepended
                    -> SPM detokenizer (trim_space)
  spm_nospace       Gemma-style SPM decoder without Strip -> SPM (no trim)
  metaspace         Metaspace pre-tokenizer/decoder   -> naive detokenizer

Reference values come from the Python `tokenizers` library (encode/decode)
and transformers' `AutoTokenizer.from_pretrained(dir).apply_chat_template`.
"""

import json
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex, AddedToken
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "tokenizers"

CORPUS = [
    "Hello world! This is a tiny corpus for tiny tokenizers.",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "Café, naïve, résumé, déjà vu — Ünïcödé àccents everywhere.",
    "日本語のテキストも少し入れます。中文也有一点。한국어도 조금.",
    "Emoji: 😀 🎉 👍🏽 🇫🇷 and symbols like € £ ¥ © ™.",
    "Newlines\nand\ttabs\n\n  leading spaces and trailing spaces  ",
    "def foo(x):\n    return x * 2  # code!\n",
    "<|im_start|>user\nHi there<|im_end|>",
    "Multi-token words: antidisestablishmentarianism, pneumonoultramicroscopic.",
] * 3

# Strings the detokenizer / encode tests run over. Some use characters the
# tiny vocabularies never saw (byte fallback / byte-level bytes).
TEXTS = [
    "Hello world!",
    " Hello world",
    "  two leading spaces",
    "trailing space ",
    "Café naïve résumé",
    "日本語のテキスト",
    "中文 한국어",
    "😀🎉👍🏽🇫🇷",
    "emoji 😀 in text 🎉!",
    "line one\nline two\n\nline four\n",
    "\ttabbed\tvalues",
    "antidisestablishmentarianism",
    "def foo(x):\n    return x * 2",
    "Ωμέγα ελληνικά",
    "שלום עולם",
    "a ,b . c",
    "don't I'm we're",
    "<|im_start|>user\nHi<|im_end|>",
    "ünseen wörds with ßtrange chars ǅ",
    "x",
    "",
]

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Gemma-style, with whitespace-sensitive block layout (trim_blocks /
# lstrip_blocks matter here).
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
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
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Block tags on their own lines: exercises trim_blocks + lstrip_blocks.
LAYOUT = """{% for message in messages %}
    {% if message.role == 'system' %}
System: {{ message.content }}
    {% else %}
{{ message.role | capitalize }}: {{ message.content }}
    {% endif %}
    {# a comment line #}
{% endfor %}
{% if add_generation_prompt %}
Assistant:
{% endif %}
"""

# Tool use (Qwen2.5-like): tojson on schemas and tool-call arguments,
# namespace, loop controls, Python methods, printed dicts / None / bools.
TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(count=0) %}
{%- for message in messages %}
    {%- if message.role == "system" %}{% continue %}{% endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if message.role == "user" or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
            {{- '\\nraw=' }}{{- tool_call.arguments }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
    {%- if loop.last %}{{- '<!-- ' ~ ns.count ~ ' turns, last=' ~ message.role.upper() ~ ' -->\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Reasoning / extra kwargs (Qwen3-like enable_thinking), items(), get(),
# tojson options, string methods.
MISC = """{%- for message in messages %}
{{- '[' + message.role + ']' }}
{%- if message.reasoning_content is defined %}<think>{{ message.reasoning_content }}</think>{% endif %}
{%- if message.content is string %}{{ message.content.lstrip().replace('\\n', ' / ') }}{% else %}{{ message.content | tojson(indent=2) }}{% endif %}
{%- for k, v in message.items() %}{% if k not in ['role', 'content'] %} {{ k }}={{ v }}{% endif %}{% endfor %}
{{ '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}[assistant]{% if enable_thinking is defined and enable_thinking is false %}<think>\\n\\n</think>\\n\\n{% endif %}{% endif %}
{{- '|' ~ (tools | tojson(sort_keys=true)) if tools else '' }}
{{- messages | length }} {{ messages[0].get('missing', 'dflt') }} {{ 'a-b-c'.split('-') }} {{ 'Title case'.title() }} {{ none }} {{ true }} {{ 3.5e-7 }} {{ 10.0 }}
{%- generation %} gen{% endgeneration %}
"""

TEMPLATES = {"chatml": CHATML, "llama2": LLAMA2, "gemma": GEMMA, "layout": LAYOUT, "tools": TOOLS, "misc": MISC}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city, in °C.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City <name> & \"country\""}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}

CONVERSATIONS = {
    "simple": [{"role": "user", "content": "Hello! How are you?"}],
    "system_multi": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Café? 日本語 😀\nSecond line"},
    ],
    "tool_calls": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "metric": True, "ratio": 0.5, "note": None}}}],
        },
        {"role": "tool", "content": "{\"temp\": 21}"},
    ],
    "reasoning": [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "Answer.", "reasoning_content": "Because.", "name": "bot"},
        {"role": "user", "content": "Again?"},
    ],
    "parts": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Describe this image.  "}]},
    ],
    "bad_alternation": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
}

# (template, conversation, kwargs) triples rendered by transformers.
RENDER_CASES = [
    ("chatml", "simple", {"add_generation_prompt": True}),
    ("chatml", "system_multi", {"add_generation_prompt": False}),
    ("chatml", "system_multi", {"continue_final_message": True}),
    ("llama2", "system_multi", {}),
    ("llama2", "simple", {}),
    ("llama2", "bad_alternation", {}),
    ("gemma", "system_multi", {"add_generation_prompt": True}),
    ("gemma", "parts", {"add_generation_prompt": True}),
    ("layout", "system_multi", {"add_generation_prompt": True}),
    ("layout", "simple", {}),
    ("tools", "tool_calls", {"tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("tools", "system_multi", {}),
    ("misc", "reasoning", {"add_generation_prompt": True, "enable_thinking": False}),
    ("misc", "parts", {"tools": [WEATHER_TOOL]}),
    ("misc", "system_multi", {"add_generation_prompt": True}),
]


def train_bpe(pre_tokenizer, alphabet, specials, vocab_size=700, byte_fallback_vocab=False):
    tok = Tokenizer(models.BPE(unk_token="<unk>" if byte_fallback_vocab else None))
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    return tok, trainer


def bytelevel_tokenizer():
    split = pre_tokenizers.Split(
        Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        behavior="isolated",
    )
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def spm_tokenizer(strip):
    """Llama-2 style (strip=True: Prepend normalizer + Strip decoder) or
    Gemma style (strip=False)."""
    # Train merges on the SentencePiece-normalized corpus.
    base = Tokenizer(models.BPE())
    norm = [normalizers.Replace(" ", "\u2581")]
    if strip:
        norm = [normalizers.Prepend("\u2581")] + norm
    base.normalizer = normalizers.Sequence(norm)
    base.pre_tokenizer = pre_tokenizers.Split(Regex(r"\u2581?[^\u2581]+|\u2581+"), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False, limit_alphabet=60)
    base.train_from_iterator(CORPUS, trainer)
    data = json.loads(base.to_str())
    trained_vocab = data["model"]["vocab"]
    merges = data["model"]["merges"]
    specials = ["<unk>", "<s>", "</s>"] if strip else ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]
    vocab = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained_vocab.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(norm)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = "<s>" if strip else "<bos>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return tok


def metaspace_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    chars = sorted(set("".join(CORPUS + TEXTS)))
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=chars, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_fixture(name, tok, tokenizer_config, extra_files=None):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    for fname, content in (extra_files or {}).items():
        (d / fname).write_text(content if isinstance(content, str) else json.dumps(content, indent=2) + "\n")
    return d


def reference(d, tok):
    hf = AutoTokenizer.from_pretrained(str(d))
    cases = []
    for t in TEXTS:
        ids = tok.encode(t, add_special_tokens=False).ids
        cases.append({
            "text": t,
            "ids": ids,
            "ids_special": tok.encode(t, add_special_tokens=True).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "hf_decoded": hf.decode(ids),
        })
    chats = []
    for tmpl_name, conv_name, kwargs in RENDER_CASES:
        entry = {"template": tmpl_name, "conversation": conv_name, "kwargs": kwargs}
        try:
            rendered = hf.apply_chat_template(CONVERSATIONS[conv_name], chat_template=TEMPLATES[tmpl_name], tokenize=False, **kwargs)
            entry["rendered"] = rendered
            entry["ids"] = hf.encode(rendered, add_special_tokens=False)
        except Exception as e:  # raise_exception cases
            entry["error"] = str(e)
        chats.append(entry)
    default_chat = {}
    if hf.chat_template is not None:
        r = hf.apply_chat_template(CONVERSATIONS["system_multi"], tokenize=False, add_generation_prompt=True)
        default_chat = {"conversation": "system_multi", "rendered": r, "ids": hf.encode(r, add_special_tokens=False)}
    info = {
        "bos_token": hf.bos_token,
        "eos_token": hf.eos_token,
        "pad_token": hf.pad_token,
        "unk_token": hf.unk_token,
        "eos_token_id": hf.eos_token_id,
        "special_tokens_map": hf.special_tokens_map,
    }
    ref = {"tokenizer": info, "cases": cases, "chats": chats, "default_chat": default_chat}
    (d / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    common = {"clean_up_tokenization_spaces": False, "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"}

    tok = bytelevel_tokenizer()
    d = write_fixture("bpe_bytelevel", tok, {
        **common, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "add_bos_token": False, "chat_template": TOOLS,
    }, {
        "config.json": {"model_type": "qwen2", "eos_token_id": 0},
        "generation_config.json": {"eos_token_id": [2, 0], "temperature": 0.7, "top_p": 0.8},
    })
    reference(d, tok)

    tok = spm_tokenizer(strip=True)
    d = write_fixture("spm_bytefallback", tok, {
        **common,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
        "chat_template": [{"name": "default", "template": LLAMA2}, {"name": "tool_use", "template": TOOLS}],
    }, {"config.json": {"model_type": "llama", "eos_token_id": 2, "bos_token_id": 1}})
    reference(d, tok)

    tok = spm_tokenizer(strip=False)
    # Gemma-style: special tokens come from special_tokens_map.json (legacy
    # path, no added_tokens_decoder in the config) and the template from
    # chat_template.jinja.
    d = write_fixture("spm_nospace", tok, {**common, "add_bos_token": True}, {
        "special_tokens_map.json": {"bos_token": "<bos>", "eos_token": {"content": "<eos>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}, "pad_token": "<pad>", "unk_token": "<unk>"},
        "chat_template.jinja": GEMMA,
    })
    reference(d, tok)

    tok = metaspace_tokenizer()
    # VLM-style processor template file.
    d = write_fixture("metaspace", tok, {**common, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, {
        "chat_template.json": {"chat_template": CHATML},
        "config.json": {"model_type": "llava", "text_config": {"model_type": "mistral", "eos_token_id": 2}},
    })
    reference(d, tok)

    (HERE / "templates.json").write_text(json.dumps({"templates": TEMPLATES, "conversations": CONVERSATIONS}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
