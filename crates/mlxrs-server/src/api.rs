//! The OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`):
//! parsing with errors that name the field, range checks, and the prompt
//! (chat template or raw text / token ids) and [`GenParams`] they make.

use std::collections::HashMap;

use base64::Engine as _;
use mlxrs_lm::{ChatOptions, LogitsConfig, Message, RowConfig, SamplerConfig, Tokenizer};
use mlxrs_vlm::{AlphaMode, RgbImage};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::GenParams;
use crate::error::ApiError;
use crate::reasoning::Think;
use crate::reply::ReplyConfig;
use crate::structured::{self, GuidanceCell};
use crate::tools::{self, Choice, ToolFormat, ToolSetup};

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
  /// Send a last chunk with `usage`.
  #[serde(default)]
  pub include_usage: Option<bool>,
}

/// The fields both endpoints read (others are ignored, as OpenAI-compatible
/// servers do).
#[derive(Debug, Default, Deserialize)]
pub struct Request {
  /// Model name (echoed; the server serves one model).
  pub model: Option<String>,
  /// Chat messages.
  pub messages: Option<Vec<Value>>,
  /// Completion prompt: text, `[text]` or token ids.
  pub prompt: Option<Value>,
  /// Token budget (legacy name).
  pub max_tokens: Option<i64>,
  /// Token budget.
  pub max_completion_tokens: Option<i64>,
  /// Sampling temperature (0 = greedy).
  pub temperature: Option<f64>,
  /// Nucleus mass.
  pub top_p: Option<f64>,
  /// Top-k (0 = off).
  pub top_k: Option<i64>,
  /// Min-p.
  pub min_p: Option<f64>,
  /// Seed.
  pub seed: Option<i64>,
  /// Stop string(s).
  pub stop: Option<Value>,
  /// Choices.
  pub n: Option<i64>,
  /// Presence penalty.
  pub presence_penalty: Option<f64>,
  /// Frequency penalty.
  pub frequency_penalty: Option<f64>,
  /// Repetition penalty (mlx-lm's).
  pub repetition_penalty: Option<f64>,
  /// Tokens the repetition penalty looks back over (mlx-lm's, 20).
  pub repetition_context_size: Option<i64>,
  /// Token id (as a string) -> bias.
  pub logit_bias: Option<HashMap<String, f64>>,
  /// Chat: `true`/`false`; completions: the number of top alternatives.
  pub logprobs: Option<Value>,
  /// Chat: top alternatives per token.
  pub top_logprobs: Option<i64>,
  /// Stream server-sent events.
  pub stream: Option<bool>,
  /// Streaming options.
  pub stream_options: Option<StreamOptions>,
  /// Extra chat-template variables (`enable_thinking`, ...).
  pub chat_template_kwargs: Option<Map<String, Value>>,
  /// Function tools ([`crate::tools`]).
  pub tools: Option<Value>,
  /// `none` / `auto` / `required` / a named function.
  pub tool_choice: Option<Value>,
  /// Allow several calls in one reply (default true).
  pub parallel_tool_calls: Option<bool>,
  /// `{"type": "text" | "json_object" | "json_schema", ...}`
  /// ([`crate::structured`]).
  pub response_format: Option<Value>,
}

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
  /// `/v1/chat/completions`.
  Chat,
  /// `/v1/completions`.
  Completions,
}

/// A checked request, ready for the engine.
#[derive(Debug)]
pub struct Prepared {
  /// Prompt ids.
  pub prompt: Vec<u32>,
  /// Settings.
  pub params: GenParams,
  /// Stream?
  pub stream: bool,
  /// Usage chunk at the end of a stream?
  pub include_usage: bool,
  /// Report logprobs?
  pub logprobs: bool,
  /// How replies split into reasoning, content and tool calls.
  pub reply: ReplyConfig,
  /// The images of the messages' `image_url` parts, in order (a vision
  /// model only).
  pub images: Vec<RgbImage>,
}

