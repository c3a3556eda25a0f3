//! Structured output by constrained decoding (python: `mlx_lm.server` has
//! none; vLLM / llama.cpp / mistral.rs use `llguidance` the same way):
//! `response_format` `json_object` / `json_schema` and forced tool calls
//! compile to an `llguidance` grammar; each generating row gets its own
//! matcher ([`mlxrs_lm::TokenConstraint`]) whose token mask is applied to
//! the row's logits before sampling. The batch generator queues the step's
//! forward pass (`async_eval`) before asking for the masks, so the masks are
//! computed on the host while the model runs.
//!
//! The token trie is built once per server, lazily, from the tokenizer's
//! `tokenizer.json` (`llguidance::token_bytes_from_tokenizer_json`);
//! lexemes are tokenized with the model's own tokenizer.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use mlxrs_lm::{Constraint, ConstraintFactory, TokenConstraint, Tokenizer};
use serde_json::{Value, json};

use crate::error::ApiError;

/// The tokenizer seen by `llguidance`: a trie of every token's bytes and
/// the model's tokenizer for lexemes.
struct TokenizerEnvImpl {
  trie: TokTrie,
  tok: Tokenizer,
}

impl TokenizerEnv for TokenizerEnvImpl {
  fn tok_trie(&self) -> &TokTrie {
    &self.trie
  }

  fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
    match std::str::from_utf8(s) {
      Ok(text) => match self.tok.inner().encode(text, false) {
        Ok(e) => e.get_ids().to_vec(),
        Err(_) => self.trie.greedy_tokenize(s),
      },
      Err(_) => self.trie.greedy_tokenize(s),
    }
  }

  fn tokenize_is_canonical(&self) -> bool {
    true
  }
}

/// A grammar engine for one tokenizer (built once, shared by requests).
pub struct Guidance {
  factory: ParserFactory,
  eos: Vec<u32>,
  vocab: usize,
}

impl Guidance {
  /// Build the token trie for `tok` over a model vocabulary of `vocab`
  /// ids (ids the tokenizer lacks are never allowed).
  pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Guidance, String> {
    let json = tok
      .inner()
      .to_string(false)
      .map_err(|e| format!("serializing the tokenizer: {e}"))?;
    let json: Value = serde_json::from_str(&json).map_err(|e| format!("tokenizer JSON: {e}"))?;
    let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
      .map_err(|e| format!("token bytes for constrained decoding: {e}"))?;
    let n = words.len().max(vocab);
    words.resize(n, Vec::new());
    let mut eos: Vec<u32> = tok
      .eos_token_ids()
      .iter()
      .copied()
      .filter(|&t| (t as usize) < n)
      .collect();
    if eos.is_empty() {
      return Err("constrained decoding needs an end-of-sequence token".into());
    }
    eos.sort_unstable();
    eos.dedup();
    let info = TokRxInfo::new(n as u32, eos[0]);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
    let env: TokEnv = Arc::new(TokenizerEnvImpl {
      trie,
      tok: tok.clone(),
    });
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(Guidance {
      factory,
      eos,
      vocab: n,
    })
  }

  /// Compile `grammar` (errors name what is wrong with it) into a
  /// [`Constraint`] for [`mlxrs_lm::RowConfig::constraint`].
  pub fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
    let parser = self
      .factory
      .create_parser(grammar)
      .map_err(|e| e.to_string())?;
    let m = Matcher::new(Ok(parser));
    if let Some(e) = m.get_error() {
      return Err(e);
    }
    let mut eos_mask = vec![0u32; self.vocab.div_ceil(32)];
    for &t in &self.eos {
      eos_mask[t as usize / 32] |= 1 << (t % 32);
    }
    Ok(Constraint(Arc::new(MatcherFactory {
      start: Mutex::new(m),
      eos_mask: Arc::new(eos_mask),
    })))
  }
}

struct MatcherFactory {
  start: Mutex<Matcher>,
  eos_mask: Arc<Vec<u32>>,
}

impl ConstraintFactory for MatcherFactory {
  fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
    let m = self
      .start
      .lock()
      .map_err(|_| "constraint state poisoned".to_string())?
      .deep_clone();
    Ok(Box::new(RowMatcher {
      m,
      eos_mask: Arc::clone(&self.eos_mask),
    }))
  }
}

/// One row's grammar state.
struct RowMatcher {
  m: Matcher,
  eos_mask: Arc<Vec<u32>>,
}

