//! Multi-turn chat with images (python `mlx_vlm.chat` / `MLXVisionChat`
//! with a `PromptCacheState`): the conversation is rendered with the
//! model's chat template every turn, each user message holding the
//! `{"type": "image"}` parts of the images attached to it (mlx-vlm's
//! `apply_chat_template` with a message list keeps explicit image parts on
//! their own turns), and the KV cache of the previous turns is reused: only
//! the tokens after the longest common prefix of the cached and the new
//! prompt are prefilled.
//!
//! Reuse is exact for every family here: the image features of earlier
//! turns come back from the image-feature cache, and positions depend only
//! on the tokens before them (Qwen2-VL's M-RoPE positions are computed
//! left to right, and the positions the previous reply was generated at
//! equal those the new prompt's `get_rope_index` gives it), so a cached
//! prefix holds the same keys and values as a from-scratch prefill. The
//! cache is rebuilt from scratch when it cannot be trimmed (a rotating
//! `--max-kv-size` cache that has wrapped).

use mlxrs_lm::{Content, FinishReason, GenerateOptions, Message, TextStream};
use mlxrs_nn::KvCache;
use serde_json::json;

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model::{VlmInput, VlmModel};

/// One finished exchange of the history.
#[derive(Debug, Clone)]
struct Turn {
  user: String,
  num_images: usize,
  reply: String,
}

/// What one [`VlmChat::send`] did.
#[derive(Debug, Clone)]
pub struct ChatTurn {
  /// The reply text.
  pub text: String,
  /// The generated token ids (the EOS token included when generation
  /// stopped on it).
  pub tokens: Vec<u32>,
  /// Why generation stopped.
  pub finish_reason: Option<FinishReason>,
  /// Tokens of the whole rendered conversation (this turn's prompt).
  pub prompt_tokens: usize,
  /// Of them, tokens prefilled this turn.
  pub prefilled: usize,
  /// Of them, tokens whose keys / values came from the previous turns'
  /// cache.
  pub reused: usize,
  /// Prefill speed (tokens per second of the prefilled part).
  pub prompt_tps: f64,
  /// Generation speed.
  pub generation_tps: f64,
  /// Seconds from the start of the turn (prompt building, image
  /// processing, vision tower, prefill) to the first token.
  pub ttft_s: f64,
}

/// A multi-turn chat with a [`VlmModel`] (python `mlx_vlm.chat`'s
/// `MLXVisionChat`): images attach to the next user message, history is
/// rendered with the chat template, the KV cache is reused across turns.
pub struct VlmChat<'m> {
  model: &'m VlmModel,
  opts: GenerateOptions,
  system: Option<String>,
  turns: Vec<Turn>,
  images: Vec<RgbImage>,
  pending: Vec<RgbImage>,
  cache: Option<Vec<KvCache>>,
  cached_ids: Vec<u32>,
  /// Reuse the KV cache across turns (default true); false re-prefills the
  /// whole conversation every turn.
  pub reuse_cache: bool,
}

impl<'m> VlmChat<'m> {
  /// A new conversation with an optional system prompt. Errors for a model
  /// without a chat template (PaliGemma takes single prompts only).
  pub fn new(model: &'m VlmModel, system: Option<&str>, opts: GenerateOptions) -> Result<Self> {
    if model.uses_plain_prompt() || !model.tokenizer().has_chat_template() {
      return Err(Error::invalid(format!(
        "{} (model_type `{}`) has no chat template, so it cannot hold a multi-turn chat; use `generate`",
        model.path().display(),
        model.model_type()
      )));
    }
    Ok(VlmChat {
      model,
      opts,
      system: system.map(str::to_string),
      turns: Vec::new(),
      images: Vec::new(),
      pending: Vec::new(),
      cache: None,
      cached_ids: Vec::new(),
      reuse_cache: true,
    })
  }

  /// Attach an image to the next user message (python `/image PATH`).
  pub fn add_image(&mut self, image: RgbImage) {
    self.pending.push(image);
  }

  /// Drop the images waiting for the next user message.
  pub fn clear_pending(&mut self) {
    self.pending.clear();
  }

  /// Images waiting for the next user message.
  pub fn pending_images(&self) -> usize {
    self.pending.len()
  }

  /// Completed turns.
  pub fn num_turns(&self) -> usize {
    self.turns.len()
  }

  /// Forget the conversation (keeping the system prompt) and its cache
  /// (python `/clear`).
  pub fn reset(&mut self) {
    self.turns.clear();
    self.images.clear();
    self.pending.clear();
    self.cache = None;
    self.cached_ids.clear();
  }

  /// The messages of the history plus a next user message `next` (with
  /// the pending images), as the chat template sees them.
  pub fn messages(&self, next: Option<&str>) -> Vec<Message> {
    let mut msgs = Vec::new();
    if let Some(s) = &self.system {
      msgs.push(self.model.system_message(s));
    }
    // mlx-vlm's `apply_chat_template` reduces a message without image
    // parts to its stripped text (`extract_text_from_content`).
    let user = |text: &str, n: usize| {
      let text = if n == 0 { py_strip(text) } else { text };
      self.model.user_message(text, n)
    };
    for t in &self.turns {
      msgs.push(user(&t.user, t.num_images));
      msgs.push(assistant_message(py_strip(&t.reply)));
    }
    if let Some(n) = next {
      msgs.push(user(n, self.pending.len()));
    }
    msgs
  }

