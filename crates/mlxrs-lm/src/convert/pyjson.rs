//! JSON text as Python's `json.dump(obj, f, indent=4)` writes it (the form
//! of the config.json and model.safetensors.index.json that
//! `mlx_lm.convert` saves): 4-space indent, `", "`/`": "` separators,
//! non-ASCII escaped (`ensure_ascii=True`), floats in `repr` form (`1e-06`,
//! `10000.0`), no trailing newline.

use serde_json::Value;

/// `json.dumps(v, indent=4)`.
pub fn dumps(v: &Value) -> String {
  let mut out = String::new();
  write(&mut out, v, 0);
  out
}

fn write(out: &mut String, v: &Value, depth: usize) {
  match v {
    Value::Null => out.push_str("null"),
    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    Value::Number(n) => {
      if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
      } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
      } else {
        out.push_str(&float_repr(n.as_f64().unwrap_or(f64::NAN)));
      }
    }
    Value::String(s) => string(out, s),
    Value::Array(a) => {
      if a.is_empty() {
        out.push_str("[]");
        return;
      }
      out.push('[');
      for (i, x) in a.iter().enumerate() {
        if i > 0 {
          out.push(',');
        }
        newline(out, depth + 1);
        write(out, x, depth + 1);
      }
      newline(out, depth);
      out.push(']');
    }
    Value::Object(o) => {
      if o.is_empty() {
        out.push_str("{}");
        return;
      }
      out.push('{');
      for (i, (k, x)) in o.iter().enumerate() {
        if i > 0 {
          out.push(',');
        }
        newline(out, depth + 1);
        string(out, k);
        out.push_str(": ");
        write(out, x, depth + 1);
      }
      newline(out, depth);
      out.push('}');
    }
  }
}

fn newline(out: &mut String, depth: usize) {
  out.push('\n');
  for _ in 0..depth {
    out.push_str("    ");
  }
}

fn string(out: &mut String, s: &str) {
  out.push('"');
  for c in s.chars() {
    match c {
      '"' => out.push_str("\\\""),
      '\\' => out.push_str("\\\\"),
      '\n' => out.push_str("\\n"),
      '\r' => out.push_str("\\r"),
      '\t' => out.push_str("\\t"),
      '\u{8}' => out.push_str("\\b"),
      '\u{c}' => out.push_str("\\f"),
      c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
        let mut buf = [0u16; 2];
        for u in c.encode_utf16(&mut buf) {
          out.push_str(&format!("\\u{u:04x}"));
        }
      }
      c => out.push(c),
    }
  }
  out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional
/// for decimal exponents in `-4..16`, else `d.ddde[+-]XX`.
pub fn float_repr(x: f64) -> String {
  if x.is_nan() {
    return "NaN".into();
  }
  if x.is_infinite() {
    return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
  }
  if x == 0.0 {
    return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
  }
  // `{:e}` is Rust's shortest round-trip form: `-1.2345e-7`.
  let e = format!("{x:e}");
  let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
  let exp: i32 = exp.parse().unwrap_or(0);
  let (sign, mant) = match mant.strip_prefix('-') {
    Some(m) => ("-", m),
    None => ("", mant),
  };
  let digits: String = mant.chars().filter(|c| *c != '.').collect();
  if (-4..16).contains(&exp) {
    let n = digits.len() as i32;
    let body = if exp < 0 {
      format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
    } else if exp + 1 >= n {
      format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
    } else {
      let (a, b) = digits.split_at((exp + 1) as usize);
      format!("{a}.{b}")
    };
    format!("{sign}{body}")
  } else {
    let m = if digits.len() > 1 {
      format!("{}.{}", &digits[..1], &digits[1..])
    } else {
      digits
    };
    let es = if exp < 0 { '-' } else { '+' };
    format!("{sign}{m}e{es}{:02}", exp.abs())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn floats_as_python_repr() {
    // Expected strings are Python 3.11's `repr` of the same values.
    for (x, s) in [
      (1e-6, "1e-06"),
      (1e-5, "1e-05"),
      (0.0001, "0.0001"),
      (1000000.0, "1000000.0"),
      (10000.0, "10000.0"),
      (0.02, "0.02"),
      (1e16, "1e+16"),
      (1.5e-7, "1.5e-07"),
      (123456789012345.6, "123456789012345.6"),
      (-2.5, "-2.5"),
      (0.1, "0.1"),
      (1e22, "1e+22"),
    ] {
      assert_eq!(float_repr(x), s);
    }
  }

  #[test]
  fn layout_as_python_json_dump() {
    let v: Value =
      serde_json::from_str(r#"{"a": [1, 2], "b": {}, "c": [], "d": {"e": null, "f": "é\"x"}}"#)
        .unwrap();
    assert_eq!(
      dumps(&v),
      "{\n    \"a\": [\n        1,\n        2\n    ],\n    \"b\": {},\n    \"c\": [],\n    \"d\": {\n        \"e\": null,\n        \"f\": \"\\u00e9\\\"x\"\n    }\n}"
    );
  }
}
