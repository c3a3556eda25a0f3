#!/usr/bin/env python3
"""Inter-token latency of a running stream while a long prompt joins
(chunked prefill interleaved with decode, docs/server.md).

Starts `BIN serve` on MODEL, streams request A (a PROMPT-token prompt of
token ids, MAX_A tokens), and once A has streamed 16 tokens sends request B
(another PROMPT-token prompt, 4 tokens). Reports A's gaps between streamed
tokens while B is prefilled (from B's send to B's first token): max and
median, in ms, plus A's overall median gap and B's time to first token.
Repeats ROUNDS times on one server.

Usage: /work/main/.venv/bin/python scripts/bench_serve_itl.py BIN MODEL \
         [--prompt 600] [--max-a 200] [--step 64] [--rounds 3]
"""

import argparse
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stream(port, prompt, max_tokens, times, started=None):
    body = json.dumps(
        {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            times.append(time.perf_counter())
            if started is not None and len(times) == 16:
                started.set()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=600)
    ap.add_argument("--max-a", type=int, default=200)
    ap.add_argument("--step", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    port = free_port()
    srv = subprocess.Popen(
        [a.bin, "serve", "--model", a.model, "--port", str(port),
         "--prefill-step-size", str(a.step), "--prompt-cache-size", "0"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        out = []
        for rnd in range(a.rounds):
            pa = [10 + (i * 7 + rnd) % 490 for i in range(a.prompt)]
            pb = [10 + (i * 13 + rnd + 1) % 490 for i in range(a.prompt)]
            ta, tb = [], []
            started = threading.Event()
            th = threading.Thread(target=stream, args=(port, pa, a.max_a, ta, started))
            th.start()
            started.wait()
            sent = time.perf_counter()
            stream(port, pb, 4, tb)
            th.join()
            gaps = [(t1 - t0) * 1e3 for t0, t1 in zip(ta, ta[1:])]
            during = [
                (t1 - t0) * 1e3
                for t0, t1 in zip(ta, ta[1:])
                if t1 > sent and t0 < tb[0]
            ]
            out.append({
                "round": rnd,
                "a_tokens": len(ta),
                "a_gap_median_ms": round(statistics.median(gaps), 2),
                "a_gap_max_during_b_prefill_ms": round(max(during), 2) if during else None,
                "a_gap_median_during_b_prefill_ms": round(statistics.median(during), 2) if during else None,
                "a_tokens_during_b_prefill": len(during),
                "b_ttft_ms": round((tb[0] - sent) * 1e3, 1),
            })
            print(json.dumps(out[-1]), flush=True)
        mx = [o["a_gap_max_during_b_prefill_ms"] for o in out if o["a_gap_max_during_b_prefill_ms"]]
        print(json.dumps({"bin": a.bin, "prompt": a.prompt, "step": a.step,
                          "max_gap_median_ms": statistics.median(mx) if mx else None,
                          "max_gap_min_ms": min(mx) if mx else None,
                          "max_gap_max_ms": max(mx) if mx else None}))
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
