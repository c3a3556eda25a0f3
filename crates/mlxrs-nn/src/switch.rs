//! Mixture-of-experts layers: mlx-lm's `models/switch_layers.py`
//! (`SwitchLinear` / `QuantizedSwitchLinear`, `SwitchGLU`) and `models/mla.py`
//! (`MultiLinear` / `QuantizedMultiLinear`), which share the stacked
//! `[E, out, in]` weight layout.
//!
//! Every expert's weight is one slice of a stacked tensor; a token's chosen
//! experts are applied with MLX's `gather_mm` / `gather_qmm` (`rhs_indices` =
//! the expert ids). As in mlx-lm, when there are many (token, expert) pairs
//! they are sorted by expert first so each expert's rows are contiguous
//! (`sorted_indices=True`), and unsorted afterwards.

use mlxrs_core::{Array, Error, Result, ops};

use crate::activations::{swiglu, swiglu_oai};
use crate::module::{Frozen, Module, Weights, join};
use crate::quant::{QuantParams, Quantizable};

/// mlx-lm sorts (token, expert) pairs by expert when there are at least
/// this many (`indices.size >= 64` in `SwitchGLU.__call__`).
pub const SORT_THRESHOLD: usize = 64;

/// Load a possibly-quantized stacked weight whose dense shape is
/// `[n, rows, cols]` (`<prefix>.weight`, and `.scales` / `.biases` when
/// `<prefix>.scales` is present): returns (weight, scales, biases, params).
/// The stacked counterpart of `Linear`'s loader (same rules, incl. a layer
/// whose width the group size does not divide being left dense).
pub fn load_stacked_maybe_quantized(
  w: &mut Weights,
  prefix: &str,
  n: i32,
  rows: i32,
  cols: i32,
) -> (Array, Option<Array>, Option<Array>, Option<QuantParams>) {
  match w
    .quant_for(prefix)
    .filter(|q| cols % q.group_size.max(1) == 0)
  {
    Some(q) => {
      let packed = cols * q.bits / 32;
      let groups = cols / q.group_size.max(1);
      let weight = w.take_packed(&join(prefix, "weight"), &[n, rows, packed]);
      let scales = w.take_raw(&join(prefix, "scales"), Some(&[n, rows, groups]));
      let biases = if q.has_biases() {
        Some(w.take_raw(&join(prefix, "biases"), Some(&[n, rows, groups])))
      } else {
        None
      };
      (weight, Some(scales), biases, Some(q))
    }
    None => (
      w.take(&join(prefix, "weight"), Some(&[n, rows, cols])),
      None,
      None,
      None,
    ),
  }
}

fn scales_of<'a>(scales: &'a Option<Array>, what: &str) -> Result<&'a Array> {
  scales
    .as_ref()
    .ok_or_else(|| Error::InvalidArgument(format!("quantized {what} has no scales (not loaded)")))
}

/// One linear layer per expert, applied to the experts chosen per token
/// (python `SwitchLinear`, or `QuantizedSwitchLinear` when the checkpoint
/// has `<path>.scales`).
pub struct SwitchLinear {
  /// Input features.
  pub in_dims: i32,
  /// Output features.
  pub out_dims: i32,
  /// Number of experts.
  pub num_experts: i32,
  /// `[E, out, in]` (dense) or packed `[E, out, in * bits / 32]` (quantized).
  pub weight: Array,
  /// `[E, out]`, when the layer has a bias.
  pub bias: Option<Array>,
  has_bias: bool,
  /// Quantization, when loaded from a quantized checkpoint.
  pub quant: Option<QuantParams>,
  /// Per-group scales `[E, out, in / group_size]` (quantized only).
  pub scales: Option<Array>,
  /// Per-group biases (quantized `affine` only).
  pub biases: Option<Array>,
  /// Sum the output over the global distributed group before the bias is
  /// added (mlx-lm's tensor-parallel MoE: each rank holds a slice of every
  /// expert's hidden features). Set at load time from
  /// [`Weights::sharded_to_all`](crate::Weights::sharded_to_all).
  pub all_reduce: bool,
  /// A low-rank adapter per expert (mlx-lm's `LoRASwitchLinear`),
  /// attached at load time when the weights carry one.
  pub adapter: Option<Box<crate::lora::SwitchAdapter>>,
  frozen: Frozen,
}

