//! A small, purpose-built parser for MLX's public headers: it finds the
//! `MLX_API` function declarations (and header-`inline` functions, which some
//! bindings wrap) and splits each into return type, name and parameters.
//!
//! MLX's headers are regular enough (one namespace per file, no macros in
//! declarations) that a tokenizer-free scan is enough: comments are blanked
//! out (doc comments are remembered), then each declaration runs from its
//! `MLX_API` / `inline` keyword to the first `;` or `{` outside parentheses.

use anyhow::{Context, Result, bail};

/// One parameter of a declaration.
#[derive(Debug, Clone)]
pub struct Param {
  /// Normalized C++ type, e.g. `const std::optional<array>&`.
  pub ty: String,
  /// The parameter name (`arg<N>` when the header leaves it unnamed).
  pub name: String,
  /// The default value's text, if any.
  pub default: Option<String>,
}

/// One function declaration.
#[derive(Debug, Clone)]
pub struct Decl {
  /// Header path relative to the include dir's `mlx/`, e.g. `ops.h`.
  pub header: String,
  /// C++ namespace below `mlx::core` (`""`, `fast`, `fft`, ...).
  pub ns: String,
  /// Function name.
  pub name: String,
  /// Normalized return type.
  pub ret: String,
  /// Parameters in order.
  pub params: Vec<Param>,
  /// The doc comment right above the declaration, cleaned up.
  pub doc: Option<String>,
  /// `MLX_API` (exported from libmlx) rather than a header `inline`.
  pub exported: bool,
  /// 1-based line of the declaration.
  pub line: usize,
}

impl Decl {
  /// `name(type, type, ...)` for messages.
  pub fn pretty(&self) -> String {
    let ps: Vec<String> = self
      .params
      .iter()
      .map(|p| format!("{} {}", p.ty, p.name))
      .collect();
    let ns = if self.ns.is_empty() {
      String::new()
    } else {
      format!("{}::", self.ns)
    };
    format!("{} {ns}{}({})", self.ret, self.name, ps.join(", "))
  }
}

/// Blank out comments and preprocessor lines (keeping offsets and newlines),
/// and return the comment texts by end offset.
fn strip_comments(src: &str) -> (String, Vec<(usize, String)>) {
  let b = src.as_bytes();
  let mut out = b.to_vec();
  let mut comments = Vec::new();
  let mut i = 0;
  let mut line_start = true;
  while i < b.len() {
    let c = b[i];
    if c == b'"' {
      // String literal (default values like "affine"): skip it whole.
      i += 1;
      while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
          i += 1;
        }
        i += 1;
      }
      i += 1;
      line_start = false;
      continue;
    }
    if line_start && c == b'#' {
      while i < b.len() && b[i] != b'\n' {
        out[i] = b' ';
        i += 1;
      }
      continue;
    }
    if c == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
      let s = i;
      while i < b.len() && b[i] != b'\n' {
        out[i] = b' ';
        i += 1;
      }
      comments.push((i, src[s..i].to_string()));
      continue;
    }
    if c == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
      let s = i;
      i += 2;
      while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
        i += 1;
      }
      i = (i + 2).min(b.len());
      for o in out.iter_mut().take(i).skip(s) {
        if *o != b'\n' {
          *o = b' ';
        }
      }
      comments.push((i, src[s..i].to_string()));
      continue;
    }
    if c == b'\n' {
      line_start = true;
    } else if !c.is_ascii_whitespace() {
      line_start = false;
    }
    i += 1;
  }
  (
    String::from_utf8(out).expect("ascii-preserving edit"),
    comments,
  )
}

