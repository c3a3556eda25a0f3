//! The safe Rust wrappers (`crates/mlxrs-core/src/<module>/generated.rs`).

use std::fmt::Write;

use super::emit_c::summary;
use super::select::Binding;
use super::types::{Kind, Ret};

const KEYWORDS: &[&str] = &[
  "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
  "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
  "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "try",
  "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
  "override", "priv", "typeof", "unsized", "virtual", "yield",
];

/// A Rust identifier for a C++ name: snake case, `_` suffix on keywords.
pub fn ident(n: &str) -> String {
  let mut s = String::new();
  let b: Vec<char> = n.chars().collect();
  for (i, &c) in b.iter().enumerate() {
    if c.is_ascii_uppercase() {
      let prev_lower = i > 0 && (b[i - 1].is_ascii_lowercase() || b[i - 1].is_ascii_digit());
      if prev_lower {
        s.push('_');
      }
      s.push(c.to_ascii_lowercase());
    } else {
      s.push(c);
    }
  }
  if KEYWORDS.contains(&s.as_str()) {
    s.push('_');
  }
  s
}

/// The Rust module of a namespace.
pub fn module(ns: &str) -> &'static str {
  match ns {
    "" => "ops",
    "fast" => "fast",
    "fft" => "fft",
    "linalg" => "linalg",
    "random" => "random",
    other => panic!("no Rust module for namespace {other:?}"),
  }
}

/// The python spelling: `mx.sum(a, axis=..., keepdims=...)`.
fn python(b: &Binding) -> String {
  let d = &b.decl;
  let ns = if d.ns.is_empty() {
    String::new()
  } else {
    format!("{}.", d.ns)
  };
  let mut args = Vec::new();
  let mut first = true;
  for (p, k) in d.params.iter().zip(&b.kinds) {
    if *k == Kind::Stream || b.fixed.iter().any(|(n, _)| *n == p.name) {
      continue;
    }
    let n = ident(&p.name);
    let n = n.trim_end_matches('_');
    // Python's core ops take `axis=` for one axis or a list.
    let n = if n == "axes" && d.ns.is_empty() && d.name != "transpose" {
      "axis"
    } else {
      n
    };
    if first && matches!(k, Kind::Array | Kind::Arrays) {
      args.push(n.to_string());
    } else {
      args.push(format!("{n}=..."));
    }
    first = false;
  }
  format!("mx.{ns}{}({})", d.name, args.join(", "))
}

/// Escape text for a doc comment (no intra-doc links, no HTML).
/// Code spans (between backticks) are kept as they are.
fn doc_text(s: &str) -> String {
  let escape = |part: &str| {
    part
      .replace('\\', "\\\\")
      .replace('[', "\\[")
      .replace(']', "\\]")
      .replace('<', "\\<")
      .replace('>', "\\>")
  };
  let parts: Vec<String> = s
    .split('`')
    .enumerate()
    .map(|(i, p)| if i % 2 == 1 { p.to_string() } else { escape(p) })
    .collect();
  parts.join("`")
}

/// Words of `text`, keeping `code spans` whole.
fn words(text: &str) -> Vec<String> {
  let mut out: Vec<String> = Vec::new();
  let mut open = false;
  for w in text.split_whitespace() {
    if open {
      let last = out.last_mut().unwrap();
      last.push(' ');
      last.push_str(w);
    } else {
      out.push(w.to_string());
    }
    if w.matches('`').count() % 2 == 1 {
      open = !open;
    }
  }
  out
}

/// Wrap `text` at 100 columns into `/// ` lines.
fn doc_lines(out: &mut String, text: &str) {
  let mut line = String::from("///");
  for w in words(text) {
    let w = w.as_str();
    if line.len() + 1 + w.len() > 100 && line.len() > 3 {
      out.push_str(&line);
      out.push('\n');
      line = String::from("///");
    }
    line.push(' ');
    line.push_str(w);
  }
  out.push_str(&line);
  out.push('\n');
}

