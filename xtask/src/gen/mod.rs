//! `cargo run -p xtask -- gen`: the op bindings, generated from MLX's
//! headers.
//!
//! Reads the `MLX_API` declarations of `ops.h`, `fast.h`, `fft.h`,
//! `linalg.h` and `random.h` (plus the header-`inline` helpers mlx-c binds)
//! and writes:
//!
//! - `crates/mlxrs-sys/csrc/mlxrs_c_gen.h`: C declarations, mlx-c's names and
//!   signatures;
//! - `crates/mlxrs-sys/csrc/gen_*.cpp`: their C++ wrappers (several files so
//!   they compile in parallel);
//! - `crates/mlxrs-core/src/<module>/generated.rs`: safe Rust wrappers;
//! - `docs/coverage.md`: what is bound, for those headers and for
//!   `transforms.h`, `io.h`, `memory.h` and `distributed/`.
//!
//! Output depends only on the headers and the repository (deterministic).
//! Naming rules and the override table: [`select`].

pub mod coverage;
pub mod emit_c;
pub mod emit_rs;
pub mod parse;
pub mod select;
pub mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use self::select::Binding;

/// The MLX release whose headers the generator reads by default.
pub const MLX_VERSION: &str = "0.32.4";

/// Headers whose functions are generated: (path below `mlx/`, namespace).
pub const GEN_HEADERS: &[(&str, &str)] = &[
  ("ops.h", ""),
  ("fast.h", "fast"),
  ("fft.h", "fft"),
  ("linalg.h", "linalg"),
  ("random.h", "random"),
];

/// Headers only reported in the coverage document.
pub const OTHER_HEADERS: &[(&str, &str)] = &[
  ("transforms.h", ""),
  ("io.h", ""),
  ("memory.h", ""),
  ("distributed/ops.h", "distributed"),
  ("distributed/distributed.h", "distributed"),
  ("compile.h", ""),
  ("export.h", ""),
  ("einsum.h", ""),
];

/// Where MLX's headers are: `MLX_INCLUDE_DIR`, else the wheel that
/// mlxrs-sys's build script installs into the mlxrs cache folder
/// (`$MLXRS_CACHE_DIR`, `$XDG_CACHE_HOME/mlxrs` or `~/.cache/mlxrs`).
pub fn include_dir() -> Result<PathBuf> {
  if let Some(d) = std::env::var_os("MLX_INCLUDE_DIR") {
    let d = PathBuf::from(d);
    if !d.join("mlx/ops.h").exists() {
      bail!("MLX_INCLUDE_DIR={} has no mlx/ops.h", d.display());
    }
    return Ok(d);
  }
  let cache = if let Some(d) = std::env::var_os("MLXRS_CACHE_DIR") {
    PathBuf::from(d)
  } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
    PathBuf::from(d).join("mlxrs")
  } else if let Some(h) = std::env::var_os("HOME") {
    PathBuf::from(h).join(".cache/mlxrs")
  } else {
    bail!("cannot locate MLX headers: set MLX_INCLUDE_DIR");
  };
  for pkg in ["mlx-cpu", "mlx-metal", "mlx-cuda-13"] {
    let d = cache.join(format!("{pkg}-{MLX_VERSION}/mlx/include"));
    if d.join("mlx/ops.h").exists() {
      return Ok(d);
    }
  }
  bail!(
    "MLX {MLX_VERSION} headers not found under {} (build mlxrs-sys once to install the wheel, or \
     set MLX_INCLUDE_DIR to a folder holding mlx/ops.h)",
    cache.display()
  )
}

fn header_version(include: &Path) -> Result<String> {
  let path = include.join("mlx/version.h");
  let text =
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
  let grab = |name: &str| -> Result<String> {
    text
      .lines()
      .find_map(|l| {
        l.trim()
          .strip_prefix("#define ")
          .and_then(|r| r.strip_prefix(name))
          .map(|v| v.trim().to_string())
      })
      .with_context(|| format!("{} has no {name}", path.display()))
  };
  Ok(format!(
    "{}.{}.{}",
    grab("MLX_VERSION_MAJOR")?,
    grab("MLX_VERSION_MINOR")?,
    grab("MLX_VERSION_PATCH")?
  ))
}

/// The enumerators of `enum class FFTNorm` in fft.h.
fn fft_norms(text: &str) -> Result<Vec<String>> {
  let start = text
    .find("enum class FFTNorm")
    .context("fft.h has no `enum class FFTNorm`")?;
  let open = start + text[start..].find('{').context("FFTNorm: no `{`")?;
  let close = open + text[open..].find('}').context("FFTNorm: no `}`")?;
  Ok(
    text[open + 1..close]
      .split(',')
      .map(|s| s.split('=').next().unwrap().trim().to_string())
      .filter(|s| !s.is_empty())
      .collect(),
  )
}

fn is_generated(text: &str) -> bool {
  text
    .lines()
    .next()
    .is_some_and(|l| l.contains("@generated"))
}

