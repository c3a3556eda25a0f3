//! The Qwen2-VL / Qwen2.5-VL vision tower (mlx-vlm `qwen2_vl/vision.py`,
//! `qwen2_5_vl/vision.py`).

use super::*;

// ---------------------------------------------------------------------------
// Vision tower
// ---------------------------------------------------------------------------

pub(super) struct Conv {
  pub(super) weight: Param,
}
module!(Conv { weight });

pub(super) struct PatchEmbed {
  pub(super) proj: Conv,
}
module!(PatchEmbed { proj });

pub(super) struct VisionAttention {
  pub(super) qkv: Linear,
  pub(super) proj: Linear,
  pub(super) num_heads: i32,
  pub(super) scale: f32,
}
module!(VisionAttention { qkv, proj });

/// `apply_rotary_pos_emb_vision(tensor [1, S, H, D], freqs [S, D/2])`.
pub(super) fn rotary_vision(t: &Array, cos: &Array, sin: &Array) -> Result<Array> {
  let out = ops::add(
    &ops::multiply(t, cos)?,
    &ops::multiply(&rotate_half(t)?, sin)?,
  )?;
  Ok(ops::astype(&out, t.dtype())?)
}

impl VisionAttention {
  pub(super) fn forward(&self, x: &Array, cu: &[i32], cos: &Array, sin: &Array) -> Result<Array> {
    let s = x.dim(0).unwrap_or(0);
    let qkv = ops::reshape(&self.qkv.forward(x)?, &[s, 3, self.num_heads, -1])?;
    let qkv = ops::transpose_axes(&qkv, &[1, 0, 2, 3])?;
    let parts = ops::split(&qkv, 3, 0)?;
    let q = rotary_vision(&parts[0], cos, sin)?;
    let k = rotary_vision(&parts[1], cos, sin)?;
    let t = |a: &Array| ops::transpose_axes(a, &[0, 2, 1, 3]);
    let (q, k, v) = (t(&q)?, t(&k)?, t(&parts[2])?);
    let mut outs = Vec::new();
    for win in cu.windows(2) {
      let (a, b) = (win[0], win[1]);
      if b <= a {
        continue;
      }
      let sl = |m: &Array| -> Result<Array> {
        let sh = m.shape();
        Ok(ops::slice(
          m,
          &[0, 0, a, 0],
          &[sh[0], sh[1], b, sh[3]],
          &[1, 1, 1, 1],
        )?)
      };
      outs.push(scaled_dot_product_attention(
        &sl(&q)?,
        &sl(&k)?,
        &sl(&v)?,
        self.scale,
        Mask::None,
      )?);
    }
    let o = if outs.len() == 1 {
      outs.pop().unwrap_or(q)
    } else {
      ops::concatenate_axis(&outs, 2)?
    };
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[s, -1])?;
    Ok(self.proj.forward(&o)?)
  }
}

pub(super) enum VisionMlp {
  /// Qwen2-VL: `fc2(gelu_fast(fc1(x)))`.
  Gelu { fc1: Linear, fc2: Linear },
  /// Qwen2.5-VL: `down(silu(gate(x)) * up(x))`.
  Glu {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
  },
}

impl VisionMlp {
  pub(super) fn forward(&self, x: &Array) -> Result<Array> {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => Ok(fc2.forward(&gelu_fast(&fc1.forward(x)?)?)?),
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => Ok(down_proj.forward(&swiglu(&gate_proj.forward(x)?, &up_proj.forward(x)?)?)?),
    }
  }
}

impl Module for VisionMlp {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => {
        fc1.load(w, &join(prefix, "fc1"));
        fc2.load(w, &join(prefix, "fc2"));
      }
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => {
        gate_proj.load(w, &join(prefix, "gate_proj"));
        up_proj.load(w, &join(prefix, "up_proj"));
        down_proj.load(w, &join(prefix, "down_proj"));
      }
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => {
        fc1.visit(&join(prefix, "fc1"), f);
        fc2.visit(&join(prefix, "fc2"), f);
      }
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => {
        gate_proj.visit(&join(prefix, "gate_proj"), f);
        up_proj.visit(&join(prefix, "up_proj"), f);
        down_proj.visit(&join(prefix, "down_proj"), f);
      }
    }
  }
}