impl TokenConstraint for RowMatcher {
  fn allowed(&mut self) -> Option<Vec<u32>> {
    match self.m.compute_mask_or_eos() {
      Ok(v) if v.num_set() > 0 => Some(v.as_slice().to_vec()),
      // A grammar error (or a dead end) ends the row.
      _ => Some(self.eos_mask.as_ref().clone()),
    }
  }

  fn commit(&mut self, token: i32) {
    if !self.m.is_stopped() {
      let _ = self.m.consume_token(token as TokenId);
    }
  }
}

/// The grammar of an OpenAI `response_format` (`text` -> none).
pub fn response_format_grammar(rf: &Value) -> Result<Option<TopLevelGrammar>, ApiError> {
  let bad = |m: String| ApiError::invalid(m, Some("response_format"));
  let kind = rf
    .get("type")
    .and_then(Value::as_str)
    .ok_or_else(|| bad("response_format.type must be a string".into()))?;
  match kind {
    "text" => Ok(None),
    "json_object" => Ok(Some(TopLevelGrammar::from_json_schema(compact(
      json!({"type": "object"}),
    )))),
    "json_schema" => {
      let js = rf.get("json_schema").ok_or_else(|| {
        bad("response_format.json_schema is required for type json_schema".into())
      })?;
      let schema = js.get("schema").unwrap_or(&Value::Null);
      check_schema(schema).map_err(|m| bad(format!("response_format.json_schema.schema: {m}")))?;
      Ok(Some(TopLevelGrammar::from_json_schema(compact(
        schema.clone(),
      ))))
    }
    // An extension (llama.cpp's `grammar`, vLLM's `guided_grammar`): a
    // Lark grammar in llguidance's dialect.
    "grammar" => {
      let g = rf
        .get("grammar")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("response_format.grammar must be a string (a Lark grammar)".into()))?;
      Ok(Some(TopLevelGrammar::from_lark(g.to_string())))
    }
    other => Err(bad(format!(
      "unknown response_format.type {other:?} (expected text, json_object, json_schema or grammar)"
    ))),
  }
}

/// `schema` with llguidance's JSON layout options set to the usual
/// compact form (`", "` and `": "` separators, no free whitespace: without
/// this a sampling model may emit whitespace until it runs out of tokens),
/// unless the schema sets its own `x-guidance`.
pub fn compact(mut schema: Value) -> Value {
  if schema.is_object() && schema.get("x-guidance").is_none() {
    llguidance::JsonCompileOptions {
      item_separator: ", ".into(),
      key_separator: ": ".into(),
      whitespace_flexible: false,
      ..Default::default()
    }
    .apply_to(&mut schema);
  }
  schema
}

/// A quick shape check before the grammar compiler sees a schema (which
/// reports the finer errors).
pub fn check_schema(schema: &Value) -> Result<(), String> {
  match schema {
    Value::Object(_) | Value::Bool(_) => Ok(()),
    Value::Null => Err("a JSON schema object is required".into()),
    _ => Err("a JSON schema must be an object or a boolean".into()),
  }
}

/// The server's [`Guidance`], built on first use (most requests never
/// need it).
pub struct GuidanceCell {
  cell: std::sync::OnceLock<Result<Guidance, String>>,
  tok: Tokenizer,
  vocab: usize,
}

impl GuidanceCell {
  /// An unbuilt cell for `tok` and a model vocabulary of `vocab`.
  pub fn new(tok: Tokenizer, vocab: usize) -> GuidanceCell {
    GuidanceCell {
      cell: std::sync::OnceLock::new(),
      tok,
      vocab,
    }
  }

  /// The engine, building it now if needed.
  pub fn get(&self) -> Result<&Guidance, ApiError> {
    self
      .cell
      .get_or_init(|| Guidance::new(&self.tok, self.vocab))
      .as_ref()
      .map_err(|e| {
        ApiError::invalid(
          format!("constrained decoding is unavailable for this tokenizer: {e}"),
          None,
        )
      })
  }

  /// [`Guidance::compile_triggered`]; errors as [`GuidanceCell::compile`].
  pub fn compile_triggered(
    &self,
    trigger: Trigger,
    grammar: TopLevelGrammar,
    param: &str,
  ) -> Result<Constraint, ApiError> {
    self
      .get()?
      .compile_triggered(trigger, grammar)
      .map_err(|e| {
        ApiError::invalid(
          format!("{param}: invalid grammar or schema: {e}"),
          Some(param),
        )
      })
  }

  /// Compile `grammar`; a grammar (schema) error is a 400 naming `param`.
  pub fn compile(&self, grammar: TopLevelGrammar, param: &str) -> Result<Constraint, ApiError> {
    self.get()?.compile(grammar).map_err(|e| {
      ApiError::invalid(
        format!("{param}: invalid grammar or schema: {e}"),
        Some(param),
      )
    })
  }
}

