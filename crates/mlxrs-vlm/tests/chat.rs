//! Multi-turn chat with images ([`VlmChat`]) and the image-feature cache on
//! the tiny checkpoints of `models/tiny-vlm/`.
//!
//! - A 3-turn conversation (image, text only, new image) with KV-cache
//!   reuse gives, turn by turn, exactly the greedy tokens of a from-scratch
//!   generation over the whole rendered conversation (fresh caches); turns
//!   2 and 3 prefill only the new suffix.
//! - Where `models/tiny-vlm/ARCH/chat_reference.json` exists
//!   (`scripts/make_vlm_fixtures.py --chat`), the rendered multi-turn prompt
//!   and ids equal mlx-vlm's (`apply_chat_template` with a message list and
//!   explicit image parts) and the greedy reply tokens equal mlx-vlm's
//!   `generate` on it.
//! - The feature cache: a repeated image set hits and gives bit-identical
//!   logits (tolerance 0: the same feature array is reused), another image
//!   misses, clear / size 0 behave.

use std::path::{Path, PathBuf};

use mlxrs_vlm::{
  GenerateOptions, LoadOptions, RgbImage, SamplerConfig, StepConfig, VlmChat, VlmModel, load_dir,
};
use serde_json::Value;

fn root() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm")
}

fn model(arch: &str) -> VlmModel {
  load_dir(&root().join(arch), &LoadOptions::default()).unwrap()
}

fn image(m: &VlmModel, name: &str) -> RgbImage {
  m.load_images(&[root().join("images").join(name)])
    .unwrap()
    .remove(0)
}

fn greedy(max_tokens: usize) -> GenerateOptions {
  GenerateOptions {
    step: StepConfig {
      max_tokens,
      sampler: SamplerConfig {
        temp: 0.0,
        ..SamplerConfig::default()
      },
      ..StepConfig::default()
    },
    stop: Vec::new(),
  }
}

/// The scripted session: (user text, images attached before it).
const TURNS: &[(&str, &[&str])] = &[
  ("Describe this image.", &["scene_a_64x48.png"]),
  ("What colors are in it?", &[]),
  ("And this one?", &["scene_b_90x60.png"]),
];

/// `expect_reuse`: false where the cache cannot be trimmed back to the
/// common prefix (Gemma 3's tiny fixture has an 8-token sliding window, so
/// its rotating caches have wrapped and every turn is re-prefilled).
fn check_reuse(arch: &str, expect_reuse: bool) {
  let m = model(arch);
  let opts = greedy(8);
  let mut chat = VlmChat::new(&m, None, opts.clone()).unwrap();
  for (k, (user, imgs)) in TURNS.iter().enumerate() {
    for f in *imgs {
      chat.add_image(image(&m, f));
    }
    // From scratch: the whole conversation so far, fresh caches.
    let input = chat.prompt_input(user).unwrap();
    let want = m.generate(&input, &opts).unwrap();
    let mut streamed = String::new();
    let got = chat.send(user, &mut |t| streamed.push_str(t)).unwrap();
    let want_tokens: Vec<u32> = want.tokens.iter().map(|&t| t as u32).collect();
    assert_eq!(got.tokens, want_tokens, "{arch} turn {k}: reply tokens");
    assert_eq!(got.text, want.text, "{arch} turn {k}: reply text");
    assert_eq!(streamed, got.text, "{arch} turn {k}: streamed text");
    assert_eq!(got.prompt_tokens, input.input_ids.len(), "{arch} turn {k}");
    assert_eq!(got.prefilled + got.reused, got.prompt_tokens);
    if k == 0 || !expect_reuse {
      assert_eq!(got.reused, 0, "{arch} turn {k}: prefills everything");
    } else {
      // Everything up to the previous reply is reused; the prefilled part
      // is this turn's user message (plus any template tokens after the
      // reply and whatever of the reply re-tokenizes differently).
      assert!(got.reused > 0, "{arch} turn {k}: nothing reused");
      assert!(
        got.prefilled < got.prompt_tokens / 2 + 1,
        "{arch} turn {k}: prefilled {} of {}",
        got.prefilled,
        got.prompt_tokens
      );
    }
  }
  assert_eq!(chat.num_turns(), 3);
}

