//! The Kokoro-82M network (python `mlx_audio.tts.models.kokoro.Model`,
//! hexgrad `kokoro.KModel`): ALBERT phoneme encoder, prosody predictor
//! (duration, F0, energy), text encoder, and the iSTFTNet decoder with its
//! harmonic-plus-noise source. Activations are channels-last (`[B, L, C]`),
//! MLX's convolution layout; weights are loaded from mlx-audio's layout
//! (weight-normalised convolutions folded once at load).

use std::collections::HashMap;

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::fft::{self, FftNorm};
use mlxrs_core::{Array, Dtype, fast, ops};
use mlxrs_nn::{AdaIn1d, AdaLayerNorm, Linear, Lstm, LstmDirection, gelu_approx, weight_norm};

use super::config::KokoroConfig;
use super::source_stft::SourceStft;
use crate::error::{Error, Result};

/// Frames per phoneme are clamped to at least 1 (python: `clamp(min=1)`).
const MIN_FRAMES: f32 = 1.0;

/// Weights by name, consumed as layers are built; what is left is reported.
pub(crate) struct Store {
  map: HashMap<String, Array>,
}

impl Store {
  pub(crate) fn new(map: HashMap<String, Array>) -> Store {
    Store { map }
  }

  fn take(&mut self, k: &str) -> Result<Array> {
    self
      .map
      .remove(k)
      .ok_or_else(|| Error::Model(format!("kokoro: weight {k} missing")))
  }

  fn take_shape(&mut self, k: &str, shape: &[i32]) -> Result<Array> {
    let a = self.take(k)?;
    if a.shape() != shape {
      return Err(Error::Model(format!(
        "kokoro: weight {k} has shape {:?}, expected {shape:?}",
        a.shape()
      )));
    }
    ready(ops::astype(&a, Dtype::Float32)?)
  }

  fn take_any(&mut self, keys: &[&str], shape: &[i32]) -> Result<Array> {
    for k in keys {
      if self.map.contains_key(*k) {
        return self.take_shape(k, shape);
      }
    }
    Err(Error::Model(format!("kokoro: weight {} missing", keys[0])))
  }

  fn linear(&mut self, p: &str, inp: i32, out: i32) -> Result<Linear> {
    let w = self.take_shape(&format!("{p}.weight"), &[out, inp])?;
    let b = self.take_shape(&format!("{p}.bias"), &[out])?;
    Ok(Linear::from_weights(w, Some(b)))
  }

  /// A conv weight in MLX layout `[a, k, b]`; torch layout `[a, b, k]` is
  /// transposed (the shapes tell them apart), weight norm folded.
  fn conv_w(&mut self, p: &str, a: i32, k: i32, b: i32) -> Result<Array> {
    let orient = |w: Array| -> Result<Array> {
      let s = w.shape();
      if s == [a, k, b] {
        Ok(w)
      } else if s == [a, b, k] {
        Ok(ops::swapaxes(&w, 1, 2)?)
      } else {
        Err(Error::Model(format!(
          "kokoro: weight {p} has shape {s:?}, expected {:?}",
          [a, k, b]
        )))
      }
    };
    let vk = format!("{p}.weight_v");
    if self.map.contains_key(&vk) {
      let v = orient(self.take(&vk)?)?;
      let g = self.take(&format!("{p}.weight_g"))?;
      let v = ops::astype(&v, Dtype::Float32)?;
      let g = ops::astype(&g, Dtype::Float32)?;
      ready(weight_norm(&v, &g)?)
    } else {
      let w = orient(self.take(&format!("{p}.weight"))?)?;
      ready(ops::astype(&w, Dtype::Float32)?)
    }
  }

  fn lstm(&mut self, p: &str, inp: i32, h: i32) -> Result<Lstm> {
    let mut dir = |mlx: &str, torch: &str| -> Result<LstmDirection> {
      let wx = self.take_any(
        &[
          &format!("{p}.Wx_{mlx}"),
          &format!("{p}.weight_ih_l0{torch}"),
        ],
        &[4 * h, inp],
      )?;
      let wh = self.take_any(
        &[
          &format!("{p}.Wh_{mlx}"),
          &format!("{p}.weight_hh_l0{torch}"),
        ],
        &[4 * h, h],
      )?;
      let bi = self.take_any(
        &[
          &format!("{p}.bias_ih_{mlx}"),
          &format!("{p}.bias_ih_l0{torch}"),
        ],
        &[4 * h],
      )?;
      let bh = self.take_any(
        &[
          &format!("{p}.bias_hh_{mlx}"),
          &format!("{p}.bias_hh_l0{torch}"),
        ],
        &[4 * h],
      )?;
      Ok(LstmDirection::new(wx, wh, Some(bi), Some(bh))?)
    };
    let f = dir("forward", "")?;
    let b = dir("backward", "_reverse")?;
    Ok(Lstm {
      forward: f,
      backward: Some(b),
    })
  }

  fn finish(self) -> Result<()> {
    let mut left: Vec<&String> = self
      .map
      .keys()
      .filter(|k| !k.starts_with("bert.pooler.") && !k.contains("position_ids"))
      .collect();
    left.sort();
    if left.is_empty() {
      Ok(())
    } else {
      Err(Error::Model(format!(
        "kokoro: {} unexpected weights, e.g. {}",
        left.len(),
        left
          .iter()
          .take(5)
          .map(|s| s.as_str())
          .collect::<Vec<_>>()
          .join(", ")
      )))
    }
  }
}

/// A weight computed at load (transposed, weight norm folded, cast),
/// evaluated there so the first synthesis does not pay for it.
fn ready(mut a: Array) -> Result<Array> {
  a.eval()?;
  Ok(a)
}

fn leaky(x: &Array, slope: f32) -> Result<Array> {
  Ok(ops::maximum(x, &(x * slope)?)?)
}

/// A 1-D convolution (weight `[out, k, in / groups]`, folded weight norm).
struct Conv {
  w: Array,
  b: Option<Array>,
  stride: i32,
  pad: i32,
  dil: i32,
}

