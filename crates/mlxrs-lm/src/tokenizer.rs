//! The tokenizer of a checkpoint folder: the `tokenizers` crate's fast
//! tokenizer (`tokenizer.json`) plus what transformers reads from
//! `tokenizer_config.json`, `special_tokens_map.json` and the chat-template
//! files, and mlx-lm's EOS bookkeeping (`mlx_lm.tokenizer_utils.load` /
//! `TokenizerWrapper`).
//!
//! Only fast tokenizers (`tokenizer.json`) are supported; checkpoints that
//! ship only a SentencePiece `tokenizer.model` or a tiktoken file need
//! converting first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

use crate::chat::{ChatOptions, ChatTemplate, ChatTemplates, Message};
use crate::config::{CONFIG_FILE, ModelConfig, value_bool};
use crate::detokenizer::{DetokData, DetokenizerKind, StreamingDetokenizer};
use crate::error::{Error, Result, read_json, read_text};

/// The fast tokenizer file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// transformers' tokenizer settings.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Legacy special-token file.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// A single chat template as a file (newer repos).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// Folder of extra named chat templates (`<name>.jinja`).
pub const CHAT_TEMPLATE_DIR: &str = "additional_chat_templates";
/// Processor chat template (`{"chat_template": ...}`), VLM repos.
pub const LEGACY_CHAT_TEMPLATE_FILE: &str = "chat_template.json";

/// The named special tokens (transformers' `SPECIAL_TOKENS_ATTRIBUTES`),
/// as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
  /// `bos_token`.
  pub bos: Option<String>,
  /// `eos_token`.
  pub eos: Option<String>,
  /// `unk_token`.
  pub unk: Option<String>,
  /// `sep_token`.
  pub sep: Option<String>,
  /// `pad_token`.
  pub pad: Option<String>,
  /// `cls_token`.
  pub cls: Option<String>,
  /// `mask_token`.
  pub mask: Option<String>,
}

impl SpecialTokens {
  const NAMES: [&'static str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
  ];

  fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
    Some(match name {
      "bos_token" => &mut self.bos,
      "eos_token" => &mut self.eos,
      "unk_token" => &mut self.unk,
      "sep_token" => &mut self.sep,
      "pad_token" => &mut self.pad,
      "cls_token" => &mut self.cls,
      "mask_token" => &mut self.mask,
      _ => return None,
    })
  }

  /// transformers' `special_tokens_map`: the set tokens by attribute name,
  /// as chat templates receive them.
  pub fn to_map(&self) -> Map<String, Value> {
    let vals = [
      &self.bos, &self.eos, &self.unk, &self.sep, &self.pad, &self.cls, &self.mask,
    ];
    Self::NAMES
      .iter()
      .zip(vals)
      .filter_map(|(n, v)| {
        v.as_ref()
          .map(|s| (n.to_string(), Value::String(s.clone())))
      })
      .collect()
  }
}

/// A special-token value: a string, an `AddedToken` object
/// (`{"content": ...}`), or null.
fn token_string(path: &Path, field: &str, v: &Value) -> Result<Option<String>> {
  match v {
    Value::Null => Ok(None),
    Value::String(s) => Ok(Some(s.clone())),
    Value::Object(o) => match o.get("content") {
      Some(Value::String(s)) => Ok(Some(s.clone())),
      _ => Err(Error::config(
        path,
        format!("{field}.content"),
        "expected the token's text (a string)",
      )),
    },
    _ => Err(Error::config(
      path,
      field,
      "expected a token string or an AddedToken object",
    )),
  }
}

/// A language model's tokenizer (mlx-lm's `TokenizerWrapper` around a
/// transformers fast tokenizer). Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
  inner: Arc<tokenizers::Tokenizer>,
  dir: PathBuf,
  config: Arc<Value>,
  special: SpecialTokens,
  add_bos_token: Option<bool>,
  add_eos_token: Option<bool>,
  clean_up_tokenization_spaces: bool,
  clean_up_for_bpe: bool,
  chat_templates: Option<ChatTemplates>,
  eos_token_ids: Vec<u32>,
  detok_kind: DetokenizerKind,
  detok: Arc<OnceLock<Arc<DetokData>>>,
  compiled: Arc<Mutex<HashMap<String, Arc<ChatTemplate>>>>,
}

