//! Rotary position embeddings with the HF `rope_scaling` families, built as
//! mlx-lm's `rope_utils.initialize_rope` builds them (python `nn.RoPE`,
//! `Llama3RoPE`, `YarnRoPE`, `SuScaledRoPE`, `DynamicNTKScalingRoPE`,
//! `ProportionalRoPE`), all applied with MLX's fused `mx.fast.rope`.

use mlxrs_core::{Array, Error, Result, fast, ops};
use serde_json::Value;

/// A rotary embedding ready to apply.
#[derive(Debug)]
pub struct Rope {
  /// Feature dims rotated (the first `dims` of the last axis).
  pub dims: i32,
  /// Rotate interleaved pairs (GPT-J style) instead of halves.
  pub traditional: bool,
  base: Option<f32>,
  scale: f32,
  freqs: Option<Array>,
  /// Multiply the first `dims` features by this before rotating
  /// (yarn / longrope mscale).
  input_scale: f32,
  dynamic: Option<(f32, i32, f32)>,
}

fn f(v: &Value, key: &str) -> Option<f64> {
  v.get(key).and_then(Value::as_f64)
}

/// `base ** (arange(0, dims, 2) / dims)` in f32, as mlx-lm computes it.
fn base_freqs(base: f32, dims: i32) -> Vec<f32> {
  (0..dims)
    .step_by(2)
    .map(|i| base.powf(i as f32 / dims as f32))
    .collect()
}

impl Rope {
  /// Plain RoPE (`nn.RoPE(dims, traditional, base, scale)`).
  pub fn new(dims: i32, traditional: bool, base: f32, scale: f32) -> Rope {
    Rope {
      dims,
      traditional,
      base: Some(base),
      scale,
      freqs: None,
      input_scale: 1.0,
      dynamic: None,
    }
  }

  fn with_freqs(dims: i32, traditional: bool, freqs: Vec<f32>, input_scale: f32) -> Result<Rope> {
    let n = freqs.len() as i32;
    Ok(Rope {
      dims,
      traditional,
      base: None,
      scale: 1.0,
      freqs: Some(Array::from_slice(&freqs, &[n])?),
      input_scale,
      dynamic: None,
    })
  }