impl Conv {
  #[allow(clippy::too_many_arguments)]
  fn load(
    st: &mut Store,
    p: &str,
    cin: i32,
    cout: i32,
    k: i32,
    stride: i32,
    pad: i32,
    dil: i32,
    bias: bool,
  ) -> Result<Conv> {
    let w = st.conv_w(p, cout, k, cin)?;
    let b = if bias {
      Some(st.take_shape(&format!("{p}.bias"), &[cout])?)
    } else {
      None
    };
    Ok(Conv {
      w,
      b,
      stride,
      pad,
      dil,
    })
  }

  fn forward(&self, x: &Array) -> Result<Array> {
    // dilated kernels through im2col + BLAS (MLX's CPU conv loops directly for them)
    let y = if self.dil > 1 {
      mlxrs_nn::conv::conv1d_im2col(x, &self.w, self.stride, self.pad, self.dil)?
    } else {
      ops::conv1d(x, &self.w, self.stride, self.pad, self.dil, 1)?
    };
    match &self.b {
      Some(b) => Ok(ops::add(&y, b)?),
      None => Ok(y),
    }
  }
}

/// A transposed 1-D convolution as torch's `ConvTranspose1d(.., stride,
/// padding, output_padding, groups)`; weight `[in, k, out / groups]` as
/// mlx-audio stores it.
struct ConvT {
  w: Array,
  b: Array,
  stride: i32,
  pad: i32,
  out_pad: i32,
  groups: i32,
}

impl ConvT {
  #[allow(clippy::too_many_arguments)]
  fn load(
    st: &mut Store,
    p: &str,
    cin: i32,
    cout: i32,
    k: i32,
    stride: i32,
    pad: i32,
    out_pad: i32,
    groups: i32,
  ) -> Result<ConvT> {
    // stored [in, k, out/groups]; MLX conv_transpose1d wants [out, k, in/groups]
    let w = st.conv_w(p, cin, k, cout / groups)?;
    let w = if groups == 1 {
      ops::transpose_axes(&w, &[2, 1, 0])?
    } else {
      w
    };
    let b = st.take_shape(&format!("{p}.bias"), &[cout])?;
    Ok(ConvT {
      w,
      b,
      stride,
      pad,
      out_pad,
      groups,
    })
  }

  fn forward(&self, x: &Array) -> Result<Array> {
    let y = if self.groups == 1 {
      mlxrs_nn::conv::conv_transpose1d_gemm(x, &self.w, self.stride, self.pad, self.out_pad)?
    } else {
      ops::conv_transpose1d(
        x,
        &self.w,
        self.stride,
        self.pad,
        1,
        self.out_pad,
        self.groups,
      )?
    };
    Ok(ops::add(&y, &self.b)?)
  }
}

fn adain(st: &mut Store, p: &str, style: i32, c: i32) -> Result<AdaIn1d> {
  Ok(AdaIn1d {
    fc: st.linear(&format!("{p}.fc"), style, 2 * c)?,
  })
}

/// StyleTTS2 `AdainResBlk1d` (channels-last).
struct AdainResBlk {
  norm1: AdaIn1d,
  norm2: AdaIn1d,
  conv1: Conv,
  conv2: Conv,
  conv1x1: Option<Conv>,
  pool: Option<ConvT>,
}

impl AdainResBlk {
  fn load(
    st: &mut Store,
    p: &str,
    din: i32,
    dout: i32,
    style: i32,
    upsample: bool,
  ) -> Result<AdainResBlk> {
    Ok(AdainResBlk {
      norm1: adain(st, &format!("{p}.norm1"), style, din)?,
      norm2: adain(st, &format!("{p}.norm2"), style, dout)?,
      conv1: Conv::load(st, &format!("{p}.conv1"), din, dout, 3, 1, 1, 1, true)?,
      conv2: Conv::load(st, &format!("{p}.conv2"), dout, dout, 3, 1, 1, 1, true)?,
      conv1x1: if din != dout {
        Some(Conv::load(
          st,
          &format!("{p}.conv1x1"),
          din,
          dout,
          1,
          1,
          0,
          1,
          false,
        )?)
      } else {
        None
      },
      pool: if upsample {
        Some(ConvT::load(
          st,
          &format!("{p}.pool"),
          din,
          din,
          3,
          2,
          1,
          1,
          din,
        )?)
      } else {
        None
      },
    })
  }

  fn forward(&self, x: &Array, s: &Array) -> Result<Array> {
    // shortcut
    let mut sc = x.clone();
    if self.pool.is_some() {
      sc = ops::repeat_axis(&sc, 2, 1)?;
    }
    if let Some(c) = &self.conv1x1 {
      sc = c.forward(&sc)?;
    }
    // residual
    let mut r = leaky(&self.norm1.forward_nlc(x, s)?, 0.2)?;
    if let Some(p) = &self.pool {
      r = p.forward(&r)?;
    }
    r = self.conv1.forward(&r)?;
    r = leaky(&self.norm2.forward_nlc(&r, s)?, 0.2)?;
    r = self.conv2.forward(&r)?;
    Ok(ops::multiply(
      &ops::add(&r, &sc)?,
      &Array::scalar(std::f32::consts::FRAC_1_SQRT_2),
    )?)
  }
}

/// The Snake activation `x + sin(a x)^2 / a` (python Kokoro
/// `AdaINResBlock1`: `x + (1 / a) * torch.sin(a * x).pow(2)`), per channel.
struct Snake {
  a: Array,
  inv_a: Array,
  /// Evaluate `sin^2` with a polynomial built from elementwise ops (MLX's
  /// CPU `sin` is a scalar libm call per element, ~70x the cost of a
  /// multiply: the generator's 48 Snakes over up to 12241 x 128 values took
  /// a fifth of the synthesis time); GPUs keep the one-kernel `sin`.
  poly: bool,
}

/// `sin(r) = r + r^3 P(r^2)` on `[-pi/2, pi/2]` (least squares on Chebyshev
/// nodes; `sin^2` within 2.6e-7 of the float64 value, float32 `sin` 1.2e-7).
const SIN_POLY: [f32; 5] = [
  -0.166_666_67,
  0.008_333_333,
  -0.000_198_410_87,
  2.753_649_1e-6,
  -2.408_073_6e-8,
];

