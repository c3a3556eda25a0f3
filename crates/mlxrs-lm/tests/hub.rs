//! Model resolution against a fake Hugging Face cache (the
//! `models--org--name/{refs,snapshots,blobs}` layout `huggingface_hub`
//! writes), with no network.

use std::fs;
use std::path::{Path, PathBuf};

use mlxrs_lm::hub::{HubConfig, ModelFiles, cached_snapshot, resolve_model_with};
use mlxrs_lm::{Error, Tokenizer};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data/tokenizers")
    .join(name)
}

fn hub(cache: &Path, offline: bool) -> HubConfig {
  HubConfig {
    cache_dir: cache.to_path_buf(),
    offline,
    token: None,
    // Nothing listens on the discard port: online attempts fail at once.
    endpoint: "http://127.0.0.1:9".to_string(),
    progress: false,
  }
}

/// Write `files` into a snapshot the way huggingface_hub does: content in
/// `blobs/<hash>`, the snapshot entry a relative symlink to it, and
/// `refs/main` naming the commit.
fn fake_repo(cache: &Path, repo_id: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
  let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
  let snap = repo.join("snapshots").join(REV);
  fs::create_dir_all(&snap).unwrap();
  fs::create_dir_all(repo.join("blobs")).unwrap();
  fs::create_dir_all(repo.join("refs")).unwrap();
  fs::write(repo.join("refs/main"), REV).unwrap();
  for (i, (name, content)) in files.iter().enumerate() {
    let blob = repo.join("blobs").join(format!("blob{i:04}"));
    fs::write(&blob, content).unwrap();
    let link = snap.join(name);
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(Path::new("../../blobs").join(format!("blob{i:04}")), &link)
      .unwrap();
    #[cfg(not(unix))]
    fs::copy(&blob, &link).unwrap();
  }
  snap
}

fn checkpoint_files() -> Vec<(&'static str, Vec<u8>)> {
  let tok = fixture("bpe_bytelevel");
  vec![
    (
      "config.json",
      br#"{"model_type": "qwen2", "eos_token_id": 2}"#.to_vec(),
    ),
    (
      "tokenizer.json",
      fs::read(tok.join("tokenizer.json")).unwrap(),
    ),
    (
      "tokenizer_config.json",
      fs::read(tok.join("tokenizer_config.json")).unwrap(),
    ),
    ("model.safetensors", b"weights".to_vec()),
  ]
}

#[test]
fn offline_cached_repo_resolves() {
  let tmp = tempfile::tempdir().unwrap();
  let snap = fake_repo(tmp.path(), "org/name", &checkpoint_files());
  let h = hub(tmp.path(), true);
  assert_eq!(cached_snapshot(&h, "org/name", "main"), Some(snap.clone()));
  assert_eq!(cached_snapshot(&h, "org/name", REV), Some(snap.clone()));
  let dir = resolve_model_with("org/name", None, &h).unwrap();
  assert_eq!(dir, snap);
  let files = ModelFiles::scan(&dir).unwrap();
  assert_eq!(files.weights, vec![snap.join("model.safetensors")]);
  // The resolved folder loads.
  let tok = Tokenizer::from_dir(&dir).unwrap();
  assert_eq!(tok.eos_token_ids(), &[2]);
  // By commit hash too.
  assert_eq!(resolve_model_with("org/name", Some(REV), &h).unwrap(), snap);
}

#[test]
fn unreachable_hub_falls_back_to_cache() {
  let tmp = tempfile::tempdir().unwrap();
  let snap = fake_repo(tmp.path(), "org/name", &checkpoint_files());
  assert_eq!(
    resolve_model_with("org/name", None, &hub(tmp.path(), false)).unwrap(),
    snap
  );
  let e = resolve_model_with("org/other", None, &hub(tmp.path(), false)).unwrap_err();
  let msg = e.to_string();
  assert!(
    msg.contains("org/other")
      && msg.contains("download")
      && msg.contains("not in the Hugging Face cache"),
    "{msg}"
  );
}

