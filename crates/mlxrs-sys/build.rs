//! Finds (or installs) MLX, compiles the mlxrs C layer against it, and links.
//!
//! Search order for MLX (a prefix holding `include/mlx/version.h` and
//! `lib/libmlx.so` / `lib/libmlx.dylib`):
//! 1. `MLX_DIR`: the prefix itself, or its `share/cmake/MLX` folder;
//! 2. the `mlx` package importable by `python3` (`MLXRS_PYTHON` overrides
//!    the interpreter), when its version is the pinned one;
//! 3. the official wheel, installed by `pip install --target` into
//!    `$MLXRS_CACHE_DIR` (default `$XDG_CACHE_HOME/mlxrs` or `~/.cache/mlxrs`):
//!    `mlx-cpu` on Linux, `mlx-metal` on macOS, `mlx-cuda-13` with the `cuda`
//!    feature or `MLXRS_BACKEND=cuda`.
//!
//! With the `source` feature or `MLXRS_MLX_SRC=/path/to/mlx` set, MLX is
//! instead built from that source tree with CMake (see `build_source.rs`).
//!
//! The MLX version is pinned to `MLX_VERSION` below and checked against
//! `mlx/version.h`; `MLXRS_MLX_VERSION_MISMATCH=allow` accepts another
//! version (MLX_DIR or a source tree) with a warning.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build_source.rs"]
mod source;

/// The MLX release this crate's C layer is written and tested against.
const MLX_VERSION: &str = "0.32.4";

fn main() {
  for var in [
    "MLX_DIR",
    "MLXRS_PYTHON",
    "MLXRS_CACHE_DIR",
    "XDG_CACHE_HOME",
    "HOME",
    "MLXRS_BACKEND",
    "MLXRS_BLAS",
    "MLXRS_OPENBLAS_DIR",
    "MLXRS_MLX_VERSION_MISMATCH",
  ]
  .iter()
  .chain(source::SOURCE_ENV)
  {
    println!("cargo:rerun-if-env-changed={var}");
  }
  // `FETCHCONTENT_*` overrides change a source build.
  for (k, _) in env::vars() {
    if k.starts_with("FETCHCONTENT_") {
      println!("cargo:rerun-if-env-changed={k}");
    }
  }
  println!("cargo:rerun-if-changed=csrc");
  println!("cargo:rerun-if-changed=build.rs");

  let found = if source::requested() {
    source::build_from_source(&cache_dir())
  } else {
    find_mlx()
  };
  let prefix = match found {
    Ok(p) => p,
    Err(msg) => {
      // One readable message (cargo prints the build script's stderr), not
      // a panic and its backtrace hint.
      eprintln!("\nerror: mlxrs-sys: could not get MLX {MLX_VERSION}.\n{msg}\n");
      std::process::exit(1);
    }
  };
  let version = header_version(&prefix).unwrap_or_else(|_| MLX_VERSION.to_string());
  let include = prefix.join("include");
  let lib = prefix.join("lib");

  compile_c_layer(&include);

  let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
  let openblas = if target_os == "linux" && env::var("CARGO_FEATURE_OPENBLAS").is_ok() {
    find_openblas()
  } else {
    None
  };
  println!("cargo:rustc-link-search=native={}", lib.display());
  println!("cargo:rustc-link-lib=dylib=mlx");
  if target_os == "linux" {
    println!("cargo:rustc-link-lib=dylib=stdc++");
  } else if target_os == "macos" {
    println!("cargo:rustc-link-lib=dylib=c++");
  }
  // Binaries find libmlx without LD_LIBRARY_PATH (see mlxrs-build).
  let lib_s = lib.display().to_string();
  let blas_s = openblas.as_ref().map(|p| p.display().to_string());
  mlxrs_build::emit_link_args(&lib_s, blas_s.as_deref());
  if let Some(b) = &blas_s {
    println!("cargo:openblas_dir={b}");
  }
  println!("cargo:rustc-env=MLXRS_MLX_LIB_DIR={}", lib.display());
  println!("cargo:lib_dir={}", lib.display());
  println!("cargo:include_dir={}", include.display());
  println!("cargo:prefix={}", prefix.display());
  println!("cargo:version={version}");
}

fn find_openblas() -> Option<PathBuf> {
  if env::var("MLXRS_BLAS")
    .map(|v| v == "none" || v == "0")
    .unwrap_or(false)
  {
    println!("cargo:warning=mlxrs-sys: MLXRS_BLAS=none: using the wheel's reference BLAS");
    return None;
  }
  let mut dirs: Vec<PathBuf> = Vec::new();
  if let Ok(d) = env::var("MLXRS_OPENBLAS_DIR") {
    dirs.push(PathBuf::from(d));
  }
  dirs.extend(
    [
      "/usr/lib/x86_64-linux-gnu/openblas-pthread",
      "/usr/lib/aarch64-linux-gnu/openblas-pthread",
      "/usr/lib/x86_64-linux-gnu",
      "/usr/lib/aarch64-linux-gnu",
      "/usr/lib64",
      "/usr/lib",
      "/usr/local/lib",
    ]
    .iter()
    .map(PathBuf::from),
  );
  for d in dirs {
    if d.join("libopenblas.so.0").exists() {
      return Some(d);
    }
  }
  println!(
    "cargo:warning=mlxrs-sys: OpenBLAS not found; MLX's CPU matmul uses the wheel's reference \
     BLAS (slow). Install it (Debian/Ubuntu: apt-get install libopenblas-dev) and rebuild."
  );
  None
}