/// `mlx_*` / `mlxrs_*` functions defined (`extern "C"`) in the hand-written
/// `csrc/*.cpp` files: symbol -> file name.
fn hand_written_symbols(csrc: &Path) -> Result<BTreeMap<String, String>> {
  let mut out = BTreeMap::new();
  let mut files: Vec<PathBuf> = std::fs::read_dir(csrc)
    .with_context(|| format!("reading {}", csrc.display()))?
    .filter_map(|e| e.ok().map(|e| e.path()))
    .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
    .collect();
  files.sort();
  for f in files {
    let text = std::fs::read_to_string(&f)?;
    if is_generated(&text) {
      continue;
    }
    let name = f.file_name().unwrap().to_string_lossy().to_string();
    for (at, _) in text.match_indices("extern \"C\"") {
      let rest = &text[at + "extern \"C\"".len()..];
      let Some(paren) = rest.find('(') else {
        continue;
      };
      let head = &rest[..paren];
      if head.contains(';') || head.contains('{') {
        continue;
      }
      let sym = head
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("");
      if sym.starts_with("mlx_") || sym.starts_with("mlxrs_") {
        out.entry(sym.to_string()).or_insert(name.clone());
      }
    }
  }
  Ok(out)
}

/// Rust functions of mlxrs-core calling each of `symbols`.
fn rust_users(
  core_src: &Path,
  symbols: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<String>>> {
  let mut files = Vec::new();
  let mut stack = vec![core_src.to_path_buf()];
  while let Some(d) = stack.pop() {
    for e in std::fs::read_dir(&d)? {
      let p = e?.path();
      if p.is_dir() {
        stack.push(p);
      } else if p.extension().is_some_and(|x| x == "rs") {
        files.push(p);
      }
    }
  }
  files.sort();
  let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
  for f in files {
    let text = std::fs::read_to_string(&f)?;
    if is_generated(&text) {
      continue;
    }
    let rel = f.strip_prefix(core_src).unwrap().with_extension("");
    let mut module: Vec<String> = rel
      .iter()
      .map(|c| c.to_string_lossy().to_string())
      .collect();
    if module.last().is_some_and(|m| m == "mod" || m == "lib") {
      module.pop();
    }
    // Test code does not count.
    let body = text.split("#[cfg(test)]").next().unwrap();
    for sym in symbols.keys() {
      let pat = format!("mlxrs_sys::{sym}(");
      // Direct calls, and `name => mlx_sym` arguments of wrapper-defining
      // macros.
      let arrow = format!("=> {sym}");
      let mut hits: Vec<(usize, Option<String>)> =
        body.match_indices(&pat).map(|(at, _)| (at, None)).collect();
      for (at, _) in body.match_indices(&arrow) {
        let end = at + arrow.len();
        if body[end..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
          continue;
        }
        let name: String = body[..at]
          .trim_end()
          .chars()
          .rev()
          .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
          .collect::<Vec<_>>()
          .into_iter()
          .rev()
          .collect();
        if !name.is_empty() {
          hits.push((at, Some(name)));
        }
      }
      for (at, macro_name) in hits {
        let before = &body[..at];
        let name = match macro_name {
          Some(n) => n,
          None => {
            let Some(fn_at) = enclosing_fn(before) else {
              continue;
            };
            before[fn_at + 3..]
              .chars()
              .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
              .collect()
          }
        };
        let mut path = vec!["mlxrs_core".to_string()];
        path.extend(module.iter().cloned());
        // `impl` methods: name the type.
        let impl_at = before.rfind("\nimpl");
        let item_at = before.rfind("\npub fn").max(before.rfind("\nfn"));
        if let Some(i) = impl_at
          && item_at.is_none_or(|f| i > f)
        {
          let ty = impl_type(&before[i + 1..]);
          if !ty.is_empty() {
            path.push(ty);
          }
        }
        path.push(name);
        let p = format!("`{}`", path.join("::"));
        let v = out.entry(sym.clone()).or_default();
        if !v.contains(&p) {
          v.push(p);
        }
      }
    }
  }
  Ok(out)
}

/// Where the `fn ` of the item enclosing the end of `before` starts: the
/// last `fn` declared at indentation 0 (a free function) or 2 (a method),
/// so helpers nested inside a function body (indented further) are skipped.
fn enclosing_fn(before: &str) -> Option<usize> {
  before.rmatch_indices("fn ").map(|(at, _)| at).find(|&at| {
    let line_start = before[..at].rfind('\n').map_or(0, |i| i + 1);
    let head = &before[line_start..at];
    let indent = head.len() - head.trim_start().len();
    let rest = head.trim_start();
    indent <= 2
      && [
        "",
        "pub ",
        "pub(crate) ",
        "unsafe ",
        "pub unsafe ",
        "const ",
        "pub const ",
      ]
      .contains(&rest)
  })
}

/// `impl Foo {...` / `impl Trait for Foo {...` -> `Foo`.
fn impl_type(text: &str) -> String {
  let head = text
    .trim_start_matches("impl")
    .split('{')
    .next()
    .unwrap_or("");
  let last = head.split_whitespace().last().unwrap_or("");
  last.split('<').next().unwrap().to_string()
}

/// Every generated file: (path relative to the repository root, contents).
pub fn generate(root: &Path) -> Result<Vec<(PathBuf, String)>> {
  let include = include_dir()?;
  let version = header_version(&include)?;
  let mlx = include.join("mlx");
  let csrc = root.join("crates/mlxrs-sys/csrc");
  let hand = hand_written_symbols(&csrc)?;

  let mut decls = Vec::new();
  let mut norms = Vec::new();
  for (h, ns) in GEN_HEADERS {
    let text = std::fs::read_to_string(mlx.join(h)).with_context(|| format!("reading {h}"))?;
    decls.extend(parse::parse_header(h, ns, &text)?);
    if *h == "fft.h" {
      norms = fft_norms(&text)?;
    }
  }
  let mut other = Vec::new();
  for (h, ns) in OTHER_HEADERS {
    let text = std::fs::read_to_string(mlx.join(h)).with_context(|| format!("reading {h}"))?;
    other.extend(
      parse::parse_header(h, ns, &text)?
        .into_iter()
        .filter(|d| d.exported),
    );
  }
  let (bindings, status) = select::select(&decls, &hand)?;

  let by_ns = |ns: &str| -> Vec<&Binding> { bindings.iter().filter(|b| b.decl.ns == ns).collect() };
  let mut files = Vec::new();

  // C header.
  let sections: Vec<(&str, Vec<&Binding>)> =
    GEN_HEADERS.iter().map(|(h, ns)| (*h, by_ns(ns))).collect();
  files.push((
    PathBuf::from("crates/mlxrs-sys/csrc/mlxrs_c_gen.h"),
    emit_c::header(&version, &norms, &sections),
  ));

  // C++: ops in two halves, the other namespaces together.
  let ops = by_ns("");
  let (a, b) = ops.split_at(ops.len().div_ceil(2));
  let rest: Vec<&Binding> = GEN_HEADERS[1..]
    .iter()
    .flat_map(|(_, ns)| by_ns(ns))
    .collect();
  for (name, what, bs) in [
    ("gen_ops_a.cpp", "ops.h (first half)", a.to_vec()),
    ("gen_ops_b.cpp", "ops.h (second half)", b.to_vec()),
    (
      "gen_fast_fft_linalg_random.cpp",
      "fast.h, fft.h, linalg.h and random.h",
      rest,
    ),
  ] {
    files.push((
      PathBuf::from(format!("crates/mlxrs-sys/csrc/{name}")),
      emit_c::cpp_file(&version, what, &bs, &norms),
    ));
  }

  // Rust.
  for (_, ns) in GEN_HEADERS {
    let m = emit_rs::module(ns);
    let bs: Vec<&Binding> = by_ns(ns)
      .into_iter()
      .filter(|b| !select::NO_RUST.iter().any(|(c, _)| *c == b.c_name))
      .collect();
    files.push((
      PathBuf::from(format!("crates/mlxrs-core/src/{m}/generated.rs")),
      emit_rs::module_file(m, &bs, &norms, &version),
    ));
  }

  // Coverage.
  let users = rust_users(&root.join("crates/mlxrs-core/src"), &hand)?;
  let hand_info: BTreeMap<String, coverage::HandWritten> = hand
    .iter()
    .map(|(k, f)| {
      (
        k.clone(),
        coverage::HandWritten {
          file: f.clone(),
          rust: users.get(k).cloned().unwrap_or_default(),
        },
      )
    })
    .collect();
  let headers: Vec<&str> = GEN_HEADERS
    .iter()
    .chain(OTHER_HEADERS)
    .map(|(h, _)| *h)
    .collect();
  files.push((
    PathBuf::from("docs/coverage.md"),
    coverage::render(&version, &headers, &status, &other, &hand_info),
  ));
  Ok(files)
}

/// Generated files on disk that the generator no longer writes (a
/// `csrc/gen_*.cpp` carrying the `@generated` banner).
pub fn obsolete(root: &Path, files: &[(PathBuf, String)]) -> Result<Vec<PathBuf>> {
  let csrc = root.join("crates/mlxrs-sys/csrc");
  let mut out = Vec::new();
  for e in std::fs::read_dir(&csrc)? {
    let p = e?.path();
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    if name.starts_with("gen_") && name.ends_with(".cpp") {
      let rel = PathBuf::from("crates/mlxrs-sys/csrc").join(&name);
      let text = std::fs::read_to_string(&p).unwrap_or_default();
      if is_generated(&text) && !files.iter().any(|(f, _)| *f == rel) {
        out.push(rel);
      }
    }
  }
  out.sort();
  Ok(out)
}