impl Snake {
  fn new(a: Array, poly: bool) -> Result<Snake> {
    let inv_a = ready(ops::divide(&Array::scalar(1.0f32), &a)?)?;
    Ok(Snake { a, inv_a, poly })
  }

  fn forward(&self, x: &Array) -> Result<Array> {
    let ax = ops::multiply(&self.a, x)?;
    let s2 = if self.poly {
      sin_squared_poly(&ax)?
    } else {
      ops::square(&ops::sin(&ax)?)?
    };
    Ok(ops::add(x, &ops::multiply(&s2, &self.inv_a)?)?)
  }
}

/// `sin(x)^2` with `x` reduced by multiples of pi (Cody-Waite, pi in two
/// parts: exact for |x| < 2^16 pi; the sign of `sin` drops out of the
/// square), then [`SIN_POLY`].
fn sin_squared_poly(x: &Array) -> Result<Array> {
  const PI_HI: f32 = 3.140_625; // 8 significant bits: k * PI_HI is exact
  const PI_LO: f32 = 9.676_536e-4; // pi - PI_HI
  let k = ops::round(
    &ops::multiply(x, &Array::scalar(std::f32::consts::FRAC_1_PI))?,
    0,
  )?;
  let r = ops::subtract(x, &ops::multiply(&k, &Array::scalar(PI_HI))?)?;
  let r = ops::subtract(&r, &ops::multiply(&k, &Array::scalar(PI_LO))?)?;
  let z = ops::square(&r)?;
  let mut p = ops::multiply(&z, &Array::scalar(SIN_POLY[4]))?;
  for &c in SIN_POLY[..4].iter().rev() {
    p = ops::multiply(&ops::add(&p, &Array::scalar(c))?, &z)?;
  }
  // r + r * (z * P'): p already holds z * P(z)
  let s = ops::add(&r, &ops::multiply(&r, &p)?)?;
  Ok(ops::square(&s)?)
}

/// Kokoro `AdaINResBlock1` (HiFi-GAN block with Snake activations).
struct AdaInResBlock1 {
  convs1: Vec<Conv>,
  convs2: Vec<Conv>,
  adain1: Vec<AdaIn1d>,
  adain2: Vec<AdaIn1d>,
  snake1: Vec<Snake>,
  snake2: Vec<Snake>,
}

impl AdaInResBlock1 {
  fn load(
    st: &mut Store,
    p: &str,
    ch: i32,
    k: i32,
    dil: &[i32],
    style: i32,
    poly: bool,
  ) -> Result<AdaInResBlock1> {
    let mut b = AdaInResBlock1 {
      convs1: vec![],
      convs2: vec![],
      adain1: vec![],
      adain2: vec![],
      snake1: vec![],
      snake2: vec![],
    };
    for (i, &d) in dil.iter().enumerate() {
      b.convs1.push(Conv::load(
        st,
        &format!("{p}.convs1.{i}"),
        ch,
        ch,
        k,
        1,
        (k * d - d) / 2,
        d,
        true,
      )?);
      b.convs2.push(Conv::load(
        st,
        &format!("{p}.convs2.{i}"),
        ch,
        ch,
        k,
        1,
        (k - 1) / 2,
        1,
        true,
      )?);
      b.adain1
        .push(adain(st, &format!("{p}.adain1.{i}"), style, ch)?);
      b.adain2
        .push(adain(st, &format!("{p}.adain2.{i}"), style, ch)?);
      // [1, C, 1] -> channels-last [1, 1, C]
      let a1 = st.take_shape(&format!("{p}.alpha1.{i}"), &[1, ch, 1])?;
      let a2 = st.take_shape(&format!("{p}.alpha2.{i}"), &[1, ch, 1])?;
      b.snake1
        .push(Snake::new(ops::reshape(&a1, &[1, 1, ch])?, poly)?);
      b.snake2
        .push(Snake::new(ops::reshape(&a2, &[1, 1, ch])?, poly)?);
    }
    Ok(b)
  }

  fn forward(&self, x: &Array, s: &Array) -> Result<Array> {
    let mut x = x.clone();
    for i in 0..self.convs1.len() {
      let mut t = self.adain1[i].forward_nlc(&x, s)?;
      t = self.snake1[i].forward(&t)?;
      t = self.convs1[i].forward(&t)?;
      t = self.adain2[i].forward_nlc(&t, s)?;
      t = self.snake2[i].forward(&t)?;
      t = self.convs2[i].forward(&t)?;
      x = ops::add(&t, &x)?;
    }
    Ok(x)
  }
}

/// One ALBERT layer (shared by all 12 positions).
struct AlbertLayer {
  q: Linear,
  k: Linear,
  v: Linear,
  dense: Linear,
  ln: (Array, Array),
  ffn: Linear,
  ffn_out: Linear,
  full_ln: (Array, Array),
}

struct Albert {
  word: Array,
  pos: Array,
  tok: Array,
  emb_ln: (Array, Array),
  map_in: Linear,
  layer: AlbertLayer,
  n_layers: i32,
  heads: i32,
  eps: f32,
}