  /// mlx-lm's `initialize_rope(dims, base, traditional, scaling_config,
  /// max_position_embeddings)`. `scaling` is config.json's `rope_scaling`
  /// (or `None`). Unknown types are an error naming the type.
  pub fn from_config(
    dims: i32,
    base: f32,
    traditional: bool,
    scaling: Option<&Value>,
    max_position_embeddings: Option<i32>,
  ) -> Result<Rope> {
    static NULL: Value = Value::Null;
    let scaling = scaling.filter(|v| !v.is_null());
    // The scaling object of the typed branches below (each needs one).
    let s = scaling.unwrap_or(&NULL);
    let rope_type = scaling
      .and_then(|s| s.get("type").or_else(|| s.get("rope_type")))
      .and_then(Value::as_str)
      .unwrap_or("default");
    let need = |k: &str| -> Result<f64> {
      scaling.and_then(|s| f(s, k)).ok_or_else(|| {
        Error::InvalidArgument(format!("rope_scaling ({rope_type}) needs a numeric {k:?}"))
      })
    };
    match rope_type {
      "default" | "mrope" => Ok(Rope::new(dims, traditional, base, 1.0)),
      "linear" => Ok(Rope::new(
        dims,
        traditional,
        base,
        1.0 / need("factor")? as f32,
      )),
      "dynamic" => {
        let mut r = Rope::new(dims, traditional, base, 1.0);
        r.dynamic = Some((
          base,
          max_position_embeddings.unwrap_or(2048),
          need("factor")? as f32,
        ));
        Ok(r)
      }
      "llama3" => {
        let factor = need("factor")? as f32;
        let low = f(s, "low_freq_factor").unwrap_or(1.0) as f32;
        let high = f(s, "high_freq_factor").unwrap_or(4.0) as f32;
        let old = f(s, "original_max_position_embeddings").unwrap_or(8192.0) as f32;
        let low_wl = old / low;
        let high_wl = old / high;
        let freqs = base_freqs(base, dims)
          .into_iter()
          .map(|fr| {
            let wl = 2.0 * std::f32::consts::PI * fr;
            let fr2 = if wl > low_wl { fr * factor } else { fr };
            let medium = wl > high_wl && wl < low_wl;
            if medium {
              let smooth = (old / wl - low) / (high - low);
              fr2 / ((1.0 - smooth) / factor + smooth)
            } else {
              fr2
            }
          })
          .collect();
        Rope::with_freqs(dims, traditional, freqs, 1.0)
      }
      "yarn" | "deepseek_yarn" | "telechat3-yarn" => {
        let factor = need("factor")?;
        let orig = f(s, "original_max_position_embeddings").unwrap_or(4096.0);
        let beta_fast = f(s, "beta_fast").unwrap_or(32.0);
        let beta_slow = f(s, "beta_slow").unwrap_or(1.0);
        let mscale = f(s, "mscale").unwrap_or(1.0);
        let mscale_all = f(s, "mscale_all_dim").unwrap_or(0.0);
        let b = base as f64;
        let d = dims as f64;
        let corr = |rot: f64| d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * b.ln());
        let lo = corr(beta_fast).floor().max(0.0);
        let hi = corr(beta_slow).ceil().min(d - 1.0);
        let get_m = |sc: f64, m: f64| {
          if sc <= 1.0 {
            1.0
          } else {
            0.1 * m * sc.ln() + 1.0
          }
        };
        let m = get_m(factor, mscale) / get_m(factor, mscale_all);
        let (lo32, mut hi32) = (lo as f32, hi as f32);
        if lo32 == hi32 {
          hi32 += 0.001;
        }
        let extra = base_freqs(base, dims);
        let freqs = extra
          .iter()
          .enumerate()
          .map(|(i, &fe)| {
            let ramp = ((i as f32 - lo32) / (hi32 - lo32)).clamp(0.0, 1.0);
            let mask = 1.0 - ramp;
            let fi = factor as f32 * fe;
            (fi * fe) / (fi * mask + fe * (1.0 - mask))
          })
          .collect();
        Rope::with_freqs(dims, traditional, freqs, m as f32)
      }
      "longrope" => {
        let orig = need("original_max_position_embeddings")?;
        let long = s
          .get("long_factor")
          .ok_or_else(|| Error::InvalidArgument("longrope needs long_factor".into()))?;
        let long: Vec<f32> = match long {
          Value::Array(v) => v.iter().map(|x| x.as_f64().unwrap_or(1.0) as f32).collect(),
          Value::Number(n) => vec![n.as_f64().unwrap_or(1.0) as f32; (dims / 2) as usize],
          _ => {
            return Err(Error::InvalidArgument(
              "longrope long_factor must be numbers".into(),
            ));
          }
        };
        let bf = base_freqs(base, dims);
        if long.len() != bf.len() {
          return Err(Error::InvalidArgument(format!(
            "longrope long_factor has {} entries, expected {}",
            long.len(),
            bf.len()
          )));
        }
        let freqs = bf.iter().zip(&long).map(|(a, b)| a * b).collect();
        let maxpos = max_position_embeddings.unwrap_or(131072) as f64;
        let factor = maxpos / orig;
        let sc = if factor <= 1.0 {
          1.0
        } else {
          (1.0 + factor.ln() / orig.ln()).sqrt()
        };
        let sc = s.get("long_mscale").and_then(Value::as_f64).unwrap_or(sc);
        // SuScaledRoPE is never "traditional".
        Rope::with_freqs(dims, false, freqs, sc as f32)
      }
      "proportional" => {
        let rotated = (dims as f64 * f(s, "partial_rotary_factor").unwrap_or(1.0)) as i32;
        if rotated > dims {
          return Err(Error::InvalidArgument(
            "rotated_dims should be smaller than dims".into(),
          ));
        }
        let factor = f(s, "factor").unwrap_or(1.0) as f32;
        let mut freqs: Vec<f32> = (0..rotated)
          .step_by(2)
          .map(|i| factor * base.powf(i as f32 / dims as f32))
          .collect();
        freqs.extend(std::iter::repeat_n(
          f32::INFINITY,
          ((dims - rotated) / 2) as usize,
        ));
        Rope::with_freqs(dims, traditional, freqs, 1.0)
      }
      other => Err(Error::InvalidArgument(format!(
        "unsupported rope_scaling type {other:?}"
      ))),
    }
  }

  /// Rotate `x` (`[B, heads, T, head_dim]`) for positions `offset..offset+T`.
  pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
    let x = if self.input_scale != 1.0 {
      let nd = x.ndim();
      let head = x.dim(-1).unwrap_or(0);
      let s = Array::scalar_as(self.input_scale as f64, x.dtype())?;
      if self.dims >= head {
        ops::multiply(x, &s)?
      } else {
        // Scale only the rotated part: x[..., :dims] *= s.
        let mut start = vec![0; nd];
        let stop = x.shape();
        let strides = vec![1; nd];
        let mut stop_r = stop.clone();
        stop_r[nd - 1] = self.dims;
        let part = ops::slice(x, &start, &stop_r, &strides)?;
        start[nd - 1] = 0;
        ops::slice_update(x, &ops::multiply(&part, &s)?, &start, &stop_r, &strides)?
      }
    } else {
      x.clone()
    };
    if let Some((base, maxpos, factor)) = self.dynamic {
      let t = x.dim(-2).unwrap_or(1);
      let seq = (t + offset).max(maxpos) as f32;
      let d = self.dims as f32;
      let b = base * ((factor * seq / maxpos as f32) - (factor - 1.0)).powf(d / (d - 2.0));
      return fast::rope(&x, self.dims, self.traditional, Some(b), 1.0, offset, None);
    }
    fast::rope(
      &x,
      self.dims,
      self.traditional,
      self.base,
      self.scale,
      offset,
      self.freqs.as_ref(),
    )
  }
}
