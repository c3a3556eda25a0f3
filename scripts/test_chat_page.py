#!/usr/bin/env python3
"""The chat page of `mlxrs serve` in headless Chromium.

Starts `mlxrs serve` on a tiny fixture (127.0.0.1, a free port), opens `/`
in Chromium through playwright, checks the model picker lists the model,
sets the settings (system prompt, temperature 0, max tokens), sends a
message, and checks that the reply streams in (the assistant bubble grows
over several SSE events before the request ends) and equals the server's
non-streaming answer to the same request (the tiny model answers within
one frame, so the test re-delivers the server's SSE events 40 ms apart). Then attaches an image (a
data: URL image_url part) and checks that a text-only model's 400 is shown
as an error bubble and that the page still answers the next message.
Saves a screenshot (docs/img/chat-page.png). Not run by CI (needs
Chromium: `apt-get install -y chromium`, and `pip install playwright`).

With `--vision` and a vision-language model (e.g. models/tiny-vlm/llava):
uploads a real image through the page's file picker, checks it is shown in
the user bubble and sent as a data: URL `image_url` part, and that the
streamed reply equals the server's non-streaming answer to exactly the body
the page sent (and differs from the answer without the image).

Usage: /work/main/.venv/bin/python scripts/test_chat_page.py \
         [--bin target/debug/mlxrs] [--model models/tiny/qwen3] \
         [--chromium /usr/bin/chromium] [--screenshot docs/img/chat-page.png]
       /work/main/.venv/bin/python scripts/test_chat_page.py --vision \
         --model models/tiny-vlm/llava --screenshot docs/img/chat-page-vision.png
"""

import argparse
import contextlib
import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright


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


@contextlib.contextmanager
def serving(a):
    """`mlxrs serve --model a.model` on a free port until the block ends."""
    port = free_port()
    proc = subprocess.Popen(
        [a.bin, "serve", "--model", a.model, "--port", str(port), "--max-tokens", "64"],
        stderr=subprocess.PIPE,
    )
    try:
        wait_health(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)


# A 1x1 PNG (the upload needs some image file).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