impl Albert {
  fn load(st: &mut Store, c: &KokoroConfig) -> Result<Albert> {
    let (h, e, inter) = (
      c.plbert.hidden_size,
      c.plbert.embedding_size,
      c.plbert.intermediate_size,
    );
    let p = "bert.encoder.albert_layer_groups.0.albert_layers.0";
    let ln = |st: &mut Store, k: &str, d: i32| -> Result<(Array, Array)> {
      Ok((
        st.take_shape(&format!("{k}.weight"), &[d])?,
        st.take_shape(&format!("{k}.bias"), &[d])?,
      ))
    };
    Ok(Albert {
      word: st.take_shape("bert.embeddings.word_embeddings.weight", &[c.n_token, e])?,
      pos: st.take_shape(
        "bert.embeddings.position_embeddings.weight",
        &[c.plbert.max_position_embeddings, e],
      )?,
      tok: st.take_shape("bert.embeddings.token_type_embeddings.weight", &[2, e])?,
      emb_ln: ln(st, "bert.embeddings.LayerNorm", e)?,
      map_in: st.linear("bert.encoder.embedding_hidden_mapping_in", e, h)?,
      layer: AlbertLayer {
        q: st.linear(&format!("{p}.attention.query"), h, h)?,
        k: st.linear(&format!("{p}.attention.key"), h, h)?,
        v: st.linear(&format!("{p}.attention.value"), h, h)?,
        dense: st.linear(&format!("{p}.attention.dense"), h, h)?,
        ln: ln(st, &format!("{p}.attention.LayerNorm"), h)?,
        ffn: st.linear(&format!("{p}.ffn"), h, inter)?,
        ffn_out: st.linear(&format!("{p}.ffn_output"), inter, h)?,
        full_ln: ln(st, &format!("{p}.full_layer_layer_norm"), h)?,
      },
      n_layers: c.plbert.num_hidden_layers,
      heads: c.plbert.num_attention_heads,
      eps: 1e-12,
    })
  }

  /// `ids` `[1, T]` -> `[1, T, hidden]`.
  fn forward(&self, ids: &Array) -> Result<Array> {
    let t = ids.shape()[1];
    let pos_ids = Array::arange(0.0, f64::from(t), 1.0, Dtype::Int32)?;
    let x = ops::add(
      &ops::take_axis(&self.word, ids, 0)?,
      &ops::take_axis(&self.pos, &pos_ids, 0)?,
    )?;
    let tok0 = ops::slice(&self.tok, &[0, 0], &[1, self.tok.shape()[1]], &[1, 1])?;
    let x = ops::add(&x, &tok0)?;
    let x = fast::layer_norm(&x, Some(&self.emb_ln.0), Some(&self.emb_ln.1), self.eps)?;
    let mut h = self.map_in.forward(&x)?;
    let l = &self.layer;
    let hs = h.shape()[2];
    let hd = hs / self.heads;
    let split = |a: Array| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&a, &[1, t, self.heads, hd])?,
        &[0, 2, 1, 3],
      )?)
    };
    for _ in 0..self.n_layers {
      let q = split(l.q.forward(&h)?)?;
      let k = split(l.k.forward(&h)?)?;
      let v = split(l.v.forward(&h)?)?;
      let o = scaled_dot_product_attention(&q, &k, &v, 1.0 / (hd as f32).sqrt(), Mask::None)?;
      let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[1, t, hs])?;
      let a = fast::layer_norm(
        &ops::add(&l.dense.forward(&o)?, &h)?,
        Some(&l.ln.0),
        Some(&l.ln.1),
        self.eps,
      )?;
      let f = l.ffn_out.forward(&gelu_approx(&l.ffn.forward(&a)?)?)?;
      h = fast::layer_norm(
        &ops::add(&f, &a)?,
        Some(&l.full_ln.0),
        Some(&l.full_ln.1),
        self.eps,
      )?;
    }
    Ok(h)
  }
}

/// The outputs of one synthesis, with the prosody the tests compare.
pub struct KokoroOutput {
  /// The waveform at 24 kHz.
  pub audio: Array,
  /// Frames per input token (including the two boundary tokens).
  pub durations: Vec<i32>,
  /// Predicted F0 curve `[1, 2 * frames]` (Hz).
  pub f0: Array,
  /// Predicted energy curve `[1, 2 * frames]`.
  pub n: Array,
  /// The ALBERT output after `bert_encoder` `[1, T, hidden_dim]`.
  pub bert_dur: Array,
  /// Named decoder intermediates (channels-last), filled by
  /// [`KokoroModel::forward_traced`] for layer-by-layer checks.
  pub trace: Vec<(String, Array)>,
}

/// The Kokoro network with loaded weights (python
/// `mlx_audio.tts.models.kokoro.Model`).
pub struct KokoroModel {
  /// The config.
  pub config: KokoroConfig,
  bert: Albert,
  bert_encoder: Linear,
  // prosody predictor
  dur_lstms: Vec<Lstm>,
  dur_norms: Vec<AdaLayerNorm>,
  pred_lstm: Lstm,
  dur_proj: Linear,
  shared: Lstm,
  f0_blocks: Vec<AdainResBlk>,
  n_blocks: Vec<AdainResBlk>,
  f0_proj: Conv,
  n_proj: Conv,
  // text encoder
  te_emb: Array,
  te_cnn: Vec<(Conv, (Array, Array))>,
  te_lstm: Lstm,
  // decoder
  f0_conv: Conv,
  n_conv: Conv,
  encode: AdainResBlk,
  decode: Vec<AdainResBlk>,
  asr_res: Conv,
  generator: Generator,
}

struct Generator {
  l_linear: Linear,
  noise_convs: Vec<Conv>,
  noise_res: Vec<AdaInResBlock1>,
  ups: Vec<ConvT>,
  resblocks: Vec<AdaInResBlock1>,
  conv_post: Conv,
  stft: mlxrs_nn::Stft,
  source_stft: SourceStft,
  n_kernels: usize,
  upsample_scale: i32,
  sample_rate: f32,
}

