//! `mlxrs serve` on vision-language models (python `mlx_vlm.server`): chat
//! requests with `image_url` data-URL parts answer exactly what the library
//! ([`mlxrs_vlm::VlmModel::generate`]) answers for the same prompt and
//! image, alone, streamed, and while text requests share the batch; a
//! prompt with images never reuses another prompt's cache; bad images are
//! clear 400s.

mod common;

use std::path::PathBuf;
use std::thread;

use base64::Engine as _;
use common::{greedy, post, start, stream};
use mlxrs_core::Dtype;
use mlxrs_server::ServerConfig;
use mlxrs_vlm::{LoadOptions, VlmModel};
use serde_json::{Value, json};

fn root() -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm")
}

fn image_path(name: &str) -> PathBuf {
  root().join("images").join(name)
}

fn data_url(name: &str) -> String {
  let bytes = std::fs::read(image_path(name)).unwrap();
  let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
  format!("data:image/png;base64,{b64}")
}

fn config(arch: &str) -> ServerConfig {
  ServerConfig {
    model: root().join(arch).to_string_lossy().into_owned(),
    dtype: Some(Dtype::Float32),
    port: 0,
    max_tokens: 12,
    ..ServerConfig::default()
  }
}

fn vlm(arch: &str) -> VlmModel {
  mlxrs_vlm::load_dir(
    &root().join(arch),
    &LoadOptions {
      dtype: Some(Dtype::Float32),
    },
  )
  .unwrap()
}

/// The user message mlx-vlm builds (text then image, or image first for
/// the families that put it there), as an OpenAI request body.
fn image_request(m: &VlmModel, prompt: &str, image: &str, max_tokens: usize) -> Value {
  let text = json!({"type": "text", "text": prompt});
  let img = json!({"type": "image_url", "image_url": {"url": data_url(image)}});
  let first_is_image = m
    .user_message(prompt, 1)
    .content
    .as_ref()
    .and_then(|c| match c {
      mlxrs_lm::Content::Parts(p) => p.first().cloned(),
      _ => None,
    })
    .is_some_and(|p| p["type"] == "image");
  let parts = if first_is_image {
    vec![img, text]
  } else {
    vec![text, img]
  };
  json!({"model": "m", "max_tokens": max_tokens,
         "messages": [{"role": "user", "content": parts}]})
}

/// The library's greedy answer: (text, completion tokens, prompt tokens).
fn reference(
  m: &VlmModel,
  prompt: &str,
  images: &[&str],
  max_tokens: usize,
) -> (String, usize, usize) {
  let paths: Vec<PathBuf> = images.iter().map(|i| image_path(i)).collect();
  let imgs = m.load_images(&paths).unwrap();
  let input = m.prepare(prompt, &imgs, None, false).unwrap();
  let o = m.generate(&input, &greedy(max_tokens)).unwrap();
  (o.text, o.tokens.len(), input.input_ids.len())
}

fn answer(v: &Value) -> (String, usize, usize) {
  (
    v["choices"][0]["message"]["content"]
      .as_str()
      .unwrap()
      .to_string(),
    v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
    v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
  )
}

/// One image request per family equals the library, streamed too.
fn check_family(arch: &str) {
  let m = vlm(arch);
  let s = start(config(arch));
  let prompt = "Describe the picture.";
  let text_only = reference(&m, prompt, &[], 12);
  for image in ["scene_a_64x48.png", "scene_b_90x60.png"] {
    let want = reference(&m, prompt, &[image], 12);
    // The image changes the answer (a server that dropped it would show).
    assert_ne!(want.0, text_only.0, "{arch} {image}");
    assert!(want.1 > 0 && want.2 > text_only.2, "{arch}: {want:?}");
    let (code, v) = post(
      &s,
      "/v1/chat/completions",
      &image_request(&m, prompt, image, 12),
    );
    assert_eq!(code, 200, "{arch} {image}: {v}");
    assert_eq!(answer(&v), want, "{arch} {image}");
    let mut body = image_request(&m, prompt, image, 12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = stream(&s, "/v1/chat/completions", &body);
    let text: String = chunks
      .iter()
      .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
      .collect();
    assert_eq!(text, want.0, "{arch} {image}: streamed");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], json!(want.2), "{arch}: {usage}");
  }
  s.shutdown().unwrap();
}