pub(super) struct VisionBlock {
  pub(super) norm1: Norm,
  pub(super) norm2: Norm,
  pub(super) attn: VisionAttention,
  pub(super) mlp: VisionMlp,
}
module!(VisionBlock {
  norm1,
  norm2,
  attn,
  mlp
});

impl VisionBlock {
  pub(super) fn forward(&self, x: &Array, cu: &[i32], cos: &Array, sin: &Array) -> Result<Array> {
    let h = ops::add(
      x,
      &self.attn.forward(&self.norm1.forward(x)?, cu, cos, sin)?,
    )?;
    Ok(ops::add(&h, &self.mlp.forward(&self.norm2.forward(&h)?)?)?)
  }
}

pub(super) struct Merger {
  pub(super) ln_q: Norm,
  pub(super) mlp0: Linear,
  pub(super) mlp2: Linear,
  pub(super) hidden: i32,
}
module!(Merger { ln_q, mlp0 => "mlp.0", mlp2 => "mlp.2" });

impl Merger {
  pub(super) fn forward(&self, x: &Array) -> Result<Array> {
    let x = ops::reshape(&self.ln_q.forward(x)?, &[-1, self.hidden])?;
    Ok(self.mlp2.forward(&gelu_exact(&self.mlp0.forward(&x)?)?)?)
  }
}

/// The vision tower (mlx-vlm's `VisionModel`): pixel patches in, one
/// LM-width feature per merged patch group out.
pub struct VisionTower {
  pub(super) patch_embed: PatchEmbed,
  pub(super) blocks: Vec<VisionBlock>,
  pub(super) merger: Merger,
  pub(super) args: VisionArgs,
  pub(super) family: Family,
  pub(super) width: i32,
  pub(super) rot_inv_freq: Array,
}
module!(VisionTower {
  patch_embed,
  blocks,
  merger
});

/// `(hpos, wpos)` per patch in the processor's (block, sub-block) order
/// (mlx-vlm's `rot_pos_emb` position ids), for all images.
pub(super) fn patch_positions(grids: &[[u32; 3]], ms: usize) -> Vec<[i32; 2]> {
  let mut out = Vec::new();
  for &[t, h, w] in grids {
    let (h, w) = (h as usize, w as usize);
    let mut one = Vec::with_capacity(h * w);
    for bh in 0..h / ms {
      for bw in 0..w / ms {
        for mh in 0..ms {
          for mw in 0..ms {
            one.push([(bh * ms + mh) as i32, (bw * ms + mw) as i32]);
          }
        }
      }
    }
    for _ in 0..t {
      out.extend_from_slice(&one);
    }
  }
  out
}

/// Qwen2.5-VL's `get_window_index`: the permutation of merged-patch groups
/// into windows, and the cumulative window lengths (in patches, deduplicated).
pub fn window_index(
  grids: &[[u32; 3]],
  window_size: i32,
  merge: i32,
  patch: i32,
) -> (Vec<i32>, Vec<i32>) {
  let vws = (window_size / merge / patch).max(1) as usize;
  let unit = merge * merge;
  let mut index = Vec::new();
  let mut cu = vec![0i32];
  let mut id0 = 0i32;
  for &[t, h, w] in grids {
    let (lh, lw) = (h as usize / merge as usize, w as usize / merge as usize);
    let pad_h = vws - lh % vws;
    let pad_w = vws - lw % vws;
    let (nwh, nww) = ((lh + pad_h) / vws, (lw + pad_w) / vws);
    for ti in 0..t as usize {
      for wy in 0..nwh {
        for wx in 0..nww {
          let mut n = 0;
          for y in wy * vws..(wy + 1) * vws {
            for x in wx * vws..(wx + 1) * vws {
              if y < lh && x < lw {
                index.push(id0 + (ti * lh * lw + y * lw + x) as i32);
                n += 1;
              }
            }
          }
          let last = *cu.last().unwrap_or(&0);
          cu.push(last + n * unit);
        }
      }
    }
    id0 += (t as usize * lh * lw) as i32;
  }
  cu.dedup();
  (index, cu)
}