/// Where a forced sub-grammar starts inside an otherwise free reply
/// (`strict` tool calls under `tool_choice: "auto"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
  /// Right after this text (the grammar covers what follows it).
  After(String),
  /// At the reply's first non-whitespace character, if it is this one
  /// (the grammar covers it too).
  Leading(u8),
}

impl Guidance {
  /// A constraint that lets the model write freely until `trigger`, then
  /// holds what follows to `body` (then frees it again, for the next
  /// call). Python twin: vLLM's structural tags / llama.cpp's lazy
  /// grammars.
  pub fn compile_triggered(
    &self,
    trigger: Trigger,
    body: TopLevelGrammar,
  ) -> Result<Constraint, String> {
    let parser = self
      .factory
      .create_parser(body)
      .map_err(|e| e.to_string())?;
    let m = Matcher::new(Ok(parser));
    if let Some(e) = m.get_error() {
      return Err(e);
    }
    Ok(Constraint(Arc::new(TriggeredFactory {
      start: Mutex::new(m),
      trigger,
      env: self.factory.tok_env().clone(),
    })))
  }
}

struct TriggeredFactory {
  start: Mutex<Matcher>,
  trigger: Trigger,
  env: TokEnv,
}

impl ConstraintFactory for TriggeredFactory {
  fn start(&self) -> Result<Box<dyn TokenConstraint>, String> {
    let m = self
      .start
      .lock()
      .map_err(|_| "constraint state poisoned".to_string())?
      .deep_clone();
    Ok(Box::new(TriggeredRow {
      start: m,
      trigger: self.trigger.clone(),
      env: self.env.clone(),
      text: Vec::new(),
      state: TState::Idle,
    }))
  }
}

enum TState {
  /// Free text; watching for the trigger.
  Idle,
  /// Inside the forced part.
  Active(Box<Matcher>),
  /// Free for the rest of the reply.
  Off,
}

struct TriggeredRow {
  start: Matcher,
  trigger: Trigger,
  env: TokEnv,
  /// Reply bytes since the last forced part.
  text: Vec<u8>,
  state: TState,
}

impl TriggeredRow {
  /// Enter the forced part, which has already seen `leftover`.
  fn activate(&mut self, leftover: Vec<u8>) {
    let mut m = self.start.deep_clone();
    if !leftover.is_empty() {
      let ids = self.env.tokenize_bytes(&leftover);
      if m.consume_tokens(&ids).is_err() {
        self.state = TState::Off;
        return;
      }
    }
    self.text.clear();
    self.state = if m.is_stopped() {
      self.after_forced()
    } else {
      TState::Active(Box::new(m))
    };
  }

  fn after_forced(&self) -> TState {
    match self.trigger {
      Trigger::After(_) => TState::Idle,
      Trigger::Leading(_) => TState::Off,
    }
  }
}

impl TokenConstraint for TriggeredRow {
  fn allowed(&mut self) -> Option<Vec<u32>> {
    let TState::Active(m) = &mut self.state else {
      return None;
    };
    match m.compute_mask() {
      Ok(v) if v.num_set() > 0 => Some(v.as_slice().to_vec()),
      // A dead end: let the model finish as it likes (the reply is then
      // returned as text if the call does not parse).
      _ => {
        self.state = TState::Off;
        None
      }
    }
  }

