//! Reading texts to embed from a file, one per line (what `mlxrs embed
//! --file` does; python: `open(path, encoding="utf-8").read().splitlines()`).

use std::path::Path;

use crate::error::{Error, Result};

/// The lines of a UTF-8 text file (`\n` or `\r\n` separated; a trailing
/// newline does not add an empty line). Invalid UTF-8 is an
/// [`Error::InputFile`] naming the line and byte offset — never replaced
/// silently.
pub fn read_lines(path: impl AsRef<Path>) -> Result<Vec<String>> {
  let path = path.as_ref();
  let bytes = std::fs::read(path).map_err(|source| Error::Io {
    path: path.to_path_buf(),
    source,
  })?;
  lines_of(&bytes, path)
}

/// [`read_lines`] on bytes already read (`path` names them in errors).
pub fn lines_of(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
  let mut out = Vec::new();
  let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
  if bytes.is_empty() {
    return Ok(out);
  }
  for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    match std::str::from_utf8(raw) {
      Ok(s) => out.push(s.to_string()),
      Err(e) => {
        return Err(Error::InputFile {
          path: path.to_path_buf(),
          line: i + 1,
          message: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
        });
      }
    }
  }
  Ok(out)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn lines_and_bad_utf8() {
    let p = Path::new("in.txt");
    assert_eq!(
      lines_of(b"a\r\nb\n\nc\n", p).unwrap(),
      vec!["a", "b", "", "c"]
    );
    assert_eq!(lines_of(b"", p).unwrap(), Vec::<String>::new());
    assert_eq!(lines_of(b"\n", p).unwrap(), vec![""]);
    assert_eq!(lines_of("caf\u{e9}".as_bytes(), p).unwrap(), vec!["café"]);
    let e = lines_of(b"ok\nab\xffcd\n", p).unwrap_err().to_string();
    assert!(
      e.contains("in.txt:2") && e.contains("invalid UTF-8 at byte 2"),
      "{e}"
    );
  }
}