impl KokoroModel {
  /// Builds the network from weights in mlx-audio's Kokoro layout (or the
  /// torch names `weight_ih_l0`, `gamma` / `beta`, `[out, in, k]` convs),
  /// checking every name and shape; unknown extra weights are an error.
  pub fn from_weights(
    config: KokoroConfig,
    weights: HashMap<String, Array>,
  ) -> Result<KokoroModel> {
    config.check()?;
    let mut st = Store::new(weights);
    let c = &config;
    let (hid, sty) = (c.hidden_dim, c.style_dim);
    let bert = Albert::load(&mut st, c)?;
    let bert_encoder = st.linear("bert_encoder", c.plbert.hidden_size, hid)?;
    let mut dur_lstms = vec![];
    let mut dur_norms = vec![];
    for i in 0..c.n_layer {
      dur_lstms.push(st.lstm(
        &format!("predictor.text_encoder.lstms.{}", 2 * i),
        hid + sty,
        hid / 2,
      )?);
      dur_norms.push(AdaLayerNorm {
        fc: st.linear(
          &format!("predictor.text_encoder.lstms.{}.fc", 2 * i + 1),
          sty,
          2 * hid,
        )?,
        eps: 1e-5,
      });
    }
    let pred_lstm = st.lstm("predictor.lstm", hid + sty, hid / 2)?;
    let dur_proj = st.linear("predictor.duration_proj.linear_layer", hid, c.max_dur)?;
    let shared = st.lstm("predictor.shared", hid + sty, hid / 2)?;
    let blocks = |st: &mut Store, name: &str| -> Result<Vec<AdainResBlk>> {
      Ok(vec![
        AdainResBlk::load(st, &format!("predictor.{name}.0"), hid, hid, sty, false)?,
        AdainResBlk::load(st, &format!("predictor.{name}.1"), hid, hid / 2, sty, true)?,
        AdainResBlk::load(
          st,
          &format!("predictor.{name}.2"),
          hid / 2,
          hid / 2,
          sty,
          false,
        )?,
      ])
    };
    let f0_blocks = blocks(&mut st, "F0")?;
    let n_blocks = blocks(&mut st, "N")?;
    let f0_proj = Conv::load(&mut st, "predictor.F0_proj", hid / 2, 1, 1, 1, 0, 1, true)?;
    let n_proj = Conv::load(&mut st, "predictor.N_proj", hid / 2, 1, 1, 1, 0, 1, true)?;
    let te_emb = st.take_shape("text_encoder.embedding.weight", &[c.n_token, hid])?;
    let k = c.text_encoder_kernel_size;
    let mut te_cnn = vec![];
    for i in 0..c.n_layer {
      let conv = Conv::load(
        &mut st,
        &format!("text_encoder.cnn.{i}.0"),
        hid,
        hid,
        k,
        1,
        (k - 1) / 2,
        1,
        true,
      )?;
      let w = st.take_any(
        &[
          &format!("text_encoder.cnn.{i}.1.weight"),
          &format!("text_encoder.cnn.{i}.1.gamma"),
        ],
        &[hid],
      )?;
      let b = st.take_any(
        &[
          &format!("text_encoder.cnn.{i}.1.bias"),
          &format!("text_encoder.cnn.{i}.1.beta"),
        ],
        &[hid],
      )?;
      te_cnn.push((conv, (w, b)));
    }
    let te_lstm = st.lstm("text_encoder.lstm", hid, hid / 2)?;
    // decoder
    let f0_conv = Conv::load(&mut st, "decoder.F0_conv", 1, 1, 3, 2, 1, 1, true)?;
    let n_conv = Conv::load(&mut st, "decoder.N_conv", 1, 1, 3, 2, 1, 1, true)?;
    let encode = AdainResBlk::load(&mut st, "decoder.encode", hid + 2, 1024, sty, false)?;
    let mut decode = vec![];
    for i in 0..4 {
      let out = if i == 3 { 512 } else { 1024 };
      decode.push(AdainResBlk::load(
        &mut st,
        &format!("decoder.decode.{i}"),
        1024 + 2 + 64,
        out,
        sty,
        i == 3,
      )?);
    }
    let asr_res = Conv::load(&mut st, "decoder.asr_res.0", hid, 64, 1, 1, 0, 1, true)?;
    let generator = Generator::load(&mut st, c)?;
    st.finish()?;
    Ok(KokoroModel {
      config,
      bert,
      bert_encoder,
      dur_lstms,
      dur_norms,
      pred_lstm,
      dur_proj,
      shared,
      f0_blocks,
      n_blocks,
      f0_proj,
      n_proj,
      te_emb,
      te_cnn,
      te_lstm,
      f0_conv,
      n_conv,
      encode,
      decode,
      asr_res,
      generator,
    })
  }

  /// Synthesises `input_ids` (with the boundary `0` tokens already added)
  /// for a style vector `ref_s` `[1, 256]` (the voice pack row for the
  /// phoneme count) at `speed` (python `Model.__call__`).
  pub fn forward(&self, input_ids: &[i32], ref_s: &Array, speed: f32) -> Result<KokoroOutput> {
    self.run(input_ids, ref_s, speed, None)
  }

  /// [`KokoroModel::forward`] that also records the decoder's
  /// intermediates (`gen_in`, `har`, `har_feat`, `nconv0`, `nres0`, `ups0`,
  /// `stage0`, `pad`, `nres1`, `stage1`, `post`) in [`KokoroOutput::trace`].
  pub fn forward_traced(
    &self,
    input_ids: &[i32],
    ref_s: &Array,
    speed: f32,
  ) -> Result<KokoroOutput> {
    let mut trace = Vec::new();
    let mut out = self.run(input_ids, ref_s, speed, Some(&mut trace))?;
    out.trace = trace;
    Ok(out)
  }

