//! MLX built from source with CMake (the `source` feature or
//! `MLXRS_MLX_SRC=/path/to/mlx`), the alternative to the official wheels.
//!
//! The build goes to a cache folder keyed by MLX version, backend and a hash
//! of everything that changes the build (source path, options, compilers,
//! `FETCHCONTENT_*` overrides):
//! `$MLXRS_CACHE_DIR/mlx-src-build/<version>-<backend>-<hash>`, so
//! `cargo clean` does not throw away an hour of C++ compilation. The folder
//! is the install prefix (`include/`, `lib/libmlx.so`); CMake's own build
//! tree is in its `build/` sub-folder, and a rebuild after a source change is
//! incremental.
//!
//! Included into `build.rs` with `#[path]`; it shares that file's helpers.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment read by the source build (all `rerun-if-env-changed`).
pub const SOURCE_ENV: &[&str] = &[
  "MLXRS_MLX_SRC",
  "MLX_BUILD_CPU",
  "MLX_BUILD_CUDA",
  "MLX_BUILD_METAL",
  "MLXRS_MLX_BUILD_TYPE",
  "MLXRS_MLX_CMAKE_ARGS",
  "CMAKE",
  "CMAKE_GENERATOR",
  "CXX",
  "CC",
  "CUDA_HOME",
  "CUDA_PATH",
  "NUM_JOBS",
];

/// Whether the source build is asked for: the `source` feature or
/// `MLXRS_MLX_SRC` set.
pub fn requested() -> bool {
  env::var_os("CARGO_FEATURE_SOURCE").is_some()
    || env::var_os("MLXRS_MLX_SRC").is_some_and(|v| !v.is_empty())
}

/// The backend switches, as MLX's CMake options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backends {
  cpu: bool,
  cuda: bool,
  metal: bool,
}

impl Backends {
  /// The short name used in the cache folder and messages.
  fn label(&self) -> &'static str {
    if self.cuda {
      "cuda"
    } else if self.metal {
      "metal"
    } else {
      "cpu"
    }
  }
}

/// `ON`/`OFF` (and 1/0, true/false, yes/no) from an env var; `None` when
/// unset, an error naming the variable on anything else.
fn env_switch(name: &str) -> Result<Option<bool>, String> {
  match env::var(name) {
    Err(_) => Ok(None),
    Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
      "" => Ok(None),
      "on" | "1" | "true" | "yes" => Ok(Some(true)),
      "off" | "0" | "false" | "no" => Ok(Some(false)),
      _ => Err(format!("{name}={v} is not ON or OFF")),
    },
  }
}

/// Backends from the `cuda` feature and `MLX_BUILD_*`: Metal on macOS, CUDA
/// with the `cuda` feature, the CPU backend elsewhere (and always, unless
/// `MLX_BUILD_CPU=OFF`).
fn backends() -> Result<Backends, String> {
  let macos = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default() == "macos";
  let cuda_feature = env::var_os("CARGO_FEATURE_CUDA").is_some();
  let b = Backends {
    cpu: env_switch("MLX_BUILD_CPU")?.unwrap_or(true),
    cuda: env_switch("MLX_BUILD_CUDA")?.unwrap_or(cuda_feature),
    metal: env_switch("MLX_BUILD_METAL")?.unwrap_or(macos),
  };
  if b.metal && !macos {
    return Err("MLX_BUILD_METAL=ON needs macOS (Metal is Apple's GPU API)".into());
  }
  if b.metal && b.cuda {
    return Err("MLX_BUILD_METAL and MLX_BUILD_CUDA are both ON; pick one GPU backend".into());
  }
  if !b.cpu && !b.cuda && !b.metal {
    return Err("MLX_BUILD_CPU, MLX_BUILD_CUDA and MLX_BUILD_METAL are all OFF".into());
  }
  Ok(b)
}