/// Server-side defaults and limits.
#[derive(Debug, Clone)]
pub struct Defaults {
  /// `--max-tokens`.
  pub max_tokens: usize,
  /// `--chat-template-args`.
  pub chat_template_args: Map<String, Value>,
  /// The model's vocabulary size.
  pub vocab: i32,
  /// The model's context length.
  pub max_context: Option<usize>,
  /// A chat template replacing the checkpoint's (`--chat-template`).
  pub chat_template: Option<String>,
  /// The model family's tool-call format (from its chat template or
  /// `model_type`).
  pub tool_format: Option<ToolFormat>,
  /// The model is a vision-language model: messages may hold images.
  pub vision: bool,
  /// Served under `mlxrs launch` ([`crate::replica`]): constrained
  /// decoding is refused.
  pub distributed: bool,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
  ApiError::invalid(msg, Some(param))
}

/// Parse a JSON body into a [`Request`], naming the offending field.
pub fn parse(body: &[u8]) -> Result<Request, ApiError> {
  let v: Value = serde_json::from_slice(body)
    .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
  if !v.is_object() {
    return Err(ApiError::invalid("the body must be a JSON object", None));
  }
  serde_path_to_error::deserialize(v).map_err(|e| {
    let path = e.path().to_string();
    ApiError::invalid(format!("{path}: {}", e.inner()), Some(&path))
  })
}

/// Images one request may carry at most.
pub const MAX_IMAGES: usize = 16;

/// The image of an `image_url` content part: only `data:` URLs (base64),
/// as OpenAI's `{"type": "image_url", "image_url": {"url": "data:..."}}`,
/// the plain-string `image_url` some clients send, or the Responses API's
/// `{"type": "input_image", "image_url": "data:..."}`. The server reads no
/// files and fetches no URLs.
fn part_image(param: &str, p: &Value) -> Result<RgbImage, ApiError> {
  let url = match (p.get("image_url"), p.get("image")) {
    (Some(Value::String(u)), _) => u.as_str(),
    (Some(Value::Object(o)), _) => o.get("url").and_then(Value::as_str).ok_or_else(|| {
      bad(
        param,
        format!("{param}.image_url.url must be a string (a data: URL)"),
      )
    })?,
    (None, Some(Value::String(u))) => u.as_str(),
    _ => {
      return Err(bad(
        param,
        format!("{param}: an image part needs `image_url` (a data: URL)"),
      ));
    }
  };
  let Some(rest) = url.strip_prefix("data:") else {
    let shown: String = url.chars().take(40).collect();
    return Err(bad(
      param,
      format!(
        "{param}: only data: URLs (base64) are accepted for images, got {shown:?}; the server fetches no URLs and reads no files"
      ),
    ));
  };
  let Some((meta, data)) = rest.split_once(',') else {
    return Err(bad(
      param,
      format!("{param}: a data: URL needs a `,` before its data"),
    ));
  };
  if !meta.ends_with(";base64") {
    return Err(bad(
      param,
      format!("{param}: image data: URLs must be base64 (`data:image/png;base64,...`)"),
    ));
  }
  let bytes = base64::engine::general_purpose::STANDARD
    .decode(data.trim())
    .map_err(|e| {
      bad(
        param,
        format!("{param}: the image's base64 data is invalid: {e}"),
      )
    })?;
  mlxrs_vlm::decode_image(&bytes, AlphaMode::Drop)
    .map_err(|e| bad(param, format!("{param}: the image cannot be decoded: {e}")))
}

