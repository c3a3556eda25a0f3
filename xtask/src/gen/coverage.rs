//! `docs/coverage.md`: every `MLX_API` function of the covered headers and
//! whether (and where) mlxrs binds it.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::emit_rs::{ident, module};
use super::parse::Decl;
use super::select::{self, NO_RUST, OVERRIDES, Status, UNMAPPABLE};

/// A hand-written binding: C symbol -> (csrc file, Rust paths using it).
pub struct HandWritten {
  pub file: String,
  pub rust: Vec<String>,
}

fn md(s: &str) -> String {
  s.replace('|', "\\|")
}

fn rust_path(c_name: &str, ns: &str) -> String {
  if let Some((_, why)) = NO_RUST.iter().find(|(c, _)| *c == c_name) {
    return format!("— ({why})");
  }
  let short = c_name.strip_prefix(&select::c_prefix(ns)).unwrap_or(c_name);
  format!("`{}::{}`", module(ns), ident(short))
}

/// Why a declaration of a header outside the generator's scope is not bound.
fn out_of_scope_reason(d: &Decl) -> String {
  let all = format!(
    "{} {}",
    d.ret,
    d.params
      .iter()
      .map(|p| p.ty.as_str())
      .collect::<Vec<_>>()
      .join(" ")
  );
  if all.contains("std::function") || all.contains("ValueAndGradFn") {
    "takes or returns a C++ closure: needs the closure C API (not bound yet)".into()
  } else if all.contains("io::Reader") || all.contains("io::Writer") {
    "custom reader/writer stream objects: not bound".into()
  } else {
    format!(
      "outside the generator's headers; no hand-written binding yet ({})",
      d.header
    )
  }
}

