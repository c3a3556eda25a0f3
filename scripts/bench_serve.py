#!/usr/bin/env python3
"""Load generator for scripts/bench_serve.sh: streaming /v1/completions
requests against an OpenAI-compatible server at fixed concurrency levels.

For each concurrency C it sends R = max(2*C, 8) requests (C at a time, each
thread sending its next request when the previous one ends), every request
a different prompt with the same `max_tokens`, greedy. Reports per level:
aggregate completion tokens per second (sum of tokens / wall time), time to
first token p50 / p90 (first streamed text chunk), and the requests' mean
decode speed. Standard library only (http.client), so it runs anywhere.

Usage: bench_serve.py --port P --label NAME [--levels 1,8,32] [--max-tokens 64]
"""

import argparse
import http.client
import json
import statistics
import threading
import time


MODEL = "bench"


def one(port, prompt, max_tokens):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]}")
    ttft, chunks, usage = None, 0, None
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        d = line[6:]
        if d == b"[DONE]":
            break
        j = json.loads(d)
        if j.get("usage"):
            usage = j["usage"]
        for c in j.get("choices", []):
            if c.get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    conn.close()
    n = usage["completion_tokens"] if usage else chunks
    return ttft if ttft is not None else t1 - t0, n, t1 - t0


def level(port, c, max_tokens, words):
    r = max(2 * c, 8)
    prompts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(24)) + f" {i}" for i in range(r)]
    nxt = [0]
    lock = threading.Lock()
    out = []
    errors = []

    def worker():
        while True:
            with lock:
                if nxt[0] >= r:
                    return
                i = nxt[0]
                nxt[0] += 1
            try:
                out.append(one(port, prompts[i], max_tokens))
            except (OSError, http.client.HTTPException, ValueError) as e:
                # a request the server dropped (connection reset, bad
                # reply): counted, not fatal to the level
                errors.append(repr(e))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(c)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    if not out:
        raise SystemExit(f"every request failed at concurrency {c}: {errors[:3]}")
    ttfts = sorted(x[0] for x in out)
    toks = sum(x[1] for x in out)
    per = [x[1] / max(x[2] - x[0], 1e-9) for x in out if x[1] > 1]
    return {
        "concurrency": c,
        "requests": r,
        "failed": len(errors),
        "completion_tokens": toks,
        "wall_s": round(wall, 3),
        "agg_tok_s": round(toks / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_p90_ms": round(1000 * ttfts[int(0.9 * (len(ttfts) - 1))], 1),
        "per_request_tok_s": round(statistics.mean(per), 1) if per else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default="bench", help="the `model` field (mlx_lm.server loads it)")
    a = ap.parse_args()
    global MODEL
    MODEL = a.model
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex bold jumbo pygmies".split()
    one(a.port, "warm up", 4)
    for c in [int(x) for x in a.levels.split(",")]:
        res = level(a.port, c, a.max_tokens, words)
        res["server"] = a.label
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
