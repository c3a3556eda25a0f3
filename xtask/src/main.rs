//! Project chores: `cargo xtask <task>`.
//!
//! - `bindgen`: regenerate `crates/mlxrs-sys/src/bindings.rs` from
//!   `crates/mlxrs-sys/csrc/mlxrs_c.h`.
//! - `check-fresh`: fail if any generated file differs from what the
//!   generators would write now (run by the test suite).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod bindings;

fn root() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() -> Result<()> {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let task = args.first().map(String::as_str).unwrap_or("help");
  match task {
    "bindgen" => {
      let text = bindings::generate(&root())?;
      write_if_changed(&bindings::output_path(&root()), &text)?;
    }
    "check-fresh" => check_fresh()?,
    _ => {
      eprintln!("usage: cargo xtask <bindgen|check-fresh>");
      if task != "help" {
        bail!("unknown task {task:?}");
      }
    }
  }
  Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
  if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
  }
  Ok(())
}

fn check_fresh() -> Result<()> {
  let mut stale = Vec::new();
  let text = bindings::generate(&root())?;
  let path = bindings::output_path(&root());
  if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
    stale.push(path);
  }
  if !stale.is_empty() {
    bail!(
      "generated files are stale (run `cargo xtask bindgen`):\n{}",
      stale.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n")
    );
  }
  eprintln!("generated files are fresh");
  Ok(())
}
