//! `docs/models.md` equals what the registry gives
//! (`mlxrs_lm::support::models_markdown`); `MLXRS_BLESS=1` rewrites it.

use std::path::PathBuf;

#[test]
fn models_doc_is_fresh() {
  let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/models.md");
  let want = mlxrs_lm::support::models_markdown();
  if std::env::var_os("MLXRS_BLESS").is_some() {
    std::fs::write(&path, &want).unwrap();
    return;
  }
  let have = std::fs::read_to_string(&path).unwrap_or_default();
  assert!(
    have == want,
    "docs/models.md is stale: run `MLXRS_BLESS=1 cargo test -p mlxrs-lm --test models_doc`"
  );
}

/// An unknown `model_type` is refused with every supported type listed;
/// batch-capable types keep keys and values (no recurrent state).
#[test]
fn unknown_model_type_lists_supported() {
  let e = mlxrs_lm::build_model(&serde_json::json!({"model_type": "no_such_arch"}))
    .err()
    .unwrap()
    .to_string();
  for m in mlxrs_lm::support::model_support() {
    assert!(e.contains(m.model_type), "{e} lacks {}", m.model_type);
    if m.batch {
      assert!(
        !m.recurrent,
        "{}: batch needs key/value caches",
        m.model_type
      );
    }
  }
}