#[test]
fn chat_reuse_matches_from_scratch_qwen2_vl() {
  check_reuse("qwen2_vl", true);
}

#[test]
fn chat_reuse_matches_from_scratch_qwen2_5_vl() {
  check_reuse("qwen2_5_vl", true);
}

#[test]
fn chat_reuse_matches_from_scratch_llava() {
  check_reuse("llava", true);
}

#[test]
fn chat_reuse_matches_from_scratch_gemma3() {
  check_reuse("gemma3", false);
}

#[test]
fn chat_reuse_matches_from_scratch_idefics3() {
  check_reuse("idefics3", true);
}

/// A text-only second turn hits the feature cache (the first turn's image
/// is not re-encoded); `reuse_cache = false` prefills everything and gives
/// the same replies.
#[test]
fn chat_second_turn_hits_feature_cache_and_no_reuse_agrees() {
  let m = model("qwen2_vl");
  let mut a = VlmChat::new(&m, Some("Be brief."), greedy(6)).unwrap();
  a.add_image(image(&m, "scene_a_64x48.png"));
  let r1 = a.send("Describe this image.", &mut |_| {}).unwrap();
  let s1 = m.vision_cache_stats();
  let r2 = a.send("More detail.", &mut |_| {}).unwrap();
  let s2 = m.vision_cache_stats();
  assert_eq!(s2.hits, s1.hits + 1, "turn 2 reuses the image features");
  assert_eq!(s2.misses, s1.misses);
  let mut b = VlmChat::new(&m, Some("Be brief."), greedy(6)).unwrap();
  b.reuse_cache = false;
  b.add_image(image(&m, "scene_a_64x48.png"));
  let q1 = b.send("Describe this image.", &mut |_| {}).unwrap();
  let q2 = b.send("More detail.", &mut |_| {}).unwrap();
  assert_eq!(q2.reused, 0);
  assert_eq!(q2.prefilled, q2.prompt_tokens);
  assert_eq!(r1.tokens, q1.tokens);
  assert_eq!(r2.tokens, q2.tokens);
  // reset: a fresh conversation, no cache.
  a.reset();
  let r = a.send("Hello", &mut |_| {}).unwrap();
  assert_eq!(r.reused, 0);
  assert_eq!(a.num_turns(), 1);
}

#[test]
fn chat_errors() {
  let m = model("paligemma");
  let e = VlmChat::new(&m, None, greedy(4)).err().unwrap().to_string();
  assert!(e.contains("no chat template"), "{e}");
  let m = model("qwen2_vl");
  let mut c = VlmChat::new(&m, None, greedy(4)).unwrap();
  let e = c.send("", &mut |_| {}).unwrap_err().to_string();
  assert!(e.contains("empty"), "{e}");
}

/// mlx-vlm's multi-turn reference (`scripts/make_vlm_fixtures.py --chat`).
fn check_python(arch: &str) {
  let p = root().join(arch).join("chat_reference.json");
  let Ok(s) = std::fs::read_to_string(&p) else {
    panic!(
      "{} is missing: run scripts/make_vlm_fixtures.py --chat",
      p.display()
    );
  };
  let r: Value = serde_json::from_str(&s).unwrap();
  let m = model(arch);
  let max_tokens = r["max_tokens"].as_u64().unwrap() as usize;
  let mut chat = VlmChat::new(&m, None, greedy(max_tokens)).unwrap();
  for (k, t) in r["turns"].as_array().unwrap().iter().enumerate() {
    for f in t["images"].as_array().unwrap() {
      chat.add_image(image(&m, f.as_str().unwrap()));
    }
    let user = t["user"].as_str().unwrap();
    let text = m.apply_chat_template(&chat.messages(Some(user))).unwrap();
    assert_eq!(
      text,
      t["prompt_text"].as_str().unwrap(),
      "{arch} turn {k}: prompt text"
    );
    let input = chat.prompt_input(user).unwrap();
    let want_ids: Vec<u32> = t["input_ids"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap() as u32)
      .collect();
    assert_eq!(input.input_ids, want_ids, "{arch} turn {k}: input ids");
    let got = chat.send(user, &mut |_| {}).unwrap();
    let want: Vec<u32> = t["tokens"]
      .as_array()
      .unwrap()
      .iter()
      .map(|v| v.as_u64().unwrap() as u32)
      .collect();
    assert_eq!(
      got.tokens, want,
      "{arch} turn {k}: greedy reply tokens vs mlx-vlm"
    );
    assert_eq!(
      got.text,
      t["text"].as_str().unwrap(),
      "{arch} turn {k}: reply text"
    );
  }
}