impl std::fmt::Debug for Tokenizer {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Tokenizer")
      .field("dir", &self.dir)
      .field("vocab_size", &self.vocab_size())
      .field("special", &self.special)
      .field("eos_token_ids", &self.eos_token_ids)
      .field("detokenizer", &self.detok_kind)
      .finish_non_exhaustive()
  }
}

fn read_optional_object(path: &Path) -> Result<Option<Value>> {
  if !path.is_file() {
    return Ok(None);
  }
  let v = read_json(path)?;
  if !v.is_object() {
    return Err(Error::config(path, "<root>", "expected a JSON object"));
  }
  Ok(Some(v))
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of
/// `{"name": ..., "template": ...}`.
fn templates_from_config(path: &Path, v: &Value) -> Result<Option<ChatTemplates>> {
  match v {
    Value::Null => Ok(None),
    Value::String(s) => Ok(Some(ChatTemplates::Single(s.clone()))),
    Value::Array(items) => {
      let mut map = BTreeMap::new();
      for (i, item) in items.iter().enumerate() {
        let field = format!("chat_template[{i}]");
        let name = item.get("name").and_then(Value::as_str);
        let tmpl = item.get("template").and_then(Value::as_str);
        match (name, tmpl) {
          (Some(n), Some(t)) => {
            map.insert(n.to_string(), t.to_string());
          }
          _ => {
            return Err(Error::config(
              path,
              field,
              "expected {\"name\": str, \"template\": str}",
            ));
          }
        }
      }
      Ok(Some(ChatTemplates::Named(map)))
    }
    Value::Object(o) => {
      // A dict of name -> template (what transformers keeps in memory).
      let mut map = BTreeMap::new();
      for (k, t) in o {
        let t = t
          .as_str()
          .ok_or_else(|| Error::config(path, format!("chat_template.{k}"), "expected a string"))?;
        map.insert(k.clone(), t.to_string());
      }
      Ok(Some(ChatTemplates::Named(map)))
    }
    _ => Err(Error::config(
      path,
      "chat_template",
      "expected a string or a list of named templates",
    )),
  }
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
  text
    .replace(" .", ".")
    .replace(" ?", "?")
    .replace(" !", "!")
    .replace(" ,", ",")
    .replace(" ' ", "'")
    .replace(" n't", "n't")
    .replace(" 'm", "'m")
    .replace(" 's", "'s")
    .replace(" 've", "'ve")
    .replace(" 're", "'re")
}

impl Tokenizer {
  /// Load the tokenizer of the checkpoint folder `dir` (mlx-lm's
  /// `tokenizer_utils.load` / transformers' `AutoTokenizer.from_pretrained`
  /// for a fast tokenizer):
  ///
  /// - `tokenizer.json` (required);
  /// - `tokenizer_config.json`: special tokens (strings or `AddedToken`
  ///   objects), `add_bos_token`, `add_eos_token`, `chat_template`,
  ///   `clean_up_tokenization_spaces`;
  /// - `special_tokens_map.json`, which overrides the config's special
  ///   tokens when the config has no `added_tokens_decoder` (transformers'
  ///   legacy path);
  /// - chat templates: `chat_template.jinja` and
  ///   `additional_chat_templates/*.jinja` replace the config's
  ///   `chat_template`; `chat_template.json` is the fallback when neither
  ///   exists;
  /// - EOS ids: `generation_config.json`'s `eos_token_id`, else
  ///   `config.json`'s (as mlx-lm's `load_config` merges them), plus the id
  ///   of the tokenizer's `eos_token`.
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
    let dir = dir.as_ref();
    let tok_path = dir.join(TOKENIZER_FILE);
    if !tok_path.is_file() {
      return Err(Error::tokenizer(
        Some(&tok_path),
        "tokenizer.json not found (only fast tokenizers are supported; tokenizer.model / tiktoken files need converting)",
      ));
    }
    let text = read_text(&tok_path)?;
    let (inner, detok_kind) = Self::parse_tokenizer_json(&text, &tok_path)?;

    let cfg_path = dir.join(TOKENIZER_CONFIG_FILE);
    let config = read_optional_object(&cfg_path)?.unwrap_or_else(|| Value::Object(Map::new()));

    let mut special = Self::special_from_config(&cfg_path, &config)?;
    if config.get("added_tokens_decoder").is_none() {
      let stm_path = dir.join(SPECIAL_TOKENS_MAP_FILE);
      if let Some(stm) = read_optional_object(&stm_path)? {
        for name in SpecialTokens::NAMES {
          if let Some(v) = stm.get(name) {
            *special.slot(name).expect("known name") = token_string(&stm_path, name, v)?;
          }
        }
      }
    }
    let chat_templates = Self::load_chat_templates(dir, &cfg_path, &config)?;
    let mut tok = Self::assemble(
      inner,
      detok_kind,
      dir,
      &cfg_path,
      config,
      special,
      chat_templates,
    )?;

    let mut eos = if dir.join(CONFIG_FILE).is_file() {
      ModelConfig::from_dir(dir)?.eos_token_ids()?
    } else {
      Vec::new()
    };
    if let Some(id) = tok.eos_token_id() {
      eos.push(id);
    }
    tok.set_eos_token_ids(eos);
    Ok(tok)
  }

  /// A tokenizer built in memory (python: transformers' GGUF tokenizer
  /// converter, `PreTrainedTokenizerFast(tokenizer_object=...)`): the text
  /// of a `tokenizer.json` and a `tokenizer_config.json`-style object
  /// (special tokens, `add_bos_token`, `chat_template`, ...). `source`
  /// names where it came from in errors and [`Tokenizer::dir`]. The EOS set
  /// is `eos_ids` plus the id of `eos_token`.
  pub fn from_json_parts(
    tokenizer_json: &str,
    config: Value,
    source: impl AsRef<Path>,
    eos_ids: impl IntoIterator<Item = u32>,
  ) -> Result<Self> {
    let source = source.as_ref();
    if !config.is_object() {
      return Err(Error::config(source, "<root>", "expected a JSON object"));
    }
    let (inner, detok_kind) = Self::parse_tokenizer_json(tokenizer_json, source)?;
    let special = Self::special_from_config(source, &config)?;
    let chat_templates = match config.get("chat_template") {
      Some(v) => templates_from_config(source, v)?,
      None => None,
    };
    let mut tok = Self::assemble(
      inner,
      detok_kind,
      source,
      source,
      config,
      special,
      chat_templates,
    )?;
    let mut eos: Vec<u32> = eos_ids.into_iter().collect();
    if let Some(id) = tok.eos_token_id() {
      eos.push(id);
    }
    tok.set_eos_token_ids(eos);
    Ok(tok)
  }

  /// Parse a `tokenizer.json` text; also picks the streaming detokenizer
  /// from its decoder.
  fn parse_tokenizer_json(
    text: &str,
    path: &Path,
  ) -> Result<(tokenizers::Tokenizer, DetokenizerKind)> {
    // Only the decoder is needed here (to pick the streaming detokenizer);
    // skip building a Value for the (large) vocabulary.
    #[derive(serde::Deserialize)]
    struct Probe {
      decoder: Option<Value>,
    }
    let probe: Probe = serde_json::from_str(text).map_err(|source| Error::Json {
      path: path.to_path_buf(),
      source,
    })?;
    let inner = tokenizers::Tokenizer::from_str(text)
      .map_err(|e| Error::tokenizer(Some(path), format!("cannot load: {e}")))?;
    Ok((inner, DetokenizerKind::from_decoder(probe.decoder.as_ref())))
  }

  /// The named special tokens of a `tokenizer_config.json` object.
  fn special_from_config(cfg_path: &Path, config: &Value) -> Result<SpecialTokens> {
    let mut special = SpecialTokens::default();
    for name in SpecialTokens::NAMES {
      if let Some(v) = config.get(name) {
        *special.slot(name).expect("known name") = token_string(cfg_path, name, v)?;
      }
    }
    Ok(special)
  }

  /// The tokenizer from its parsed parts (EOS set left empty).
  fn assemble(
    inner: tokenizers::Tokenizer,
    detok_kind: DetokenizerKind,
    dir: &Path,
    cfg_path: &Path,
    config: Value,
    special: SpecialTokens,
    chat_templates: Option<ChatTemplates>,
  ) -> Result<Self> {
    let opt_bool = |field: &str| -> Result<Option<bool>> {
      match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => value_bool(cfg_path, field, v).map(Some),
      }
    };
    let add_bos_token = opt_bool("add_bos_token")?;
    let add_eos_token = opt_bool("add_eos_token")?;
    let clean_up_tokenization_spaces = opt_bool("clean_up_tokenization_spaces")?.unwrap_or(false);
    let clean_up_for_bpe =
      opt_bool("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")?
        .unwrap_or(false);

    Ok(Tokenizer {
      inner: Arc::new(inner),
      dir: dir.to_path_buf(),
      config: Arc::new(config),
      special,
      add_bos_token,
      add_eos_token,
      clean_up_tokenization_spaces,
      clean_up_for_bpe,
      chat_templates,
      eos_token_ids: Vec::new(),
      detok_kind,
      detok: Arc::new(OnceLock::new()),
      compiled: Arc::new(Mutex::new(HashMap::new())),
    })
  }

  fn load_chat_templates(
    dir: &Path,
    cfg_path: &Path,
    config: &Value,
  ) -> Result<Option<ChatTemplates>> {
    let mut files = BTreeMap::new();
    let main = dir.join(CHAT_TEMPLATE_FILE);
    if main.is_file() {
      files.insert("default".to_string(), read_text(&main)?);
    }
    let extra_dir = dir.join(CHAT_TEMPLATE_DIR);
    if extra_dir.is_dir() {
      let entries = std::fs::read_dir(&extra_dir).map_err(|e| Error::io(&extra_dir, e))?;
      for entry in entries {
        let entry = entry.map_err(|e| Error::io(&extra_dir, e))?;
        let path = entry.path();
        let Some(name) = path
          .file_name()
          .and_then(|n| n.to_str())
          .and_then(|n| n.strip_suffix(".jinja"))
        else {
          continue;
        };
        if path.is_file() {
          files.insert(name.to_string(), read_text(&path)?);
        }
      }
    }
    if !files.is_empty() {
      if files.len() == 1 && files.contains_key("default") {
        return Ok(files.remove("default").map(ChatTemplates::Single));
      }
      return Ok(Some(ChatTemplates::Named(files)));
    }
    if let Some(v) = config.get("chat_template") {
      if let Some(t) = templates_from_config(cfg_path, v)? {
        return Ok(Some(t));
      }
    }
    let legacy = dir.join(LEGACY_CHAT_TEMPLATE_FILE);
    if legacy.is_file() {
      let v = read_json(&legacy)?;
      return match v.get("chat_template") {
        Some(t) => templates_from_config(&legacy, t),
        None => Err(Error::config(&legacy, "chat_template", "missing")),
      };
    }
    Ok(None)
  }

  /// The folder this was loaded from.
  pub fn dir(&self) -> &Path {
    &self.dir
  }

  /// The underlying `tokenizers` tokenizer.
  pub fn inner(&self) -> &tokenizers::Tokenizer {
    &self.inner
  }

  /// The raw `tokenizer_config.json` (an empty object when absent).
  pub fn tokenizer_config(&self) -> &Value {
    &self.config
  }

  /// Encode `text` to ids (`tokenizer.encode(text, add_special_tokens=...)`).
  /// With `add_special_tokens`, the tokenizer's post-processor adds BOS /
  /// EOS as `tokenizer.json` specifies.
  pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
    let enc = self
      .inner
      .encode(text, add_special_tokens)
      .map_err(|e| Error::tokenizer(None, format!("encode: {e}")))?;
    Ok(enc.get_ids().to_vec())
  }

  /// Decode ids to text (`tokenizer.decode(ids, skip_special_tokens=...)`).
  /// transformers' `clean_up_tokenization_spaces` is applied when the
  /// config asks for it and the model is not BPE (transformers v5 skips it
  /// for BPE unless forced). Unknown ids are skipped.
  pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
    let text = self
      .inner
      .decode(ids, skip_special_tokens)
      .map_err(|e| Error::tokenizer(None, format!("decode: {e}")))?;
    let is_bpe = matches!(self.inner.get_model(), tokenizers::ModelWrapper::BPE(_));
    if self.clean_up_tokenization_spaces && (!is_bpe || self.clean_up_for_bpe) {
      Ok(clean_up_tokenization(&text))
    } else {
      Ok(text)
    }
  }

  /// The id of `token` (`convert_tokens_to_ids`), if it is in the vocabulary.
  pub fn token_to_id(&self, token: &str) -> Option<u32> {
    self.inner.token_to_id(token)
  }

  /// The token string of `id` (`convert_ids_to_tokens`).
  pub fn id_to_token(&self, id: u32) -> Option<String> {
    self.inner.id_to_token(id)
  }

  /// Vocabulary size including added tokens (`len(tokenizer)`).
  pub fn vocab_size(&self) -> usize {
    self.inner.get_vocab_size(true)
  }

  /// The named special tokens.
  pub fn special_tokens(&self) -> &SpecialTokens {
    &self.special
  }

  /// `bos_token`.
  pub fn bos_token(&self) -> Option<&str> {
    self.special.bos.as_deref()
  }

  /// `eos_token`.
  pub fn eos_token(&self) -> Option<&str> {
    self.special.eos.as_deref()
  }

  /// `pad_token`.
  pub fn pad_token(&self) -> Option<&str> {
    self.special.pad.as_deref()
  }

  /// `unk_token`.
  pub fn unk_token(&self) -> Option<&str> {
    self.special.unk.as_deref()
  }

  /// `bos_token_id`.
  pub fn bos_token_id(&self) -> Option<u32> {
    self.bos_token().and_then(|t| self.token_to_id(t))
  }

  /// `eos_token_id` (the tokenizer's own, not the merged set).
  pub fn eos_token_id(&self) -> Option<u32> {
    self.eos_token().and_then(|t| self.token_to_id(t))
  }

  /// `pad_token_id`.
  pub fn pad_token_id(&self) -> Option<u32> {
    self.pad_token().and_then(|t| self.token_to_id(t))
  }

  /// `add_bos_token` from `tokenizer_config.json`, when set. (With a
  /// `tokenizer.json`, encoding follows its post-processor; mlx-lm uses this
  /// and [`Tokenizer::bos_token`] to avoid a doubled BOS.)
  pub fn add_bos_token(&self) -> Option<bool> {
    self.add_bos_token
  }

  /// `add_eos_token` from `tokenizer_config.json`, when set.
  pub fn add_eos_token_setting(&self) -> Option<bool> {
    self.add_eos_token
  }

  /// The ids that end generation (mlx-lm's `eos_token_ids`), sorted.
  pub fn eos_token_ids(&self) -> &[u32] {
    &self.eos_token_ids
  }

  /// Whether `id` ends generation.
  pub fn is_eos(&self, id: u32) -> bool {
    self.eos_token_ids.binary_search(&id).is_ok()
  }

  /// Replace the EOS set (the `eos_token_ids` setter).
  pub fn set_eos_token_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
    let mut v: Vec<u32> = ids.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    self.eos_token_ids = v;
  }

  /// Add an EOS token given as an id (`"128009"`) or a token string
  /// (`"<|eot_id|>"`) (mlx-lm's `add_eos_token`).
  pub fn add_eos_token(&mut self, token: &str) -> Result<()> {
    let id = match token.trim().parse::<u32>() {
      Ok(id) => id,
      Err(_) => self.token_to_id(token).ok_or_else(|| {
        Error::InvalidArgument(format!("'{token}' is not a token for this tokenizer"))
      })?,
    };
    let mut ids = self.eos_token_ids.clone();
    ids.push(id);
    self.set_eos_token_ids(ids);
    Ok(())
  }

  /// The chat templates, if the checkpoint has any.
  pub fn chat_templates(&self) -> Option<&ChatTemplates> {
    self.chat_templates.as_ref()
  }

  /// Whether a chat template is available.
  pub fn has_chat_template(&self) -> bool {
    self.chat_templates.is_some()
  }

  fn compiled_template(&self, name: &str, source: &str) -> Result<Arc<ChatTemplate>> {
    let key = format!("{name}\u{0}{source}");
    if let Ok(cache) = self.compiled.lock() {
      if let Some(t) = cache.get(&key) {
        return Ok(Arc::clone(t));
      }
    }
    let t = Arc::new(ChatTemplate::new(name, source)?);
    if let Ok(mut cache) = self.compiled.lock() {
      cache.insert(key, Arc::clone(&t));
    }
    Ok(t)
  }

  /// Render a conversation with the checkpoint's chat template
  /// (transformers' `apply_chat_template(messages, tokenize=False, ...)`).
  pub fn apply_chat_template(&self, messages: &[Message], opts: &ChatOptions) -> Result<String> {
    let values = messages
      .iter()
      .map(|m| serde_json::to_value(m).map_err(|e| Error::InvalidArgument(format!("message: {e}"))))
      .collect::<Result<Vec<_>>>()?;
    self.apply_chat_template_values(&values, opts)
  }

  /// [`Tokenizer::apply_chat_template`] over messages given as JSON objects.
  pub fn apply_chat_template_values(
    &self,
    messages: &[Value],
    opts: &ChatOptions,
  ) -> Result<String> {
    let has_tools = opts.tools.is_some();
    let (name, source) = match (&self.chat_templates, opts.chat_template.as_deref()) {
      (Some(t), choice) => {
        let (n, s) = t.select(choice, has_tools)?;
        (n, s.to_string())
      }
      (None, Some(src)) => ("<inline>".to_string(), src.to_string()),
      (None, None) => {
        return Err(Error::Template {
          name: "<none>".into(),
          message: format!(
            "{} has no chat template (tokenizer_config.json `chat_template`, chat_template.jinja or chat_template.json); \
             pass one in ChatOptions::chat_template",
            self.dir.display()
          ),
        });
      }
    };
    let tmpl = self.compiled_template(&name, &source)?;
    tmpl.render_values(messages, opts, &self.special.to_map())
  }

  /// Render and encode a conversation (`apply_chat_template(...,
  /// tokenize=True)`: the rendered text encoded with
  /// `add_special_tokens=False`).
  pub fn apply_chat_template_ids(
    &self,
    messages: &[Message],
    opts: &ChatOptions,
  ) -> Result<Vec<u32>> {
    let text = self.apply_chat_template(messages, opts)?;
    self.encode(&text, false)
  }

  /// The streaming detokenizer variant this tokenizer gets.
  pub fn detokenizer_kind(&self) -> DetokenizerKind {
    self.detok_kind
  }

  /// A fresh streaming detokenizer (mlx-lm's `TokenizerWrapper.detokenizer`).
  /// Its token tables are built on first use and shared.
  pub fn detokenizer(&self) -> StreamingDetokenizer {
    let data = self
      .detok
      .get_or_init(|| Arc::new(DetokData::new(self.detok_kind, Arc::clone(&self.inner))));
    StreamingDetokenizer::new(Arc::clone(data))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<StreamingDetokenizer>();
    assert_send_sync::<Error>();
    assert_send_sync::<ChatTemplate>();
  }

  #[test]
  fn clean_up_matches_transformers() {
    assert_eq!(
      clean_up_tokenization("Hello , world ! I 'm here . do n't"),
      "Hello, world! I'm here. don't"
    );
  }

  #[test]
  fn special_token_forms() {
    let p = Path::new("tokenizer_config.json");
    assert_eq!(
      token_string(p, "bos_token", &serde_json::json!("<s>")).unwrap(),
      Some("<s>".into())
    );
    assert_eq!(
      token_string(
        p,
        "bos_token",
        &serde_json::json!({"content": "<s>", "lstrip": false})
      )
      .unwrap(),
      Some("<s>".into())
    );
    assert_eq!(token_string(p, "bos_token", &Value::Null).unwrap(), None);
    let e = token_string(p, "eos_token", &serde_json::json!(3))
      .unwrap_err()
      .to_string();
    assert!(e.contains("eos_token"), "{e}");
  }
}