#[test]
fn llava_image_chat_equals_the_library() {
  check_family("llava");
}

#[test]
fn qwen2_vl_image_chat_equals_the_library() {
  // M-RoPE: the language model keeps the prepared prompt; rows run one at
  // a time and a text request after an image one must not see its state.
  check_family("qwen2_vl");
  let m = vlm("qwen2_vl");
  let s = start(config("qwen2_vl"));
  let (code, _) = post(
    &s,
    "/v1/chat/completions",
    &image_request(&m, "What is this?", "scene_a_64x48.png", 6),
  );
  assert_eq!(code, 200);
  let want = reference(&m, "Hello there", &[], 8);
  let (code, v) = post(
    &s,
    "/v1/chat/completions",
    &json!({"model": "m", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello there"}]}),
  );
  assert_eq!(code, 200, "{v}");
  assert_eq!(answer(&v), want);
  s.shutdown().unwrap();
}

#[test]
fn gemma3_image_chat_equals_the_library() {
  check_family("gemma3");
}

/// The served answer equals mlx-vlm's greedy tokens on the same prompt and
/// image (`reference.json`, `scripts/make_vlm_fixtures.py`: mlx-vlm's
/// `apply_chat_template` + `prepare_inputs` + `generate_step`).
#[test]
fn served_answers_equal_mlx_vlm() {
  for arch in ["llava", "qwen2_vl", "gemma3"] {
    let m = vlm(arch);
    let r: Value =
      serde_json::from_slice(&std::fs::read(root().join(arch).join("reference.json")).unwrap())
        .unwrap();
    let case = r["cases"]
      .as_array()
      .unwrap()
      .iter()
      .find(|c| c["name"] == "image")
      .unwrap();
    let prompt = case["prompt"].as_str().unwrap();
    let image = case["images"][0].as_str().unwrap();
    let want: Vec<u32> = case["greedy_tokens"]
      .as_array()
      .unwrap()
      .iter()
      .map(|t| t.as_u64().unwrap() as u32)
      .collect();
    let s = start(config(arch));
    let (code, v) = post(
      &s,
      "/v1/chat/completions",
      &image_request(&m, prompt, image, want.len()),
    );
    assert_eq!(code, 200, "{arch}: {v}");
    let (text, n, prompt_tokens) = answer(&v);
    assert_eq!(
      prompt_tokens,
      case["input_ids"].as_array().unwrap().len(),
      "{arch}"
    );
    // The reference ignores EOS; the server stops there.
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    let shown = if finish == "stop" { n - 1 } else { n };
    assert!(finish == "stop" || n == want.len(), "{arch}: {v}");
    let expect = m.tokenizer().decode(&want[..shown], false).unwrap();
    assert_eq!(text, expect, "{arch}: {v}");
    s.shutdown().unwrap();
  }
}

#[test]
fn image_and_text_requests_share_the_batch() {
  let m = vlm("llava");
  let s = start(config("llava"));
  let prompt = "Describe the picture.";
  let images = [
    "scene_a_64x48.png",
    "scene_b_90x60.png",
    "scene_c_84x140.png",
  ];
  let wants: Vec<_> = images
    .iter()
    .map(|i| reference(&m, prompt, &[i], 12))
    .collect();
  // The same text with different images gives different answers here, so
  // a prompt-cache hit across images would show.
  assert!(
    wants.windows(2).any(|w| w[0].0 != w[1].0),
    "the fixture answers every image alike: {wants:?}"
  );
  let texts = ["Hello there", "Tell me a story", "What is two plus two?"];
  let text_wants: Vec<_> = texts.iter().map(|t| reference(&m, t, &[], 12)).collect();
  let bodies: Vec<(Value, (String, usize, usize))> = images
    .iter()
    .zip(&wants)
    .map(|(i, w)| (image_request(&m, prompt, i, 12), w.clone()))
    .chain(texts.iter().zip(&text_wants).map(|(t, w)| {
      (
        json!({"model": "m", "max_tokens": 12,
               "messages": [{"role": "user", "content": t}]}),
        w.clone(),
      )
    }))
    .collect();
  for round in 0..2 {
    thread::scope(|sc| {
      let hs: Vec<_> = bodies
        .iter()
        .map(|(b, w)| {
          let s = &s;
          sc.spawn(move || {
            let (code, v) = post(s, "/v1/chat/completions", b);
            assert_eq!(code, 200, "round {round}: {v}");
            assert_eq!(&answer(&v), w, "round {round}");
          })
        })
        .collect();
      for h in hs {
        h.join().unwrap();
      }
    });
  }
  s.shutdown().unwrap();
}

/// A prompt with images joins a running text row (LLaVA's language model
/// batches): its answer arrives while the long text answer still streams,
/// and both equal their lone answers.
#[test]
fn an_image_prompt_joins_a_running_batch() {
  use std::io::{BufRead, BufReader};
  use std::time::Instant;
  let m = vlm("llava");
  let mut cfg = config("llava");
  cfg.max_tokens = 400;
  let s = start(cfg);
  // A long text answer: EOS banned on both sides (logit_bias).
  let long = "Tell me a very long story";
  let eos = m.tokenizer().eos_token_id().unwrap();
  let want_long = {
    let input = m.prepare(long, &[], None, false).unwrap();
    let mut opts = greedy(400);
    opts.step.logits.logit_bias.insert(eos as i32, -100.0);
    m.generate(&input, &opts).unwrap().text
  };
  let want_img = reference(&m, "Describe the picture.", &["scene_a_64x48.png"], 12);
  let url = format!("http://{}/v1/chat/completions", s.addr());
  let (tx, rx) = std::sync::mpsc::channel();
  let text_thread = {
    let url = url.clone();
    thread::spawn(move || {
      let body = json!({"model": "m", "max_tokens": 400, "stream": true,
                        "logit_bias": {eos.to_string(): -100},
                        "messages": [{"role": "user", "content": long}]});
      let r = ureq::post(&url).send_json(body).unwrap();
      let mut text = String::new();
      let mut signalled = false;
      for line in BufReader::new(r.into_reader()).lines() {
        let line = line.unwrap();
        let Some(d) = line.strip_prefix("data: ") else {
          continue;
        };
        if d == "[DONE]" {
          break;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
          text.push_str(t);
          if !signalled && !t.is_empty() {
            tx.send(()).unwrap();
            signalled = true;
          }
        }
      }
      (text, Instant::now())
    })
  };
  rx.recv().unwrap();
  let (code, v) = post(
    &s,
    "/v1/chat/completions",
    &image_request(&m, "Describe the picture.", "scene_a_64x48.png", 12),
  );
  let image_done = Instant::now();
  assert_eq!(code, 200, "{v}");
  assert_eq!(answer(&v), want_img);
  let (text, text_done) = text_thread.join().unwrap();
  assert_eq!(text, want_long);
  assert!(
    image_done < text_done,
    "the image prompt waited for the running row to finish"
  );
  assert!(common::metric(&s, "mlxrs_running_batch_size_peak") >= 2.0);
  s.shutdown().unwrap();
}

/// A prompt with its own attention mask (PaliGemma's bidirectional prefix)
/// cannot join running rows: it waits for the batch to drain, then answers
/// exactly. (PaliGemma has no chat template; the test gives a minimal one.)
#[test]
fn a_masked_image_prompt_waits_for_an_empty_batch() {
  use std::time::Instant;
  let m = vlm("paligemma");
  let mut cfg = config("paligemma");
  cfg.max_tokens = 300;
  cfg.chat_template = Some(
    "{% for m in messages %}{% for p in m.content %}{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}{% endfor %}{% endfor %}"
      .into(),
  );
  let s = start(cfg);
  let eos = m.tokenizer().eos_token_id().unwrap();
  let lone = |prompt: &str, image: &str, max_tokens: usize, ban_eos: bool| {
    let imgs = m.load_images(&[image_path(image)]).unwrap();
    let input = m.process(&format!("<image>{prompt}"), &imgs).unwrap();
    let mut opts = greedy(max_tokens);
    if ban_eos {
      opts.step.logits.logit_bias.insert(eos as i32, -100.0);
    }
    m.generate(&input, &opts).unwrap().text
  };
  let request = |prompt: &str, image: &str, max_tokens: usize| {
    json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": data_url(image)}},
      {"type": "text", "text": prompt}]}]})
  };
  let want_long = lone("Tell me everything.", "scene_b_90x60.png", 300, true);
  let want = lone("Describe the picture.", "scene_a_64x48.png", 12, false);
  thread::scope(|sc| {
    let long = sc.spawn(|| {
      let mut body = request("Tell me everything.", "scene_b_90x60.png", 300);
      body["logit_bias"] = json!({eos.to_string(): -100});
      let (code, v) = post(&s, "/v1/chat/completions", &body);
      (code, v, Instant::now())
    });
    // Let the long row start first.
    while common::metric(&s, "mlxrs_running_batch_size") < 1.0 {
      thread::sleep(std::time::Duration::from_millis(5));
    }
    let (code, v) = post(
      &s,
      "/v1/chat/completions",
      &request("Describe the picture.", "scene_a_64x48.png", 12),
    );
    let done = Instant::now();
    assert_eq!(code, 200, "{v}");
    assert_eq!(answer(&v).0, want);
    let (lcode, lv, ldone) = long.join().unwrap();
    assert_eq!(lcode, 200, "{lv}");
    assert_eq!(answer(&lv).0, want_long);
    assert!(ldone <= done, "the masked prompt joined a running batch");
  });
  assert_eq!(common::metric(&s, "mlxrs_running_batch_size_peak"), 1.0);
  s.shutdown().unwrap();
}