  fn run(
    &self,
    input_ids: &[i32],
    ref_s: &Array,
    speed: f32,
    trace: Option<&mut Vec<(String, Array)>>,
  ) -> Result<KokoroOutput> {
    let c = &self.config;
    let t = input_ids.len() as i32;
    if t < 3 || t > c.plbert.max_position_embeddings {
      return Err(Error::InvalidArgument(format!(
        "kokoro: {} phoneme tokens; 1..={} fit one pass (split longer text)",
        t - 2,
        c.plbert.max_position_embeddings - 2
      )));
    }
    if let Some(&bad) = input_ids.iter().find(|&&i| i < 0 || i >= c.n_token) {
      return Err(Error::InvalidArgument(format!(
        "kokoro: token id {bad} outside 0..{}",
        c.n_token
      )));
    }
    if !(speed.is_finite() && speed > 0.0) {
      return Err(Error::InvalidArgument(format!(
        "kokoro: speed must be > 0, got {speed}"
      )));
    }
    if ref_s.shape() != [1, 2 * c.style_dim] {
      return Err(Error::InvalidArgument(format!(
        "kokoro: style vector must be [1, {}], got {:?}",
        2 * c.style_dim,
        ref_s.shape()
      )));
    }
    let sty = c.style_dim;
    let s_ref = ops::slice(ref_s, &[0, 0], &[1, sty], &[1, 1])?;
    let s = ops::slice(ref_s, &[0, sty], &[1, 2 * sty], &[1, 1])?;
    let ids = Array::from_slice::<i32>(input_ids, &[1, t])?;

    let bert = self.bert.forward(&ids)?;
    let d_en = self.bert_encoder.forward(&bert)?; // [1, T, hid]
    let s_t = ops::broadcast_to(&ops::expand_dims(&s, 1)?, &[1, t, sty])?;
    // DurationEncoder
    let mut x = ops::concatenate_axis(&[d_en.clone(), s_t.clone()], -1)?;
    for (l, n) in self.dur_lstms.iter().zip(&self.dur_norms) {
      x = l.forward(&x)?;
      x = n.forward(&x, &s)?;
      x = ops::concatenate_axis(&[x, s_t.clone()], -1)?;
    }
    let d = x; // [1, T, hid + sty]
    let xl = self.pred_lstm.forward(&d)?;
    let dur = self.dur_proj.forward(&xl)?;
    let dur = ops::sum_axis(&ops::sigmoid(&dur)?, -1, false)?;
    let dur = ops::divide(&dur, &Array::scalar(speed))?;
    let dur = ops::round(&dur, 0)?;
    let mut dur = ops::maximum(&dur, &Array::scalar(MIN_FRAMES))?;
    let durs: Vec<f32> = dur.to_vec::<f32>()?;
    let durations: Vec<i32> = durs
      .iter()
      .map(|&v| if v.is_finite() { v.min(1e6) as i32 } else { 1 })
      .collect();
    let mut idx: Vec<i32> = Vec::new();
    for (i, &n) in durations.iter().enumerate() {
      idx.extend(std::iter::repeat_n(i as i32, n.max(0) as usize));
    }
    let frames = idx.len() as i32;
    let idx = Array::from_slice::<i32>(&idx, &[frames])?;
    let en = ops::take_axis(&d, &idx, 1)?; // [1, F, hid + sty]

    // F0 / N
    let sh = self.shared.forward(&en)?;
    let mut f0 = sh.clone();
    for b in &self.f0_blocks {
      f0 = b.forward(&f0, &s)?;
    }
    let f0 = ops::reshape(&self.f0_proj.forward(&f0)?, &[1, 2 * frames])?;
    let mut nn_ = sh;
    for b in &self.n_blocks {
      nn_ = b.forward(&nn_, &s)?;
    }
    let n = ops::reshape(&self.n_proj.forward(&nn_)?, &[1, 2 * frames])?;

    // text encoder
    let mut te = ops::take_axis(&self.te_emb, &ids, 0)?;
    for (conv, (w, b)) in &self.te_cnn {
      te = conv.forward(&te)?;
      te = fast::layer_norm(&te, Some(w), Some(b), 1e-5)?;
      te = leaky(&te, 0.2)?;
    }
    let te = self.te_lstm.forward(&te)?;
    let asr = ops::take_axis(&te, &idx, 1)?; // [1, F, hid]

    let audio = self.decode(&asr, &f0, &n, &s_ref, trace)?;
    Ok(KokoroOutput {
      audio,
      durations,
      f0,
      n,
      bert_dur: d_en,
      trace: Vec::new(),
    })
  }

  fn decode(
    &self,
    asr: &Array,
    f0_curve: &Array,
    n: &Array,
    s: &Array,
    trace: Option<&mut Vec<(String, Array)>>,
  ) -> Result<Array> {
    let l2 = f0_curve.shape()[1];
    let f0 = self
      .f0_conv
      .forward(&ops::reshape(f0_curve, &[1, l2, 1])?)?;
    let nn_ = self.n_conv.forward(&ops::reshape(n, &[1, l2, 1])?)?;
    let mut x = ops::concatenate_axis(&[asr.clone(), f0.clone(), nn_.clone()], -1)?;
    x = self.encode.forward(&x, s)?;
    let asr_res = self.asr_res.forward(asr)?;
    let mut res = true;
    for b in &self.decode {
      if res {
        x = ops::concatenate_axis(&[x, asr_res.clone(), f0.clone(), nn_.clone()], -1)?;
      }
      x = b.forward(&x, s)?;
      if b.pool.is_some() {
        res = false;
      }
    }
    self.generator.forward(&x, s, f0_curve, trace)
  }
}

