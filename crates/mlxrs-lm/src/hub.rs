//! Resolve a model argument to a local checkpoint folder (mlx-lm's
//! `mlx_lm.utils._download` / `get_model_path`): an existing folder is used
//! as is; otherwise the argument is a Hugging Face repo id (`org/name`)
//! looked up in the local Hub cache and, unless offline, downloaded with
//! the `hf-hub` crate.
//!
//! Environment, as `huggingface_hub` reads it ([`HubConfig::from_env`]):
//! `HF_HUB_CACHE` (or legacy `HUGGINGFACE_HUB_CACHE`), else
//! `HF_HOME/hub`, with `HF_HOME` defaulting to
//! `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`;
//! `HF_HUB_OFFLINE` (`1`/`ON`/`YES`/`TRUE`): cache only, no network;
//! `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the token file
//! (`HF_TOKEN_PATH` or `HF_HOME/token`); `HF_ENDPOINT`;
//! `HF_HUB_DISABLE_PROGRESS_BARS`.
//!
//! The cache has `huggingface_hub`'s layout:
//! `<cache>/models--<org>--<name>/refs/<revision>` holds a commit hash and
//! `<cache>/models--<org>--<name>/snapshots/<hash>/` the files. The lookup
//! is implemented here (hf-hub 0.4 does not honour `HF_HUB_CACHE`,
//! `HF_HUB_OFFLINE` or `HF_TOKEN`); hf-hub only downloads.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result, read_json};

/// What `mlx_lm.utils._download` fetches (`DEFAULT_ALLOW_PATTERNS`).
pub const DEFAULT_ALLOW_PATTERNS: &[&str] = &[
  "*.json",
  "model*.safetensors",
  "*.py",
  "tokenizer.model",
  "*.tiktoken",
  "tiktoken.model",
  "*.txt",
  "*.jsonl",
  "*.jinja",
];

/// The sharded-weights index file.
pub const WEIGHT_INDEX_FILE: &str = "model.safetensors.index.json";

/// Hub settings (cache location, offline mode, token, endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
  /// The hub cache folder (`HF_HUB_CACHE`).
  pub cache_dir: PathBuf,
  /// Never touch the network (`HF_HUB_OFFLINE`).
  pub offline: bool,
  /// Access token for gated / private repos.
  pub token: Option<String>,
  /// Hub URL (`HF_ENDPOINT`).
  pub endpoint: String,
  /// Show download progress bars.
  pub progress: bool,
}

fn is_true(v: Option<String>) -> bool {
  v.is_some_and(|s| {
    matches!(
      s.trim().to_ascii_uppercase().as_str(),
      "1" | "ON" | "YES" | "TRUE"
    )
  })
}

fn expand_home(p: &str, home: Option<&str>) -> PathBuf {
  match (p.strip_prefix("~"), home) {
    (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with('/') => {
      PathBuf::from(format!("{h}{rest}"))
    }
    _ => PathBuf::from(p),
  }
}

impl HubConfig {
  /// Settings from the process environment (see the module docs).
  pub fn from_env() -> Self {
    Self::from_vars(|k| std::env::var(k).ok())
  }

  /// Settings from a variable lookup (`from_env` with `std::env::var`);
  /// empty values count as unset.
  pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    let home = get("HOME");
    let hf_home = match get("HF_HOME") {
      Some(h) => expand_home(&h, home.as_deref()),
      None => {
        let base = match get("XDG_CACHE_HOME") {
          Some(x) => expand_home(&x, home.as_deref()),
          None => expand_home("~/.cache", home.as_deref()),
        };
        base.join("huggingface")
      }
    };
    let cache_dir = match get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
      Some(c) => expand_home(&c, home.as_deref()),
      None => hf_home.join("hub"),
    };
    let token = get("HF_TOKEN")
      .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
      .or_else(|| {
        let path = match get("HF_TOKEN_PATH") {
          Some(p) => expand_home(&p, home.as_deref()),
          None => hf_home.join("token"),
        };
        std::fs::read_to_string(path)
          .ok()
          .map(|t| t.trim().to_string())
          .filter(|t| !t.is_empty())
      });
    HubConfig {
      cache_dir,
      offline: is_true(get("HF_HUB_OFFLINE")),
      token,
      endpoint: get("HF_ENDPOINT")
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string(),
      progress: !is_true(get("HF_HUB_DISABLE_PROGRESS_BARS")),
    }
  }

  /// The cache folder of model repo `repo_id` (`models--org--name`).
  pub fn repo_cache_dir(&self, repo_id: &str) -> PathBuf {
    self
      .cache_dir
      .join(format!("models--{}", repo_id.replace('/', "--")))
  }
}