/// What a table entry says about an overload the name rule below cannot
/// decide honestly (several C++ overloads behind one C name, C++ closures,
/// `mlxrs_` names).
enum Hand {
  /// Bound by this hand-written C symbol.
  C(&'static str),
  /// A special case of this hand-written C symbol.
  Covered(&'static str, &'static str),
  /// Not bound, with the reason (no entry needs it with MLX 0.32.4; kept
  /// for overloads new MLX versions add).
  #[allow(dead_code)]
  Unbound(&'static str),
}

const EXPORT_CALLBACK_WHY: &str = "a positional-only or keyword-only function: a kwargs closure called with empty keywords or \
  positionals";

const KWARGS_ONLY_WHY: &str =
  "a keyword-only function: a kwargs closure called with no positional arrays";

/// (header, function, a substring of its parameter types ("" = any), status).
/// First match wins.
const HAND_TABLE: &[(&str, &str, &str, Hand)] = &[
  (
    "compile.h",
    "compile",
    "(*",
    Hand::Covered("mlx_compile", "a function pointer: pass it as a closure"),
  ),
  ("compile.h", "compile", "", Hand::C("mlx_compile")),
  (
    "export.h",
    "exporter",
    "ExportCallback&, const std::function<std::vector<array>(const Args&,const Kwargs&)",
    Hand::C("mlxrs_function_exporter_new_callback"),
  ),
  (
    "export.h",
    "exporter",
    "ExportCallback",
    Hand::Covered("mlxrs_function_exporter_new_callback", EXPORT_CALLBACK_WHY),
  ),
  (
    "export.h",
    "export_function",
    "ExportCallback&, const std::function<std::vector<array>(const Args&,const Kwargs&)",
    Hand::C("mlxrs_export_function_callback"),
  ),
  (
    "export.h",
    "export_function",
    "ExportCallback",
    Hand::Covered("mlxrs_export_function_callback", EXPORT_CALLBACK_WHY),
  ),
  (
    "export.h",
    "exporter",
    "const Args&,const Kwargs&",
    Hand::C("mlxrs_function_exporter_new_kwargs"),
  ),
  (
    "export.h",
    "exporter",
    "(const Kwargs&)",
    Hand::Covered("mlxrs_function_exporter_new_kwargs", KWARGS_ONLY_WHY),
  ),
  (
    "export.h",
    "export_function",
    "const Args&,const Kwargs&",
    Hand::C("mlx_export_function_kwargs"),
  ),
  (
    "export.h",
    "export_function",
    "(const Kwargs&)",
    Hand::Covered("mlx_export_function_kwargs", KWARGS_ONLY_WHY),
  ),
  (
    "export.h",
    "exporter",
    "",
    Hand::C("mlx_function_exporter_new"),
  ),
  (
    "export.h",
    "export_function",
    "",
    Hand::C("mlx_export_function"),
  ),
  (
    "export.h",
    "import_function",
    "",
    Hand::C("mlx_import_function"),
  ),
  ("einsum.h", "einsum_path", "", Hand::C("mlxrs_einsum_path")),
  ("einsum.h", "einsum", "", Hand::C("mlx_einsum")),
  (
    "distributed/distributed.h",
    "init",
    "AllGatherFactory",
    Hand::C("mlxrs_distributed_init_all_gather"),
  ),
  (
    "distributed/distributed.h",
    "init",
    "",
    Hand::C("mlx_distributed_init"),
  ),
  (
    "distributed/distributed.h",
    "is_available",
    "",
    Hand::C("mlx_distributed_is_available"),
  ),
  (
    "distributed/distributed.h",
    "clear_backends",
    "",
    Hand::C("mlx_distributed_clear_backends"),
  ),
];

fn table_status(d: &Decl, hand: &BTreeMap<String, HandWritten>) -> Option<Status> {
  let tys: String = d
    .params
    .iter()
    .map(|p| p.ty.as_str())
    .collect::<Vec<_>>()
    .join(", ");
  let (_, _, _, h) = HAND_TABLE
    .iter()
    .find(|(h, n, sub, _)| *h == d.header && *n == d.name && tys.contains(sub))?;
  // A symbol the table names must exist in csrc, so a removed binding
  // cannot stay "bound" here.
  let known = |c: &str| hand.contains_key(c);
  Some(match h {
    Hand::C(c) if known(c) => Status::HandWritten((*c).into()),
    Hand::Covered(c, why) if known(c) => Status::Covered {
      by: (*c).into(),
      why: (*why).into(),
    },
    Hand::Unbound(why) => Status::Unbound((*why).into()),
    Hand::C(c) | Hand::Covered(c, _) => {
      Status::Unbound(format!("table names `{c}`, which csrc does not define"))
    }
  })
}

/// The document.
pub fn render(
  version: &str,
  headers: &[&str],
  status: &[(Decl, Status)],
  other: &[Decl],
  hand: &BTreeMap<String, HandWritten>,
) -> String {
  // Rows per header: (decl, status).
  let mut rows: BTreeMap<&str, Vec<(Decl, Status)>> = BTreeMap::new();
  for (d, s) in status {
    rows
      .entry(d.header.as_str())
      .or_default()
      .push((d.clone(), s.clone()));
  }
  for d in other {
    if let Some(st) = table_status(d, hand) {
      rows
        .entry(d.header.as_str())
        .or_default()
        .push((d.clone(), st));
      continue;
    }
    let ns_prefix = select::c_prefix(&d.ns);
    let base = format!("{ns_prefix}{}", d.name);
    // mlx-c style names: `mlx_<name>` or a suffixed variant of it; the
    // overloads over custom streams are mlx-c's `_reader` / `_writer`.
    let tys: String = d.params.iter().map(|p| p.ty.as_str()).collect();
    let stream_suffix = if tys.contains("io::Reader") {
      Some("_reader")
    } else if tys.contains("io::Writer") {
      Some("_writer")
    } else {
      None
    };
    let found: Vec<&String> = hand
      .keys()
      .filter(|k| match (stream_suffix, k.strip_prefix(&base)) {
        (_, None) => false,
        (Some(sfx), Some(rest)) => rest == sfx,
        (None, Some(rest)) => {
          rest.is_empty() || (rest.starts_with('_') && rest != "_reader" && rest != "_writer")
        }
      })
      .collect();
    let st = if let Some(k) = found.first() {
      Status::HandWritten((*k).clone())
    } else {
      Status::Unbound(out_of_scope_reason(d))
    };
    rows
      .entry(d.header.as_str())
      .or_default()
      .push((d.clone(), st));
  }

  let mut s = format!(
    "<!-- @generated by `cargo run -p xtask -- gen` from MLX {version}'s headers. Do not edit. -->\n\
     # MLX API coverage\n\n\
     Every `MLX_API` function of MLX {version}'s public headers listed below, one row per C++\n\
     overload, and how mlxrs binds it:\n\n\
     - **bound**: a C function (mlx-c's name and signature, `crates/mlxrs-sys/csrc/`) and a safe\n  \
       Rust wrapper in `mlxrs_core`; generated by `cargo run -p xtask -- gen`, or hand-written\n  \
       (any `mlx_*` symbol defined in a non-generated `csrc/*.cpp`);\n\
     - **covered**: not bound itself, but a special case of a bound overload (pass the\n  \
       defaults explicitly, or the number as an array);\n\
     - **unbound**: not reachable from mlxrs yet, with the reason.\n\n\
     ## Summary\n\n\
     | header | `MLX_API` functions | bound | covered | unbound | reachable |\n\
     |---|---:|---:|---:|---:|---:|\n"
  );
  let (mut tt, mut tb, mut tc, mut tu) = (0, 0, 0, 0);
  for h in headers {
    let r: Vec<&(Decl, Status)> = rows
      .get(h)
      .map(|v| v.iter().filter(|(d, _)| d.exported).collect())
      .unwrap_or_default();
    let b = r
      .iter()
      .filter(|(_, s)| matches!(s, Status::Bound(_) | Status::HandWritten(_)))
      .count();
    let c = r
      .iter()
      .filter(|(_, s)| matches!(s, Status::Covered { .. }))
      .count();
    let u = r
      .iter()
      .filter(|(_, s)| matches!(s, Status::Unbound(_)))
      .count();
    let t = r.len();
    let pct = if t == 0 {
      0.0
    } else {
      100.0 * (b + c) as f64 / t as f64
    };
    let _ = writeln!(s, "| `{h}` | {t} | {b} | {c} | {u} | {pct:.0}% |");
    tt += t;
    tb += b;
    tc += c;
    tu += u;
  }
  let pct = if tt == 0 {
    0.0
  } else {
    100.0 * (tb + tc) as f64 / tt as f64
  };
  let _ = writeln!(s, "| **total** | {tt} | {tb} | {tc} | {tu} | {pct:.0}% |");

  for h in headers {
    let _ = write!(
      s,
      "\n## `{h}`\n\n| C++ | status | C | Rust |\n|---|---|---|---|\n"
    );
    let Some(r) = rows.get(h) else { continue };
    for (d, st) in r.iter().filter(|(d, _)| d.exported) {
      let ns = if d.ns.is_empty() {
        String::new()
      } else {
        format!("{}::", d.ns)
      };
      let ps: Vec<String> = d
        .params
        .iter()
        .map(|p| format!("{} {}", p.ty, p.name))
        .collect();
      let cpp = format!("`{ns}{}({})` :{}", d.name, ps.join(", "), d.line);
      let (status, c, rust) = match st {
        Status::Bound(c) => ("bound".to_string(), format!("`{c}`"), rust_path(c, &d.ns)),
        Status::HandWritten(c) => {
          let rust = hand
            .get(c)
            .map(|h| {
              if h.rust.is_empty() {
                format!("— (C only, {})", h.file)
              } else {
                h.rust.join(", ")
              }
            })
            .unwrap_or_default();
          (
            format!(
              "bound (hand-written, {})",
              hand.get(c).map(|h| h.file.as_str()).unwrap_or("?")
            ),
            format!("`{c}`"),
            rust,
          )
        }
        Status::Covered { by, why } => (
          format!("covered: {why}"),
          format!("via `{by}`"),
          String::new(),
        ),
        Status::Unbound(why) => (format!("**unbound**: {why}"), String::new(), String::new()),
      };
      let _ = writeln!(
        s,
        "| {} | {} | {} | {} |",
        md(&cpp),
        md(&status),
        md(&c),
        md(&rust)
      );
    }
  }

  // Header-inline helpers that are bound.
  let inl: Vec<&(Decl, Status)> = status.iter().filter(|(d, _)| !d.exported).collect();
  if !inl.is_empty() {
    s.push_str(
      "\n## Bound header-`inline` helpers\n\n\
       Not `MLX_API` (so not counted above), but bound because mlx-c binds them or they add a\n\
       distinct variant (the C++ wrapper calls the inline function).\n\n\
       | C++ | C | Rust |\n|---|---|---|\n",
    );
    for (d, st) in inl {
      if let Status::Bound(c) = st {
        let ns = if d.ns.is_empty() {
          String::new()
        } else {
          format!("{}::", d.ns)
        };
        let ps: Vec<String> = d
          .params
          .iter()
          .map(|p| format!("{} {}", p.ty, p.name))
          .collect();
        let cpp = format!(
          "`{ns}{}({})` {}:{}",
          d.name,
          ps.join(", "),
          d.header,
          d.line
        );
        let _ = writeln!(s, "| {} | `{c}` | {} |", md(&cpp), md(&rust_path(c, &d.ns)));
      }
    }
  }

  s.push_str(
    "\n## Generator overrides\n\n\
     Overload sets the generator's naming rules (see `xtask/src/gen/select.rs`) do not decide, and\n\
     unmappable types with a specific reason.\n\n\
     | C++ | overload (parameter kinds) | action | why |\n|---|---|---|---|\n",
  );
  for o in OVERRIDES {
    let ns = if o.ns.is_empty() {
      String::new()
    } else {
      format!("{}::", o.ns)
    };
    let action = match o.action {
      select::Action::Bind(x) => format!(
        "bind as `{}`",
        if x.is_empty() {
          "<name>".into()
        } else {
          format!("<name>_{x}")
        }
      ),
      select::Action::BindFixed(x, f) => format!(
        "bind as `{}` with {}",
        if x.is_empty() {
          "<name>".into()
        } else {
          format!("<name>_{x}")
        },
        f.iter()
          .map(|(a, b)| format!("`{a} = {b}`"))
          .collect::<Vec<_>>()
          .join(", ")
      ),
      select::Action::Cover(x) => format!(
        "covered by `{}`",
        if x.is_empty() {
          "<name>".into()
        } else {
          format!("<name>_{x}")
        }
      ),
    };
    let _ = writeln!(
      s,
      "| `{ns}{}` | `{}` | {} | {} |",
      o.name,
      o.sig,
      md(&action),
      md(o.why)
    );
  }
  for (ns, name, why) in UNMAPPABLE {
    let ns = if ns.is_empty() {
      String::new()
    } else {
      format!("{ns}::")
    };
    let _ = writeln!(
      s,
      "| `{ns}{name}` | (unmappable types) | {} | {} |",
      if select::UNMAPPABLE_HAND
        .iter()
        .any(|(n, f, _)| *n == ns.trim_end_matches("::") && f == name)
      {
        "hand-written"
      } else {
        "unbound"
      },
      md(why)
    );
  }
  for (c, why) in NO_RUST {
    let _ = writeln!(
      s,
      "| `{c}` | — | C only, no generated Rust wrapper | {} |",
      md(why)
    );
  }
  s
}
