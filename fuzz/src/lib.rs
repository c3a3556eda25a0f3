//! What the fuzz targets run: write the input to a file, then validate and
//! load it with mlxrs-core and evaluate every array it yields. Any outcome
//! but a crash (or a hang) is a pass: corrupt input must come back as `Err`.

use std::path::PathBuf;

use mlxrs_core::Array;

/// A per-process, per-thread scratch file (the loaders take paths).
fn scratch(ext: &str) -> PathBuf {
  let t = format!("{:?}", std::thread::current().id());
  let t: String = t.chars().filter(char::is_ascii_digit).collect();
  std::env::temp_dir().join(format!("mlxrs-fuzz-{}-{t}.{ext}", std::process::id()))
}

fn eval_all<'a>(arrays: impl Iterator<Item = &'a mut Array>) {
  for a in arrays {
    // Evaluation errors are fine; crashes are not.
    let _ = a.eval();
  }
}

/// `read_safetensors_header` and `load_safetensors` on `data`.
pub fn safetensors(data: &[u8]) {
  let p = scratch("safetensors");
  if std::fs::write(&p, data).is_err() {
    return;
  }
  let _ = mlxrs_core::io::read_safetensors_header(&p);
  if let Ok((mut arrays, _)) = mlxrs_core::io::load_safetensors(&p) {
    eval_all(arrays.values_mut());
  }
}

/// `read_gguf_header` and `load_gguf` on `data`.
pub fn gguf(data: &[u8]) {
  let p = scratch("gguf");
  if std::fs::write(&p, data).is_err() {
    return;
  }
  let _ = mlxrs_core::io::read_gguf_header(&p);
  if let Ok((mut arrays, mut meta)) = mlxrs_core::io::load_gguf(&p) {
    eval_all(arrays.values_mut());
    eval_all(meta.values_mut().filter_map(|m| match m {
      mlxrs_core::io::GgufMeta::Array(a) => Some(a),
      _ => None,
    }));
  }
}

/// A deterministic mutator (xorshift): flips, overwrites with interesting
/// values, inserts, deletes and truncates bytes of `seed`. Used by the
/// stable-toolchain smoke test (`tests/mutate.rs`) when cargo-fuzz is not
/// available.
pub struct Mutator(u64);

impl Mutator {
  /// A mutator seeded with `seed` (non-zero).
  pub fn new(seed: u64) -> Self {
    Mutator(seed | 1)
  }

  fn next(&mut self) -> u64 {
    let mut x = self.0;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    self.0 = x;
    x
  }

  fn below(&mut self, n: usize) -> usize {
    if n == 0 {
      0
    } else {
      (self.next() % n as u64) as usize
    }
  }

  /// 1 to 4 random edits of `data`.
  pub fn mutate(&mut self, data: &mut Vec<u8>) {
    const INTERESTING: &[u64] = &[
      0,
      1,
      2,
      4,
      7,
      8,
      9,
      12,
      13,
      31,
      32,
      255,
      0x7fff_ffff,
      0x8000_0000,
      0xffff_ffff,
      u64::MAX,
      1 << 40,
    ];
    for _ in 0..1 + self.below(4) {
      let at = self.below(data.len().max(1));
      match self.below(6) {
        0 if !data.is_empty() => data[at] ^= 1 << self.below(8),
        1 if !data.is_empty() => data[at] = self.next() as u8,
        2 => {
          let v = INTERESTING[self.below(INTERESTING.len())];
          let w = [1, 2, 4, 8][self.below(4)];
          for (k, b) in v.to_le_bytes()[..w].iter().enumerate() {
            if let Some(x) = data.get_mut(at + k) {
              *x = *b;
            }
          }
        }
        3 => data.insert(at.min(data.len()), self.next() as u8),
        4 if !data.is_empty() => {
          data.remove(at);
        }
        _ => data.truncate(self.below(data.len() + 1)),
      }
    }
  }
}
