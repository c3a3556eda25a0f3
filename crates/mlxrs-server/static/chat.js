// The mlxrs chat page: streams replies from /v1/chat/completions (fetch +
// server-sent events), picks the model from /v1/models, attaches images as
// data: URL image_url parts, and keeps the settings in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = []; // OpenAI chat messages of this conversation
let pendingImages = []; // data: URLs for the next user message
let controller = null;

const SETTINGS = ["system", "temperature", "max-tokens", "api-key"];
for (const id of SETTINGS) {
  const saved = localStorage.getItem("mlxrs." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("mlxrs." + id, $(id).value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text) {
  $("status").textContent = text;
}

function bubble(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  for (const src of images || []) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = "attached image";
    div.appendChild(img);
  }
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    const chat = body.data.filter((m) => !m.kind || m.kind === "chat");
    const select = $("model");
    select.textContent = "";
    for (const m of chat) {
      const o = document.createElement("option");
      o.value = m.id;
      o.textContent = m.id;
      select.appendChild(o);
    }
    const saved = localStorage.getItem("mlxrs.model");
    if (saved && chat.some((m) => m.id === saved)) select.value = saved;
    status(chat.length ? "" : "No chat model is loaded (start mlxrs serve with --model).");
  } catch (e) {
    status("Could not list models: " + e.message);
  }
}

function userContent(text, images) {
  if (!images.length) return text;
  const parts = [{ type: "text", text }];
  for (const url of images) parts.push({ type: "image_url", image_url: { url } });
  return parts;
}

function number(id) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : undefined;
}

// Parse one server-sent-events block ("data: ..." lines).
function eventData(block) {
  return block
    .split("\n")
    .filter((l) => l.startsWith("data:"))
    .map((l) => l.slice(5).trimStart())
    .join("\n");
}

async function send(text) {
  const images = pendingImages;
  pendingImages = [];
  renderAttachments();
  conversation.push({ role: "user", content: userContent(text, images) });
  bubble("user", text, images);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = {
    model: $("model").value || undefined,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    max_tokens: number("max-tokens"),
  };
  controller = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  status("Generating...");
  const t0 = performance.now();
  let reply = "";
  let usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try {
        const e = await r.json();
        if (e.error) msg = e.error.message;
      } catch (_) {}
      throw new Error(msg);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const data = eventData(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices || []) {
          const d = c.delta || {};
          if (d.content) {
            reply += d.content;
            out.textContent = reply;
            $("messages").scrollTop = $("messages").scrollHeight;
          }
        }
      }
    }
    conversation.push({ role: "assistant", content: reply });
    const secs = (performance.now() - t0) / 1000;
    status(
      usage
        ? `${usage.completion_tokens} tokens in ${secs.toFixed(2)} s (${(usage.completion_tokens / secs).toFixed(1)} tok/s)`
        : ""
    );
  } catch (e) {
    if (e.name === "AbortError") {
      conversation.push({ role: "assistant", content: reply });
      status("Stopped.");
    } else {
      conversation.pop(); // the user message did not get an answer
      if (!reply) out.remove();
      bubble("error", e.message);
      status("");
    }
  } finally {
    out.classList.remove("streaming");
    out.classList.add("done");
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
}

function renderAttachments() {
  const box = $("attachments");
  box.textContent = "";
  pendingImages.forEach((src, i) => {
    const img = document.createElement("img");
    img.src = src;
    img.title = "Remove";
    img.addEventListener("click", () => {
      pendingImages.splice(i, 1);
      renderAttachments();
    });
    box.appendChild(img);
  });
}

$("image").addEventListener("change", (ev) => {
  for (const f of ev.target.files) {
    const rd = new FileReader();
    rd.onload = () => {
      pendingImages.push(rd.result);
      renderAttachments();
    };
    rd.readAsDataURL(f);
  }
  ev.target.value = "";
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation.length = 0;
  $("messages").textContent = "";
  status("");
});
$("toggle-settings").addEventListener("click", () => {
  const s = $("settings");
  s.hidden = !s.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!s.hidden));
});
$("model").addEventListener("change", () => localStorage.setItem("mlxrs.model", $("model").value));

loadModels();
