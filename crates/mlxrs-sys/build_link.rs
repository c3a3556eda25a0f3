// Shared by mlxrs-sys's build script and, through `include!`, by the build
// scripts of every crate that links MLX into binaries or tests.
//
// Cargo passes a build script's `rustc-link-arg` only to its own package's
// binaries and tests, so each such package re-emits these from the
// `DEP_MLX_*` metadata that mlxrs-sys (`links = "mlx"`) exports.

/// RUNPATH to libmlx's folder, and OpenBLAS kept as a direct dependency of the
/// binary so libmlx's `cblas_*` calls resolve to it ahead of the wheel's
/// reference BLAS.
#[allow(dead_code)]
fn mlxrs_emit_link_args(lib_dir: &str, openblas_dir: Option<&str>) {
  let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
  if target_os == "linux" {
    // RUNPATH (not RPATH): LD_LIBRARY_PATH can still select another libmlx.
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

/// For dependents of mlxrs-sys: read its metadata and emit the link args.
#[allow(dead_code)]
fn mlxrs_link_from_dep() {
  println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
  println!("cargo:rerun-if-env-changed=DEP_MLX_OPENBLAS_DIR");
  if let Ok(lib) = std::env::var("DEP_MLX_LIB_DIR") {
    let blas = std::env::var("DEP_MLX_OPENBLAS_DIR").ok();
    mlxrs_emit_link_args(&lib, blas.as_deref());
  }
}
