//! Project chores: `cargo run -p xtask -- <task>`.
//!
//! - `gen`: regenerate the op bindings from MLX's headers (C header, C++
//!   wrappers, safe Rust wrappers, `docs/coverage.md`; see `xtask/src/gen/`), then
//!   the Rust FFI declarations (`bindgen`).
//! - `bindgen`: regenerate `crates/mlxrs-sys/src/bindings.rs` from
//!   `crates/mlxrs-sys/csrc/mlxrs_c.h`.
//! - `check-fresh`: fail if any generated file differs from what the
//!   generators would write now (run by the test suite).
//! - `convert ARGS...`: convert a checkpoint to MLX (python `mlx_lm.convert`);
//!   builds and runs `mlxrs convert ARGS...` (see `docs/convert.md`), so
//!   xtask itself stays free of MLX.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod bindings;
#[path = "gen/mod.rs"]
mod opgen;

fn root() -> PathBuf {
  Path::new(env!("CARGO_MANIFEST_DIR"))
    .parent()
    .unwrap()
    .to_path_buf()
}

fn main() -> Result<()> {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let task = args.first().map(String::as_str).unwrap_or("help");
  match task {
    "gen" => {
      let root = root();
      let files = opgen::generate(&root)?;
      for (rel, text) in &files {
        write_if_changed(&root.join(rel), text)?;
      }
      for rel in opgen::obsolete(&root, &files)? {
        std::fs::remove_file(root.join(&rel))
          .with_context(|| format!("removing {}", rel.display()))?;
        eprintln!("removed {}", rel.display());
      }
      // The C header changed: the Rust declarations follow it.
      let text = bindings::generate(&root)?;
      write_if_changed(&bindings::output_path(&root), &text)?;
    }
    "bindgen" => {
      let text = bindings::generate(&root())?;
      write_if_changed(&bindings::output_path(&root()), &text)?;
    }
    "check-fresh" => check_fresh()?,
    "convert" => convert(&args[1..])?,
    _ => {
      eprintln!("usage: cargo run -p xtask -- <gen|bindgen|check-fresh|convert ARGS...>");
      if task != "help" {
        bail!("unknown task {task:?}");
      }
    }
  }
  Ok(())
}

/// `cargo xtask convert ARGS...` = `cargo run -p mlxrs-cli -- convert ARGS...`
/// (the default dev profile: the heavy lifting is inside MLX).
fn convert(args: &[String]) -> Result<()> {
  let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
  let status = std::process::Command::new(cargo)
    .args([
      "run",
      "--quiet",
      "-p",
      "mlxrs-cli",
      "--bin",
      "mlxrs",
      "--",
      "convert",
    ])
    .args(args)
    .status()
    .context("running `cargo run -p mlxrs-cli -- convert`")?;
  if !status.success() {
    bail!("mlxrs convert failed ({status})");
  }
  Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
  if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
    if let Some(dir) = path.parent() {
      std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
  }
  Ok(())
}

fn check_fresh() -> Result<()> {
  let root = root();
  let mut stale = Vec::new();
  let files = opgen::generate(&root)?;
  for (rel, text) in &files {
    let path = root.join(rel);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
      stale.push(path);
    }
  }
  for rel in opgen::obsolete(&root, &files)? {
    stale.push(root.join(rel));
  }
  let text = bindings::generate(&root)?;
  let path = bindings::output_path(&root);
  if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
    stale.push(path);
  }
  if !stale.is_empty() {
    bail!(
      "generated files are stale (run `cargo run -p xtask -- gen`):\n{}",
      stale
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
    );
  }
  eprintln!("generated files are fresh ({} files)", files.len() + 1);
  Ok(())
}