/// `/v1/responses` with an `input_image` part answers as chat does.
#[test]
fn responses_api_takes_images() {
  let m = vlm("llava");
  let s = start(config("llava"));
  let want = reference(&m, "Describe the picture.", &["scene_a_64x48.png"], 12);
  let (code, v) = post(
    &s,
    "/v1/responses",
    &json!({"model": "m", "max_output_tokens": 12, "input": [{"role": "user", "content": [
      {"type": "input_text", "text": "Describe the picture."},
      {"type": "input_image", "image_url": data_url("scene_a_64x48.png")}]}]}),
  );
  assert_eq!(code, 200, "{v}");
  let text = v["output"]
    .as_array()
    .unwrap()
    .iter()
    .find(|o| o["type"] == "message")
    .map(|o| o["content"][0]["text"].as_str().unwrap().to_string())
    .unwrap();
  assert_eq!(text, want.0);
  assert_eq!(v["usage"]["input_tokens"], json!(want.2), "{v}");
  s.shutdown().unwrap();
}

#[test]
fn bad_images_are_clear_errors() {
  let m = vlm("llava");
  let s = start(config("llava"));
  let with_url = |url: &str| {
    json!({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
      {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]})
  };
  let cases = [
    ("https://example.com/cat.png", "only data: URLs"),
    ("/etc/passwd", "only data: URLs"),
    (
      "data:image/png;base64,!!!not base64!!!",
      "base64 data is invalid",
    ),
    ("data:image/png,rawbytes", "must be base64"),
    ("data:image/png;base64", "needs a `,`"),
    (
      &format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b"this is not an image")
      ),
      "cannot be decoded",
    ),
  ];
  for (url, want) in cases {
    let (code, v) = post(&s, "/v1/chat/completions", &with_url(url));
    assert_eq!(code, 400, "{url}: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(want), "{url}: {msg}");
    assert!(msg.contains("messages[0].content[1]"), "{msg}");
  }
  let (code, v) = post(
    &s,
    "/v1/chat/completions",
    &json!({"model": "m", "messages": [{"role": "user", "content": [
      {"type": "image_url"}]}]}),
  );
  assert_eq!(code, 400, "{v}");
  // Still serving, exactly.
  let want = reference(&m, "Describe the picture.", &["scene_a_64x48.png"], 12);
  let (code, v) = post(
    &s,
    "/v1/chat/completions",
    &image_request(&m, "Describe the picture.", "scene_a_64x48.png", 12),
  );
  assert_eq!(code, 200);
  assert_eq!(answer(&v), want);
  s.shutdown().unwrap();
}

#[test]
fn a_text_model_refuses_images() {
  let s = start(common::config("llama"));
  let (code, v) = post(
    &s,
    "/v1/chat/completions",
    &json!({"model": "m", "messages": [{"role": "user", "content": [
      {"type": "text", "text": "hi"},
      {"type": "image_url", "image_url": {"url": data_url("scene_a_64x48.png")}}]}]}),
  );
  assert_eq!(code, 400, "{v}");
  assert!(
    v["error"]["message"]
      .as_str()
      .unwrap()
      .contains("need a vision model"),
    "{v}"
  );
  s.shutdown().unwrap();
}