impl SwitchLinear {
  /// An unloaded layer (python `SwitchLinear(input_dims, output_dims,
  /// num_experts, bias)`).
  pub fn new(in_dims: i32, out_dims: i32, num_experts: i32, bias: bool) -> SwitchLinear {
    SwitchLinear {
      in_dims,
      out_dims,
      num_experts,
      weight: Array::scalar(0.0f32),
      bias: None,
      has_bias: bias,
      quant: None,
      scales: None,
      biases: None,
      all_reduce: false,
      adapter: None,
      frozen: Frozen::default(),
    }
  }

  /// Quantize the (dense, loaded) stacked weight in place (python
  /// `SwitchLinear.to_quantized`); its parameters become frozen.
  pub fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    if self.quant.is_some() {
      return Ok(());
    }
    let parts = ops::quantize(
      &self.weight,
      Some(q.group_size),
      Some(q.bits),
      q.mode.as_str(),
      None,
    )?;
    let mut it = parts.into_iter();
    self.weight = it
      .next()
      .ok_or_else(|| Error::Mlx("quantize returned nothing".into()))?;
    self.scales = it.next();
    self.biases = if q.has_biases() { it.next() } else { None };
    self.quant = Some(*q);
    for n in ["weight", "scales", "biases", "bias"] {
      self.frozen.set(n, true);
    }
    Ok(())
  }

  /// `x @ W[indices].T + b[indices]`: `x` is `[..., 1, in]` (or `[N, 1,
  /// in]` with flat sorted `indices` `[N]`), `indices` the expert ids; the
  /// result is `[..., 1, out]` broadcast over the indices' shape (python
  /// `SwitchLinear.__call__(x, indices, sorted_indices)`).
  pub fn forward(&self, x: &Array, indices: &Array, sorted_indices: bool) -> Result<Array> {
    let y = match &self.quant {
      Some(q) => ops::gather_qmm(
        x,
        &self.weight,
        scales_of(&self.scales, "SwitchLinear")?,
        self.biases.as_ref(),
        None,
        Some(indices),
        true,
        Some(q.group_size),
        Some(q.bits),
        q.mode.as_str(),
        None,
        sorted_indices,
      )?,
      None => ops::gather_mm(
        x,
        &ops::swapaxes(&self.weight, -1, -2)?,
        None,
        Some(indices),
        sorted_indices,
      )?,
    };
    let y = if self.all_reduce {
      mlxrs_core::distributed::all_sum(&y, None)?
    } else {
      y
    };
    let y = match &self.bias {
      Some(b) => ops::add(&y, &ops::expand_dims(&ops::take_axis(b, indices, 0)?, -2)?)?,
      None => y,
    };
    match &self.adapter {
      Some(ad) => ad.forward(&y, x, indices, sorted_indices),
      None => Ok(y),
    }
  }
}

impl Module for SwitchLinear {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let (weight, scales, biases, quant) =
      load_stacked_maybe_quantized(w, prefix, self.num_experts, self.out_dims, self.in_dims);
    self.weight = weight;
    self.scales = scales;
    self.biases = biases;
    self.quant = quant;
    self.all_reduce = w.is_sharded_to_all(prefix);
    self.bias = if self.has_bias {
      Some(w.take(
        &join(prefix, "bias"),
        Some(&[self.num_experts, self.out_dims]),
      ))
    } else {
      None
    };
    if self.quant.is_some() {
      for n in ["weight", "scales", "biases", "bias"] {
        self.frozen.set(n, true);
      }
    }
    w.record_layer(crate::lora::AdaptableLayer {
      path: prefix.to_string(),
      kind: crate::lora::AdapterKind::SwitchLinear,
      shape: vec![self.num_experts, self.out_dims, self.in_dims],
      quantized: self.quant.is_some(),
    });
    self.adapter =
      crate::lora::SwitchAdapter::load(w, prefix, self.num_experts, self.in_dims, self.out_dims);
  }

  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
    if let Some(s) = &mut self.scales {
      self.frozen.visit_mut(prefix, "scales", s, f);
    }
    if let Some(b) = &mut self.biases {
      self.frozen.visit_mut(prefix, "biases", b, f);
    }
    if let Some(b) = &mut self.bias {
      self.frozen.visit_mut(prefix, "bias", b, f);
    }
    if let Some(ad) = &mut self.adapter {
      ad.visit_tensors_mut(prefix, f);
    }
  }

  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
    if let Some(s) = &self.scales {
      self.frozen.visit(prefix, "scales", s, f);
    }
    if let Some(b) = &self.biases {
      self.frozen.visit(prefix, "biases", b, f);
    }
    if let Some(b) = &self.bias {
      self.frozen.visit(prefix, "bias", b, f);
    }
    if let Some(ad) = &self.adapter {
      ad.visit_tensors(prefix, &mut |k, a| f(k, a, false));
    }
  }

  fn visit_quantizable_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut dyn Quantizable)) {
    f(prefix, self);
  }

  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(s) = &self.scales {
      f(&join(prefix, "scales"), s);
    }
    if let Some(b) = &self.biases {
      f(&join(prefix, "biases"), b);
    }
    if let Some(b) = &self.bias {
      f(&join(prefix, "bias"), b);
    }
    if let Some(ad) = &self.adapter {
      ad.visit_tensors(prefix, f);
    }
  }
}

