//! Pooling token embeddings into one vector per text (python
//! `sentence_transformers...Pooling._forward_padded`), and the modules after
//! it (`Dense`, `Normalize`).

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{Linear, module};

use crate::activation::Activation;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::folder::{DenseActivation, DenseConfig, PoolingConfig, PoolingMode};

/// Pool `h` `[B, T, H]` over the tokens `mask` (`[B, T]`, host, row-major;
/// 1 = pooled) selects, concatenating the configured modes: `[B, modes*H]`.
///
/// `mask` is the attention mask with prompt tokens zeroed when the pooling
/// excludes the prompt (python `_exclude_prompt_from_mask`); padding is on
/// the right.
pub fn pool(
  h: &Array,
  mask: &[i32],
  batch: usize,
  seq: usize,
  cfg: &PoolingConfig,
) -> Result<Array> {
  let hs = h.shape();
  let hidden = hs[2];
  let (b, t) = (batch as i32, seq as i32);
  let mask_f: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
  let m = Array::from_slice(&mask_f, &[b, t, 1])?;
  let mut outs = Vec::with_capacity(cfg.modes.len());
  for &mode in &cfg.modes {
    let v = match mode {
      PoolingMode::Cls | PoolingMode::LastToken => {
        // cls: first pooled token (argmax of the mask: row 0 when none);
        // lasttoken: last pooled token, zeros when none.
        let mut rows = Vec::with_capacity(batch);
        let mut keep = Vec::with_capacity(batch);
        for r in 0..batch {
          let row = &mask[r * seq..(r + 1) * seq];
          let idx = if mode == PoolingMode::Cls {
            keep.push(1.0f32);
            row.iter().position(|&x| x != 0).unwrap_or(0)
          } else {
            match row.iter().rposition(|&x| x != 0) {
              Some(i) => {
                keep.push(1.0);
                i
              }
              None => {
                keep.push(0.0);
                0
              }
            }
          };
          rows.push((r * seq + idx) as i32);
        }
        let flat = ops::reshape(h, &[b * t, hidden])?;
        let picked = ops::take_axis(&flat, &Array::from_slice(&rows, &[b])?, 0)?;
        (&picked * &Array::from_slice(&keep, &[b, 1])?)?
      }
      PoolingMode::Max => {
        let neg = Array::scalar_as(f64::NEG_INFINITY, Dtype::Float32)?;
        let valid = ops::greater(&m, &Array::scalar_as(0.0, Dtype::Float32)?)?;
        ops::max_axis(&ops::where_(&valid, h, &neg)?, 1, false)?
      }
      PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
        let sum = ops::sum_axis(&(h * &m)?, 1, false)?;
        let count = ops::maximum(
          &ops::sum_axis(&m, 1, false)?,
          &Array::scalar_as(1e-9, Dtype::Float32)?,
        )?;
        let den = if mode == PoolingMode::Mean {
          count
        } else {
          ops::sqrt(&count)?
        };
        (&sum / &den)?
      }
      PoolingMode::WeightedMean => {
        // Weights 1, 2, 3, ... by position (no left padding here).
        let w = ops::arange(1.0, f64::from(t) + 1.0, 1.0, Dtype::Float32)?;
        let wm = (&m * &ops::reshape(&w, &[1, t, 1])?)?;
        let sum = ops::sum_axis(&(h * &wm)?, 1, false)?;
        let den = ops::maximum(
          &ops::sum_axis(&wm, 1, false)?,
          &Array::scalar_as(1e-9, Dtype::Float32)?,
        )?;
        (&sum / &den)?
      }
    };
    outs.push(v);
  }
  if outs.len() == 1 {
    Ok(outs.pop().expect("one mode"))
  } else {
    Ok(ops::concatenate_axis(&outs, 1)?)
  }
}

/// L2 normalization over the last axis (python `F.normalize(x, p=2,
/// dim=-1)`: `x / max(‖x‖, 1e-12)`).
pub fn l2_normalize(x: &Array) -> Result<Array> {
  let n = ops::sqrt(&ops::sum_axis(&ops::square(x)?, -1, true)?)?;
  let n = ops::maximum(&n, &Array::scalar_as(1e-12, Dtype::Float32)?)?;
  Ok((x / &n)?)
}

/// A loaded `Dense` module (python `sentence_transformers.models.Dense`:
/// an `nn.Linear`, its activation, and an optional residual projection).
pub struct Dense {
  linear: Linear,
  residual: Option<Linear>,
  use_residual: bool,
  act: Activation,
  /// Output width.
  pub out_features: usize,
  /// Input width.
  pub in_features: usize,
}

module!(Dense { linear, residual });

impl Dense {
  /// Load the module's `model.safetensors` (`linear.weight`, `linear.bias`,
  /// `residual.weight`; quantized layers when the file holds their
  /// `scales`), strictly.
  pub fn load(cfg: &DenseConfig) -> Result<Dense> {
    let file = cfg.weights_file()?;
    let ckpt = Checkpoint::read_file(&file)?;
    let width = |v: usize, field: &str| {
      i32::try_from(v).map_err(|_| Error::folder(&file, format!("{field} {v} is too large")))
    };
    let (i, o) = (
      width(cfg.in_features, "in_features")?,
      width(cfg.out_features, "out_features")?,
    );
    let act = match cfg.activation {
      DenseActivation::Identity => Activation::Identity,
      DenseActivation::Tanh => Activation::Tanh,
      DenseActivation::Relu => Activation::Relu,
      DenseActivation::Gelu => Activation::Gelu,
      DenseActivation::Sigmoid => Activation::Sigmoid,
      DenseActivation::Silu => Activation::Silu,
    };
    let mut dense = Dense {
      linear: Linear::new(i, o, cfg.bias),
      residual: (cfg.use_residual && i != o).then(|| Linear::new(i, o, false)),
      use_residual: cfg.use_residual,
      act,
      out_features: cfg.out_features,
      in_features: cfg.in_features,
    };
    ckpt.load(&mut [(&mut dense, "")], &|_| false)?;
    Ok(dense)
  }

  /// Apply to `[B, in]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let y = self.act.forward(&self.linear.forward(x)?)?;
    if !self.use_residual {
      return Ok(y);
    }
    let r = match &self.residual {
      Some(p) => p.forward(x)?,
      None => x.clone(),
    };
    Ok((&y + &r)?)
  }
}

/// A module after pooling, loaded.
pub enum Post {
  /// `Dense`.
  Dense(Box<Dense>),
  /// `Normalize`.
  Normalize,
}

/// Check that a pipeline's widths chain: pooling output -> each Dense.
pub fn check_widths(pooled: usize, post: &[Post], folder: &std::path::Path) -> Result<usize> {
  let mut d = pooled;
  for p in post {
    if let Post::Dense(dense) = p {
      if dense.in_features != d {
        return Err(Error::folder(
          folder,
          format!(
            "a Dense module expects {} inputs but receives {d}",
            dense.in_features
          ),
        ));
      }
      d = dense.out_features;
    }
  }
  Ok(d)
}