/// Whether `s` is a valid Hub repo id (`name` or `org/name`), as
/// `huggingface_hub.utils.validate_repo_id` checks it.
pub fn is_repo_id(s: &str) -> bool {
  if s.is_empty() || s.len() > 96 || s.contains("--") || s.contains("..") || s.ends_with(".git") {
    return false;
  }
  let parts: Vec<&str> = s.split('/').collect();
  if parts.len() > 2 {
    return false;
  }
  let word = |c: char| c.is_alphanumeric() || c == '_';
  parts.iter().all(|p| {
    !p.is_empty()
      && p.chars().all(|c| word(c) || c == '-' || c == '.')
      && p.chars().next().is_some_and(word)
      && p.chars().last().is_some_and(word)
  })
}

/// The cached snapshot folder of `repo_id` at `revision` (a branch / tag
/// name with a `refs/` entry, or a commit hash), if the cache has one.
pub fn cached_snapshot(hub: &HubConfig, repo_id: &str, revision: &str) -> Option<PathBuf> {
  let repo = hub.repo_cache_dir(repo_id);
  let snapshots = repo.join("snapshots");
  if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
    let dir = snapshots.join(revision);
    if dir.is_dir() {
      return Some(dir);
    }
  }
  if revision.split('/').any(|c| c == ".." || c.is_empty()) {
    return None;
  }
  let hash = std::fs::read_to_string(repo.join("refs").join(revision)).ok()?;
  let hash = hash.trim();
  if hash.is_empty() || hash.contains('/') || hash.contains("..") {
    return None;
  }
  let dir = snapshots.join(hash);
  dir.is_dir().then_some(dir)
}

/// The files a language-model checkpoint folder provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
  /// The folder.
  pub dir: PathBuf,
  /// `config.json`.
  pub config: PathBuf,
  /// `tokenizer.json` and, when present, `tokenizer_config.json`,
  /// `special_tokens_map.json`, `chat_template.jinja`, `chat_template.json`,
  /// `generation_config.json`.
  pub tokenizer_files: Vec<PathBuf>,
  /// `model.safetensors.index.json`, when the weights are sharded.
  pub weight_index: Option<PathBuf>,
  /// The weight files: the index's shards, else `model*.safetensors`
  /// (mlx-lm's glob), sorted.
  pub weights: Vec<PathBuf>,
}

impl ModelFiles {
  /// List the checkpoint files in `dir`; the error names everything
  /// missing (config, tokenizer, weights, shards the index names).
  pub fn scan(dir: impl AsRef<Path>) -> Result<Self> {
    let dir = dir.as_ref();
    let label = dir.display().to_string();
    if !dir.is_dir() {
      return Err(Error::hub(&label, "not a folder"));
    }
    let mut missing = Vec::new();
    let config = dir.join("config.json");
    if !config.is_file() {
      missing.push("config.json".to_string());
    }
    let tok = dir.join("tokenizer.json");
    if !tok.is_file() {
      missing.push("tokenizer.json".to_string());
    }
    let mut tokenizer_files = vec![tok];
    for f in [
      "tokenizer_config.json",
      "special_tokens_map.json",
      "chat_template.jinja",
      "chat_template.json",
      "generation_config.json",
    ] {
      let p = dir.join(f);
      if p.is_file() {
        tokenizer_files.push(p);
      }
    }
    let index = dir.join(WEIGHT_INDEX_FILE);
    let (weight_index, weights) = if index.is_file() {
      let v = read_json(&index)?;
      let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
        return Err(Error::config(
          &index,
          "weight_map",
          "missing or not an object",
        ));
      };
      let mut shards: Vec<String> = Vec::new();
      for (tensor, shard) in map {
        let Some(s) = shard.as_str() else {
          return Err(Error::config(
            &index,
            format!("weight_map.{tensor}"),
            "expected a file name",
          ));
        };
        if Path::new(s)
          .components()
          .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
          return Err(Error::config(
            &index,
            format!("weight_map.{tensor}"),
            format!("`{s}` is not a file in the folder"),
          ));
        }
        shards.push(s.to_string());
      }
      shards.sort();
      shards.dedup();
      for s in &shards {
        if !dir.join(s).is_file() {
          missing.push(format!("{s} (named by {WEIGHT_INDEX_FILE})"));
        }
      }
      (Some(index), shards.iter().map(|s| dir.join(s)).collect())
    } else {
      let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
      let mut w: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
          p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("model") && n.ends_with(".safetensors"))
            && p.is_file()
        })
        .collect();
      w.sort();
      if w.is_empty() {
        missing.push("weights (model*.safetensors)".to_string());
      }
      (None, w)
    };
    if !missing.is_empty() {
      return Err(Error::hub(
        &label,
        format!("missing {}", missing.join(", ")),
      ));
    }
    Ok(ModelFiles {
      dir: dir.to_path_buf(),
      config,
      tokenizer_files,
      weight_index,
      weights,
    })
  }
}