impl Quantizable for SwitchLinear {
  fn kind(&self) -> &'static str {
    "SwitchLinear"
  }
  fn dense_shape(&self) -> Vec<i32> {
    vec![self.num_experts, self.out_dims, self.in_dims]
  }
  fn quantization(&self) -> Option<&QuantParams> {
    self.quant.as_ref()
  }
  fn weight(&self) -> &Array {
    &self.weight
  }
  fn quantize(&mut self, q: &QuantParams) -> Result<()> {
    SwitchLinear::quantize(self, q)
  }
}

/// The gated activation of a [`SwitchGlu`]: `act(up, gate)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GluActivation {
  /// `silu(gate) * up` (mlx-lm's `SwiGLU`, the default).
  SwiGlu,
  /// GPT-OSS's clamped variant (mlx-lm's `SwigluOAI(alpha, limit)`): see
  /// [`swiglu_oai`].
  SwigluOai {
    /// Sigmoid sharpness (1.702).
    alpha: f32,
    /// Clamp limit (7.0).
    limit: f32,
  },
  /// `gelu_approx(gate) * up` (mlx-lm gemma4_text's `GeGLU`).
  GeGlu,
}

impl GluActivation {
  /// Apply to the up and gate projections.
  pub fn apply(&self, up: &Array, gate: &Array) -> Result<Array> {
    match *self {
      GluActivation::SwiGlu => swiglu(gate, up),
      GluActivation::SwigluOai { alpha, limit } => swiglu_oai(gate, up, alpha, limit),
      GluActivation::GeGlu => {
        mlxrs_core::ops::multiply(&crate::activations::gelu_approx(gate)?, up)
      }
    }
  }
}

/// A gated MLP per expert (python `SwitchGLU(input_dims, hidden_dims,
/// num_experts, activation, bias)`): `down(act(up(x), gate(x)))` for each of
/// a token's chosen experts.
pub struct SwitchGlu {
  /// `[E, hidden, in]`.
  pub gate_proj: SwitchLinear,
  /// `[E, hidden, in]`.
  pub up_proj: SwitchLinear,
  /// `[E, in, hidden]`.
  pub down_proj: SwitchLinear,
  /// The gating activation.
  pub activation: GluActivation,
}

crate::module!(SwitchGlu {
  gate_proj,
  up_proj,
  down_proj
});

impl SwitchGlu {
  /// An unloaded layer.
  pub fn new(
    input_dims: i32,
    hidden_dims: i32,
    num_experts: i32,
    activation: GluActivation,
    bias: bool,
  ) -> SwitchGlu {
    SwitchGlu {
      gate_proj: SwitchLinear::new(input_dims, hidden_dims, num_experts, bias),
      up_proj: SwitchLinear::new(input_dims, hidden_dims, num_experts, bias),
      down_proj: SwitchLinear::new(hidden_dims, input_dims, num_experts, bias),
      activation,
    }
  }