fn compile_c_layer(include: &Path) {
  let mut files: Vec<PathBuf> = std::fs::read_dir("csrc")
    .expect("csrc/ exists")
    .filter_map(|e| e.ok().map(|e| e.path()))
    .filter(|p| p.extension().map(|x| x == "cpp").unwrap_or(false))
    .collect();
  files.sort();
  let mut build = cc::Build::new();
  build
    .cpp(true)
    .std("c++20")
    .include("csrc")
    .include(include)
    .flag_if_supported("-fvisibility=hidden")
    .flag_if_supported("-Wno-unused-parameter")
    .flag_if_supported("-Wno-deprecated-declarations")
    .flag_if_supported("-Wno-psabi")
    .opt_level(2)
    .debug(false)
    .warnings(false);
  // Compile the translation units in parallel (up to cargo's `-j`): each
  // includes all of MLX's headers, and the generated op wrappers are split
  // into several files for this. cc's own `parallel` feature would need the
  // jobserver crate; threads over `compile_intermediates` do the same.
  let jobs: usize = env::var("NUM_JOBS")
    .ok()
    .and_then(|n| n.parse().ok())
    .unwrap_or(1)
    .max(1);
  let queue = std::sync::Mutex::new(files.clone());
  let objects = std::sync::Mutex::new(Vec::new());
  std::thread::scope(|scope| {
    for _ in 0..jobs.min(files.len()) {
      scope.spawn(|| {
        loop {
          let Some(f) = queue.lock().unwrap().pop() else {
            break;
          };
          let objs = build.clone().file(&f).compile_intermediates();
          objects.lock().unwrap().extend(objs);
        }
      });
    }
  });
  let mut objects = objects.into_inner().unwrap();
  objects.sort();
  build.objects(objects).compile("mlxrs_c");
}

// ------------------------------------------------------------------ finding

fn has_mlx(prefix: &Path) -> bool {
  prefix.join("include/mlx/version.h").exists()
    && (prefix.join("lib/libmlx.so").exists() || prefix.join("lib/libmlx.dylib").exists())
}

fn header_version(prefix: &Path) -> Result<String, String> {
  let path = prefix.join("include/mlx/version.h");
  let text =
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
  parse_version_h(&text, &path)
}

/// `MAJOR.MINOR.PATCH` from the text of an `mlx/version.h` at `path`.
fn parse_version_h(text: &str, path: &Path) -> Result<String, String> {
  let grab = |name: &str| -> Result<String, String> {
    text
      .lines()
      .find_map(|l| {
        let l = l.trim();
        l.strip_prefix("#define ")
          .and_then(|r| r.strip_prefix(name))
          .map(|v| v.trim().to_string())
      })
      .ok_or_else(|| format!("{} has no {name}", path.display()))
  };
  Ok(format!(
    "{}.{}.{}",
    grab("MLX_VERSION_MAJOR")?,
    grab("MLX_VERSION_MINOR")?,
    grab("MLX_VERSION_PATCH")?
  ))
}

fn find_mlx() -> Result<PathBuf, String> {
  // 1. MLX_DIR
  if let Ok(dir) = env::var("MLX_DIR") {
    let mut p = PathBuf::from(&dir);
    // Accept `<prefix>/share/cmake/MLX`.
    if !has_mlx(&p) && p.ends_with("share/cmake/MLX") {
      p = p.join("../../..");
    }
    if !has_mlx(&p) {
      return Err(format!(
        "MLX_DIR={dir} holds no include/mlx/version.h and lib/libmlx.*; point it at an MLX \
         install prefix (or its share/cmake/MLX), or unset it to let mlxrs install the wheel."
      ));
    }
    let v = header_version(&p)?;
    check_version(&v, &format!("MLX_DIR={dir}"))?;
    return Ok(p.canonicalize().unwrap_or(p));
  }
  let backend = backend();
  // 2. python3's mlx
  if backend != "cuda" {
    if let Some(p) = python_mlx() {
      match header_version(&p) {
        Ok(v) if v == MLX_VERSION => return Ok(p),
        Ok(v) => println!(
          "cargo:warning=mlxrs-sys: python's mlx at {} is {v}, not the pinned {MLX_VERSION}; \
           installing the pinned wheel instead",
          p.display()
        ),
        Err(_) => {}
      }
    }
  }
  // 3. the wheel in the cache folder
  install_wheel(&backend)
}

