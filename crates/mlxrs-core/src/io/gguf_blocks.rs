//! GGML block formats: dequantization of quantized GGUF tensor data, and
//! the exact MLX affine (`w = scale * q + bias`, group 32) form of the types
//! that have one.
//!
//! Python twin: the `gguf` package's `gguf/quants.py` (`dequantize`, the
//! `dequantize_blocks` of `Q4_0` ... `Q6_K`), whose arithmetic (float32,
//! same operation order) [`dequantize`] follows, so its values are equal
//! bit for bit. Block layouts are ggml's (`ggml-common.h`, `block_q4_K`
//! ...): every block starts with its float16 scale(s) or ends with them
//! (Q2_K, Q3_K, Q6_K), then packed integers.
//!
//! | type | elements / bytes per block | exact MLX affine form |
//! |---|---|---|
//! | Q4_0, Q4_1 | 32 / 18, 20 | 4 bits, scale `d`, bias `-8d` / `m` (float16) |
//! | Q5_0, Q5_1 | 32 / 22, 24 | 5 bits, scale `d`, bias `-16d` / `m` (float16) |
//! | Q8_0 | 32 / 34 | 8 bits, scale `d`, bias `-128d` (float16) |
//! | Q4_K, Q5_K | 256 / 144, 176 | 4 / 5 bits per 32-sub-block: scale `d*sc`, bias `-dmin*m` (float32, exact) |
//! | Q2_K, Q3_K, Q6_K | 256 / 84, 110, 210 | none: 16-element sub-blocks, finer than MLX's smallest group (32) |
//! | IQ4_NL, IQ4_XS | 32 / 18, 256 / 136 | none: 16 non-uniform levels (`kvalues`) |

/// GGML type ids (ggml.h's `ggml_type`) of the block formats here.
pub const Q4_0: u32 = 2;
/// `q4_1`
pub const Q4_1: u32 = 3;
/// `q5_0`
pub const Q5_0: u32 = 6;
/// `q5_1`
pub const Q5_1: u32 = 7;
/// `q8_0`
pub const Q8_0: u32 = 8;
/// `q2_k`
pub const Q2_K: u32 = 10;
/// `q3_k`
pub const Q3_K: u32 = 11;
/// `q4_k`
pub const Q4_K: u32 = 12;
/// `q5_k`
pub const Q5_K: u32 = 13;
/// `q6_k`
pub const Q6_K: u32 = 14;
/// `iq4_nl`
pub const IQ4_NL: u32 = 20;
/// `iq4_xs`
pub const IQ4_XS: u32 = 23;