  /// `x` `[..., in]`, `indices` `[..., k]` (int expert ids) -> `[..., k,
  /// in]`, one output per chosen expert (python `SwitchGLU.__call__`).
  pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
    let ne = self.gate_proj.num_experts;
    if indices.ndim() == 0
      || x.ndim() == 0
      || indices.shape()[..indices.ndim() - 1] != x.shape()[..x.ndim() - 1]
    {
      return Err(Error::InvalidArgument(format!(
        "SwitchGLU: indices {:?} must be [..., k] over the leading dims of x {:?}",
        indices.shape(),
        x.shape()
      )));
    }
    if ne <= 0 {
      return Err(Error::InvalidArgument("SwitchGLU: no experts".into()));
    }
    let x = ops::expand_dims_axes(x, &[-2, -3])?;
    let indices = ops::stop_gradient(indices)?;
    let do_sort = indices.size() >= SORT_THRESHOLD;
    let (x, idx, inv_order) = if do_sort {
      let (x, idx, inv) = gather_sort(&x, &indices)?;
      (x, idx, Some(inv))
    } else {
      (x, indices.clone(), None)
    };
    let x_up = self.up_proj.forward(&x, &idx, do_sort)?;
    let x_gate = self.gate_proj.forward(&x, &idx, do_sort)?;
    let mut y = self
      .down_proj
      .forward(&self.activation.apply(&x_up, &x_gate)?, &idx, do_sort)?;
    if let Some(inv) = inv_order {
      y = scatter_unsort(&y, &inv, &indices.shape())?;
    }
    ops::squeeze_axis(&y, -2)
  }
}

/// mlx-lm's `_gather_sort`: rows of `x` (`[..., 1, 1, D]`) repeated per
/// chosen expert and ordered by expert id; returns (rows `[N*k, 1, D]`,
/// sorted flat ids `[N*k]`, the inverse permutation).
fn gather_sort(x: &Array, indices: &Array) -> Result<(Array, Array, Array)> {
  let m = indices.dim(-1).unwrap_or(1);
  let flat = ops::flatten(indices, 0, -1)?;
  let order = ops::argsort(&flat)?;
  let inv_order = ops::argsort(&order)?;
  let rows = ops::floor_divide(&order, &Array::scalar_as(m as f64, order.dtype())?)?;
  let xs = ops::take_axis(&ops::flatten(x, 0, -3)?, &rows, 0)?;
  Ok((xs, ops::take_axis(&flat, &order, 0)?, inv_order))
}

/// mlx-lm's `_scatter_unsort`: undo [`gather_sort`]'s permutation and
/// restore the indices' leading shape.
fn scatter_unsort(x: &Array, inv_order: &Array, shape: &[i32]) -> Result<Array> {
  let x = ops::take_axis(x, inv_order, 0)?;
  ops::unflatten(&x, 0, shape)
}

/// Per-head linear maps (mlx-lm `mla.py`'s `MultiLinear` /
/// `QuantizedMultiLinear`, used by DeepSeek's MLA for `embed_q` /
/// `unembed_out`): weight `[heads, out, in]`, applied batched over the head
/// axis.
pub struct MultiLinear {
  /// Input features.
  pub in_dims: i32,
  /// Output features.
  pub out_dims: i32,
  /// Heads.
  pub num_heads: i32,
  /// `[heads, out, in]` (dense) or packed (quantized).
  pub weight: Array,
  /// Quantization, when loaded from a quantized checkpoint.
  pub quant: Option<QuantParams>,
  /// Per-group scales (quantized only).
  pub scales: Option<Array>,
  /// Per-group biases (quantized `affine` only).
  pub biases: Option<Array>,
  frozen: Frozen,
}

impl MultiLinear {
  /// An unloaded layer (python `MultiLinear(input_dims, output_dims,
  /// num_heads)`).
  pub fn new(in_dims: i32, out_dims: i32, num_heads: i32) -> MultiLinear {
    MultiLinear {
      in_dims,
      out_dims,
      num_heads,
      weight: Array::scalar(0.0f32),
      quant: None,
      scales: None,
      biases: None,
      frozen: Frozen::default(),
    }
  }

  /// `x @ W.swapaxes(-1, -2)` when `transpose` (in -> out), else `x @ W`
  /// (out -> in), batched over heads (python `MultiLinear.__call__(x,
  /// transpose)`).
  pub fn forward(&self, x: &Array, transpose: bool) -> Result<Array> {
    match &self.quant {
      Some(q) => ops::quantized_matmul(
        x,
        &self.weight,
        scales_of(&self.scales, "MultiLinear")?,
        self.biases.as_ref(),
        transpose,
        Some(q.group_size),
        Some(q.bits),
        q.mode.as_str(),
      ),
      None if transpose => ops::matmul(x, &ops::swapaxes(&self.weight, -1, -2)?),
      None => ops::matmul(x, &self.weight),
    }
  }
}