/// Parse message `i`. Text models get text parts joined into one string
/// (their templates read a string); a vision model (`images` given) gets
/// mlx-vlm's list of parts, `{"type": "text"}` and one `{"type": "image"}`
/// per image (python `get_message_json`), its images appended to
/// `images`.
fn message(i: usize, v: &Value, images: Option<&mut Vec<RgbImage>>) -> Result<Message, ApiError> {
  let param = format!("messages[{i}]");
  let obj = v
    .as_object()
    .ok_or_else(|| bad(&param, format!("{param} must be an object")))?;
  let role = obj
    .get("role")
    .and_then(Value::as_str)
    .ok_or_else(|| bad(&param, format!("{param}.role must be a string")))?;
  let mut m: Message =
    serde_json::from_value(v.clone()).map_err(|e| bad(&param, format!("{param}: {e}")))?;
  m.role = role.to_string();
  let text_part = |t: &str| serde_json::json!({"type": "text", "text": t, "content": t});
  let vision_role = matches!(role, "user" | "system" | "assistant");
  match (obj.get("content"), images) {
    (Some(Value::Array(parts)), images) => {
      let mut text = String::new();
      let mut out = Vec::new();
      let mut images = images;
      for (j, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
        let pp = format!("{param}.content[{j}]");
        match (kind, p.get("text").and_then(Value::as_str)) {
          ("text" | "input_text", Some(t)) => {
            text.push_str(t);
            out.push(text_part(t));
          }
          ("image_url" | "image" | "input_image", _) => {
            let Some(imgs) = images.as_deref_mut() else {
              return Err(bad(
                &param,
                format!("{pp}: image inputs need a vision model; this server runs a text model"),
              ));
            };
            if imgs.len() >= MAX_IMAGES {
              return Err(bad(
                &param,
                format!("{pp}: a request takes at most {MAX_IMAGES} images"),
              ));
            }
            imgs.push(part_image(&pp, p)?);
            out.push(serde_json::json!({"type": "image"}));
          }
          _ => {
            return Err(bad(
              &param,
              format!("{pp}: unsupported content part (type {kind:?})"),
            ));
          }
        }
      }
      m.content = Some(if images.is_some() && vision_role {
        mlxrs_lm::Content::Parts(out)
      } else {
        mlxrs_lm::Content::Text(text)
      });
    }
    (Some(Value::String(t)), Some(_)) if vision_role => {
      m.content = Some(mlxrs_lm::Content::Parts(vec![text_part(t)]));
    }
    (Some(c), _) if !c.is_string() && !c.is_null() => {
      return Err(bad(
        &param,
        format!("{param}.content must be a string, an array of parts or null"),
      ));
    }
    _ => {}
  }
  Ok(m)
}

/// The prompt ids, the rendered chat prompt and the tool settings.
type Prompt = (Vec<u32>, String, Option<ToolSetup>, Vec<RgbImage>);