/// `fnmatch`-style match (`*` any run, `?` one char), as
/// `huggingface_hub`'s `allow_patterns`.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
  let p: Vec<char> = pattern.chars().collect();
  let n: Vec<char> = name.chars().collect();
  let (mut pi, mut ni) = (0, 0);
  let (mut star, mut mark) = (None, 0);
  while ni < n.len() {
    if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
      pi += 1;
      ni += 1;
    } else if pi < p.len() && p[pi] == '*' {
      star = Some(pi);
      mark = ni;
      pi += 1;
    } else if let Some(s) = star {
      pi = s + 1;
      mark += 1;
      ni = mark;
    } else {
      return false;
    }
  }
  while pi < p.len() && p[pi] == '*' {
    pi += 1;
  }
  pi == p.len()
}

/// Resolve `model` with the environment's [`HubConfig`] at the default
/// revision (`main`) (mlx-lm's `_download(path_or_hf_repo)`).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
  resolve_model_with(model, None, &HubConfig::from_env())
}

/// Resolve `model` to a checkpoint folder:
///
/// 1. an existing folder is returned as is;
/// 2. otherwise `model` must be a repo id; offline, its cached snapshot at
///    `revision` (default `main`) is used;
/// 3. online, the files matching [`DEFAULT_ALLOW_PATTERNS`] are downloaded
///    into the cache (already-cached ones are reused); if the Hub cannot be
///    reached, a complete cached snapshot is used instead.
///
/// A snapshot from the cache must hold a complete checkpoint
/// ([`ModelFiles::scan`]); errors say what is missing and where it looked.
pub fn resolve_model_with(model: &str, revision: Option<&str>, hub: &HubConfig) -> Result<PathBuf> {
  let path = Path::new(model);
  if path.exists() {
    if path.is_dir() {
      return Ok(path.to_path_buf());
    }
    return Err(Error::hub(
      model,
      "is a file; expected a checkpoint folder or a Hugging Face repo id",
    ));
  }
  if !is_repo_id(model) {
    return Err(Error::hub(
      model,
      "no such folder, and not a Hugging Face repo id (`org/name`)",
    ));
  }
  let revision = revision.unwrap_or("main");
  let from_cache = |why: &str| -> Result<PathBuf> {
    match cached_snapshot(hub, model, revision) {
      Some(dir) => {
        ModelFiles::scan(&dir).map_err(|e| {
          Error::hub(
            model,
            format!("{why}; the cached snapshot is incomplete: {e}"),
          )
        })?;
        Ok(dir)
      }
      None => Err(Error::hub(
        model,
        format!(
          "{why}, and revision `{revision}` is not in the Hugging Face cache at {}",
          hub.cache_dir.display()
        ),
      )),
    }
  };
  if hub.offline {
    return from_cache("HF_HUB_OFFLINE is set (no downloads)");
  }
  match download(model, revision, hub) {
    Ok(dir) => {
      ModelFiles::scan(&dir)
        .map_err(|e| Error::hub(model, format!("downloaded snapshot is incomplete: {e}")))?;
      Ok(dir)
    }
    Err(e) => from_cache(&format!("download from {} failed ({e})", hub.endpoint)),
  }
}

