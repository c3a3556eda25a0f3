//! Tool calls read while they are generated (vLLM's streaming tool parsers
//! do the same job): a tolerant scanner over a call's JSON text that yields
//! the function name once its string is complete and the arguments value
//! so far, compacted (whitespace outside strings dropped), so
//! `tool_calls[i].function.arguments` can stream piece by piece.
//!
//! The compacted text of the model's own arguments is also their final
//! form ([`compact`]), in streaming and non-streaming replies alike: the
//! streamed pieces then concatenate to exactly the finished call's
//! `arguments`.

/// `raw` JSON with the whitespace outside strings removed (key order,
/// numbers and escapes as the model wrote them).
pub fn compact(raw: &str) -> String {
  let mut c = Compactor::default();
  let mut out = String::with_capacity(raw.len());
  for ch in raw.chars() {
    c.push(ch, &mut out);
  }
  out
}

/// Char-by-char compaction of one JSON value, tracking nesting.
#[derive(Debug, Default, Clone)]
struct Compactor {
  in_str: bool,
  esc: bool,
  depth: i32,
  started: bool,
}

impl Compactor {
  /// Feed `ch`; returns true when the value just closed.
  fn push(&mut self, ch: char, out: &mut String) -> bool {
    if self.in_str {
      out.push(ch);
      if self.esc {
        self.esc = false;
      } else if ch == '\\' {
        self.esc = true;
      } else if ch == '"' {
        self.in_str = false;
      }
      return false;
    }
    match ch {
      c if c.is_whitespace() => false,
      '"' => {
        self.in_str = true;
        out.push(ch);
        false
      }
      '{' | '[' => {
        self.depth += 1;
        self.started = true;
        out.push(ch);
        false
      }
      '}' | ']' => {
        self.depth -= 1;
        out.push(ch);
        self.started && self.depth == 0
      }
      _ => {
        out.push(ch);
        false
      }
    }
  }
}

/// What is known of one call so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialCall {
  /// The function name, once its string is complete.
  pub name: Option<String>,
  /// The arguments object so far, compacted (`None`: not reached yet, or
  /// not an object, e.g. arguments given as a JSON string: those are
  /// sent when the reply ends).
  pub args: Option<String>,
  /// The arguments object is complete.
  pub args_done: bool,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
  while i < b.len() && b[i].is_ascii_whitespace() {
    i += 1;
  }
  i
}

/// End of the string starting at `b[i] == '"'`; `None` if unfinished.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
  let mut j = i + 1;
  let mut esc = false;
  while j < b.len() {
    match b[j] {
      _ if esc => esc = false,
      b'\\' => esc = true,
      b'"' => return Some(j + 1),
      _ => {}
    }
    j += 1;
  }
  None
}

/// End of the JSON value starting at `i`; `None` if unfinished (a scalar
/// running to the end of the text counts as unfinished).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
  match *b.get(i)? {
    b'"' => string_end(b, i),
    b'{' | b'[' => {
      let mut depth = 0i32;
      let mut j = i;
      while j < b.len() {
        match b[j] {
          b'"' => {
            j = string_end(b, j)?;
            continue;
          }
          b'{' | b'[' => depth += 1,
          b'}' | b']' => {
            depth -= 1;
            if depth == 0 {
              return Some(j + 1);
            }
          }
          _ => {}
        }
        j += 1;
      }
      None
    }
    _ => {
      let j =
        (i..b.len()).find(|&j| matches!(b[j], b',' | b'}' | b']') || b[j].is_ascii_whitespace())?;
      Some(j)
    }
  }
}

/// Scan the JSON object at the start of `text` (after whitespace) as a
/// call `{"name": ..., <one of arg_keys>: {...}}`: what is known so far,
/// and the byte offset after the object once it is complete. `None` when
/// the text does not start like an object.
pub fn object(text: &str, arg_keys: &[&str]) -> Option<(PartialCall, Option<usize>)> {
  let b = text.as_bytes();
  let mut i = skip_ws(b, 0);
  let mut call = PartialCall::default();
  if i >= b.len() {
    return Some((call, None));
  }
  if b[i] != b'{' {
    return None;
  }
  i += 1;
  loop {
    i = skip_ws(b, i);
    let Some(&c) = b.get(i) else {
      return Some((call, None));
    };
    match c {
      b'}' => return Some((call, Some(i + 1))),
      b',' => {
        i += 1;
        continue;
      }
      b'"' => {}
      _ => return Some((call, None)),
    }
    let Some(kend) = string_end(b, i) else {
      return Some((call, None));
    };
    let key: Option<String> = serde_json::from_str(&text[i..kend]).ok();
    i = skip_ws(b, kend);
    if b.get(i) != Some(&b':') {
      return Some((call, None));
    }
    i = skip_ws(b, i + 1);
    let Some(&v) = b.get(i) else {
      return Some((call, None));
    };
    match key.as_deref() {
      Some("name") if v == b'"' && call.name.is_none() => {
        let Some(e) = string_end(b, i) else {
          return Some((call, None));
        };
        call.name = serde_json::from_str(&text[i..e]).ok();
        i = e;
      }
      Some(k) if arg_keys.contains(&k) && call.args.is_none() && v == b'{' => {
        let (args, end) = compact_prefix(&text[i..]);
        call.args = Some(args);
        match end {
          Some(e) => {
            call.args_done = true;
            i += e;
          }
          None => return Some((call, None)),
        }
      }
      _ => match value_end(b, i) {
        Some(e) => i = e,
        None => return Some((call, None)),
      },
    }
  }
}