/// The text of a `/** ... */` or `// ...` comment without its markers.
fn clean_comment(c: &str) -> String {
  let body = c.trim();
  let body = body
    .strip_prefix("/**")
    .or_else(|| body.strip_prefix("/*"))
    .unwrap_or(body);
  let body = body
    .strip_suffix("*/")
    .unwrap_or(body)
    .trim_end_matches('*');
  let mut lines = Vec::new();
  for l in body.lines() {
    let l = l.trim();
    let l = l.trim_start_matches("//").trim_start_matches('*').trim();
    if l.starts_with('@') || l.starts_with('\\') {
      continue;
    }
    lines.push(l.to_string());
  }
  let text = lines.join(" ");
  text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_ident_byte(c: u8) -> bool {
  c.is_ascii_alphanumeric() || c == b'_'
}

/// Offsets of the keyword `kw` as a whole word.
fn find_word(s: &str, kw: &str) -> Vec<usize> {
  let b = s.as_bytes();
  let mut v = Vec::new();
  let mut from = 0;
  while let Some(p) = s[from..].find(kw) {
    let at = from + p;
    let before = at == 0 || !is_ident_byte(b[at - 1]);
    let end = at + kw.len();
    let after = end >= b.len() || !is_ident_byte(b[end]);
    if before && after {
      v.push(at);
    }
    from = end;
  }
  v
}

/// Collapse whitespace and drop spaces around punctuation so that types
/// compare textually: `const std::optional<array> &` -> `const std::optional<array>&`.
pub fn normalize_type(t: &str) -> String {
  let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
  let mut out = String::with_capacity(t.len());
  let chars: Vec<char> = t.chars().collect();
  for (i, &c) in chars.iter().enumerate() {
    if c == ' ' {
      let prev = out.chars().last().unwrap_or(' ');
      let next = chars.get(i + 1).copied().unwrap_or(' ');
      let punct = |x: char| "<>,&*:()".contains(x);
      if punct(prev) || punct(next) {
        continue;
      }
    }
    out.push(c);
  }
  out
}

/// Split `s` on top-level commas (outside `<>`, `()`, `{}`, `[]`).
fn split_top(s: &str) -> Vec<String> {
  let mut parts = Vec::new();
  let mut depth = 0i32;
  let mut cur = String::new();
  for c in s.chars() {
    match c {
      '<' | '(' | '{' | '[' => depth += 1,
      '>' | ')' | '}' | ']' => depth -= 1,
      _ => {}
    }
    if c == ',' && depth == 0 {
      parts.push(std::mem::take(&mut cur));
    } else {
      cur.push(c);
    }
  }
  if !cur.trim().is_empty() {
    parts.push(cur);
  }
  parts
}

fn parse_param(raw: &str, idx: usize) -> Param {
  // Default value: the first top-level `=`.
  let mut depth = 0i32;
  let mut eq = None;
  for (i, c) in raw.char_indices() {
    match c {
      '<' | '(' | '{' => depth += 1,
      '>' | ')' | '}' => depth -= 1,
      '=' if depth == 0 => {
        eq = Some(i);
        break;
      }
      _ => {}
    }
  }
  let (decl, default) = match eq {
    Some(i) => (&raw[..i], Some(raw[i + 1..].trim().to_string())),
    None => (raw, None),
  };
  let decl = decl.trim();
  // The name is a trailing identifier preceded by whitespace, `&` or `*`.
  let b = decl.as_bytes();
  let mut s = b.len();
  while s > 0 && is_ident_byte(b[s - 1]) {
    s -= 1;
  }
  let ident = &decl[s..];
  let head = decl[..s].trim_end();
  let named = !ident.is_empty()
    && s > 0
    && (b[s - 1] == b' ' || b[s - 1] == b'&' || b[s - 1] == b'*')
    && !head.is_empty()
    && head != "const"
    && head != "unsigned";
  if named {
    Param {
      ty: normalize_type(head),
      name: ident.to_string(),
      default,
    }
  } else {
    Param {
      ty: normalize_type(decl),
      name: format!("arg{idx}"),
      default,
    }
  }
}

/// Parse every `MLX_API` and `inline` (non-member, non-operator, non-template)
/// function of `text`.
pub fn parse_header(header: &str, ns: &str, text: &str) -> Result<Vec<Decl>> {
  let (clean, comments) = strip_comments(text);
  let b = clean.as_bytes();
  let mut starts: Vec<(usize, bool)> = find_word(&clean, "MLX_API")
    .into_iter()
    .map(|p| (p, true))
    .collect();
  starts.extend(find_word(&clean, "inline").into_iter().map(|p| (p, false)));
  starts.sort();
  let mut decls = Vec::new();
  for (start, exported) in starts {
    let kw_len = if exported {
      "MLX_API".len()
    } else {
      "inline".len()
    };
    // Skip `template <...> inline` and `class/struct MLX_API`.
    let before = clean[..start].trim_end();
    if before.ends_with('>') || before.ends_with("class") || before.ends_with("struct") {
      continue;
    }
    let body_from = start + kw_len;
    let after = clean[body_from..].trim_start();
    if after.starts_with("class") || after.starts_with("struct") {
      continue;
    }
    // The declaration runs to the first `;` or `{` outside parentheses.
    let mut depth = 0i32;
    let mut end = None;
    for (i, &c) in b.iter().enumerate().skip(body_from) {
      match c {
        b'(' => depth += 1,
        b')' => depth -= 1,
        b';' | b'{' if depth == 0 => {
          end = Some(i);
          break;
        }
        _ => {}
      }
    }
    let end = end.with_context(|| format!("{header}: unterminated declaration at byte {start}"))?;
    let decl = clean[body_from..end].trim();
    if decl.contains("operator") {
      continue;
    }
    // The parameter list opens at the first `(` outside `<>` (return types
    // like `std::function<array(const array&)>` hold parentheses).
    let db = decl.as_bytes();
    let mut angle = 0i32;
    let mut open = None;
    for (i, &c) in db.iter().enumerate() {
      match c {
        b'<' => angle += 1,
        b'>' => angle -= 1,
        b'(' if angle == 0 => {
          open = Some(i);
          break;
        }
        _ => {}
      }
    }
    let Some(open) = open else {
      bail!("{header}: no parameter list in `{decl}`")
    };
    // The matching `)`.
    let mut depth = 0i32;
    let mut close = None;
    for (i, &c) in db.iter().enumerate().skip(open) {
      match c {
        b'(' => depth += 1,
        b')' => {
          depth -= 1;
          if depth == 0 {
            close = Some(i);
            break;
          }
        }
        _ => {}
      }
    }
    let close = close.with_context(|| format!("{header}: unbalanced `(` in `{decl}`"))?;
    let head = decl[..open].trim_end();
    let hb = head.as_bytes();
    let mut ns_ = hb.len();
    while ns_ > 0 && is_ident_byte(hb[ns_ - 1]) {
      ns_ -= 1;
    }
    let name = head[ns_..].to_string();
    let ret = normalize_type(&head[..ns_]);
    if name.is_empty() || ret.is_empty() {
      if !exported {
        // `Ret inline name(...)` (return type before `inline`): a header
        // helper the generator never needs.
        continue;
      }
      bail!("{header}: cannot split return type and name in `{decl}`");
    }
    let params: Vec<Param> = split_top(&decl[open + 1..close])
      .iter()
      .filter(|p| !p.trim().is_empty() && p.trim() != "void")
      .enumerate()
      .map(|(i, p)| parse_param(p, i))
      .collect();
    // Doc: a comment ending right before the keyword (only whitespace
    // between).
    let doc = comments
      .iter()
      .rev()
      .find(|(e, _)| *e <= start && text[*e..start].trim().is_empty())
      .map(|(_, c)| clean_comment(c))
      .filter(|d| !d.is_empty());
    let line = text[..start].matches('\n').count() + 1;
    decls.push(Decl {
      header: header.to_string(),
      ns: ns.to_string(),
      name,
      ret,
      params,
      doc,
      exported,
      line,
    });
  }
  Ok(decls)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parses_overloads_defaults_and_docs() {
    let src = r#"
namespace mlx::core {
/** Sums the elements. */
MLX_API array
sum(const array& a,
    const std::vector<int>& axes, // the axes
    bool keepdims = false,
    StreamOrDevice s = {});
inline array sum(const array& a, StreamOrDevice s = {}) {
  return sum(a, false, to_stream(s));
}
template <typename T>
array full(Shape shape, T val, StreamOrDevice s = {});
MLX_API array operator+(const array& a, const array& b);
class MLX_API Foo { };
MLX_API std::function<array(const array&)> vmap(
    const std::function<array(const array&)>& fun, int in_axis = 0);
MLX_API array pad(const array& a, const std::pair<int, int>& pad_width,
    const array& pad_value = array(0), const std::string& mode = "constant");
}
"#;
    let d = parse_header("ops.h", "", src).unwrap();
    let names: Vec<_> = d.iter().map(|d| (d.name.as_str(), d.exported)).collect();
    assert_eq!(
      names,
      [("sum", true), ("sum", false), ("vmap", true), ("pad", true)]
    );
    assert_eq!(d[0].doc.as_deref(), Some("Sums the elements."));
    assert_eq!(d[0].params[1].ty, "const std::vector<int>&");
    assert_eq!(d[0].params[2].default.as_deref(), Some("false"));
    assert_eq!(d[2].ret, "std::function<array(const array&)>");
    assert_eq!(d[3].params[1].ty, "const std::pair<int,int>&");
    assert_eq!(d[3].params[3].default.as_deref(), Some("\"constant\""));
  }
}