impl VisionTower {
  pub(super) fn new(c: &Qwen2VlConfig) -> Result<VisionTower> {
    let v = &c.vision;
    let fam = c.family;
    let width = match fam {
      Family::Qwen2Vl => v.embed_dim.unwrap_or(1280),
      Family::Qwen25Vl => v.hidden_size.unwrap_or(1280),
    };
    let out_dim = match fam {
      Family::Qwen2Vl => v.hidden_size.unwrap_or(1536),
      Family::Qwen25Vl => v.out_hidden_size.unwrap_or(1536),
    };
    if out_dim != c.text.hidden_size {
      return Err(Error::invalid(format!(
        "config.json: the vision merger outputs {out_dim} features but the language model is {} wide",
        c.text.hidden_size
      )));
    }
    let head_dim = width / v.num_heads;
    let mut blocks = Vec::new();
    for _ in 0..v.depth {
      let mlp = match fam {
        Family::Qwen2Vl => {
          let hid = (width as f32 * v.mlp_ratio) as i32;
          VisionMlp::Gelu {
            fc1: Linear::new(width, hid, true),
            fc2: Linear::new(hid, width, true),
          }
        }
        Family::Qwen25Vl => {
          let hid = v.intermediate_size.unwrap_or(3420);
          VisionMlp::Glu {
            gate_proj: Linear::new(width, hid, true),
            up_proj: Linear::new(width, hid, true),
            down_proj: Linear::new(hid, width, true),
          }
        }
      };
      blocks.push(VisionBlock {
        norm1: Norm::new(fam, width),
        norm2: Norm::new(fam, width),
        attn: VisionAttention {
          qkv: Linear::new(width, 3 * width, true),
          proj: Linear::new(width, width, true),
          num_heads: v.num_heads,
          scale: (head_dim as f32).powf(-0.5),
        },
        mlp,
      });
    }
    let merged = width * v.spatial_merge_size * v.spatial_merge_size;
    Ok(VisionTower {
      patch_embed: PatchEmbed {
        proj: Conv {
          weight: Param::new(&[
            width,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
            v.in_channels,
          ]),
        },
      },
      blocks,
      merger: Merger {
        ln_q: Norm::new(fam, width),
        mlp0: Linear::new(merged, merged, true),
        mlp2: Linear::new(merged, out_dim, true),
        hidden: merged,
      },
      rot_inv_freq: inv_freq(head_dim / 2, 10000.0)?,
      args: v.clone(),
      family: fam,
      width,
    })
  }

  /// The dtype pixel values are cast to (the patch embedding's).
  pub fn dtype(&self) -> Dtype {
    self.patch_embed.proj.weight.value.dtype()
  }

  /// Values per patch the tower expects (`C * T * P * P`).
  pub fn patch_dim(&self) -> i32 {
    let a = &self.args;
    a.in_channels * a.temporal_patch_size * a.patch_size * a.patch_size
  }