impl Module for MultiLinear {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let (weight, scales, biases, quant) =
      load_stacked_maybe_quantized(w, prefix, self.num_heads, self.out_dims, self.in_dims);
    self.weight = weight;
    self.scales = scales;
    self.biases = biases;
    self.quant = quant;
    if self.quant.is_some() {
      for n in ["weight", "scales", "biases"] {
        self.frozen.set(n, true);
      }
    }
  }

  fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Array, &mut bool)) {
    self.frozen.visit_mut(prefix, "weight", &mut self.weight, f);
    if let Some(s) = &mut self.scales {
      self.frozen.visit_mut(prefix, "scales", s, f);
    }
    if let Some(b) = &mut self.biases {
      self.frozen.visit_mut(prefix, "biases", b, f);
    }
  }

  fn visit_frozen(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array, bool)) {
    self.frozen.visit(prefix, "weight", &self.weight, f);
    if let Some(s) = &self.scales {
      self.frozen.visit(prefix, "scales", s, f);
    }
    if let Some(b) = &self.biases {
      self.frozen.visit(prefix, "biases", b, f);
    }
  }

  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    if let Some(s) = &self.scales {
      f(&join(prefix, "scales"), s);
    }
    if let Some(b) = &self.biases {
      f(&join(prefix, "biases"), b);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::collections::HashMap;

  fn arange(shape: &[i32]) -> Array {
    let n: i32 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
    Array::from_slice(&v, shape).unwrap()
  }

  /// Reference: per-token, per-expert dense matmuls.
  fn naive(m: &SwitchGlu, x: &[f32], d: usize, ids: &[i32], k: usize) -> Vec<f32> {
    let mut g = m.gate_proj.weight.clone();
    let mut u = m.up_proj.weight.clone();
    let mut dn = m.down_proj.weight.clone();
    let (g, u, dn) = (
      g.to_vec::<f32>().unwrap(),
      u.to_vec::<f32>().unwrap(),
      dn.to_vec::<f32>().unwrap(),
    );
    let h = m.gate_proj.out_dims as usize;
    let mut out = Vec::new();
    for (t, row) in x.chunks(d).enumerate() {
      for j in 0..k {
        let e = ids[t * k + j] as usize;
        let mut act = vec![0.0f32; h];
        for (o, a) in act.iter_mut().enumerate() {
          let (mut gs, mut us) = (0.0f32, 0.0f32);
          for i in 0..d {
            gs += g[e * h * d + o * d + i] * row[i];
            us += u[e * h * d + o * d + i] * row[i];
          }
          *a = gs / (1.0 + (-gs).exp()) * us;
        }
        for o in 0..d {
          out.push((0..h).map(|i| dn[e * d * h + o * h + i] * act[i]).sum());
        }
      }
    }
    out
  }

  fn check(tokens: i32, k: i32) {
    let (e, d, h) = (4, 8, 6);
    let mut m = SwitchGlu::new(d, h, e, GluActivation::SwiGlu, false);
    let mut map = HashMap::new();
    map.insert("gate_proj.weight".to_string(), arange(&[e, h, d]));
    map.insert(
      "up_proj.weight".to_string(),
      ops::multiply(&arange(&[e, h, d]), &Array::scalar(0.5f32)).unwrap(),
    );
    map.insert("down_proj.weight".to_string(), arange(&[e, d, h]));
    m.load_weights(map).unwrap();
    let xv: Vec<f32> = (0..tokens * d)
      .map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0)
      .collect();
    let ids: Vec<i32> = (0..tokens * k).map(|i| (i * 3 + i / 2) % e).collect();
    let x = Array::from_slice(&xv, &[1, tokens, d]).unwrap();
    let idx = Array::from_slice(&ids, &[1, tokens, k]).unwrap();
    let mut y = m.forward(&x, &idx).unwrap();
    assert_eq!(y.shape(), vec![1, tokens, k, d]);
    let got = y.to_vec::<f32>().unwrap();
    let want = naive(&m, &xv, d as usize, &ids, k as usize);
    for (a, b) in got.iter().zip(&want) {
      assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
  }

  #[test]
  fn switch_glu_matches_per_expert_matmuls_unsorted_and_sorted() {
    check(3, 2); // 6 pairs: gather without sorting
    check(40, 2); // 80 pairs: the sort-by-expert path
  }

  #[test]
  fn bad_indices_are_an_error() {
    let m = SwitchGlu::new(8, 6, 4, GluActivation::SwiGlu, false);
    let x = arange(&[1, 3, 8]);
    let idx = Array::from_slice(&[0i32, 1], &[1, 2, 1]).unwrap();
    assert!(m.forward(&x, &idx).is_err());
  }
}