/// The 16 levels of IQ4_NL / IQ4_XS (ggml's `kvalues_iq4nl`).
const KVALUES_IQ4NL: [i8; 16] = [
  -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const QK_K: usize = 256;

/// `(elements, bytes)` per block of a block-quantized type (gguf-py's
/// `GGML_QUANT_SIZES`), `None` for other types.
pub fn block_size(t: u32) -> Option<(usize, usize)> {
  Some(match t {
    Q4_0 => (32, 18),
    Q4_1 => (32, 20),
    Q5_0 => (32, 22),
    Q5_1 => (32, 24),
    Q8_0 => (32, 34),
    Q2_K => (QK_K, 84),
    Q3_K => (QK_K, 110),
    Q4_K => (QK_K, 144),
    Q5_K => (QK_K, 176),
    Q6_K => (QK_K, 210),
    IQ4_NL => (32, 18),
    IQ4_XS => (QK_K, 136),
    _ => return None,
  })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
  half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Checks that `data` holds exactly the blocks of `n` elements of type `t`;
/// returns the block geometry.
fn blocks(t: u32, data: &[u8], n: usize) -> Result<(usize, usize), String> {
  let (per, bytes) = block_size(t).ok_or_else(|| format!("GGML type {t} is not a block format"))?;
  if n % per != 0 {
    return Err(format!(
      "{n} elements are not whole blocks of {per} (GGML type {t})"
    ));
  }
  let need = n / per * bytes;
  if data.len() != need {
    return Err(format!(
      "{} bytes of block data for {n} elements of GGML type {t}, expected {need}",
      data.len()
    ));
  }
  Ok((per, bytes))
}

/// Q4_K / Q5_K 6-bit sub-block scales and mins (gguf-py's
/// `Q4_K.get_scale_min`).
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
  let (d, m, md) = (&s[0..4], &s[4..8], &s[8..12]);
  let mut sc = [0u8; 8];
  let mut mn = [0u8; 8];
  for j in 0..4 {
    sc[j] = d[j] & 0x3F;
    mn[j] = m[j] & 0x3F;
    sc[j + 4] = (md[j] & 0x0F) | ((d[j] >> 2) & 0x30);
    mn[j + 4] = (md[j] >> 4) | ((m[j] >> 2) & 0x30);
  }
  (sc, mn)
}

/// The 4-bit values of a 32-element Q4_0 / Q4_1 / Q5_x block: element `j` is
/// the low nibble of byte `j`, element `16 + j` its high nibble.
fn nibbles32(qs: &[u8], out: &mut [u8]) {
  for j in 0..16 {
    out[j] = qs[j] & 0x0F;
    out[j + 16] = qs[j] >> 4;
  }
}

/// The 4-bit values of a K-quant super-block (Q4_K / Q5_K): four chunks of
/// 32 bytes, each giving 32 low nibbles then 32 high nibbles.
fn nibbles256(qs: &[u8], out: &mut [u8]) {
  for c in 0..4 {
    for i in 0..32 {
      out[64 * c + i] = qs[32 * c + i] & 0x0F;
      out[64 * c + 32 + i] = qs[32 * c + i] >> 4;
    }
  }
}

/// The block-quantized data of `n` elements of GGML type `t` as float32
/// (python: `gguf.quants.dequantize(data, qtype)`). Errors for a type that
/// is not a block format or data of the wrong size.
pub fn dequantize(t: u32, data: &[u8], n: usize) -> Result<Vec<f32>, String> {
  let (per, bytes) = blocks(t, data, n)?;
  let mut out = vec![0f32; n];
  let mut q = [0u8; QK_K];
  for (b, o) in data.chunks_exact(bytes).zip(out.chunks_exact_mut(per)) {
    match t {
      Q4_0 => {
        let d = f16_at(b, 0);
        nibbles32(&b[2..18], &mut q);
        for (o, &q) in o.iter_mut().zip(&q[..32]) {
          *o = d * (q as i8 - 8) as f32;
        }
      }
      Q4_1 => {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        nibbles32(&b[4..20], &mut q);
        for (o, &q) in o.iter_mut().zip(&q[..32]) {
          *o = d * q as f32 + m;
        }
      }
      Q5_0 | Q5_1 => {
        let (d, m, at) = if t == Q5_0 {
          (f16_at(b, 0), 0.0, 2)
        } else {
          (f16_at(b, 0), f16_at(b, 2), 4)
        };
        let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        nibbles32(&b[at + 4..at + 20], &mut q);
        for (i, o) in o.iter_mut().enumerate() {
          let v = q[i] | ((((qh >> i) & 1) as u8) << 4);
          *o = if t == Q5_0 {
            d * (v as i8 - 16) as f32
          } else {
            d * v as f32 + m
          };
        }
      }
      Q8_0 => {
        let d = f16_at(b, 0);
        for (o, &x) in o.iter_mut().zip(&b[2..34]) {
          *o = x as i8 as f32 * d;
        }
      }
      Q2_K => {
        // scales[16] qs[64] d dmin; element e = 128h + 32k + i is bits
        // 2k..2k+2 of qs[32h + i]; sub-block e / 16.
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for (e, o) in o.iter_mut().enumerate() {
          let (h, k, i) = (e / 128, (e % 128) / 32, e % 32);
          let qv = (qs[32 * h + i] >> (2 * k)) & 3;
          let s = scales[e / 16];
          let dl = d * (s & 0x0F) as f32;
          let ml = dmin * (s >> 4) as f32;
          *o = dl * qv as f32 - ml;
        }
      }
      Q3_K => {
        // hmask[32] qs[64] scales[12] d.
        let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
        let d = f16_at(b, 108);
        let mut dl = [0f32; 16];
        for (tix, dl) in dl.iter_mut().enumerate() {
          let l = (sc[tix % 8] >> (4 * (tix / 8))) & 0x0F;
          let hi = (sc[8 + tix % 4] >> (2 * (tix / 4))) & 0x03;
          *dl = d * ((l | (hi << 4)) as i8 - 32) as f32;
        }
        for (e, o) in o.iter_mut().enumerate() {
          let (h, k, i) = (e / 128, (e % 128) / 32, e % 32);
          let ql = ((qs[32 * h + i] >> (2 * k)) & 3) as i8;
          let hb = ((hmask[i] >> (e / 32)) & 1) ^ 1;
          *o = dl[e / 16] * (ql - ((hb << 2) as i8)) as f32;
        }
      }
      Q4_K | Q5_K => {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = k_scale_min(&b[4..16]);
        let (qh, qs) = if t == Q4_K {
          (None, &b[16..144])
        } else {
          (Some(&b[16..48]), &b[48..176])
        };
        nibbles256(qs, &mut q);
        for (e, o) in o.iter_mut().enumerate() {
          let j = e / 32;
          let mut v = q[e];
          if let Some(qh) = qh {
            v |= ((qh[e % 32] >> j) & 1) << 4;
          }
          let dl = d * sc[j] as f32;
          let ml = dmin * mn[j] as f32;
          *o = dl * v as f32 - ml;
        }
      }
      Q6_K => {
        // ql[128] qh[64] scales[16] (int8) d.
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for (e, o) in o.iter_mut().enumerate() {
          let (h, r) = (e / 128, e % 128);
          let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
          let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
          let v = (lo | (hi << 4)) as i8 - 32;
          let dl = d * sc[e / 16] as i8 as f32;
          *o = dl * v as f32;
        }
      }
      IQ4_NL => {
        let d = f16_at(b, 0);
        nibbles32(&b[2..18], &mut q);
        for (o, &q) in o.iter_mut().zip(&q[..32]) {
          *o = d * KVALUES_IQ4NL[q as usize] as f32;
        }
      }
      IQ4_XS => {
        // d, scales_h (u16), scales_l[4], qs[128]; sub-block t of 32:
        // 6-bit scale (low nibble t of scales_l, bits 2t.. of scales_h) - 32,
        // values: low nibbles of qs[16t..16t+16], then their high nibbles.
        let d = f16_at(b, 0);
        let sh = u16::from_le_bytes([b[2], b[3]]);
        let (sl, qs) = (&b[4..8], &b[8..136]);
        for (t, o) in o.chunks_exact_mut(32).enumerate() {
          let l = (sl[t / 2] >> (4 * (t % 2))) & 0x0F;
          let h = ((sh >> (2 * t)) & 0x03) as u8;
          let dl = d * ((l | (h << 4)) as i8 - 32) as f32;
          nibbles32(&qs[16 * t..16 * t + 16], &mut q);
          for (o, &q) in o.iter_mut().zip(&q[..32]) {
            *o = dl * KVALUES_IQ4NL[q as usize] as f32;
          }
        }
      }
      _ => unreachable!("blocks() accepted only the types above"),
    }
  }
  Ok(out)
}

/// A block-quantized tensor in MLX's affine form (`mx.quantize`'s output,
/// mode `affine`, group 32): per element `w = scales[g] * q + biases[g]`
/// with `g = element / 32`, exactly the values [`dequantize`] gives.
#[derive(Debug, Clone)]
pub struct Affine {
  /// Bits per value (4, 5 or 8).
  pub bits: u32,
  /// Packed values: per row a little-endian bit stream of `bits`-bit
  /// values in uint32 words (MLX's layout), `bits` words per group.
  pub packed: Vec<u32>,
  /// One scale per group of 32.
  pub scales: Vec<f32>,
  /// One bias per group of 32.
  pub biases: Vec<f32>,
  /// Whether scales and biases are exact in float16 (the 32-element block
  /// types, whose scale is a float16); K-quant sub-block scales need float32.
  pub f16_exact: bool,
}

/// Whether [`to_affine`] handles type `t` exactly.
pub fn has_affine(t: u32) -> bool {
  matches!(t, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K)
}

/// Append the `bits`-bit values `q` (one group of 32) to `out` as MLX packs
/// them: a little-endian bit stream in uint32 words (`bits` words).
fn pack_group(q: &[u8], bits: u32, out: &mut Vec<u32>) {
  let mut acc: u64 = 0;
  let mut n = 0u32;
  for &v in q {
    acc |= (v as u64) << n;
    n += bits;
    if n >= 32 {
      out.push(acc as u32);
      acc >>= 32;
      n -= 32;
    }
  }
  debug_assert_eq!(n, 0);
}

/// The 4 packed words of a Q4_0 / Q4_1 block's 16 value bytes `qs`
/// (element `j` the low nibble of `qs[j]`, `16 + j` its high nibble), in
/// MLX's layout (element `i` at bits `4 * (i % 8)` of word `i / 8`):
/// branch-free nibble compaction, 8 values per step.
fn pack_q4_block(qs: &[u8], out: &mut Vec<u32>) {
  // Pack the nibbles held one per byte (low 4 bits) in `x` into a word.
  fn compact(x: u64) -> u32 {
    let y = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    let y = (y | (y >> 8)) & 0x0000_FFFF_0000_FFFF;
    ((y | (y >> 16)) & 0xFFFF_FFFF) as u32
  }
  let mut a = [0u8; 8];
  a.copy_from_slice(&qs[0..8]);
  let lo = u64::from_le_bytes(a);
  a.copy_from_slice(&qs[8..16]);
  let hi = u64::from_le_bytes(a);
  const M: u64 = 0x0F0F_0F0F_0F0F_0F0F;
  out.push(compact(lo & M));
  out.push(compact(hi & M));
  out.push(compact((lo >> 4) & M));
  out.push(compact((hi >> 4) & M));
}

/// The exact MLX affine form of `n` elements of block type `t` (see the
/// module table), or an error for a type without one ([`has_affine`]) or
/// data of the wrong size. Rows are whole groups (every block type's block
/// is a multiple of 32 elements), so the packing is row-independent.
pub fn to_affine(t: u32, data: &[u8], n: usize) -> Result<Affine, String> {
  if !has_affine(t) {
    return Err(format!(
      "GGML type {t} has no exact MLX affine form (16-element sub-blocks)"
    ));
  }
  let (per, bytes) = blocks(t, data, n)?;
  let bits = match t {
    Q4_0 | Q4_1 | Q4_K => 4,
    Q5_0 | Q5_1 | Q5_K => 5,
    _ => 8,
  };
  let groups = n / 32;
  let mut out = Affine {
    bits,
    packed: Vec::with_capacity(groups * bits as usize),
    scales: Vec::with_capacity(groups),
    biases: Vec::with_capacity(groups),
    f16_exact: per == 32,
  };
  let mut q = [0u8; QK_K];
  for b in data.chunks_exact(bytes) {
    // Fast paths (no per-value loop) for the common 32-element types.
    match t {
      Q4_0 => {
        let d = f16_at(b, 0);
        pack_q4_block(&b[2..18], &mut out.packed);
        out.scales.push(d);
        out.biases.push(-8.0 * d);
        continue;
      }
      Q4_1 => {
        pack_q4_block(&b[4..20], &mut out.packed);
        out.scales.push(f16_at(b, 0));
        out.biases.push(f16_at(b, 2));
        continue;
      }
      Q8_0 => {
        // int8 + 128 = flipping each byte's top bit.
        for w in b[2..34].chunks_exact(4) {
          out
            .packed
            .push(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ 0x8080_8080);
        }
        let d = f16_at(b, 0);
        out.scales.push(d);
        out.biases.push(-128.0 * d);
        continue;
      }
      _ => {}
    }
    match t {
      Q5_0 | Q5_1 => {
        let at = if t == Q5_0 { 2 } else { 4 };
        let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        nibbles32(&b[at + 4..at + 20], &mut q);
        for (i, v) in q[..32].iter_mut().enumerate() {
          *v |= (((qh >> i) & 1) as u8) << 4;
        }
        let d = f16_at(b, 0);
        out.scales.push(d);
        out
          .biases
          .push(if t == Q5_0 { -16.0 * d } else { f16_at(b, 2) });
      }
      Q4_K | Q5_K => {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = k_scale_min(&b[4..16]);
        let qs = if t == Q4_K { &b[16..144] } else { &b[48..176] };
        nibbles256(qs, &mut q);
        if t == Q5_K {
          let qh = &b[16..48];
          for (e, v) in q.iter_mut().enumerate() {
            *v |= ((qh[e % 32] >> (e / 32)) & 1) << 4;
          }
        }
        for j in 0..8 {
          out.scales.push(d * sc[j] as f32);
          out.biases.push(-(dmin * mn[j] as f32));
        }
      }
      _ => unreachable!("has_affine() admitted only the types above"),
    }
    for g in q[..per].chunks_exact(32) {
      pack_group(g, bits, &mut out.packed);
    }
  }
  Ok(out)
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Deterministic pseudo-random bytes.
  fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
      .map(|_| {
        s = s
          .wrapping_mul(6364136223846793005)
          .wrapping_add(1442695040888963407);
        (s >> 33) as u8
      })
      .collect()
  }

  /// Random blocks with sane float16 scales (finite, small).
  fn random_blocks(t: u32, nblocks: usize, seed: u64) -> Vec<u8> {
    let (_, bytes_per) = block_size(t).unwrap();
    let mut data = bytes(nblocks * bytes_per, seed);
    let f16_slots: &[usize] = match t {
      Q4_0 | Q5_0 | Q8_0 => &[0],
      Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
      Q2_K => &[80, 82],
      Q3_K => &[108],
      Q6_K => &[208],
      IQ4_NL | IQ4_XS => &[0],
      _ => unreachable!(),
    };
    for (k, b) in data.chunks_exact_mut(bytes_per).enumerate() {
      for (j, &at) in f16_slots.iter().enumerate() {
        let v = half::f16::from_f32(0.001 * (1 + (k * 7 + j * 3) % 13) as f32);
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
      }
    }
    data
  }

  #[test]
  fn affine_form_equals_dequantized_values() {
    for t in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K] {
      let (per, _) = block_size(t).unwrap();
      let n = per * 3;
      let data = random_blocks(t, 3, t as u64);
      let want = dequantize(t, &data, n).unwrap();
      let a = to_affine(t, &data, n).unwrap();
      // Unpack the bit stream and apply scale * q + bias.
      let bits = a.bits as usize;
      for (e, &w) in want.iter().enumerate() {
        let g = e / 32;
        let bit = g * 32 * bits + (e % 32) * bits;
        let word = |i: usize| a.packed[i] as u64;
        let stream = word(bit / 32) | (word((bit / 32 + 1).min(a.packed.len() - 1)) << 32);
        let q = (stream >> (bit % 32)) & ((1 << bits) - 1);
        let got = a.scales[g] * q as f32 + a.biases[g];
        assert_eq!(got, w, "type {t} element {e}");
      }
      if a.f16_exact {
        for v in a.scales.iter().chain(&a.biases) {
          assert_eq!(half::f16::from_f32(*v).to_f32(), *v, "type {t}");
        }
      }
    }
  }

  #[test]
  fn wrong_sizes_are_errors() {
    assert!(dequantize(Q4_K, &[0u8; 143], 256).is_err());
    assert!(dequantize(Q4_K, &[0u8; 144], 255).is_err());
    assert!(dequantize(0, &[0u8; 4], 1).is_err());
    assert!(to_affine(Q6_K, &[0u8; 210], 256).is_err());
    assert!(dequantize(Q6_K, &[0u8; 210], 256).is_ok());
  }
}