impl Generator {
  fn load(st: &mut Store, c: &KokoroConfig) -> Result<Generator> {
    let g = &c.istftnet;
    let sty = c.style_dim;
    // the polynomial sin^2 of the Snakes where MLX's sin is scalar (the CPU)
    let poly = mlxrs_core::Device::default_device()
      .map(|d| d.kind == mlxrs_core::DeviceType::Cpu)
      .unwrap_or(false);
    let nfft = g.gen_istft_n_fft;
    let mut noise_convs = vec![];
    let mut noise_res = vec![];
    let mut ups = vec![];
    let mut resblocks = vec![];
    let n_up = g.upsample_rates.len();
    let mut ch = g.upsample_initial_channel;
    for i in 0..n_up {
      let (u, k) = (g.upsample_rates[i], g.upsample_kernel_sizes[i]);
      let cin = g.upsample_initial_channel >> i;
      let cout = g.upsample_initial_channel >> (i + 1);
      ups.push(ConvT::load(
        st,
        &format!("decoder.generator.ups.{i}"),
        cin,
        cout,
        k,
        u,
        (k - u) / 2,
        0,
        1,
      )?);
      for (j, (&rk, rd)) in g
        .resblock_kernel_sizes
        .iter()
        .zip(&g.resblock_dilation_sizes)
        .enumerate()
      {
        let idx = i * g.resblock_kernel_sizes.len() + j;
        resblocks.push(AdaInResBlock1::load(
          st,
          &format!("decoder.generator.resblocks.{idx}"),
          cout,
          rk,
          rd,
          sty,
          poly,
        )?);
      }
      if i + 1 < n_up {
        let sf: i32 = g.upsample_rates[i + 1..].iter().product();
        noise_convs.push(Conv::load(
          st,
          &format!("decoder.generator.noise_convs.{i}"),
          nfft + 2,
          cout,
          sf * 2,
          sf,
          (sf + 1) / 2,
          1,
          true,
        )?);
        noise_res.push(AdaInResBlock1::load(
          st,
          &format!("decoder.generator.noise_res.{i}"),
          cout,
          7,
          &[1, 3, 5],
          sty,
          poly,
        )?);
      } else {
        noise_convs.push(Conv::load(
          st,
          &format!("decoder.generator.noise_convs.{i}"),
          nfft + 2,
          cout,
          1,
          1,
          0,
          1,
          true,
        )?);
        noise_res.push(AdaInResBlock1::load(
          st,
          &format!("decoder.generator.noise_res.{i}"),
          cout,
          11,
          &[1, 3, 5],
          sty,
          poly,
        )?);
      }
      ch = cout;
    }
    let conv_post = Conv::load(
      st,
      "decoder.generator.conv_post",
      ch,
      nfft + 2,
      7,
      1,
      3,
      1,
      true,
    )?;
    let l_linear = st.linear("decoder.generator.m_source.l_linear", 9, 1)?;
    Ok(Generator {
      l_linear,
      noise_convs,
      noise_res,
      ups,
      resblocks,
      conv_post,
      stft: mlxrs_nn::Stft::new(nfft, g.gen_istft_hop_size, nfft)?,
      source_stft: SourceStft::new(nfft, g.gen_istft_hop_size)?,
      n_kernels: g.resblock_kernel_sizes.len(),
      upsample_scale: g.upsample_rates.iter().product::<i32>() * g.gen_istft_hop_size,
      sample_rate: c.sample_rate as f32,
    })
  }

  /// The harmonic source (python `SourceModuleHnNSF` without its random
  /// parts, as the ONNX export has it): 9 harmonics of `f0`, their phase
  /// integrated at frame rate and linearly upsampled, voiced where
  /// `f0 > 10`, merged by `l_linear` + `tanh`. `f0` `[1, L]` -> `[1, L * up]`.
  fn source(&self, f0: &Array) -> Result<Array> {
    let l = f0.shape()[1];
    let up = self.upsample_scale;
    let harm = Array::arange(1.0, 10.0, 1.0, Dtype::Float32)?; // [9]
    let fnh = ops::multiply(&ops::reshape(f0, &[1, l, 1])?, &harm)?; // [1, L, 9]
    // float ops in the export's order (the phase reaches ~1e5 rad, so the
    // rounding of each step shows in the waveform)
    let x = ops::divide(&fnh, &Array::scalar(self.sample_rate))?;
    let rad = ops::subtract(&x, &ops::floor(&x)?)?;
    let cs = ops::cumsum_axis(&rad, 1, false, true, None)?;
    let phase = ops::multiply(&cs, &Array::scalar(2.0f32))?;
    let phase = ops::multiply(&phase, &Array::scalar(std::f32::consts::PI))?;
    let phase = ops::multiply(&phase, &Array::scalar(up as f32))?;
    // linear upsample by `up`, half-pixel: src = (j + 0.5) / up - 0.5, clamped
    let total = l * up;
    let j = Array::arange(0.0, f64::from(total), 1.0, Dtype::Float32)?;
    let src = ops::subtract(
      &ops::divide(
        &ops::add(&j, &Array::scalar(0.5f32))?,
        &Array::scalar(up as f32),
      )?,
      &Array::scalar(0.5f32),
    )?;
    let src = ops::clip(
      &src,
      Some(&Array::scalar(0.0f32)),
      Some(&Array::scalar((l - 1) as f32)),
    )?;
    let i0 = ops::floor(&src)?;
    let w1 = ops::reshape(&ops::subtract(&src, &i0)?, &[1, total, 1])?;
    let w0 = ops::subtract(&Array::scalar(1.0f32), &w1)?;
    let i0i = ops::astype(&i0, Dtype::Int32)?;
    let i1i = ops::minimum(
      &ops::add(&i0i, &Array::scalar(1i32))?,
      &Array::scalar(l - 1),
    )?;
    let p0 = ops::take_axis(&phase, &i0i, 1)?;
    let p1 = ops::take_axis(&phase, &i1i, 1)?;
    let ph = ops::add(&ops::multiply(&w0, &p0)?, &ops::multiply(&w1, &p1)?)?;
    let sines = ops::multiply(&ops::sin(&ph)?, &Array::scalar(0.1f32))?;
    // voiced mask on the nearest-upsampled f0
    let f0_up = ops::repeat_axis(&ops::reshape(f0, &[1, l, 1])?, up, 1)?;
    let uv = ops::astype(
      &ops::greater(&f0_up, &Array::scalar(10.0f32))?,
      Dtype::Float32,
    )?;
    let sw = ops::multiply(&sines, &uv)?;
    let merged = ops::tanh(&self.l_linear.forward(&sw)?)?; // [1, T, 1]
    Ok(ops::reshape(&merged, &[1, total])?)
  }

  /// Magnitude and phase of the source STFT as the export computes them
  /// (see [`super::source_stft`]), channels-last `[1, frames, n_fft + 2]`.
  fn source_features(&self, har: &Array) -> Result<Array> {
    self.source_stft.features(har)
  }