  /// Features `[sum(t*h*w) / merge^2, lm_hidden]` for `pixel_values
  /// [sum(t*h*w), C*T*P*P]` and per-image grids (mlx-vlm's
  /// `VisionModel.__call__`).
  pub fn forward(&self, pixel_values: &Array, grids: &[[u32; 3]]) -> Result<Array> {
    let a = &self.args;
    let ms = a.spatial_merge_size as u32;
    let n: i64 = grids
      .iter()
      .map(|g| g[0] as i64 * g[1] as i64 * g[2] as i64)
      .sum();
    if grids.is_empty()
      || grids
        .iter()
        .any(|g| g.contains(&0) || g[1] % ms != 0 || g[2] % ms != 0)
    {
      return Err(Error::invalid(format!(
        "image grids {grids:?} must be non-empty with sides that are multiples of spatial_merge_size {ms}"
      )));
    }
    let ps = pixel_values.shape();
    if ps.len() != 2 || ps[0] as i64 != n || ps[1] != self.patch_dim() {
      return Err(Error::invalid(format!(
        "pixel_values has shape {ps:?}, expected [{n}, {}] for grids {grids:?}",
        self.patch_dim()
      )));
    }
    // Patch embedding: [N, C, T, P, P] -> NDHWC -> Conv3d with stride = kernel.
    let x = ops::astype(pixel_values, self.dtype())?;
    let x = ops::reshape(
      &x,
      &[
        -1,
        a.in_channels,
        a.temporal_patch_size,
        a.patch_size,
        a.patch_size,
      ],
    )?;
    let x = ops::moveaxis(&x, 1, 4)?;
    let k = (a.temporal_patch_size, a.patch_size, a.patch_size);
    let x = ops::conv3d(
      &x,
      &self.patch_embed.proj.weight.value,
      k,
      (0, 0, 0),
      (1, 1, 1),
      1,
    )?;
    let mut x = ops::reshape(&x, &[-1, self.width])?;
    // 2-D rotary embedding: (row, column) per patch.
    let pos = patch_positions(grids, ms as usize);
    let max_grid = grids.iter().map(|g| g[1].max(g[2])).max().unwrap_or(1);
    let seq = ops::arange(0.0, max_grid as f64, 1.0, Dtype::Float32)?;
    let full = ops::outer(&seq, &self.rot_inv_freq)?;
    let flat: Vec<i32> = pos.iter().flat_map(|p| [p[0], p[1]]).collect();
    let ids = Array::from_slice(&flat, &[pos.len() as i32, 2])?;
    let mut rot = ops::reshape(&ops::take_axis(&full, &ids, 0)?, &[pos.len() as i32, -1])?;
    // Full-attention segments: one per image frame.
    let mut cu = vec![0i32];
    for g in grids {
      for _ in 0..g[0] {
        let last = *cu.last().unwrap_or(&0);
        cu.push(last + (g[1] * g[2]) as i32);
      }
    }
    let unit = a.spatial_merge_size * a.spatial_merge_size;
    let mut windows = None;
    if self.family == Family::Qwen25Vl {
      let (idx, cu_w) = window_index(grids, a.window_size, a.spatial_merge_size, a.patch_size);
      let s = n as i32;
      let ia = Array::from_slice(&idx, &[idx.len() as i32])?;
      let perm = |m: &Array| -> Result<Array> {
        let m = ops::reshape(m, &[s / unit, unit, -1])?;
        Ok(ops::reshape(&ops::take_axis(&m, &ia, 0)?, &[s, -1])?)
      };
      x = perm(&x)?;
      rot = perm(&rot)?;
      windows = Some((idx, cu_w));
    }
    // cos / sin [1, S, 1, D] (tile the D/2 frequencies twice).
    let prep = |f: &Array| -> Result<Array> {
      let f = ops::expand_dims(f, 1)?;
      let f = ops::tile(&f, &[1, 1, 2])?;
      Ok(ops::expand_dims(&f, 0)?)
    };
    let cos = prep(&ops::cos(&rot)?)?;
    let sin = prep(&ops::sin(&rot)?)?;
    for (i, blk) in self.blocks.iter().enumerate() {
      let seg = match &windows {
        Some((_, cu_w)) if !a.fullatt_block_indexes.contains(&(i as i32)) => cu_w.as_slice(),
        _ => cu.as_slice(),
      };
      x = blk.forward(&x, seg, &cos, &sin)?;
    }
    let mut out = self.merger.forward(&x)?;
    if let Some((idx, _)) = windows {
      let mut inv = vec![0i32; idx.len()];
      for (pos, &i) in idx.iter().enumerate() {
        inv[i as usize] = pos as i32;
      }
      out = ops::take_axis(&out, &Array::from_slice(&inv, &[inv.len() as i32])?, 0)?;
    }
    Ok(out)
  }
}