/// A C++ default value spelled as the Rust argument.
fn rust_default(k: Kind, v: &str) -> String {
  let v = v.trim();
  let list = |v: &str| -> String {
    let inner = v.trim_start_matches('{').trim_end_matches('}');
    inner
      .split(',')
      .map(str::trim)
      .filter(|x| !x.is_empty())
      .collect::<Vec<_>>()
      .join(", ")
  };
  match k {
    Kind::OptArray
    | Kind::OptInt
    | Kind::OptFloat
    | Kind::OptDtype
    | Kind::OptBool
    | Kind::OptInts
      if v == "std::nullopt" || v == "{}" =>
    {
      "None".into()
    }
    Kind::Shape | Kind::Ints => format!("&[{}]", list(v)),
    Kind::Int2 | Kind::Int3 => format!("({})", list(v)),
    Kind::FftNorm => v.replace("FFTNorm::", "FftNorm::"),
    Kind::Dtype | Kind::OptDtype => {
      let name = v.trim_start_matches("mx::");
      let mut c = name.chars();
      match c.next() {
        Some(f) => format!("Dtype::{}{}", f.to_ascii_uppercase(), c.as_str()),
        None => v.into(),
      }
    }
    Kind::Float | Kind::Double => {
      let t = v.trim_end_matches('f').trim_end_matches('F');
      if t.contains('.') || t.contains('e') {
        t.trim_end_matches('.').to_string() + if t.ends_with('.') { ".0" } else { "" }
      } else {
        format!("{t}.0")
      }
    }
    _ => v.into(),
  }
}

/// Emit `name(args)` inside `check(unsafe { ... })`, wrapping when long.
fn call_lines(c_name: &str, args: &[String]) -> String {
  let one = format!(
    "  check(unsafe {{ mlxrs_sys::{c_name}({}) }})?;\n",
    args.join(", ")
  );
  if one.len() <= 101 {
    return one;
  }
  let mut s = format!("  check(unsafe {{\n    mlxrs_sys::{c_name}(\n");
  for a in args {
    let _ = writeln!(s, "      {a},");
  }
  s.push_str("    )\n  })?;\n");
  s
}