  fn forward(
    &self,
    x: &Array,
    s: &Array,
    f0: &Array,
    mut trace: Option<&mut Vec<(String, Array)>>,
  ) -> Result<Array> {
    let mut rec = |name: &str, a: &Array| {
      if let Some(t) = trace.as_deref_mut() {
        t.push((name.to_string(), a.clone()));
      }
    };
    rec("gen_in", x);
    let har = self.source(f0)?;
    rec("har", &har);
    let har = self.source_features(&har)?;
    rec("har_feat", &har);
    let mut x = x.clone();
    let n_up = self.ups.len();
    for i in 0..n_up {
      x = leaky(&x, 0.1)?;
      let nc = self.noise_convs[i].forward(&har)?;
      if i == 0 {
        rec("nconv0", &nc);
      }
      let xs = self.noise_res[i].forward(&nc, s)?;
      rec(&format!("nres{i}"), &xs);
      x = self.ups[i].forward(&x)?;
      if i == 0 {
        rec("ups0", &x);
      }
      if i == n_up - 1 {
        // ReflectionPad1d((1, 0)): prepend x[1]
        let len = x.shape()[1];
        let c = x.shape()[2];
        let first = ops::slice(&x, &[0, 1, 0], &[1, 2, c], &[1, 1, 1])?;
        let _ = len;
        x = ops::concatenate_axis(&[first, x], 1)?;
        rec("pad", &x);
      }
      x = ops::add(&x, &xs)?;
      let mut acc: Option<Array> = None;
      for j in 0..self.n_kernels {
        let y = self.resblocks[i * self.n_kernels + j].forward(&x, s)?;
        acc = Some(match acc {
          None => y,
          Some(a) => ops::add(&a, &y)?,
        });
      }
      let acc = acc.ok_or_else(|| Error::Model("kokoro: no resblocks".into()))?;
      x = ops::divide(&acc, &Array::scalar(self.n_kernels as f32))?;
      rec(&format!("stage{i}"), &x);
    }
    x = leaky(&x, 0.01)?;
    let x = self.conv_post.forward(&x)?; // [1, frames, n_fft + 2]
    rec("post", &x);
    let nb = self.stft.n_fft / 2 + 1;
    let fr = x.shape()[1];
    let spec = ops::exp(&ops::slice(&x, &[0, 0, 0], &[1, fr, nb], &[1, 1, 1])?)?;
    let phase = ops::sin(&ops::slice(&x, &[0, 0, nb], &[1, fr, 2 * nb], &[1, 1, 1])?)?;
    self.inverse(&spec, &phase)
  }

  /// The export's inverse STFT (iSTFTNet's conv-transpose `STFT.inverse`
  /// with its `window_sum` folded for one frame): overlap-add of
  /// `window * irfft(spec * e^(i phase))`, the first `n_fft` samples divided
  /// by `window^2`, `n_fft / 2` trimmed at both ends. Outside the first
  /// samples this is `torch.istft(...)` times the window-square envelope
  /// (1.5 for a periodic Hann at hop n_fft / 4). `spec` / `phase`
  /// `[1, frames, n_fft / 2 + 1]`.
  fn inverse(&self, spec: &Array, phase: &Array) -> Result<Array> {
    let n_fft = self.stft.n_fft;
    let hop = self.stft.hop;
    let frames = spec.shape()[1];
    let re = ops::multiply(spec, &ops::cos(phase)?)?;
    let im = ops::multiply(spec, &ops::sin(phase)?)?;
    let c = mlxrs_nn::stft::complex_from(&re, &im)?;
    let window = ops::slice(&ops::hanning(n_fft + 1)?, &[0], &[n_fft], &[1])?;
    let fr = ops::multiply(&fft::irfft(&c, n_fft, -1, FftNorm::Backward)?, &window)?; // [1, frames, n_fft]
    // overlap-add with hop `hop` (n_fft a multiple of hop)
    let k = n_fft / hop;
    let fr = ops::reshape(&fr, &[1, frames, k, hop])?;
    let mut acc: Option<Array> = None;
    for c in 0..k {
      let part = ops::reshape(
        &ops::slice(&fr, &[0, 0, c, 0], &[1, frames, c + 1, hop], &[1, 1, 1, 1])?,
        &[1, frames * hop],
      )?;
      let part = ops::pad(
        &part,
        &[1],
        &[c * hop],
        &[(k - 1 - c) * hop],
        &Array::scalar(0.0f32),
        "constant",
      )?;
      acc = Some(match acc {
        None => part,
        Some(a) => ops::add(&a, &part)?,
      });
    }
    let y = acc.ok_or_else(|| Error::Model("kokoro: empty inverse STFT".into()))?;
    let total = (frames + k - 1) * hop;
    // first n_fft samples / window^2 where window^2 > 0
    let w2 = ops::square(&window)?;
    let w2 = ops::where_(
      &ops::greater(&w2, &Array::scalar(f32::MIN_POSITIVE))?,
      &w2,
      &Array::scalar(1.0f32),
    )?;
    let head = ops::divide(
      &ops::slice(&y, &[0, 0], &[1, n_fft], &[1, 1])?,
      &ops::reshape(&w2, &[1, n_fft])?,
    )?;
    let tail = ops::slice(&y, &[0, n_fft], &[1, total], &[1, 1])?;
    let y = ops::concatenate_axis(&[head, tail], 1)?;
    let half = n_fft / 2;
    let y = ops::slice(&y, &[0, half], &[1, total - half], &[1, 1])?;
    Ok(ops::reshape(&y, &[-1])?)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// The CPU Snake's polynomial `sin^2` against float64 `sin^2` of the same
  /// float32 inputs, over the range Snake arguments take and beyond.
  #[test]
  fn sin_squared_poly_matches_sin() {
    let mut xs: Vec<f32> = (0..20001).map(|i| (i as f32 - 10000.0) * 0.05).collect();
    for k in [-3000i32, -7, -1, 0, 1, 2, 9, 311, 20000] {
      let c = k as f64 * std::f64::consts::PI;
      xs.extend([c - 1e-3, c, c + 1e-3, c + std::f64::consts::FRAC_PI_2].map(|v| v as f32));
    }
    let x = Array::from_slice(&xs, &[xs.len() as i32]).unwrap();
    let got = sin_squared_poly(&x).unwrap().to_vec::<f32>().unwrap();
    let worst = xs
      .iter()
      .zip(&got)
      .map(|(&x, &g)| ((x as f64).sin().powi(2) - g as f64).abs())
      .fold(0.0f64, f64::max);
    assert!(worst < 2e-6, "max |poly - sin^2| = {worst:e}");
  }
}