static PROGRESS_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turn download progress bars off for this process (e.g. `mlxrs generate
/// --json`, whose stdout/stderr are read by programs). Python: the
/// `HF_HUB_DISABLE_PROGRESS_BARS` variable / `huggingface_hub.utils.
/// disable_progress_bars()`.
pub fn set_download_progress(enabled: bool) {
  PROGRESS_OFF.store(!enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether downloads show progress: asked for by the config
/// (`HF_HUB_DISABLE_PROGRESS_BARS` unset), not turned off with
/// [`set_download_progress`], and stderr is a terminal.
pub fn progress_enabled(hub: &HubConfig, stderr_is_tty: bool) -> bool {
  hub.progress && stderr_is_tty && !PROGRESS_OFF.load(std::sync::atomic::Ordering::Relaxed)
}

/// Download the allowed files of `repo_id` at `revision` into the cache;
/// returns the snapshot folder. With progress on (see
/// [`progress_enabled`]), one stderr line names the repo and file count,
/// and hf-hub draws a bar per file (indicatif).
fn download(
  repo_id: &str,
  revision: &str,
  hub: &HubConfig,
) -> std::result::Result<PathBuf, String> {
  use hf_hub::api::sync::ApiBuilder;
  use hf_hub::{Cache, Repo, RepoType};

  use std::io::IsTerminal;
  let progress = progress_enabled(hub, std::io::stderr().is_terminal());
  let cache = Cache::new(hub.cache_dir.clone());
  let api = ApiBuilder::from_cache(cache.clone())
    .with_endpoint(hub.endpoint.clone())
    .with_token(hub.token.clone())
    .with_progress(progress)
    .build()
    .map_err(|e| e.to_string())?;
  let repo_spec = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
  let repo = api.repo(repo_spec.clone());
  let info = repo
    .info()
    .map_err(|e| format!("cannot list the repo: {e}"))?;
  if info.sha.is_empty() || info.sha.contains('/') || info.sha.contains("..") {
    return Err(format!(
      "the Hub returned an invalid commit hash {:?}",
      info.sha
    ));
  }
  let snapshot = hub
    .repo_cache_dir(repo_id)
    .join("snapshots")
    .join(&info.sha);
  let wanted: Vec<&String> = info
    .siblings
    .iter()
    .map(|s| &s.rfilename)
    .filter(|name| {
      let safe = Path::new(name.as_str())
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
      safe
        && DEFAULT_ALLOW_PATTERNS.iter().any(|p| glob_match(p, name))
        && !snapshot.join(name.as_str()).is_file()
    })
    .collect();
  if progress && !wanted.is_empty() {
    eprintln!(
      "Fetching {} file(s) of {repo_id} ({revision}, {})",
      wanted.len(),
      &info.sha[..info.sha.len().min(12)]
    );
  }
  for (i, name) in wanted.iter().enumerate() {
    if progress {
      eprintln!("[{}/{}] {name}", i + 1, wanted.len());
    }
    repo.download(name).map_err(|e| format!("{name}: {e}"))?;
  }
  cache
    .repo(repo_spec)
    .create_ref(&info.sha)
    .map_err(|e| format!("cannot record revision `{revision}`: {e}"))?;
  Ok(snapshot)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn progress_needs_config_tty_and_no_override() {
    let mut hub = HubConfig::from_vars(|_| None);
    assert!(hub.progress);
    assert!(progress_enabled(&hub, true));
    assert!(!progress_enabled(&hub, false), "not a terminal");
    hub.progress = false;
    assert!(
      !progress_enabled(&hub, true),
      "HF_HUB_DISABLE_PROGRESS_BARS"
    );
    let off =
      HubConfig::from_vars(|k| (k == "HF_HUB_DISABLE_PROGRESS_BARS").then(|| "1".to_string()));
    assert!(!off.progress);
  }

  #[test]
  fn repo_ids() {
    for ok in ["gpt2", "mlx-community/Qwen3-0.6B-4bit", "org/model.v1_2"] {
      assert!(is_repo_id(ok), "{ok}");
    }
    for bad in [
      "",
      "a/b/c",
      "./x",
      "/abs/path",
      "org/-x",
      "org--x/y",
      "a/../b",
      "x.git",
      "org/ name",
    ] {
      assert!(!is_repo_id(bad), "{bad}");
    }
  }

  #[test]
  fn globs() {
    assert!(glob_match("*.json", "config.json"));
    assert!(glob_match("*.json", "sub/x.json"));
    assert!(glob_match(
      "model*.safetensors",
      "model-00001-of-00002.safetensors"
    ));
    assert!(!glob_match(
      "model*.safetensors",
      "consolidated.safetensors"
    ));
    assert!(glob_match("tokenizer.model", "tokenizer.model"));
    assert!(!glob_match("*.txt", "a.txt.bak"));
  }

  #[test]
  fn env_resolution() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
      move |k: &str| {
        pairs
          .iter()
          .find(|(n, _)| *n == k)
          .map(|(_, v)| v.to_string())
      }
    };
    let c = HubConfig::from_vars(vars(&[("HOME", "/h")]));
    assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
    assert!(!c.offline);
    assert_eq!(c.endpoint, "https://huggingface.co");
    let c = HubConfig::from_vars(vars(&[
      ("HOME", "/h"),
      ("HF_HOME", "~/hf"),
      ("HF_HUB_OFFLINE", "yes"),
      ("HF_TOKEN", "t"),
    ]));
    assert_eq!(c.cache_dir, PathBuf::from("/h/hf/hub"));
    assert!(c.offline);
    assert_eq!(c.token.as_deref(), Some("t"));
    let c = HubConfig::from_vars(vars(&[
      ("HF_HUB_CACHE", "/c"),
      ("XDG_CACHE_HOME", "/x"),
      ("HF_HUB_OFFLINE", "0"),
    ]));
    assert_eq!(c.cache_dir, PathBuf::from("/c"));
    assert!(!c.offline);
    let c = HubConfig::from_vars(vars(&[
      ("XDG_CACHE_HOME", "/x"),
      ("HF_ENDPOINT", "http://mirror/"),
    ]));
    assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
    assert_eq!(c.endpoint, "http://mirror");
  }
}