/// One wrapper function.
fn wrapper(b: &Binding) -> String {
  let d = &b.decl;
  let mut s = String::new();
  if let Some(doc) = &b.doc {
    doc_lines(&mut s, &doc_text(&summary(doc)));
    s.push_str("///\n");
  }
  let ns = if d.ns.is_empty() {
    String::new()
  } else {
    format!("{}::", d.ns)
  };
  doc_lines(
    &mut s,
    &format!(
      "Python: `{}`. C: `{}`; C++: `mlx::core::{ns}{}` ({}).",
      python(b),
      b.c_name,
      d.name,
      d.header
    ),
  );
  let defaults: Vec<String> = d
    .params
    .iter()
    .zip(&b.kinds)
    .filter(|(p, k)| **k != Kind::Stream && !b.fixed.iter().any(|(n, _)| *n == p.name))
    .filter_map(|(p, k)| {
      p.default
        .as_ref()
        .map(|v| format!("`{} = {}`", ident(&p.name), rust_default(*k, v)))
    })
    .collect();
  if !defaults.is_empty() {
    doc_lines(&mut s, &format!("C++ defaults: {}.", defaults.join(", ")));
  }
  let mut params = Vec::new();
  let mut pre = Vec::new();
  let mut args = Vec::new();
  let mut borrows = Vec::new();
  match b.ret {
    Ret::Array => {
      pre.push("let mut res = Array::null();".to_string());
      args.push("&mut res.0".to_string());
    }
    Ret::Arrays => {
      pre.push("let mut res = VectorArray::null();".to_string());
      args.push("&mut res.0".to_string());
    }
    Ret::Pair => {
      pre.push("let mut res_0 = Array::null();".to_string());
      pre.push("let mut res_1 = Array::null();".to_string());
      args.push("&mut res_0.0".to_string());
      args.push("&mut res_1.0".to_string());
    }
    Ret::Void => {}
  }
  for (p, k) in d.params.iter().zip(&b.kinds) {
    if b.fixed.iter().any(|(n, _)| *n == p.name) {
      continue;
    }
    if *k == Kind::Stream {
      args.push("default_stream()".into());
      continue;
    }
    let n = ident(&p.name);
    params.push(format!("{n}: {}", k.rust_ty()));
    match k {
      Kind::Array => args.push(format!("{n}.0")),
      Kind::OptArray => args.push(format!("opt_array({n})")),
      Kind::Arrays => {
        pre.push(format!("let {n} = VectorArray::from_arrays({n})?;"));
        args.push(format!("{n}.0"));
        borrows.push("array lists");
      }
      Kind::Shape | Kind::Ints | Kind::Strides => {
        args.push(format!("{n}.as_ptr()"));
        args.push(format!("{n}.len()"));
        borrows.push("slices");
      }
      Kind::OptInts => {
        args.push(format!("opt_ints_ptr({n})"));
        args.push(format!("opt_ints_len({n})"));
        borrows.push("slices");
      }
      Kind::Int | Kind::Float | Kind::Double | Kind::Bool | Kind::Size | Kind::U64 => args.push(n),
      Kind::Dtype | Kind::FftNorm => args.push(format!("{n}.to_raw()")),
      Kind::OptInt => args.push(format!("opt_int({n})")),
      Kind::OptFloat => args.push(format!("opt_float({n})")),
      Kind::OptDtype => args.push(format!("opt_dtype({n})")),
      Kind::OptBool => args.push(format!("opt_bool({n})")),
      Kind::Str => {
        pre.push(format!("let {n} = cstring({n})?;"));
        args.push(format!("{n}.as_ptr()"));
        borrows.push("C strings");
      }
      Kind::Int2 => {
        args.push(format!("{n}.0"));
        args.push(format!("{n}.1"));
      }
      Kind::Int3 => {
        args.push(format!("{n}.0"));
        args.push(format!("{n}.1"));
        args.push(format!("{n}.2"));
      }
      Kind::Stream => unreachable!(),
    }
  }
  let ret_ty = match b.ret {
    Ret::Array => "Array",
    Ret::Arrays => "Vec<Array>",
    Ret::Pair => "(Array, Array)",
    Ret::Void => "()",
  };
  let head = format!(
    "pub fn {}({}) -> Result<{ret_ty}> {{",
    ident(&b.short),
    params.join(", ")
  );
  if head.len() <= 100 {
    s.push_str(&head);
    s.push('\n');
  } else {
    let _ = writeln!(s, "pub fn {}(", ident(&b.short));
    for p in &params {
      let _ = writeln!(s, "  {p},");
    }
    let _ = writeln!(s, ") -> Result<{ret_ty}> {{");
  }
  for p in &pre {
    let _ = writeln!(s, "  {p}");
  }
  borrows.dedup();
  // The SAFETY comment names what this call actually passes.
  let mut clauses = Vec::new();
  if b
    .kinds
    .iter()
    .any(|k| matches!(k, Kind::Array | Kind::OptArray))
  {
    clauses
      .push("array handles are live borrows the C layer only reads during the call".to_string());
  }
  if !borrows.is_empty() {
    clauses.push(format!("the {} outlive the call", borrows.join(", ")));
  }
  if b.ret != Ret::Void {
    clauses.push("out-handles are fresh and owned here".to_string());
  }
  if clauses.is_empty() {
    clauses.push("plain value arguments only".to_string());
  }
  let safety = format!("  // SAFETY: {}.\n", clauses.join("; "));
  // Wrap the SAFETY comment at 100 columns.
  let mut line = String::new();
  for w in safety.split_whitespace() {
    if line.is_empty() {
      line = format!("  {w}");
    } else if line.len() + 1 + w.len() > 100 {
      let _ = writeln!(s, "{line}");
      line = format!("  // {w}");
    } else {
      line.push(' ');
      line.push_str(w);
    }
  }
  let _ = writeln!(s, "{line}");
  s.push_str(&call_lines(&b.c_name, &args));
  match b.ret {
    Ret::Array => s.push_str("  Ok(res)\n"),
    Ret::Arrays => s.push_str("  res.to_vec()\n"),
    Ret::Pair => s.push_str("  Ok((res_0, res_1))\n"),
    Ret::Void => s.push_str("  Ok(())\n"),
  }
  s.push_str("}\n");
  s
}