SLOW_SSE = """
(() => {
  const orig = window.fetch;
  window.__sse_events = 0;
  window.__bodies = [];
  window.fetch = async (url, opts) => {
    if (String(url).includes("/chat/completions")) window.__bodies.push(opts.body);
    const r = await orig(url, opts);
    if (!String(url).includes("/chat/completions") || !r.ok) return r;
    const text = await r.text();
    const events = text.split("\\n\\n").filter((e) => e.trim());
    const enc = new TextEncoder();
    const body = new ReadableStream({
      async start(ctl) {
        for (const e of events) {
          await new Promise((res) => setTimeout(res, 40));
          window.__sse_events += 1;
          ctl.enqueue(enc.encode(e + "\\n\\n"));
        }
        ctl.close();
      },
    });
    return new Response(body, { status: r.status, headers: r.headers });
  };
})();
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/mlxrs")
    ap.add_argument("--model", default="models/tiny/qwen3")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshot", default="docs/img/chat-page.png")
    ap.add_argument("--vision", action="store_true", help="the model is a VLM: test image upload")
    ap.add_argument("--image", default="models/tiny-vlm/images/scene_a_64x48.png")
    a = ap.parse_args()
    if a.vision:
        return vision(a)

    results = {}
    with serving(a) as port:
        system, question, max_tokens = "You are terse.", "Tell me about the sea.", 40
        want = post(port, "/v1/chat/completions", {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "temperature": 0, "max_tokens": max_tokens,
        })["choices"][0]["message"]["content"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            # The tiny model answers in milliseconds, faster than a frame:
            # re-deliver the server's SSE stream one event per 40 ms so the
            # test can watch the bubble grow (the page code is unchanged;
            # only the transport is slowed).
            page.add_init_script(SLOW_SSE)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            results["models_in_picker"] = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
            assert results["models_in_picker"] == [a.model], results["models_in_picker"]
            page.click("#toggle-settings")
            page.fill("#system", system)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", str(max_tokens))
            # Record the bubble's text each animation frame: a streamed reply
            # grows in several steps.
            page.evaluate("""() => {
              window.__lens = [];
              const tick = () => {
                const b = document.querySelector('.msg.assistant:last-of-type');
                if (b) { const n = b.textContent.length; if (window.__lens.at(-1) !== n) window.__lens.push(n); }
                requestAnimationFrame(tick);
              };
              tick();
            }""")
            page.fill("#input", question)
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant.done", timeout=60000)
            got = page.inner_text(".msg.assistant.done")
            lens = page.evaluate("window.__lens")
            results["reply"] = got
            results["distinct_lengths_seen_while_streaming"] = len([n for n in lens if n > 0])
            results["sse_events_delivered"] = page.evaluate("window.__sse_events")
            assert got.strip() == want.strip(), (got, want)
            assert results["distinct_lengths_seen_while_streaming"] >= 2, lens
            results["status_line"] = page.inner_text("#status")
            results["reply_equals_non_streaming_answer"] = True
            page.click("#toggle-settings")
            page.screenshot(path=a.screenshot)
            results["screenshot"] = a.screenshot

            # An image for a text-only model: the server's 400 shows as an
            # error bubble; the next message still works.
            # (a buffer, not a path: Chromium reads a path lazily)
            page.set_input_files("#image", {"name": "pixel.png", "mimeType": "image/png", "buffer": PNG})
            page.wait_for_selector("#attachments img")
            page.fill("#input", "What is in this picture?")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.error", timeout=30000)
            results["image_error_shown"] = page.inner_text(".msg.error")
            page.fill("#input", "Hello again")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.msg.assistant.done').length >= 2", timeout=60000)
            results["next_message_after_error_answered"] = True
            assert not errors, errors
            results["page_errors"] = errors
            browser.close()
        results["ok"] = True
    print(json.dumps(results, indent=1))
    return 0 if results.get("ok") else 1


def vision(a):
    """Image upload on a vision-language model (see the module docstring)."""
    results = {}
    with serving(a) as port:
        question, max_tokens = "What is in this picture?", 24
        with open(a.image, "rb") as f:
            png = f.read()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            page.add_init_script(SLOW_SSE)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.click("#toggle-settings")
            page.fill("#system", "")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", str(max_tokens))
            page.click("#toggle-settings")
            page.set_input_files("#image", {"name": "scene.png", "mimeType": "image/png", "buffer": png})
            page.wait_for_selector("#attachments img")
            page.fill("#input", question)
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant.done", timeout=60000)
            got = page.inner_text(".msg.assistant.done")
            results["reply"] = got
            results["image_in_user_bubble"] = page.eval_on_selector_all(
                ".msg.user img", "is => is.length")
            assert results["image_in_user_bubble"] == 1, results
            sent = json.loads(page.evaluate("window.__bodies[0]"))
            parts = sent["messages"][-1]["content"]
            kinds = [q["type"] for q in parts]
            results["sent_parts"] = kinds
            url = next(q["image_url"]["url"] for q in parts if q["type"] == "image_url")
            assert url.startswith("data:image/png;base64,"), url[:40]
            assert base64.b64decode(url.split(",", 1)[1]) == png, "the page sent other bytes"
            results["image_bytes_sent_intact"] = True
            sent["stream"] = False
            sent.pop("stream_options", None)
            want = post(port, "/v1/chat/completions", sent)
            results["non_streaming_answer"] = want["choices"][0]["message"]["content"]
            results["prompt_tokens_with_image"] = want["usage"]["prompt_tokens"]
            assert got.strip() == results["non_streaming_answer"].strip(), (got, want)
            no_image = dict(sent)
            no_image["messages"] = sent["messages"][:-1] + [{"role": "user", "content": question}]
            without = post(port, "/v1/chat/completions", no_image)
            results["answer_without_image"] = without["choices"][0]["message"]["content"]
            results["prompt_tokens_without_image"] = without["usage"]["prompt_tokens"]
            assert results["answer_without_image"] != results["non_streaming_answer"], results
            page.screenshot(path=a.screenshot)
            results["screenshot"] = a.screenshot
            assert not errors, errors
            browser.close()
        results["ok"] = True
    print(json.dumps(results, indent=1))
    return 0 if results.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