/// The compacted prefix of the object or array at the start of `text`
/// and, once it closes, the byte offset after it.
pub fn compact_prefix(text: &str) -> (String, Option<usize>) {
  let mut c = Compactor::default();
  let mut out = String::new();
  for (i, ch) in text.char_indices() {
    if c.push(ch, &mut out) {
      return (out, Some(i + ch.len_utf8()));
    }
  }
  (out, None)
}

/// The arguments of a finished call object `raw`: the compacted arguments
/// object when the scanner finds a complete one.
pub fn final_args(raw: &str, arg_keys: &[&str]) -> Option<String> {
  match object(raw, arg_keys) {
    Some((c, _)) if c.args_done => c.args,
    _ => None,
  }
}

/// The items of the JSON array at the start of `text` that are objects,
/// as far as they go: `(item text, complete)`.
pub fn array_objects(text: &str) -> Vec<(&str, bool)> {
  let b = text.as_bytes();
  let mut out = Vec::new();
  let mut i = skip_ws(b, 0);
  if b.get(i) != Some(&b'[') {
    return out;
  }
  i += 1;
  loop {
    i = skip_ws(b, i);
    match b.get(i) {
      Some(b',') => i += 1,
      Some(b'{') => match value_end(b, i) {
        Some(e) => {
          out.push((&text[i..e], true));
          i = e;
        }
        None => {
          out.push((&text[i..], false));
          return out;
        }
      },
      _ => return out,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const KEYS: &[&str] = &["arguments", "parameters"];

  #[test]
  fn compact_keeps_strings() {
    assert_eq!(
      compact("{ \"a b\" : [1, 2],\n \"c\": \"x  y\\\" z\" }"),
      "{\"a b\":[1,2],\"c\":\"x  y\\\" z\"}"
    );
  }

  #[test]
  fn every_prefix_extends_the_last() {
    let t = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris, \\\"FR\\\"\", \"days\": [1, 2]}}";
    let mut last = String::new();
    let mut named_at = None;
    for n in 0..=t.len() {
      let (c, end) = object(&t[..n], KEYS).unwrap();
      if c.name.is_some() && named_at.is_none() {
        named_at = Some(n);
      }
      let a = c.args.unwrap_or_default();
      assert!(a.starts_with(&last), "{n}: {a:?} after {last:?}");
      last = a;
      assert_eq!(end.is_some(), n == t.len(), "{n}");
    }
    assert_eq!(named_at, Some(t.find(", \"arguments\"").unwrap()));
    assert_eq!(last, "{\"city\":\"Paris, \\\"FR\\\"\",\"days\":[1,2]}");
    assert_eq!(final_args(t, KEYS).as_deref(), Some(last.as_str()));
  }

  #[test]
  fn arguments_before_name_and_other_keys() {
    let t = "{\"id\": \"x\", \"parameters\": {\"q\": 1}, \"name\": \"f\"}";
    let (c, end) = object(t, KEYS).unwrap();
    assert_eq!(c.name.as_deref(), Some("f"));
    assert_eq!(c.args.as_deref(), Some("{\"q\":1}"));
    assert_eq!(end, Some(t.len()));
  }

  #[test]
  fn string_arguments_are_not_streamed() {
    let t = "{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}";
    let (c, end) = object(t, KEYS).unwrap();
    assert_eq!(c.name.as_deref(), Some("f"));
    assert_eq!(c.args, None);
    assert_eq!(end, Some(t.len()));
  }

  #[test]
  fn arrays_of_calls() {
    let t = "[{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"argu";
    let items = array_objects(t);
    assert_eq!(items.len(), 2);
    assert!(items[0].1 && !items[1].1);
    assert_eq!(
      object(items[1].0, KEYS).unwrap().0.name.as_deref(),
      Some("b")
    );
    assert!(object("not json", KEYS).is_none());
  }
}