fn prompt_ids(
  ep: Endpoint,
  r: &Request,
  tok: &Tokenizer,
  d: &Defaults,
) -> Result<Prompt, ApiError> {
  let mut text = String::new();
  let mut setup = None;
  let mut images = Vec::new();
  let ids = match ep {
    Endpoint::Chat => {
      let msgs = r
        .messages
        .as_ref()
        .ok_or_else(|| bad("messages", "`messages` is required"))?;
      if msgs.is_empty() {
        return Err(bad("messages", "`messages` must not be empty"));
      }
      let msgs = msgs
        .iter()
        .enumerate()
        .map(|(i, v)| message(i, v, d.vision.then_some(&mut images)))
        .collect::<Result<Vec<_>, _>>()?;
      let mut values = Vec::with_capacity(msgs.len());
      for (i, m) in msgs.iter().enumerate() {
        let mut v =
          serde_json::to_value(m).map_err(|e| bad("messages", format!("messages[{i}]: {e}")))?;
        tools::normalize_message(&mut v);
        values.push(v);
      }
      setup = tools::setup(
        r.tools.as_ref(),
        r.tool_choice.as_ref(),
        r.parallel_tool_calls,
      )?;
      if !tok.has_chat_template() && d.chat_template.is_none() {
        return Err(ApiError::invalid(
          "the model has no chat template; use /v1/completions",
          None,
        ));
      }
      let mut extra = d.chat_template_args.clone();
      if let Some(k) = &r.chat_template_kwargs {
        for (a, b) in k {
          extra.insert(a.clone(), b.clone());
        }
      }
      let opts = ChatOptions {
        add_generation_prompt: true,
        extra,
        tools: setup
          .as_ref()
          .filter(|s| s.choice != Choice::None)
          .map(|s| s.tools.clone()),
        chat_template: d.chat_template.clone(),
        ..ChatOptions::default()
      };
      text = tok
        .apply_chat_template_values(&values, &opts)
        .map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages")))?;
      tok
        .encode(&text, false)
        .map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages")))?
    }
    Endpoint::Completions => {
      let p = r
        .prompt
        .as_ref()
        .ok_or_else(|| bad("prompt", "`prompt` is required"))?;
      let text = match p {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().map(String::from),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => None,
        _ => {
          return Err(bad(
            "prompt",
            "`prompt` must be a string, a one-string array, or an array of token ids",
          ));
        }
      };
      match text {
        Some(t) => tok
          .encode(&t, true)
          .map_err(|e| bad("prompt", format!("prompt: {e}")))?,
        None => p
          .as_array()
          .map(|a| {
            a.iter()
              .filter_map(Value::as_u64)
              .map(|t| t as u32)
              .collect()
          })
          .unwrap_or_default(),
      }
    }
  };
  if ids.is_empty() {
    return Err(bad("prompt", "the prompt is empty (no tokens)"));
  }
  if let Some(&t) = ids.iter().find(|&&t| t as i64 >= d.vocab as i64) {
    return Err(bad(
      "prompt",
      format!(
        "prompt token {t} is outside the vocabulary [0, {})",
        d.vocab
      ),
    ));
  }
  if let Some(ctx) = d.max_context {
    if ids.len() > ctx {
      return Err(bad(
        "prompt",
        format!(
          "the prompt has {} tokens, more than the model's context of {ctx}",
          ids.len()
        ),
      ));
    }
  }
  Ok((ids, text, setup, images))
}

fn finite(name: &str, v: f64) -> Result<f32, ApiError> {
  if v.is_finite() {
    Ok(v as f32)
  } else {
    Err(bad(name, format!("{name} must be a finite number")))
  }
}