  fn commit(&mut self, token: i32) {
    match &mut self.state {
      TState::Off => {}
      TState::Active(m) => {
        if m.consume_token(token as TokenId).is_err() {
          self.state = TState::Off;
        } else if m.is_stopped() {
          self.state = self.after_forced();
        }
      }
      TState::Idle => {
        let bytes = self.env.tok_trie().decode(&[token as TokenId]);
        let before = self.text.len();
        self.text.extend_from_slice(&bytes);
        match &self.trigger {
          Trigger::After(marker) => {
            let mk = marker.as_bytes();
            let from = before.saturating_sub(mk.len().saturating_sub(1));
            if let Some(p) = self.text[from..].windows(mk.len()).position(|w| w == mk) {
              let leftover = self.text[from + p + mk.len()..].to_vec();
              self.activate(leftover);
            }
          }
          Trigger::Leading(c) => {
            if let Some(p) = self.text.iter().position(|b| !b.is_ascii_whitespace()) {
              if self.text[p] == *c {
                let leftover = self.text[p..].to_vec();
                self.activate(leftover);
              } else {
                self.state = TState::Off;
              }
            }
          }
        }
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::tools::{ToolFormat, ToolSetup};

  fn tok(name: &str) -> Tokenizer {
    Tokenizer::from_dir(
      std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tiny")
        .join(name),
    )
    .unwrap()
  }

  fn allows(mask: &Option<Vec<u32>>, t: u32) -> bool {
    match mask {
      None => true,
      Some(m) => m
        .get(t as usize / 32)
        .is_some_and(|w| w >> (t % 32) & 1 == 1),
    }
  }

  /// Feed `text`'s tokens, each checked against the mask first; whether
  /// all were allowed. (llguidance keeps tokenizations canonical: where
  /// the grammar forces the next bytes, a token that the tokenizer would
  /// merge with them is refused, so test strings end mid-lexeme.)
  fn feed(row: &mut dyn TokenConstraint, tok: &Tokenizer, text: &str) -> bool {
    for t in tok.encode(text, false).unwrap() {
      let m = row.allowed();
      if !allows(&m, t) {
        return false;
      }
      row.commit(t as i32);
    }
    true
  }

  fn setup(strict: bool) -> ToolSetup {
    ToolSetup {
      tools: vec![
        json!({"type": "function", "function": {"name": "get_weather", "strict": strict,
        "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                       "required": ["unit"], "additionalProperties": false}}}),
      ],
      choice: crate::tools::Choice::Auto,
      parallel: true,
    }
  }

  #[test]
  fn strict_auto_call_is_held_to_the_schema() {
    let t = tok("qwen3");
    let g = Guidance::new(&t, 512).unwrap();
    assert!(crate::tools::strict_auto_grammar(ToolFormat::Hermes, &setup(false), &t).is_none());
    let (trigger, lark) =
      crate::tools::strict_auto_grammar(ToolFormat::Hermes, &setup(true), &t).unwrap();
    let c = g
      .compile_triggered(trigger, TopLevelGrammar::from_lark(lark))
      .unwrap();
    // Free text, a valid call, free text again, a second valid call.
    let mut row = c.0.start().unwrap();
    assert!(feed(row.as_mut(), &t, "Let me look that up. "));
    assert!(row.allowed().is_none());
    assert!(feed(
      row.as_mut(),
      &t,
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"c\"}}\n</tool_call>"
    ));
    assert!(row.allowed().is_none(), "free again after the call");
    assert!(feed(
      row.as_mut(),
      &t,
      "\nAnd <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"f\"}}\n</tool_call>"
    ));
    // Inside a call, an argument outside the enum is refused.
    let mut row = c.0.start().unwrap();
    assert!(feed(
      row.as_mut(),
      &t,
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \""
    ));
    assert!(row.allowed().is_some());
    assert!(!feed(row.as_mut(), &t, "kelvin"));
    // An unknown function name is refused.
    let mut row = c.0.start().unwrap();
    assert!(!feed(row.as_mut(), &t, "<tool_call>\n{\"name\": \"rm_rf\""));
  }

  #[test]
  fn strict_auto_llama3_and_harmony() {
    let t = tok("llama");
    let g = Guidance::new(&t, 512).unwrap();
    let (trigger, lark) =
      crate::tools::strict_auto_grammar(ToolFormat::Llama3, &setup(true), &t).unwrap();
    let c = g
      .compile_triggered(trigger, TopLevelGrammar::from_lark(lark))
      .unwrap();
    let mut row = c.0.start().unwrap();
    assert!(feed(
      row.as_mut(),
      &t,
      "{\"name\": \"get_weather\", \"parameters\": {\"unit\": \"f\"}}"
    ));
    let mut row = c.0.start().unwrap();
    assert!(!feed(
      row.as_mut(),
      &t,
      "{\"name\": \"get_weather\", \"parameters\": {\"unit\": 3"
    ));
    // Plain text is free.
    let mut row = c.0.start().unwrap();
    assert!(feed(row.as_mut(), &t, "It is sunny {really}."));

    let t = tok("gpt_oss");
    let g = Guidance::new(&t, 512).unwrap();
    let (trigger, lark) =
      crate::tools::strict_auto_grammar(ToolFormat::Harmony, &setup(true), &t).unwrap();
    let c = g
      .compile_triggered(trigger, TopLevelGrammar::from_lark(lark))
      .unwrap();
    let mut row = c.0.start().unwrap();
    assert!(feed(
      row.as_mut(),
      &t,
      "<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"unit\": \"c\"}"
    ));
    let mut row = c.0.start().unwrap();
    assert!(!feed(
      row.as_mut(),
      &t,
      "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"unit\": \"x"
    ));
  }
}