  /// The processed prompt of the history plus the user message `next`
  /// (python `apply_chat_template(processor, config, messages)` +
  /// `prepare_inputs` with every image of the conversation).
  pub fn prompt_input(&self, next: &str) -> Result<VlmInput> {
    let text = self.model.apply_chat_template(&self.messages(Some(next)))?;
    let mut images = self.images.clone();
    images.extend(self.pending.iter().cloned());
    self.model.process(&text, &images)
  }

  /// Send a user message (with the pending images) and generate the reply,
  /// calling `on_text` with each streamed piece.
  pub fn send(&mut self, user: &str, on_text: &mut dyn FnMut(&str)) -> Result<ChatTurn> {
    if user.is_empty() {
      return Err(Error::invalid("the user message is empty"));
    }
    let t0 = std::time::Instant::now();
    let input = self.prompt_input(user)?;
    let ids = &input.input_ids;
    if let Some(ctx) = self.model.lm.max_context {
      if ids.len() > ctx {
        return Err(Error::invalid(format!(
          "the conversation has {} tokens, more than the model's context of {ctx} \
           (max_position_embeddings); start a new one (/clear)",
          ids.len()
        )));
      }
    }
    let embeddings = self.model.prompt_embeddings(&input)?;
    let (start, cache) = self.reusable_prefix(ids);
    let embeddings = match embeddings {
      Some(e) => Some(e.suffix(start)?),
      None => None,
    };
    let mut stream = TextStream::with_embeddings(
      &self.model.lm,
      &ids[start..],
      embeddings.as_ref(),
      &self.opts,
      cache,
    )?;
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut last = None;
    let mut ttft = None;
    for r in &mut stream {
      let r = r?;
      if ttft.is_none() {
        ttft = Some(t0.elapsed().as_secs_f64());
      }
      on_text(&r.text);
      text.push_str(&r.text);
      if r.token >= 0 {
        tokens.push(r.token as u32);
      }
      last = Some(r);
    }
    // What the cache holds: the prompt, then the tokens fed back so far.
    let mut caches = stream.into_cache();
    let mut held = ids.clone();
    held.extend_from_slice(&tokens);
    let offset = caches
      .first()
      .map(|c| c.offset.max(0) as usize)
      .unwrap_or(0);
    if offset <= held.len() {
      held.truncate(offset);
      self.cache = Some(caches);
      self.cached_ids = held;
    } else if trim_all(&mut caches, offset - held.len()) {
      self.cache = Some(caches);
      self.cached_ids = held;
    } else {
      self.cache = None;
      self.cached_ids.clear();
    }
    let pending = std::mem::take(&mut self.pending);
    self.turns.push(Turn {
      user: user.to_string(),
      num_images: pending.len(),
      reply: text.clone(),
    });
    self.images.extend(pending);
    let last = last.ok_or_else(|| Error::invalid("no output (max tokens is 0?)"))?;
    Ok(ChatTurn {
      text,
      tokens,
      finish_reason: last.finish_reason,
      prompt_tokens: ids.len(),
      prefilled: ids.len() - start,
      reused: start,
      prompt_tps: last.prompt_tps,
      generation_tps: last.generation_tps,
      ttft_s: ttft.unwrap_or_default(),
    })
  }

  /// How many leading prompt tokens the held cache covers (trimmed to the
  /// common prefix with `ids`, at least one token left to prefill), and
  /// the cache; `(0, None)` when it cannot be reused.
  fn reusable_prefix(&mut self, ids: &[u32]) -> (usize, Option<Vec<KvCache>>) {
    if !self.reuse_cache {
      self.cache = None;
      return (0, None);
    }
    let Some(mut caches) = self.cache.take() else {
      return (0, None);
    };
    let common = self
      .cached_ids
      .iter()
      .zip(ids)
      .take_while(|(a, b)| a == b)
      .count()
      .min(ids.len().saturating_sub(1));
    let held = self.cached_ids.len();
    self.cached_ids.clear();
    if common == 0 || caches.iter().any(|c| c.offset as usize != held) {
      return (0, None);
    }
    if !trim_all(&mut caches, held - common) {
      return (0, None);
    }
    (common, Some(caches))
  }
}

/// python `str.strip()`: Unicode white space plus the separators
/// U+001C..U+001F, which Python also counts as space.
fn py_strip(s: &str) -> &str {
  s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Trim `n` positions from every cache; false if any cannot.
fn trim_all(caches: &mut [KvCache], n: usize) -> bool {
  if n == 0 {
    return true;
  }
  if caches.iter().any(|c| !c.is_trimmable()) {
    return false;
  }
  caches.iter_mut().all(|c| c.trim(n as i32) as usize == n)
}

/// An assistant message in mlx-vlm's list-of-parts form (templates such as
/// LLaVA's iterate `message['content']`).
pub fn assistant_message(text: &str) -> Message {
  Message::new(
    "assistant",
    Content::Parts(vec![json!({"type": "text", "text": text, "content": text})]),
  )
}