/// Check `r` and build its prompt and settings.
pub fn prepare(
  ep: Endpoint,
  r: &Request,
  tok: &Tokenizer,
  d: &Defaults,
  g: &GuidanceCell,
) -> Result<Prepared, ApiError> {
  let max_tokens = match r.max_completion_tokens.or(r.max_tokens) {
    None => d.max_tokens,
    Some(m) if m >= 1 => m as usize,
    Some(m) => {
      return Err(bad(
        "max_tokens",
        format!("max_tokens must be >= 1, got {m}"),
      ));
    }
  };
  let n = match r.n {
    None => 1,
    Some(n) if (1..=16).contains(&n) => n as usize,
    Some(n) => return Err(bad("n", format!("n must be in [1, 16], got {n}"))),
  };
  let temp = finite("temperature", r.temperature.unwrap_or(0.0))?;
  if !(0.0..=100.0).contains(&temp) {
    return Err(bad(
      "temperature",
      format!("temperature must be >= 0, got {temp}"),
    ));
  }
  let mut top_p = finite("top_p", r.top_p.unwrap_or(1.0))?;
  if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 && r.top_p.is_some() {
    return Err(bad(
      "top_p",
      format!("top_p must be in (0, 1], got {top_p}"),
    ));
  }
  if top_p >= 1.0 {
    top_p = 0.0;
  }
  let top_k = r.top_k.unwrap_or(0);
  if top_k < 0 || top_k > i32::MAX as i64 {
    return Err(bad("top_k", format!("top_k must be >= 0, got {top_k}")));
  }
  let min_p = finite("min_p", r.min_p.unwrap_or(0.0))?;
  let seed = match r.seed {
    Some(s) if s < 0 => return Err(bad("seed", format!("seed must be >= 0, got {s}"))),
    s => s.map(|s| s as u64),
  };
  let sampler = SamplerConfig {
    temp,
    top_p,
    min_p,
    top_k: top_k as i32,
    seed,
    ..SamplerConfig::default()
  };
  sampler
    .validate(d.vocab)
    .map_err(|e| ApiError::invalid(e.to_string(), None))?;
  let stop = match &r.stop {
    None | Some(Value::Null) => Vec::new(),
    Some(Value::String(s)) => vec![s.clone()],
    Some(Value::Array(a)) => a
      .iter()
      .map(|s| {
        s.as_str()
          .map(String::from)
          .ok_or_else(|| bad("stop", "`stop` must be a string or an array of strings"))
      })
      .collect::<Result<Vec<_>, _>>()?,
    Some(_) => {
      return Err(bad(
        "stop",
        "`stop` must be a string or an array of strings",
      ));
    }
  };
  if stop.len() > 16 || stop.iter().any(String::is_empty) {
    return Err(bad("stop", "`stop` takes at most 16 non-empty strings"));
  }
  let mut logits = LogitsConfig::new();
  if let Some(b) = &r.logit_bias {
    for (k, v) in b {
      let t: i32 = k.parse().map_err(|_| {
        bad(
          "logit_bias",
          format!("logit_bias key {k:?} is not a token id"),
        )
      })?;
      let v = finite("logit_bias", *v)?;
      if !(-100.0..=100.0).contains(&v) {
        return Err(bad(
          "logit_bias",
          format!("logit_bias values must be in [-100, 100], got {v}"),
        ));
      }
      logits.logit_bias.insert(t, v);
    }
  }
  let pen = |name: &str, v: Option<f64>| -> Result<Option<f32>, ApiError> {
    match v {
      None => Ok(None),
      Some(x) => {
        let x = finite(name, x)?;
        if !(-2.0..=2.0).contains(&x) {
          return Err(bad(name, format!("{name} must be in [-2, 2], got {x}")));
        }
        Ok(if x == 0.0 { None } else { Some(x) })
      }
    }
  };
  logits.presence_penalty = pen("presence_penalty", r.presence_penalty)?;
  logits.frequency_penalty = pen("frequency_penalty", r.frequency_penalty)?;
  if let Some(rp) = r.repetition_penalty {
    let rp = finite("repetition_penalty", rp)?;
    if rp <= 0.0 {
      return Err(bad(
        "repetition_penalty",
        format!("repetition_penalty must be > 0, got {rp}"),
      ));
    }
    if rp != 1.0 {
      logits.repetition_penalty = Some(rp);
    }
  }
  if let Some(c) = r.repetition_context_size {
    if c < 1 {
      return Err(bad(
        "repetition_context_size",
        "repetition_context_size must be >= 1",
      ));
    }
    logits.repetition_context_size = c as usize;
  }
  logits
    .validate(d.vocab)
    .map_err(|e| ApiError::invalid(e.to_string(), Some("logit_bias")))?;
  let (logprobs, top) = match ep {
    Endpoint::Chat => {
      let on = match &r.logprobs {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("logprobs", "`logprobs` must be a boolean")),
      };
      let top = r.top_logprobs.unwrap_or(0);
      if !(0..=20).contains(&top) {
        return Err(bad(
          "top_logprobs",
          format!("top_logprobs must be in [0, 20], got {top}"),
        ));
      }
      if top > 0 && !on {
        return Err(bad("top_logprobs", "top_logprobs needs `logprobs: true`"));
      }
      (on, top as usize)
    }
    Endpoint::Completions => match &r.logprobs {
      None | Some(Value::Null) => (false, 0),
      Some(v) => match v.as_i64() {
        Some(k) if (0..=20).contains(&k) => (true, k as usize),
        _ => {
          return Err(bad("logprobs", "`logprobs` must be an integer in [0, 20]"));
        }
      },
    },
  };
  let (prompt, prompt_text, setup, images) = prompt_ids(ep, r, tok, d)?;
  let (reply, constraint) = reply_and_constraint(ep, r, tok, d, g, &prompt_text, setup)?;
  if d.distributed && constraint.is_some() {
    let param = if r.response_format.is_some() {
      "response_format"
    } else {
      "tools"
    };
    return Err(bad(param, crate::replica::NO_CONSTRAINTS));
  }
  // The context bound generate / chat / batch use (mlxrs_lm::limits): the
  // prompt plus the new tokens fit max_position_embeddings; max_tokens is
  // clamped to the room left (the choice then ends with "length").
  let max_tokens = mlxrs_lm::limits::bound_generation(d.max_context, 0, prompt.len(), max_tokens)
    .map_err(|e| bad("prompt", e.to_string()))?
    .max_tokens;
  let stream = r.stream.unwrap_or(false);
  let include_usage = r
    .stream_options
    .as_ref()
    .and_then(|o| o.include_usage)
    .unwrap_or(false);
  Ok(Prepared {
    prompt,
    params: GenParams {
      max_tokens,
      row: RowConfig {
        sampler,
        logits,
        top_logprobs: top,
        constraint,
        allow_nan: false,
      },
      stop,
      n,
    },
    stream,
    include_usage,
    logprobs,
    reply,
    images,
  })
}

