//! A reader for CTranslate2 `model.bin` files (the format faster-whisper
//! loads), written from the format as `ctranslate2.specs.model_spec.
//! ModelSpec._serialize` writes it (little-endian):
//!
//! ```text
//! u32 binary_version            (4..=6 supported)
//! str spec_name                 (u16 length incl. NUL, bytes, NUL)
//! u32 spec_revision
//! u32 n_variables
//!   str name; u8 rank; u32 dims[rank]; u8 dtype; u32 n_bytes; bytes
//! u32 n_aliases                 (binary_version >= 3)
//!   str alias; str variable_name
//! ```
//!
//! dtype ids follow `ctranslate2::DataType`: 0 float32, 1 int8, 2 int16,
//! 3 int32, 4 float16, 5 bfloat16. Quantized weights `<x>/weight` come with
//! `<x>/weight_scale` (int8: one f32 per row, int16: one scalar), and
//! dequantize as `q / scale`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result, io_err};

/// Element type of a stored variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
  /// float32
  F32,
  /// int8
  I8,
  /// int16
  I16,
  /// int32
  I32,
  /// float16
  F16,
  /// bfloat16
  Bf16,
}

impl Ct2Dtype {
  fn from_id(id: u8) -> Option<Ct2Dtype> {
    Some(match id {
      0 => Ct2Dtype::F32,
      1 => Ct2Dtype::I8,
      2 => Ct2Dtype::I16,
      3 => Ct2Dtype::I32,
      4 => Ct2Dtype::F16,
      5 => Ct2Dtype::Bf16,
      _ => return None,
    })
  }

  /// Bytes per element.
  pub fn size(self) -> usize {
    match self {
      Ct2Dtype::F32 | Ct2Dtype::I32 => 4,
      Ct2Dtype::I16 | Ct2Dtype::F16 | Ct2Dtype::Bf16 => 2,
      Ct2Dtype::I8 => 1,
    }
  }
}

/// One stored variable: shape, dtype and raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
  /// Dimensions (empty for a scalar).
  pub shape: Vec<usize>,
  /// Element type.
  pub dtype: Ct2Dtype,
  /// Raw data.
  pub data: Vec<u8>,
}

impl Ct2Variable {
  /// Number of elements.
  pub fn numel(&self) -> usize {
    self.shape.iter().product()
  }