/// 64-bit FNV-1a: a hash that stays the same across Rust releases (unlike
/// `DefaultHasher`), for the cache key.
fn fnv1a(parts: &[String]) -> u64 {
  let mut h: u64 = 0xcbf2_9ce4_8422_2325;
  for p in parts {
    for b in p.bytes().chain(std::iter::once(0u8)) {
      h ^= u64::from(b);
      h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
  }
  h
}

/// The version a source tree declares in `mlx/version.h`.
fn source_version(src: &Path) -> Result<String, String> {
  // `header_version` reads `<prefix>/include/mlx/version.h`; a source tree
  // has `mlx/version.h` at its root.
  let path = src.join("mlx/version.h");
  let text =
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
  super::parse_version_h(&text, &path)
}

/// `cmake --version` as (major, minor), or the error naming what to install.
fn cmake_version(cmake: &str) -> Result<(u32, u32), String> {
  let install = "Install CMake >= 3.25 (Debian/Ubuntu: apt-get install cmake; macOS: brew install \
                 cmake; or pip install cmake), or set CMAKE=/path/to/cmake.";
  let out = Command::new(cmake)
    .arg("--version")
    .output()
    .map_err(|e| format!("cannot run `{cmake} --version`: {e}. {install}"))?;
  let text = String::from_utf8_lossy(&out.stdout);
  let v = text
    .lines()
    .next()
    .and_then(|l| l.rsplit(' ').next())
    .unwrap_or("");
  let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
  match (it.next().flatten(), it.next().flatten()) {
    (Some(a), Some(b)) => Ok((a, b)),
    _ => Err(format!(
      "`{cmake} --version` printed no version ({text:?}). {install}"
    )),
  }
}

/// The minimum CMake version MLX's CMakeLists.txt asks for.
fn cmake_minimum(src: &Path) -> Option<(u32, u32)> {
  let text = std::fs::read_to_string(src.join("CMakeLists.txt")).ok()?;
  let line = text
    .lines()
    .find(|l| l.trim_start().starts_with("cmake_minimum_required"))?;
  let v = line.split("VERSION").nth(1)?.trim().trim_end_matches(')');
  let v = v.split("...").next()?.trim();
  let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
  Some((it.next().flatten()?, it.next().flatten().unwrap_or(0)))
}

/// The C++ compiler cc/cmake will use, checked to run.
fn check_cxx() -> Result<String, String> {
  let cxx = cc::Build::new()
    .cpp(true)
    .cargo_metadata(false)
    .try_get_compiler()
    .map_err(|e| format!("no C++ compiler found ({e})"))?;
  let path = cxx.path().display().to_string();
  let ok = Command::new(cxx.path())
    .arg("--version")
    .output()
    .map(|o| o.status.success())
    .unwrap_or(false);
  if !ok {
    return Err(format!(
      "the C++ compiler `{path}` does not run. Install a C++20 compiler (Debian/Ubuntu: apt-get \
       install g++; macOS: xcode-select --install), or set CXX."
    ));
  }
  Ok(path)
}

/// Any of `names` in any of `dirs`.
fn any_file(dirs: &[PathBuf], names: &[&str]) -> bool {
  dirs
    .iter()
    .any(|d| names.iter().any(|n| d.join(n).exists()))
}

/// Linux CPU backend: MLX's CMake needs BLAS and LAPACK libraries and the
/// `cblas.h` / `lapacke.h` headers.
fn check_blas_lapack() -> Result<(), String> {
  let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
  let multiarch = format!("{arch}-linux-gnu");
  let mut inc: Vec<PathBuf> = [
    "/usr/include",
    "/usr/local/include",
    "/usr/include/openblas",
  ]
  .iter()
  .map(PathBuf::from)
  .collect();
  inc.push(PathBuf::from("/usr/include").join(&multiarch));
  let mut lib: Vec<PathBuf> = ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
    .iter()
    .map(PathBuf::from)
    .collect();
  lib.push(PathBuf::from("/usr/lib").join(&multiarch));
  for var in ["BLAS_HOME", "LAPACK_ROOT"] {
    if let Ok(d) = env::var(var) {
      inc.push(PathBuf::from(&d).join("include"));
      lib.push(PathBuf::from(&d).join("lib"));
    }
  }
  let mut missing = Vec::new();
  if !any_file(&inc, &["cblas.h"]) {
    missing.push("cblas.h");
  }
  if !any_file(&inc, &["lapacke.h"]) {
    missing.push("lapacke.h");
  }
  if !any_file(
    &lib,
    &["libblas.so", "libopenblas.so", "libblas.a", "libopenblas.a"],
  ) {
    missing.push("a BLAS library (libblas.so / libopenblas.so)");
  }
  if !any_file(&lib, &["liblapack.so", "libopenblas.so", "liblapack.a"]) {
    missing.push("a LAPACK library (liblapack.so)");
  }
  if missing.is_empty() {
    return Ok(());
  }
  Err(format!(
    "MLX's CPU backend needs BLAS and LAPACK development files; not found: {}. Install them \
     (Debian/Ubuntu: apt-get install libopenblas-dev liblapacke-dev; Fedora: dnf install \
     openblas-devel lapack-devel), or set BLAS_HOME / LAPACK_ROOT to their prefix.",
    missing.join(", ")
  ))
}

/// CUDA backend: `nvcc` from `CUDA_HOME`/`CUDA_PATH`, `/usr/local/cuda` or
/// the PATH.
fn check_cuda() -> Result<(), String> {
  let mut candidates: Vec<PathBuf> = Vec::new();
  for var in ["CUDA_HOME", "CUDA_PATH"] {
    if let Ok(d) = env::var(var) {
      candidates.push(PathBuf::from(d).join("bin/nvcc"));
    }
  }
  candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
  candidates.push(PathBuf::from("nvcc"));
  for c in candidates {
    if Command::new(&c)
      .arg("--version")
      .output()
      .map(|o| o.status.success())
      .unwrap_or(false)
    {
      return Ok(());
    }
  }
  Err(
    "MLX_BUILD_CUDA=ON (or the `cuda` feature) needs the CUDA toolkit (nvcc) and cuDNN; neither \
     CUDA_HOME, /usr/local/cuda nor the PATH has nvcc. Install the CUDA toolkit and cuDNN \
     (Debian/Ubuntu with NVIDIA's repository: apt-get install cuda-toolkit cudnn9-cuda-12 \
     libnccl-dev) and set CUDA_HOME, or use the mlx-cuda-13 wheel (unset MLXRS_MLX_SRC)."
      .into(),
  )
}

/// `FETCHCONTENT_*` variables from the environment, passed to CMake as
/// defines: `FETCHCONTENT_SOURCE_DIR_<NAME>=/path` points a dependency MLX
/// downloads (json, fmt, gguflib, metal_cpp, nanobind) at a local copy, and
/// `FETCHCONTENT_FULLY_DISCONNECTED=ON` forbids downloads; this is how an
/// offline machine builds MLX.
fn fetchcontent_defines() -> Vec<(String, String)> {
  let mut v: Vec<(String, String)> = env::vars()
    .filter(|(k, _)| k.starts_with("FETCHCONTENT_"))
    .collect();
  v.sort();
  v
}

/// Extra `-D` options from `MLXRS_MLX_CMAKE_ARGS` (`NAME=VALUE`, separated
/// by whitespace or `;`).
fn extra_defines() -> Result<Vec<(String, String)>, String> {
  let raw = env::var("MLXRS_MLX_CMAKE_ARGS").unwrap_or_default();
  let mut out = Vec::new();
  for item in raw.split(|c: char| c.is_whitespace() || c == ';') {
    let item = item.trim();
    if item.is_empty() {
      continue;
    }
    let item = item.strip_prefix("-D").unwrap_or(item);
    let Some((k, v)) = item.split_once('=') else {
      return Err(format!(
        "MLXRS_MLX_CMAKE_ARGS: `{item}` is not NAME=VALUE (e.g. MLX_METAL_JIT=ON)"
      ));
    };
    out.push((k.to_string(), v.to_string()));
  }
  Ok(out)
}

/// A lock folder (`mkdir` is atomic) holding the owner's pid: released on
/// drop; taken over when its owner is gone (a killed build: no
/// `/proc/<pid>` on Linux, or older than 4 hours elsewhere). `File::lock`
/// would need Rust 1.89, above this crate's MSRV.
struct DirLock(PathBuf);

impl DirLock {
  fn acquire(path: &Path) -> Result<DirLock, String> {
    let start = std::time::Instant::now();
    loop {
      match std::fs::create_dir(path) {
        Ok(()) => {
          let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
          return Ok(DirLock(path.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
          if Self::stale(path) {
            let _ = std::fs::remove_dir_all(path);
            continue;
          }
          if start.elapsed() > std::time::Duration::from_secs(4 * 3600) {
            return Err(format!(
              "{} is held by another MLX build for 4 hours; remove it if no build is running",
              path.display()
            ));
          }
          std::thread::sleep(std::time::Duration::from_secs(2));
        }
        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
      }
    }
  }

  fn stale(path: &Path) -> bool {
    let pid = std::fs::read_to_string(path.join("pid")).unwrap_or_default();
    let proc = Path::new("/proc");
    if proc.is_dir() && !pid.trim().is_empty() {
      return !proc.join(pid.trim()).exists();
    }
    std::fs::metadata(path)
      .and_then(|m| m.modified())
      .ok()
      .and_then(|t| t.elapsed().ok())
      .is_some_and(|age| age > std::time::Duration::from_secs(4 * 3600))
  }
}

impl Drop for DirLock {
  fn drop(&mut self) {
    let _ = std::fs::remove_dir_all(&self.0);
  }
}

/// Build MLX from the source tree in `MLXRS_MLX_SRC` and return the install
/// prefix (holding `include/mlx/version.h` and `lib/libmlx.*`), or a
/// readable error naming what is missing.
pub fn build_from_source(cache: &Path) -> Result<PathBuf, String> {
  let Some(src) = env::var_os("MLXRS_MLX_SRC").filter(|v| !v.is_empty()) else {
    return Err(
      "the `source` feature builds MLX from a source checkout, but MLXRS_MLX_SRC is not set. \
       PyPI has no source distribution of MLX: clone it (git clone --branch v{VERSION} \
       https://github.com/ml-explore/mlx) and set MLXRS_MLX_SRC to that folder."
        .replace("{VERSION}", super::MLX_VERSION),
    );
  };
  let src = PathBuf::from(src);
  if !src.join("CMakeLists.txt").is_file() || !src.join("mlx/version.h").is_file() {
    return Err(format!(
      "MLXRS_MLX_SRC={} is not an MLX source tree (no CMakeLists.txt and mlx/version.h there)",
      src.display()
    ));
  }
  let src = src.canonicalize().unwrap_or(src);
  println!(
    "cargo:rerun-if-changed={}",
    src.join("mlx/version.h").display()
  );
  let version = source_version(&src)?;
  // Refuse a mismatching tree before spending an hour compiling it.
  super::check_version(&version, &format!("MLXRS_MLX_SRC={}", src.display()))?;

  let backends = backends()?;
  let cmake = env::var("CMAKE").unwrap_or_else(|_| "cmake".into());
  let have = cmake_version(&cmake)?;
  if let Some(need) = cmake_minimum(&src) {
    if have < need {
      return Err(format!(
        "MLX {version} needs CMake >= {}.{}, `{cmake}` is {}.{}. Install a newer one (pip install \
         cmake, or Kitware's apt repository) and set CMAKE=/path/to/cmake.",
        need.0, need.1, have.0, have.1
      ));
    }
  }
  let cxx = check_cxx()?;
  let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
  if backends.cpu && target_os == "linux" {
    check_blas_lapack()?;
  }
  if backends.cuda {
    check_cuda()?;
  }

  let build_type = env::var("MLXRS_MLX_BUILD_TYPE").unwrap_or_else(|_| "Release".into());
  let on = |b: bool| if b { "ON" } else { "OFF" }.to_string();
  let mut defines: Vec<(String, String)> = vec![
    ("MLX_BUILD_CPU".into(), on(backends.cpu)),
    ("MLX_BUILD_CUDA".into(), on(backends.cuda)),
    ("MLX_BUILD_METAL".into(), on(backends.metal)),
    ("MLX_BUILD_TESTS".into(), "OFF".into()),
    ("MLX_BUILD_EXAMPLES".into(), "OFF".into()),
    ("MLX_BUILD_BENCHMARKS".into(), "OFF".into()),
    ("MLX_BUILD_PYTHON_BINDINGS".into(), "OFF".into()),
    ("MLX_BUILD_PYTHON_STUBS".into(), "OFF".into()),
    ("BUILD_SHARED_LIBS".into(), "ON".into()),
    ("CMAKE_INSTALL_LIBDIR".into(), "lib".into()),
  ];
  defines.extend(fetchcontent_defines());
  defines.extend(extra_defines()?);

  let mut key = vec![
    src.display().to_string(),
    version.clone(),
    build_type.clone(),
    cxx.clone(),
    env::var("CC").unwrap_or_default(),
    env::var("CMAKE_GENERATOR").unwrap_or_default(),
    env::var("TARGET").unwrap_or_default(),
  ];
  key.extend(defines.iter().map(|(k, v)| format!("{k}={v}")));
  let dir = cache.join("mlx-src-build").join(format!(
    "{version}-{}-{:016x}",
    backends.label(),
    fnv1a(&key)
  ));
  std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
  println!(
    "cargo:warning=mlxrs-sys: building MLX {version} ({} backend, {build_type}) from {} into {} \
     (the first build takes a while; later ones reuse it)",
    backends.label(),
    src.display(),
    dir.display()
  );

  // One build at a time per cache folder: a second cargo (another target dir
  // or workspace) waits here instead of racing on CMake's build tree.
  let lock = DirLock::acquire(&dir.join(".lock"))?;

  let mut cfg = cmake::Config::new(&src);
  cfg
    .out_dir(&dir)
    // Fixed flags (not cargo's profile's) so debug and release builds of
    // mlxrs share one MLX build.
    .no_default_flags(true)
    .profile(&build_type);
  for (k, v) in &defines {
    cfg.define(k, v);
  }
  // The cmake crate reports a failed command by panicking; turn that into
  // one message pointing at the log instead of a backtrace.
  let prev_hook = std::panic::take_hook();
  std::panic::set_hook(Box::new(|_| {}));
  let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.build()));
  std::panic::set_hook(prev_hook);
  drop(lock);
  let prefix = match built {
    Ok(p) => p,
    Err(e) => {
      let what = e
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| e.downcast_ref::<&str>().copied())
        .unwrap_or("cmake failed")
        .trim()
        .to_string();
      return Err(format!(
        "building MLX {version} from {} with CMake failed: {what}\nCMake's output is above \
         (cargo shows it with -vv); its build tree is {}. Offline? MLX's CMake downloads nlohmann \
         json, fmt and gguf-tools: point FETCHCONTENT_SOURCE_DIR_JSON, FETCHCONTENT_SOURCE_DIR_FMT \
         and FETCHCONTENT_SOURCE_DIR_GGUFLIB at local checkouts (see docs/mlx-builds.md).",
        src.display(),
        dir.join("build").display()
      ));
    }
  };
  if !super::has_mlx(&prefix) {
    return Err(format!(
      "the CMake build of MLX finished but {} has no include/mlx/version.h and lib/libmlx.*",
      prefix.display()
    ));
  }
  Ok(prefix)
}