/// A module's `generated.rs`.
pub fn module_file(module: &str, bs: &[&Binding], fft_norms: &[String], version: &str) -> String {
  let mut s = format!(
    "// @generated by `cargo run -p xtask -- gen` from MLX {version}'s headers. Do not edit.\n\
     //! Generated safe wrappers of the `{module}` C functions: one function per bound C++\n\
     //! overload, on the thread's default stream ([`crate::default_stream`]).\n\
     #![allow(clippy::too_many_arguments)]\n\n"
  );
  let uses = |k: Kind| bs.iter().any(|b| b.kinds.contains(&k));
  let rets = |r: Ret| bs.iter().any(|b| b.ret == r);
  let mut imports = vec!["use crate::array::Array;".to_string()];
  if uses(Kind::Dtype) || uses(Kind::OptDtype) {
    imports.push("use crate::dtype::Dtype;".into());
  }
  if uses(Kind::Str) {
    imports.push("use crate::error::{Result, check, cstring};".into());
  } else {
    imports.push("use crate::error::{Result, check};".into());
  }
  let mut helpers = Vec::new();
  for (k, h) in [
    (Kind::OptArray, "opt_array"),
    (Kind::OptBool, "opt_bool"),
    (Kind::OptDtype, "opt_dtype"),
    (Kind::OptFloat, "opt_float"),
    (Kind::OptInt, "opt_int"),
    (Kind::OptInts, "opt_ints_len"),
    (Kind::OptInts, "opt_ints_ptr"),
  ] {
    if uses(k) {
      helpers.push(h);
    }
  }
  if !helpers.is_empty() {
    imports.push(format!(
      "use crate::gen_support::{{{}}};",
      helpers.join(", ")
    ));
  }
  imports.push("use crate::stream::default_stream;".into());
  if uses(Kind::Arrays) || rets(Ret::Arrays) {
    imports.push("use crate::vector::VectorArray;".into());
  }
  imports.sort();
  for i in imports {
    s.push_str(&i);
    s.push('\n');
  }
  if module == "fft" {
    s.push_str(
      "\n/// FFT normalization, the `norm` argument of MLX's C++ FFTs (numpy's `norm=`;\n\
       /// C `mlx_fft_norm`, C++ `mlx::core::fft::FFTNorm`).\n\
       #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]\n\
       pub enum FftNorm {\n",
    );
    for (i, n) in fft_norms.iter().enumerate() {
      if i == 0 {
        let _ = writeln!(
          s,
          "  /// `{}` (the default).\n  #[default]",
          n.to_lowercase()
        );
      } else {
        let _ = writeln!(s, "  /// `{}`.", n.to_lowercase());
      }
      let _ = writeln!(s, "  {n},");
    }
    s.push_str("}\n\nimpl FftNorm {\n  /// The C enum value.\n  pub fn to_raw(self) -> mlxrs_sys::mlx_fft_norm {\n    match self {\n");
    for n in fft_norms {
      let _ = writeln!(
        s,
        "      FftNorm::{n} => mlxrs_sys::mlx_fft_norm::MLX_FFT_NORM_{},",
        n.to_uppercase()
      );
    }
    s.push_str("    }\n  }\n}\n");
  }
  for b in bs {
    s.push('\n');
    s.push_str(&wrapper(b));
  }
  s
}
