//! Build-script helper for the crates that link MLX (no python twin: this
//! is Cargo plumbing).
//!
//! Cargo passes a build script's `rustc-link-arg` only to its own package's
//! binaries and tests, so mlxrs-sys (`links = "mlx"`) exports where libmlx
//! and OpenBLAS are as `DEP_MLX_LIB_DIR` / `DEP_MLX_OPENBLAS_DIR` metadata,
//! and every crate with binaries or tests re-emits the link args from it in
//! a one-line `build.rs`:
//!
//! ```ignore
//! // build.rs (with `mlxrs-sys` as a dependency and `mlxrs-build` as a
//! // build-dependency)
//! fn main() {
//!   mlxrs_build::link_from_dep();
//! }
//! ```
#![forbid(unsafe_code)]

/// Emit the link args for a binary using libmlx in `lib_dir`: a RUNPATH
/// (not RPATH, so `LD_LIBRARY_PATH` can still select another libmlx) to it,
/// and OpenBLAS in `openblas_dir` kept as a direct dependency ahead of
/// libmlx so libmlx's `cblas_*` calls resolve to it rather than to the
/// wheel's reference BLAS.
pub fn emit_link_args(lib_dir: &str, openblas_dir: Option<&str>) {
  let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
  if target_os == "linux" {
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
  }
  println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
  if let Some(dir) = openblas_dir {
    if !dir.is_empty() {
      println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
      println!("cargo:rustc-link-arg=-L{dir}");
      println!("cargo:rustc-link-arg=-l:libopenblas.so.0");
      println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
  }
}

/// For dependents of mlxrs-sys: read its `DEP_MLX_*` metadata and emit the
/// link args ([`emit_link_args`]); nothing without the metadata.
pub fn link_from_dep() {
  println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
  println!("cargo:rerun-if-env-changed=DEP_MLX_OPENBLAS_DIR");
  if let Ok(lib) = std::env::var("DEP_MLX_LIB_DIR") {
    let blas = std::env::var("DEP_MLX_OPENBLAS_DIR").ok();
    emit_link_args(&lib, blas.as_deref());
  }
}