  /// The values as `f32` (integers converted, halves widened).
  pub fn to_f32(&self) -> Vec<f32> {
    let d = &self.data;
    match self.dtype {
      Ct2Dtype::F32 => d
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect(),
      Ct2Dtype::F16 => d
        .chunks_exact(2)
        .map(|b| mlxrs_core::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect(),
      Ct2Dtype::Bf16 => d
        .chunks_exact(2)
        .map(|b| mlxrs_core::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect(),
      Ct2Dtype::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
      Ct2Dtype::I16 => d
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect(),
      Ct2Dtype::I32 => d
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
        .collect(),
    }
  }

  /// A scalar's value as an integer (int8/16/32 variables; floats truncated).
  pub fn scalar_i64(&self) -> Option<i64> {
    if self.numel() != 1 {
      return None;
    }
    Some(match self.dtype {
      Ct2Dtype::I8 => i64::from(self.data[0] as i8),
      Ct2Dtype::I16 => i64::from(i16::from_le_bytes([self.data[0], self.data[1]])),
      Ct2Dtype::I32 => i64::from(i32::from_le_bytes([
        self.data[0],
        self.data[1],
        self.data[2],
        self.data[3],
      ])),
      _ => self.to_f32()[0] as i64,
    })
  }
}

/// A parsed `model.bin`.
#[derive(Debug, Clone)]
pub struct Ct2Model {
  /// Binary format version.
  pub binary_version: u32,
  /// Spec name, e.g. `WhisperSpec`.
  pub spec: String,
  /// Spec revision.
  pub revision: u32,
  /// Variables by name (aliases resolved into copies).
  pub variables: BTreeMap<String, Ct2Variable>,
}

struct Reader<'a> {
  buf: &'a [u8],
  pos: usize,
}

impl<'a> Reader<'a> {
  fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
    let end = self
      .pos
      .checked_add(n)
      .filter(|&e| e <= self.buf.len())
      .ok_or_else(|| {
        Error::Model(format!(
          "model.bin is truncated: {what} needs {n} bytes at offset {} but the file has {}",
          self.pos,
          self.buf.len()
        ))
      })?;
    let s = &self.buf[self.pos..end];
    self.pos = end;
    Ok(s)
  }
  fn u8(&mut self, what: &str) -> Result<u8> {
    Ok(self.take(1, what)?[0])
  }
  fn u16(&mut self, what: &str) -> Result<u16> {
    let b = self.take(2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
  }
  fn u32(&mut self, what: &str) -> Result<u32> {
    let b = self.take(4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
  }
  fn string(&mut self, what: &str) -> Result<String> {
    let n = self.u16(what)? as usize;
    if n == 0 {
      return Err(Error::Model(format!(
        "model.bin: {what} has length 0 (no NUL terminator)"
      )));
    }
    let b = self.take(n, what)?;
    let s = &b[..n - 1];
    std::str::from_utf8(s).map(str::to_string).map_err(|_| {
      Error::Model(format!(
        "model.bin: {what} is not UTF-8 at offset {}",
        self.pos - n
      ))
    })
  }
}

impl Ct2Model {
  /// Read and parse `path` (a CTranslate2 `model.bin`).
  pub fn read(path: impl AsRef<Path>) -> Result<Ct2Model> {
    let path = path.as_ref();
    let buf = std::fs::read(path).map_err(io_err(path))?;
    Ct2Model::parse(&buf).map_err(|e| match e {
      Error::Model(m) => Error::Model(format!("{}: {m}", path.display())),
      other => other,
    })
  }

  /// Parse the bytes of a `model.bin`.
  pub fn parse(buf: &[u8]) -> Result<Ct2Model> {
    let mut r = Reader { buf, pos: 0 };
    if buf.len() < 4 {
      return Err(Error::Model(
        "model.bin is empty or truncated (no header)".into(),
      ));
    }
    let binary_version = r.u32("the binary version")?;
    if !(4..=6).contains(&binary_version) {
      return Err(Error::Model(format!(
        "not a CTranslate2 model.bin of a supported version (binary version {binary_version}; supported 4 to 6)"
      )));
    }
    let spec = r.string("the spec name")?;
    let revision = r.u32("the spec revision")?;
    let n = r.u32("the variable count")? as usize;
    if n > 1_000_000 {
      return Err(Error::Model(format!(
        "model.bin claims {n} variables; the header is corrupt"
      )));
    }
    let mut variables = BTreeMap::new();
    for i in 0..n {
      let name = r.string(&format!("the name of variable {i}"))?;
      let rank = r.u8(&format!("the rank of {name}"))? as usize;
      let mut shape = Vec::with_capacity(rank);
      for _ in 0..rank {
        shape.push(r.u32(&format!("the shape of {name}"))? as usize);
      }
      let id = r.u8(&format!("the dtype of {name}"))?;
      let dtype = Ct2Dtype::from_id(id)
        .ok_or_else(|| Error::Model(format!("variable {name} has unknown dtype id {id}")))?;
      let nbytes = r.u32(&format!("the byte count of {name}"))? as usize;
      let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
      if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(nbytes) {
        return Err(Error::Model(format!(
          "variable {name}: {nbytes} bytes do not hold shape {shape:?} of {dtype:?}"
        )));
      }
      let data = r.take(nbytes, &format!("the data of {name}"))?.to_vec();
      variables.insert(name, Ct2Variable { shape, dtype, data });
    }
    let n_alias = r.u32("the alias count")? as usize;
    for _ in 0..n_alias {
      let alias = r.string("an alias name")?;
      let target = r.string("an alias target")?;
      let v = variables.get(&target).cloned().ok_or_else(|| {
        Error::Model(format!("alias {alias} points to unknown variable {target}"))
      })?;
      variables.insert(alias, v);
    }
    Ok(Ct2Model {
      binary_version,
      spec,
      revision,
      variables,
    })
  }

  /// A variable, or an error naming it.
  pub fn get(&self, name: &str) -> Result<&Ct2Variable> {
    self
      .variables
      .get(name)
      .ok_or_else(|| Error::Model(format!("model.bin has no variable {name}")))
  }

  /// `name` as f32 values, dequantized with `name_scale` when present
  /// (`q / scale`, one scale per row or a scalar), with its shape.
  pub fn dequantized(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let v = self.get(name)?;
    let mut x = v.to_f32();
    if let Some(s) = self.variables.get(&format!("{name}_scale")) {
      let s = s.to_f32();
      if s.len() == 1 {
        let k = s[0];
        x.iter_mut().for_each(|v| *v /= k);
      } else {
        let rows = v.shape.first().copied().unwrap_or(0);
        if s.len() != rows || rows == 0 {
          return Err(Error::Model(format!(
            "{name}_scale has {} values for {rows} rows",
            s.len()
          )));
        }
        let cols = x.len() / rows;
        for (r, chunk) in x.chunks_mut(cols).enumerate() {
          chunk.iter_mut().for_each(|v| *v /= s[r]);
        }
      }
    }
    Ok((x, v.shape.clone()))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
  }

  fn tiny() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&6u32.to_le_bytes());
    string(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    // an int8 [2, 2] weight with per-row scales
    string(&mut b, "l/weight");
    b.push(2);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.push(1);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&[2u8, 254u8, 4, 8]);
    string(&mut b, "l/weight_scale");
    b.push(1);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&2f32.to_le_bytes());
    b.extend_from_slice(&4f32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    string(&mut b, "m/weight");
    string(&mut b, "l/weight");
    b
  }

  #[test]
  fn parses_dequantizes_and_resolves_aliases() {
    let m = Ct2Model::parse(&tiny()).unwrap();
    assert_eq!(m.spec, "WhisperSpec");
    let (w, s) = m.dequantized("l/weight").unwrap();
    assert_eq!(s, vec![2, 2]);
    assert_eq!(w, vec![1.0, -1.0, 1.0, 2.0]);
    assert_eq!(m.get("m/weight").unwrap().shape, vec![2, 2]);
    assert!(m.get("nope").is_err());
  }

  #[test]
  fn truncation_and_garbage_are_errors() {
    let b = tiny();
    for cut in [0, 3, 10, 30, b.len() - 3] {
      assert!(Ct2Model::parse(&b[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = b.clone();
    bad[0] = 99;
    assert!(matches!(Ct2Model::parse(&bad), Err(Error::Model(m)) if m.contains("version")));
  }
}
