//! The committed generated files (op bindings from MLX's headers, the C
//! header's Rust declarations, docs/coverage.md) match what
//! `cargo run -p xtask -- gen` writes now. Needs MLX's headers (installed by
//! building mlxrs-sys) and libclang (for bindgen).

use std::process::Command;

#[test]
fn generated_files_are_fresh() {
  let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
    .arg("check-fresh")
    .output()
    .expect("run xtask check-fresh");
  assert!(
    out.status.success(),
    "xtask check-fresh failed:\n{}{}",
    String::from_utf8_lossy(&out.stdout),
    String::from_utf8_lossy(&out.stderr)
  );
}