/// How replies split, and the decoding constraint (`response_format`, or
/// a forced tool call).
fn reply_and_constraint(
  ep: Endpoint,
  r: &Request,
  tok: &Tokenizer,
  d: &Defaults,
  g: &GuidanceCell,
  prompt_text: &str,
  setup: Option<ToolSetup>,
) -> Result<(ReplyConfig, Option<mlxrs_lm::Constraint>), ApiError> {
  let mut constraint = None;
  if let Some(rf) = &r.response_format {
    if let Some(grammar) = structured::response_format_grammar(rf)? {
      constraint = Some(g.compile(grammar, "response_format")?);
    }
  }
  if ep == Endpoint::Completions {
    return Ok((ReplyConfig::plain(), constraint));
  }
  let enable_thinking = r
    .chat_template_kwargs
    .as_ref()
    .and_then(|k| k.get("enable_thinking"))
    .or_else(|| d.chat_template_args.get("enable_thinking"))
    .and_then(Value::as_bool);
  let harmony = d.tool_format == Some(ToolFormat::Harmony);
  let mut reply = ReplyConfig {
    think: if harmony {
      Think::Off
    } else {
      Think::for_prompt(prompt_text, enable_thinking)
    },
    harmony,
    tools: None,
    parallel: true,
  };
  if let Some(s) = setup.filter(|s| s.choice != Choice::None) {
    let Some(format) = d.tool_format else {
      // Unknown format: the template still gets the tools and the reply
      // comes back as text (as mlx_lm.server does), but a call cannot be
      // forced.
      if s.choice != Choice::Auto {
        return Err(bad(
          "tool_choice",
          "this model's tool-call format is unknown (its chat template shows none of the \
           Hermes/Qwen, Llama 3, Mistral or gpt-oss formats), so a call cannot be forced",
        ));
      }
      return Ok((reply, constraint));
    };
    reply.tools = Some(format);
    reply.parallel = s.parallel;
    if matches!(s.choice, Choice::Required | Choice::Named(_)) {
      if constraint.is_some() {
        return Err(bad(
          "response_format",
          "response_format cannot be combined with tool_choice required or a named function",
        ));
      }
      let lark = tools::forced_grammar(format, &s, tok)?;
      constraint = Some(g.compile(llguidance::api::TopLevelGrammar::from_lark(lark), "tools")?);
    } else if constraint.is_none() {
      // `strict` tools under `auto`: free text, but a started call is
      // held to the schemas.
      if let Some((trigger, lark)) = tools::strict_auto_grammar(format, &s, tok) {
        constraint = Some(g.compile_triggered(
          trigger,
          llguidance::api::TopLevelGrammar::from_lark(lark),
          "tools",
        )?);
      }
    }
  }
  Ok((reply, constraint))
}