#[test]
fn chat_matches_mlx_vlm_qwen2_vl() {
  check_python("qwen2_vl");
}

#[test]
fn chat_matches_mlx_vlm_qwen2_5_vl() {
  check_python("qwen2_5_vl");
}

#[test]
fn chat_matches_mlx_vlm_llava() {
  check_python("llava");
}

fn check_feature_cache(arch: &str) {
  let m = model(arch);
  m.reset_vision_cache_stats();
  let a = vec![image(&m, "scene_a_64x48.png")];
  let b = vec![image(&m, "scene_b_90x60.png")];
  let ia = m.prepare("Describe this image.", &a, None, false).unwrap();
  let ib = m.prepare("Describe this image.", &b, None, false).unwrap();
  let t0 = std::time::Instant::now();
  let l1 = m.prompt_logits(&ia).unwrap().to_vec::<f32>().unwrap();
  let cold = t0.elapsed();
  let s = m.vision_cache_stats();
  assert_eq!(
    (s.hits, s.misses, s.entries),
    (0, 1, 1),
    "{arch}: first image misses"
  );
  let t0 = std::time::Instant::now();
  let l2 = m.prompt_logits(&ia).unwrap().to_vec::<f32>().unwrap();
  let warm = t0.elapsed();
  let s = m.vision_cache_stats();
  assert_eq!((s.hits, s.misses), (1, 1), "{arch}: repeated image hits");
  // Tolerance 0: the cached features are the very array computed before.
  assert_eq!(l1, l2, "{arch}: logits with cached features");
  println!("{arch}: prompt_logits cold {cold:?}, cached features {warm:?}");
  // Token-level: generation with cached features equals uncached.
  let g1 = m.generate(&ia, &greedy(6)).unwrap();
  m.clear_vision_cache();
  assert_eq!(m.vision_cache_stats().entries, 0);
  let g2 = m.generate(&ia, &greedy(6)).unwrap();
  assert_eq!(g1.tokens, g2.tokens, "{arch}: tokens");
  let s = m.vision_cache_stats();
  assert_eq!(
    (s.hits, s.misses),
    (2, 2),
    "{arch}: hit, then miss after clear"
  );
  // A different image misses and gives different logits.
  let l3 = m.prompt_logits(&ib).unwrap().to_vec::<f32>().unwrap();
  let s = m.vision_cache_stats();
  assert_eq!(
    (s.hits, s.misses, s.entries),
    (2, 3, 2),
    "{arch}: other image misses"
  );
  assert_ne!(l1, l3);
  // Size 1: b evicts a; size 0: nothing is kept.
  m.set_vision_cache_size(1);
  assert_eq!(m.vision_cache_stats().entries, 1);
  m.prompt_logits(&ia).unwrap();
  assert_eq!(m.vision_cache_stats().misses, 4);
  m.set_vision_cache_size(0);
  m.prompt_logits(&ia).unwrap();
  let s = m.vision_cache_stats();
  assert_eq!((s.hits, s.misses, s.entries, s.capacity), (2, 5, 0, 0));
}

#[test]
fn feature_cache_qwen2_vl() {
  check_feature_cache("qwen2_vl");
}

#[test]
fn feature_cache_llava() {
  check_feature_cache("llava");
}

#[test]
fn feature_cache_llava_next() {
  check_feature_cache("llava_next");
}

#[test]
fn feature_cache_paligemma() {
  check_feature_cache("paligemma");
}

#[test]
fn feature_cache_gemma3() {
  check_feature_cache("gemma3");
}

#[test]
fn feature_cache_smolvlm() {
  check_feature_cache("smolvlm");
}