/// Compare the MLX version `found` (in `what`, e.g. `MLX_DIR=/x`) with the
/// pinned one: an error saying both, unless `MLXRS_MLX_VERSION_MISMATCH=allow`
/// turns it into a warning.
fn check_version(found: &str, what: &str) -> Result<(), String> {
  if found == MLX_VERSION {
    return Ok(());
  }
  let allow = env::var("MLXRS_MLX_VERSION_MISMATCH")
    .map(|v| v == "allow")
    .unwrap_or(false);
  if allow {
    println!(
      "cargo:warning=mlxrs-sys: {what} is MLX {found}, not the pinned {MLX_VERSION}; going on \
       because MLXRS_MLX_VERSION_MISMATCH=allow (the C layer is only tested against \
       {MLX_VERSION})"
    );
    return Ok(());
  }
  Err(format!(
    "{what} is MLX {found} (from its mlx/version.h), but mlxrs-sys is pinned to MLX \
     {MLX_VERSION}. Use MLX {MLX_VERSION} (git checkout v{MLX_VERSION}, or pip install \
     mlx-cpu=={MLX_VERSION}), or set MLXRS_MLX_VERSION_MISMATCH=allow to build against {found} \
     anyway."
  ))
}

fn backend() -> String {
  if env::var("CARGO_FEATURE_CUDA").is_ok() {
    return "cuda".into();
  }
  match env::var("MLXRS_BACKEND") {
    Ok(b) if !b.is_empty() => b,
    _ => {
      if env::var("CARGO_CFG_TARGET_OS").unwrap_or_default() == "macos" {
        "metal".into()
      } else {
        "cpu".into()
      }
    }
  }
}

fn python() -> String {
  env::var("MLXRS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_mlx() -> Option<PathBuf> {
  let out = Command::new(python())
    .args([
      "-c",
      "import importlib.util,os;s=importlib.util.find_spec('mlx');\
       print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')",
    ])
    .output()
    .ok()?;
  if !out.status.success() {
    return None;
  }
  let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
  if s.is_empty() {
    return None;
  }
  let p = PathBuf::from(s);
  has_mlx(&p).then_some(p)
}

fn cache_dir() -> PathBuf {
  if let Ok(d) = env::var("MLXRS_CACHE_DIR") {
    return PathBuf::from(d);
  }
  if let Ok(d) = env::var("XDG_CACHE_HOME") {
    return PathBuf::from(d).join("mlxrs");
  }
  if let Ok(h) = env::var("HOME") {
    return PathBuf::from(h).join(".cache/mlxrs");
  }
  PathBuf::from(env::var("OUT_DIR").unwrap()).join("mlxrs-cache")
}

fn install_wheel(backend: &str) -> Result<PathBuf, String> {
  let package = match backend {
    "cpu" => "mlx-cpu",
    "cuda" => "mlx-cuda-13",
    "metal" => "mlx-metal",
    other => {
      return Err(format!(
        "MLXRS_BACKEND={other} is not one of cpu, cuda, metal"
      ));
    }
  };
  let target = cache_dir().join(format!("{package}-{MLX_VERSION}"));
  let prefix = target.join("mlx");
  if has_mlx(&prefix) {
    return Ok(prefix);
  }
  std::fs::create_dir_all(cache_dir())
    .map_err(|e| format!("cannot create {}: {e}", cache_dir().display()))?;
  // Install into a temporary sibling then rename, so an interrupted install
  // never leaves a half-written prefix that looks valid.
  let tmp = cache_dir().join(format!(".{package}-{MLX_VERSION}.{}", std::process::id()));
  let _ = std::fs::remove_dir_all(&tmp);
  let status = Command::new(python())
    .args([
      "-m",
      "pip",
      "install",
      "--quiet",
      "--disable-pip-version-check",
      "--no-deps",
    ])
    .arg("--target")
    .arg(&tmp)
    .arg(format!("{package}=={MLX_VERSION}"))
    .status()
    .map_err(|e| {
      format!(
        "cannot run `{} -m pip`: {e}. Install python3 with pip, or set MLX_DIR.",
        python()
      )
    })?;
  if !status.success() || !has_mlx(&tmp.join("mlx")) {
    let _ = std::fs::remove_dir_all(&tmp);
    return Err(format!(
      "`{} -m pip install --target {} {package}=={MLX_VERSION}` failed. Linux wheels need \
       glibc >= 2.35. Alternatives: set MLX_DIR to an MLX {MLX_VERSION} prefix.",
      python(),
      target.display()
    ));
  }
  if std::fs::rename(&tmp, &target).is_err() {
    // Another build won the race; use its copy.
    let _ = std::fs::remove_dir_all(&tmp);
  }
  if has_mlx(&prefix) {
    Ok(prefix)
  } else {
    Err(format!(
      "installed wheel at {} has no libmlx",
      target.display()
    ))
  }
}