#[test]
fn offline_missing_repo_says_where_it_looked() {
  let tmp = tempfile::tempdir().unwrap();
  let e = resolve_model_with("org/absent", None, &hub(tmp.path(), true)).unwrap_err();
  assert!(matches!(e, Error::Hub { .. }), "{e:?}");
  let msg = e.to_string();
  assert!(
    msg.contains("HF_HUB_OFFLINE") && msg.contains(&tmp.path().display().to_string()),
    "{msg}"
  );
  // Unknown revision.
  fake_repo(tmp.path(), "org/name", &checkpoint_files());
  let msg = resolve_model_with("org/name", Some("v2"), &hub(tmp.path(), true))
    .unwrap_err()
    .to_string();
  assert!(msg.contains("`v2`"), "{msg}");
}

#[test]
fn incomplete_snapshot_lists_missing_files() {
  let tmp = tempfile::tempdir().unwrap();
  fake_repo(
    tmp.path(),
    "org/partial",
    &[("config.json", b"{}".to_vec())],
  );
  let msg = resolve_model_with("org/partial", None, &hub(tmp.path(), true))
    .unwrap_err()
    .to_string();
  assert!(
    msg.contains("tokenizer.json")
      && msg.contains("model*.safetensors")
      && !msg.contains("config.json,"),
    "{msg}"
  );

  // Sharded weights: the index names a shard that is not there.
  let mut files = checkpoint_files();
  files.retain(|(n, _)| *n != "model.safetensors");
  files.push(("model-00001-of-00002.safetensors", b"a".to_vec()));
  files.push((
    "model.safetensors.index.json",
    br#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#.to_vec(),
  ));
  fake_repo(tmp.path(), "org/sharded", &files);
  let msg = resolve_model_with("org/sharded", None, &hub(tmp.path(), true))
    .unwrap_err()
    .to_string();
  assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
  assert!(!msg.contains("model-00001-of-00002.safetensors"), "{msg}");
}

#[test]
fn dangling_blob_symlink_counts_as_missing() {
  let tmp = tempfile::tempdir().unwrap();
  let snap = fake_repo(tmp.path(), "org/name", &checkpoint_files());
  let blob = fs::read_link(snap.join("model.safetensors")).unwrap();
  fs::remove_file(snap.join(&blob)).unwrap();
  let msg = resolve_model_with("org/name", None, &hub(tmp.path(), true))
    .unwrap_err()
    .to_string();
  assert!(msg.contains("model*.safetensors"), "{msg}");
}

#[test]
fn local_folders_and_bad_arguments() {
  let tmp = tempfile::tempdir().unwrap();
  let h = hub(tmp.path(), true);
  // An existing folder is used as is (no checks, no cache).
  let dir = fixture("bpe_bytelevel");
  assert_eq!(
    resolve_model_with(dir.to_str().unwrap(), None, &h).unwrap(),
    dir
  );
  // A file is not a checkpoint.
  let file = dir.join("tokenizer.json");
  let msg = resolve_model_with(file.to_str().unwrap(), None, &h)
    .unwrap_err()
    .to_string();
  assert!(msg.contains("is a file"), "{msg}");
  // A missing path that cannot be a repo id.
  let msg = resolve_model_with("/no/such/dir", None, &h)
    .unwrap_err()
    .to_string();
  assert!(msg.contains("no such folder"), "{msg}");
  let msg = resolve_model_with("a/b/c", None, &h)
    .unwrap_err()
    .to_string();
  assert!(msg.contains("not a Hugging Face repo id"), "{msg}");
}

#[test]
fn corrupt_refs_are_ignored() {
  let tmp = tempfile::tempdir().unwrap();
  fake_repo(tmp.path(), "org/name", &checkpoint_files());
  let refs = tmp.path().join("models--org--name/refs/main");
  fs::write(&refs, "../../../etc").unwrap();
  assert_eq!(
    cached_snapshot(&hub(tmp.path(), true), "org/name", "main"),
    None
  );
  fs::write(&refs, b"\xff\xfe").unwrap();
  assert_eq!(
    cached_snapshot(&hub(tmp.path(), true), "org/name", "main"),
    None
  );
  assert_eq!(
    cached_snapshot(&hub(tmp.path(), true), "org/name", "../x"),
    None
  );
}
