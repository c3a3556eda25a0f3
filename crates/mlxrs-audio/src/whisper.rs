//! The Whisper encoder / decoder (python `whisper.model.Whisper`, HF
//! `WhisperForConditionalGeneration`, CTranslate2 `WhisperSpec`), for every
//! size, from its config.
//!
//! [`Whisper::load`] reads either
//! - a Hugging Face folder: `config.json` + `model.safetensors` (or shards
//!   with `model.safetensors.index.json`), names
//!   `model.encoder.conv1.weight`, `model.encoder.layers.N.self_attn.q_proj.weight`,
//!   ..., `model.decoder.embed_tokens.weight` (`proj_out` is tied to it), or
//! - a CTranslate2 / faster-whisper folder: `model.bin` + `config.json` +
//!   `tokenizer.json` or `vocabulary.txt`; its fused q/k/v and k/v projections
//!   are split and renamed to the HF names, and float16 / int8 weights are
//!   widened to float32.
//!
//! All weights are float32 (the compute dtype of faster-whisper on CPU).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Device, DeviceType, Dtype, Stream, ops, with_stream};
use mlxrs_nn::{Embedding, LayerNorm, Linear, Module, Weights, gelu, join, module};
use serde_json::Value;

use crate::ct2::Ct2Model;
use crate::error::{Error, Result, io_err};
use crate::tokenizer::WhisperTokenizer;

/// Model dimensions and decoding defaults (python `whisper.model.ModelDimensions`
/// plus the generation config's token lists).
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
  /// Mel bins of the input (80, or 128 for large-v3).
  pub n_mels: i32,
  /// Encoder positions (1500 for 30 s).
  pub n_audio_ctx: i32,
  /// Encoder width.
  pub n_audio_state: i32,
  /// Encoder heads.
  pub n_audio_head: i32,
  /// Encoder layers.
  pub n_audio_layer: i32,
  /// Encoder MLP width.
  pub n_audio_ffn: i32,
  /// Vocabulary size (51864 for `.en`, 51865 / 51866 multilingual).
  pub n_vocab: i32,
  /// Decoder positions (448).
  pub n_text_ctx: i32,
  /// Decoder width.
  pub n_text_state: i32,
  /// Decoder heads.
  pub n_text_head: i32,
  /// Decoder layers.
  pub n_text_layer: i32,
  /// Decoder MLP width.
  pub n_text_ffn: i32,
  /// The default suppress list (what `suppress_tokens=[-1]` means to
  /// CTranslate2: `config.json`'s `suppress_ids` / HF `suppress_tokens`).
  pub suppress_tokens: Vec<u32>,
  /// Tokens suppressed at the first sampled position when `suppress_blank`
  /// (`suppress_ids_begin` / `begin_suppress_tokens`).
  pub begin_suppress_tokens: Vec<u32>,
  /// Cross-attention heads `(decoder layer, head)` that follow the audio
  /// timing, used for word timestamps (HF `generation_config.alignment_heads`,
  /// CTranslate2 `config.json` `alignment_heads`; default: every head of the
  /// second half of the decoder layers, as openai whisper and CTranslate2's
  /// converter do).
  pub alignment_heads: Vec<(i32, i32)>,
}

/// Every head of the second half of the decoder layers (python
/// `Whisper.__init__`'s default `alignment_heads`).
pub fn default_alignment_heads(n_text_layer: i32, n_text_head: i32) -> Vec<(i32, i32)> {
  (n_text_layer / 2..n_text_layer)
    .flat_map(|l| (0..n_text_head).map(move |h| (l, h)))
    .collect()
}

/// `[[layer, head], ...]` of a JSON value (`None` when absent or malformed).
fn heads_from_json(v: Option<&Value>) -> Option<Vec<(i32, i32)>> {
  let a = v?.as_array()?;
  a.iter()
    .map(|p| {
      let p = p.as_array()?;
      match (p.first()?.as_i64(), p.get(1)?.as_i64()) {
        (Some(l), Some(h)) => Some((l as i32, h as i32)),
        _ => None,
      }
    })
    .collect()
}

impl WhisperConfig {
  /// Whether the vocabulary is multilingual (python `Whisper.is_multilingual`).
  pub fn is_multilingual(&self) -> bool {
    self.n_vocab >= 51865
  }

  fn check(&self) -> Result<()> {
    let pos = |v: i32, n: &str| {
      if v <= 0 {
        Err(Error::Model(format!("config: {n} must be > 0, got {v}")))
      } else {
        Ok(())
      }
    };
    pos(self.n_mels, "num_mel_bins")?;
    pos(self.n_audio_ctx, "max_source_positions")?;
    pos(self.n_audio_state, "d_model")?;
    pos(self.n_audio_head, "encoder_attention_heads")?;
    pos(self.n_text_ctx, "max_target_positions")?;
    pos(self.n_text_state, "d_model")?;
    pos(self.n_text_head, "decoder_attention_heads")?;
    pos(self.n_vocab, "vocab_size")?;
    if let Some(&(l, h)) = self
      .alignment_heads
      .iter()
      .find(|&&(l, h)| l < 0 || l >= self.n_text_layer || h < 0 || h >= self.n_text_head)
    {
      return Err(Error::Model(format!(
        "config: alignment head ({l}, {h}) is outside the decoder's {} layers x {} heads",
        self.n_text_layer, self.n_text_head
      )));
    }
    if self.n_audio_state % self.n_audio_head != 0 || self.n_text_state % self.n_text_head != 0 {
      return Err(Error::Model(
        "config: d_model is not a multiple of the attention heads".into(),
      ));
    }
    Ok(())
  }

  /// From a Hugging Face `config.json` value (plus `generation_config.json`
  /// when given, whose token lists win).
  pub fn from_hf(cfg: &Value, gen_cfg: Option<&Value>) -> Result<WhisperConfig> {
    let int = |k: &str| -> Result<i32> {
      cfg
        .get(k)
        .and_then(Value::as_i64)
        .map(|v| v as i32)
        .ok_or_else(|| Error::Model(format!("config.json: missing integer {k:?}")))
    };
    let d_model = int("d_model")?;
    let ids = |k: &str| -> Vec<u32> {
      let from = |v: &Value| -> Option<Vec<u32>> {
        v.get(k)?.as_array().map(|a| {
          a.iter()
            .filter_map(Value::as_i64)
            .filter(|&x| x >= 0)
            .map(|x| x as u32)
            .collect()
        })
      };
      gen_cfg
        .and_then(from)
        .or_else(|| from(cfg))
        .unwrap_or_default()
    };
    let c = WhisperConfig {
      n_mels: int("num_mel_bins")?,
      n_audio_ctx: int("max_source_positions")?,
      n_audio_state: d_model,
      n_audio_head: int("encoder_attention_heads")?,
      n_audio_layer: int("encoder_layers")?,
      n_audio_ffn: cfg
        .get("encoder_ffn_dim")
        .and_then(Value::as_i64)
        .map(|v| v as i32)
        .unwrap_or(4 * d_model),
      n_vocab: int("vocab_size")?,
      n_text_ctx: int("max_target_positions")?,
      n_text_state: d_model,
      n_text_head: int("decoder_attention_heads")?,
      n_text_layer: int("decoder_layers")?,
      n_text_ffn: cfg
        .get("decoder_ffn_dim")
        .and_then(Value::as_i64)
        .map(|v| v as i32)
        .unwrap_or(4 * d_model),
      suppress_tokens: ids("suppress_tokens"),
      begin_suppress_tokens: ids("begin_suppress_tokens"),
      alignment_heads: Vec::new(),
    };
    let mut c = c;
    c.alignment_heads = heads_from_json(gen_cfg.and_then(|g| g.get("alignment_heads")))
      .unwrap_or_else(|| default_alignment_heads(c.n_text_layer, c.n_text_head));
    if let Some(a) = cfg.get("activation_function").and_then(Value::as_str) {
      if a != "gelu" {
        return Err(Error::Model(format!(
          "config.json: activation_function {a:?} is not supported (Whisper uses gelu)"
        )));
      }
    }
    if cfg.get("scale_embedding").and_then(Value::as_bool) == Some(true) {
      return Err(Error::Model(
        "config.json: scale_embedding = true is not supported by Whisper".into(),
      ));
    }
    c.check()?;
    Ok(c)
  }
}

/// A 1-D convolution with PyTorch's `[out, in, k]` weight layout on disk,
/// kept as MLX's `[out, k, in]` (python `whisper.model.Conv1d`).
struct Conv1d {
  in_ch: i32,
  out_ch: i32,
  kernel: i32,
  stride: i32,
  weight: Array,
  bias: Array,
}

impl Conv1d {
  fn new(in_ch: i32, out_ch: i32, kernel: i32, stride: i32) -> Conv1d {
    Conv1d {
      in_ch,
      out_ch,
      kernel,
      stride,
      weight: Array::scalar(0.0f32),
      bias: Array::scalar(0.0f32),
    }
  }

  /// `x` `[B, L, in]` -> `[B, L', out]` (padding 1).
  fn forward(&self, x: &Array) -> Result<Array> {
    let y = ops::conv1d(x, &self.weight, self.stride, 1, 1, 1)?;
    Ok(ops::add(&y, &self.bias)?)
  }
}

impl Module for Conv1d {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    let wt = w.take(
      &join(prefix, "weight"),
      Some(&[self.out_ch, self.in_ch, self.kernel]),
    );
    self.weight = ops::transpose_axes(&wt, &[0, 2, 1]).unwrap_or(wt);
    self.bias = w.take(&join(prefix, "bias"), Some(&[self.out_ch]));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&join(prefix, "weight"), &self.weight);
    f(&join(prefix, "bias"), &self.bias);
  }
}

struct Attention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  out_proj: Linear,
  n_head: i32,
}
module!(Attention {
  q_proj,
  k_proj,
  v_proj,
  out_proj
});

fn heads(x: &Array, n_head: i32) -> Result<Array> {
  let s = x.shape();
  let t = ops::reshape(x, &[s[0], s[1], n_head, -1])?;
  Ok(ops::transpose_axes(&t, &[0, 2, 1, 3])?)
}

fn merge(o: &Array) -> Result<Array> {
  let s = o.shape();
  let t = ops::transpose_axes(o, &[0, 2, 1, 3])?;
  Ok(ops::reshape(&t, &[s[0], s[2], -1])?)
}

impl Attention {
  fn new(d: i32, n_head: i32) -> Attention {
    Attention {
      q_proj: Linear::new(d, d, true),
      k_proj: Linear::new(d, d, false),
      v_proj: Linear::new(d, d, true),
      out_proj: Linear::new(d, d, true),
      n_head,
    }
  }

  fn scale(&self) -> f32 {
    let hd = self.q_proj.out_dims / self.n_head;
    (hd as f32).powf(-0.5)
  }

  /// Self-attention over `x` `[B, T, d]`, with a cache (decoder: causal
  /// over the cached and new positions) or without (encoder).
  fn self_attn(&self, x: &Array, cache: Option<&mut Option<(Array, Array)>>) -> Result<Array> {
    let q = heads(&self.q_proj.forward(x)?, self.n_head)?;
    let k = heads(&self.k_proj.forward(x)?, self.n_head)?;
    let v = heads(&self.v_proj.forward(x)?, self.n_head)?;
    let t = x.dim(1).unwrap_or(1);
    let (k, v, mask) = match cache {
      Some(c) => {
        let (k, v) = match c.take() {
          Some((pk, pv)) => (
            ops::concatenate_axis(&[pk, k], 2)?,
            ops::concatenate_axis(&[pv, v], 2)?,
          ),
          None => (k, v),
        };
        *c = Some((k.clone(), v.clone()));
        (k, v, if t > 1 { Mask::Causal } else { Mask::None })
      }
      None => (k, v, Mask::None),
    };
    let o = scaled_dot_product_attention(&q, &k, &v, self.scale(), mask)?;
    self.out_proj.forward(&merge(&o)?).map_err(Error::from)
  }

  /// Encoder self-attention with the heads split over `streams` (the
  /// default stream takes the first group): MLX's CPU backend runs each
  /// stream on its own thread, and its softmax / exp kernels are
  /// single-threaded, so this spreads the attention over the cores. Each
  /// head is computed exactly as in one call.
  fn encoder_self_attn(&self, x: &Array, streams: &[Stream]) -> Result<Array> {
    if streams.is_empty() {
      return self.self_attn(x, None);
    }
    let q = heads(&self.q_proj.forward(x)?, self.n_head)?;
    let k = heads(&self.k_proj.forward(x)?, self.n_head)?;
    let v = heads(&self.v_proj.forward(x)?, self.n_head)?;
    let s = q.shape();
    let parts = (streams.len() + 1).min(self.n_head as usize) as i32;
    let chunk = (self.n_head + parts - 1) / parts;
    let mut outs = Vec::with_capacity(parts as usize);
    for p in 0..parts {
      let (lo, hi) = (p * chunk, ((p + 1) * chunk).min(self.n_head));
      if lo >= hi {
        break;
      }
      let run = || -> Result<Array> {
        let part =
          |a: &Array| ops::slice(a, &[0, lo, 0, 0], &[s[0], hi, s[2], s[3]], &[1, 1, 1, 1]);
        Ok(scaled_dot_product_attention(
          &part(&q)?,
          &part(&k)?,
          &part(&v)?,
          self.scale(),
          Mask::None,
        )?)
      };
      outs.push(if p == 0 {
        run()?
      } else {
        with_stream(&streams[p as usize - 1], run)?
      });
    }
    let o = ops::concatenate_axis(&outs, 1)?;
    self.out_proj.forward(&merge(&o)?).map_err(Error::from)
  }

  /// Cross-attention keys / values of the encoder output, `[B, H, T, hd]`.
  fn cross_kv(&self, xa: &Array) -> Result<(Array, Array)> {
    Ok((
      heads(&self.k_proj.forward(xa)?, self.n_head)?,
      heads(&self.v_proj.forward(xa)?, self.n_head)?,
    ))
  }

  /// Cross-attention that also returns the pre-softmax scores
  /// `q k^T * scale`, `[B, H, T, frames]` (what CTranslate2's decoder hands
  /// `align` for its alignment heads).
  fn cross_attn_qk(&self, x: &Array, kv: &(Array, Array)) -> Result<(Array, Array)> {
    let q = heads(&self.q_proj.forward(x)?, self.n_head)?;
    let q = ops::multiply(&q, &Array::scalar(self.scale()))?;
    let qk = ops::matmul(&q, &ops::swapaxes(&kv.0, 2, 3)?)?;
    let w = ops::softmax_axis(&qk, -1, true)?;
    let o = ops::matmul(&w, &kv.1)?;
    Ok((self.out_proj.forward(&merge(&o)?)?, qk))
  }

  fn cross_attn(&self, x: &Array, kv: &(Array, Array)) -> Result<Array> {
    let q = heads(&self.q_proj.forward(x)?, self.n_head)?;
    let o = scaled_dot_product_attention(&q, &kv.0, &kv.1, self.scale(), Mask::None)?;
    self.out_proj.forward(&merge(&o)?).map_err(Error::from)
  }
}

struct EncoderLayer {
  self_attn: Attention,
  self_attn_layer_norm: LayerNorm,
  fc1: Linear,
  fc2: Linear,
  final_layer_norm: LayerNorm,
}
module!(EncoderLayer {
  self_attn,
  self_attn_layer_norm,
  fc1,
  fc2,
  final_layer_norm
});

/// Erf GELU of `x` `[B, T, C]` with the rows split over `streams` (see
/// `Attention::encoder_self_attn`); elementwise, so exactly `gelu(x)`.
fn split_gelu(x: &Array, streams: &[Stream]) -> Result<Array> {
  let s = x.shape();
  if streams.is_empty() || s.len() != 3 || s[1] < 2 {
    return Ok(gelu(x)?);
  }
  let parts = (streams.len() + 1).min(s[1] as usize) as i32;
  let chunk = (s[1] + parts - 1) / parts;
  let mut outs = Vec::with_capacity(parts as usize);
  for p in 0..parts {
    let (lo, hi) = (p * chunk, ((p + 1) * chunk).min(s[1]));
    if lo >= hi {
      break;
    }
    let run = || -> Result<Array> {
      Ok(gelu(&ops::slice(
        x,
        &[0, lo, 0],
        &[s[0], hi, s[2]],
        &[1, 1, 1],
      )?)?)
    };
    outs.push(if p == 0 {
      run()?
    } else {
      with_stream(&streams[p as usize - 1], run)?
    });
  }
  Ok(ops::concatenate_axis(&outs, 1)?)
}

fn ln(d: i32) -> LayerNorm {
  LayerNorm::new(d, 1e-5, true, true)
}

impl EncoderLayer {
  fn new(d: i32, h: i32, ffn: i32) -> EncoderLayer {
    EncoderLayer {
      self_attn: Attention::new(d, h),
      self_attn_layer_norm: ln(d),
      fc1: Linear::new(d, ffn, true),
      fc2: Linear::new(ffn, d, true),
      final_layer_norm: ln(d),
    }
  }

  fn forward(&self, x: &Array, streams: &[Stream]) -> Result<Array> {
    let x = ops::add(
      x,
      &self
        .self_attn
        .encoder_self_attn(&self.self_attn_layer_norm.forward(x)?, streams)?,
    )?;
    let h = self.fc2.forward(&split_gelu(
      &self.fc1.forward(&self.final_layer_norm.forward(&x)?)?,
      streams,
    )?)?;
    Ok(ops::add(&x, &h)?)
  }
}

struct DecoderLayer {
  self_attn: Attention,
  self_attn_layer_norm: LayerNorm,
  encoder_attn: Attention,
  encoder_attn_layer_norm: LayerNorm,
  fc1: Linear,
  fc2: Linear,
  final_layer_norm: LayerNorm,
}
module!(DecoderLayer {
  self_attn,
  self_attn_layer_norm,
  encoder_attn,
  encoder_attn_layer_norm,
  fc1,
  fc2,
  final_layer_norm
});

impl DecoderLayer {
  fn new(d: i32, h: i32, ffn: i32) -> DecoderLayer {
    DecoderLayer {
      self_attn: Attention::new(d, h),
      self_attn_layer_norm: ln(d),
      encoder_attn: Attention::new(d, h),
      encoder_attn_layer_norm: ln(d),
      fc1: Linear::new(d, ffn, true),
      fc2: Linear::new(ffn, d, true),
      final_layer_norm: ln(d),
    }
  }

  fn forward(
    &self,
    x: &Array,
    kv: &(Array, Array),
    cache: &mut Option<(Array, Array)>,
  ) -> Result<Array> {
    let x = ops::add(
      x,
      &self
        .self_attn
        .self_attn(&self.self_attn_layer_norm.forward(x)?, Some(cache))?,
    )?;
    let x = ops::add(
      &x,
      &self
        .encoder_attn
        .cross_attn(&self.encoder_attn_layer_norm.forward(&x)?, kv)?,
    )?;
    let h = self.fc2.forward(&gelu(
      &self.fc1.forward(&self.final_layer_norm.forward(&x)?)?,
    )?)?;
    Ok(ops::add(&x, &h)?)
  }

  /// [`DecoderLayer::forward`] that also returns the cross-attention scores.
  fn forward_qk(
    &self,
    x: &Array,
    kv: &(Array, Array),
    cache: &mut Option<(Array, Array)>,
  ) -> Result<(Array, Array)> {
    let x = ops::add(
      x,
      &self
        .self_attn
        .self_attn(&self.self_attn_layer_norm.forward(x)?, Some(cache))?,
    )?;
    let (a, qk) = self
      .encoder_attn
      .cross_attn_qk(&self.encoder_attn_layer_norm.forward(&x)?, kv)?;
    let x = ops::add(&x, &a)?;
    let h = self.fc2.forward(&gelu(
      &self.fc1.forward(&self.final_layer_norm.forward(&x)?)?,
    )?)?;
    Ok((ops::add(&x, &h)?, qk))
  }
}

struct Encoder {
  conv1: Conv1d,
  conv2: Conv1d,
  embed_positions: Embedding,
  layers: Vec<EncoderLayer>,
  layer_norm: LayerNorm,
}
module!(Encoder {
  conv1,
  conv2,
  embed_positions,
  layers,
  layer_norm
});

struct Decoder {
  embed_tokens: Embedding,
  embed_positions: Embedding,
  layers: Vec<DecoderLayer>,
  layer_norm: LayerNorm,
}
module!(Decoder {
  embed_tokens,
  embed_positions,
  layers,
  layer_norm
});

struct Inner {
  encoder: Encoder,
  decoder: Decoder,
}
module!(Inner { encoder, decoder });

/// The network: encoder + decoder with tied output projection.
pub struct WhisperModel {
  model: Inner,
  /// `embed_tokens.weight.T`, contiguous `[d, n_vocab]`: the tied output
  /// projection, laid out once so each decoding step is a plain GEMV (a
  /// transposed view costs about twice as much on MLX's CPU backend).
  proj_t: Option<Array>,
  /// Extra CPU streams the encoder spreads its attention heads and GELU
  /// over (empty on GPU or with one core; `MLXRS_WHISPER_CPU_STREAMS=N`
  /// sets the total number of streams, 1 = off).
  streams: Vec<Stream>,
  /// Dimensions.
  pub config: WhisperConfig,
}

impl Module for WhisperModel {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    self.model.load(w, &join(prefix, "model"));
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    self.model.visit(&join(prefix, "model"), f);
  }
}

/// Per-window decoder state: self-attention keys / values of the fed
/// positions and the cross-attention keys / values of one encoded window.
/// `Clone` is cheap (arrays are shared), which is how beams fork.
#[derive(Clone)]
pub struct DecoderState {
  caches: Vec<Option<(Array, Array)>>,
  cross: Vec<(Array, Array)>,
  /// Positions fed so far.
  pub offset: i32,
}

impl DecoderState {
  /// Forget the fed tokens, keep the encoder keys / values.
  pub fn reset(&mut self) {
    self.caches.iter_mut().for_each(|c| *c = None);
    self.offset = 0;
  }
}

impl WhisperModel {
  /// An unloaded model of `config`.
  pub fn new(config: WhisperConfig) -> WhisperModel {
    let c = &config;
    let encoder = Encoder {
      conv1: Conv1d::new(c.n_mels, c.n_audio_state, 3, 1),
      conv2: Conv1d::new(c.n_audio_state, c.n_audio_state, 3, 2),
      embed_positions: Embedding::new(c.n_audio_ctx, c.n_audio_state),
      layers: (0..c.n_audio_layer)
        .map(|_| EncoderLayer::new(c.n_audio_state, c.n_audio_head, c.n_audio_ffn))
        .collect(),
      layer_norm: ln(c.n_audio_state),
    };
    let decoder = Decoder {
      embed_tokens: Embedding::new(c.n_vocab, c.n_text_state),
      embed_positions: Embedding::new(c.n_text_ctx, c.n_text_state),
      layers: (0..c.n_text_layer)
        .map(|_| DecoderLayer::new(c.n_text_state, c.n_text_head, c.n_text_ffn))
        .collect(),
      layer_norm: ln(c.n_text_state),
    };
    WhisperModel {
      model: Inner { encoder, decoder },
      proj_t: None,
      streams: Vec::new(),
      config,
    }
  }

  /// Encode mel features `[B, frames, n_mels]` (frames = 2 * n_audio_ctx)
  /// to `[B, n_audio_ctx, d]` (python `AudioEncoder.forward`, with MLX's
  /// channels-last layout).
  pub fn encode(&self, mel: &Array) -> Result<Array> {
    let c = &self.config;
    let s = mel.shape();
    if s.len() != 3 || s[2] != c.n_mels {
      return Err(Error::InvalidArgument(format!(
        "encode: expected mel [batch, frames, {}], got {s:?}",
        c.n_mels
      )));
    }
    if s[1] > 2 * c.n_audio_ctx || s[1] < 2 {
      return Err(Error::InvalidArgument(format!(
        "encode: {} frames; this model takes at most {} (30 s)",
        s[1],
        2 * c.n_audio_ctx
      )));
    }
    let e = &self.model.encoder;
    let x = split_gelu(&e.conv1.forward(mel)?, &self.streams)?;
    let x = split_gelu(&e.conv2.forward(&x)?, &self.streams)?;
    let t = x.dim(1).unwrap_or(0);
    let pos = ops::slice(
      &e.embed_positions.weight,
      &[0, 0],
      &[t, c.n_audio_state],
      &[1, 1],
    )?;
    let mut x = ops::add(&x, &pos)?;
    for l in &e.layers {
      x = l.forward(&x, &self.streams)?;
    }
    Ok(e.layer_norm.forward(&x)?)
  }

  /// A fresh decoder state over encoder output `xa` `[B, T, d]`.
  pub fn decoder_state(&self, xa: &Array) -> Result<DecoderState> {
    let mut cross = Vec::with_capacity(self.model.decoder.layers.len());
    for l in &self.model.decoder.layers {
      cross.push(l.encoder_attn.cross_kv(xa)?);
    }
    Ok(DecoderState {
      caches: vec![None; cross.len()],
      cross,
      offset: 0,
    })
  }

  /// Feed `tokens` (`[B, n]` int32) after the state's `offset` positions and
  /// return the final hidden states `[B, n, d]` (before the vocabulary
  /// projection; see [`WhisperModel::logits`]).
  pub fn decode_hidden(&self, tokens: &Array, state: &mut DecoderState) -> Result<Array> {
    let c = &self.config;
    let n = tokens.dim(1).unwrap_or(0);
    if tokens.ndim() != 2 || n == 0 {
      return Err(Error::InvalidArgument(format!(
        "decode: expected tokens [batch, n>0], got {:?}",
        tokens.shape()
      )));
    }
    if state.offset + n > c.n_text_ctx {
      return Err(Error::InvalidArgument(format!(
        "decode: {} + {n} positions exceed the decoder context of {}",
        state.offset, c.n_text_ctx
      )));
    }
    let d = &self.model.decoder;
    let emb = d.embed_tokens.forward(tokens)?;
    let pos = ops::slice(
      &d.embed_positions.weight,
      &[state.offset, 0],
      &[state.offset + n, c.n_text_state],
      &[1, 1],
    )?;
    let mut x = ops::add(&emb, &pos)?;
    for (i, l) in d.layers.iter().enumerate() {
      x = l.forward(&x, &state.cross[i], &mut state.caches[i])?;
    }
    state.offset += n;
    Ok(d.layer_norm.forward(&x)?)
  }

  /// [`WhisperModel::decode_hidden`] that also returns every decoder
  /// layer's cross-attention scores (pre-softmax `q k^T / sqrt(d_head)`,
  /// `[B, heads, n, frames]`): the input of word-level alignment (python
  /// `whisper.timing.find_alignment`'s QK hooks).
  pub fn decode_hidden_with_cross_qk(
    &self,
    tokens: &Array,
    state: &mut DecoderState,
  ) -> Result<(Array, Vec<Array>)> {
    let c = &self.config;
    let n = tokens.dim(1).unwrap_or(0);
    if tokens.ndim() != 2 || n == 0 {
      return Err(Error::InvalidArgument(format!(
        "decode: expected tokens [batch, n>0], got {:?}",
        tokens.shape()
      )));
    }
    if state.offset + n > c.n_text_ctx {
      return Err(Error::InvalidArgument(format!(
        "decode: {} + {n} positions exceed the decoder context of {}",
        state.offset, c.n_text_ctx
      )));
    }
    let d = &self.model.decoder;
    let emb = d.embed_tokens.forward(tokens)?;
    let pos = ops::slice(
      &d.embed_positions.weight,
      &[state.offset, 0],
      &[state.offset + n, c.n_text_state],
      &[1, 1],
    )?;
    let mut x = ops::add(&emb, &pos)?;
    let mut qks = Vec::with_capacity(d.layers.len());
    for (i, l) in d.layers.iter().enumerate() {
      let (y, qk) = l.forward_qk(&x, &state.cross[i], &mut state.caches[i])?;
      x = y;
      qks.push(qk);
    }
    state.offset += n;
    Ok((d.layer_norm.forward(&x)?, qks))
  }

  /// Vocabulary logits of hidden states (`x @ embed_tokens.T`, the tied
  /// `proj_out`).
  pub fn logits(&self, hidden: &Array) -> Result<Array> {
    match &self.proj_t {
      Some(p) => Ok(ops::matmul(hidden, p)?),
      None => Ok(self.model.decoder.embed_tokens.as_linear(hidden)?),
    }
  }

  /// Lay out the output projection (done by the loaders after the weights
  /// are in place).
  fn prepare(&mut self) -> Result<()> {
    self.streams = cpu_streams()?;
    let e = &self.model.decoder.embed_tokens;
    if e.quant.is_none() {
      let mut p = ops::contiguous(&ops::transpose(&e.weight)?, false)?;
      p.eval()?;
      self.proj_t = Some(p);
    }
    Ok(())
  }

  /// `decode_hidden` then `logits` for every position: `[B, n, n_vocab]`
  /// (python `TextDecoder.forward`).
  pub fn decode(&self, tokens: &Array, state: &mut DecoderState) -> Result<Array> {
    let h = self.decode_hidden(tokens, state)?;
    self.logits(&h)
  }
}

/// The extra CPU streams for the encoder: one per core beyond the first
/// (at most 3) when the default device is the CPU.
fn cpu_streams() -> Result<Vec<Stream>> {
  let dev = Device::default_device()?;
  if dev.kind != DeviceType::Cpu {
    return Ok(Vec::new());
  }
  let total = match std::env::var("MLXRS_WHISPER_CPU_STREAMS") {
    Ok(v) => v.trim().parse::<usize>().map_err(|_| {
      Error::InvalidArgument(format!(
        "MLXRS_WHISPER_CPU_STREAMS={v:?}: expected a number of streams (1 = off)"
      ))
    })?,
    Err(_) => std::thread::available_parallelism()
      .map(|n| n.get())
      .unwrap_or(1)
      .min(4),
  };
  (1..total.max(1)).map(|_| Ok(Stream::new(dev)?)).collect()
}

/// Which kind of folder a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
  /// Hugging Face `WhisperForConditionalGeneration` safetensors.
  HuggingFace,
  /// CTranslate2 `model.bin` (faster-whisper).
  CTranslate2,
}

/// A loaded Whisper: network, tokenizer and where it came from.
pub struct Whisper {
  /// The network.
  pub model: WhisperModel,
  /// The tokenizer (`None` when the folder has none: the network still
  /// runs, transcription needs one).
  pub tokenizer: Option<WhisperTokenizer>,
  /// The folder.
  pub path: PathBuf,
  /// Its format.
  pub format: ModelFormat,
}

fn read_json(path: &Path) -> Result<Value> {
  let s = std::fs::read_to_string(path).map_err(io_err(path))?;
  serde_json::from_str(&s)
    .map_err(|e| Error::Model(format!("{}: invalid JSON: {e}", path.display())))
}

fn to_array(v: Vec<f32>, shape: &[usize]) -> Result<Array> {
  let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
  Ok(Array::from_slice(&v, &dims)?)
}

/// Load the tokenizer of a folder: `tokenizer.json`, else `vocabulary.txt`
/// / `vocabulary.json`, else `None`.
fn load_tokenizer(dir: &Path) -> Result<Option<WhisperTokenizer>> {
  let tj = dir.join("tokenizer.json");
  if tj.is_file() {
    return WhisperTokenizer::from_file(tj).map(Some);
  }
  for v in ["vocabulary.txt", "vocabulary.json"] {
    let p = dir.join(v);
    if p.is_file() {
      return WhisperTokenizer::from_vocabulary(p).map(Some);
    }
  }
  Ok(None)
}

impl Whisper {
  /// Load a model folder (Hugging Face or CTranslate2; see the module docs).
  /// Python: `faster_whisper.WhisperModel(path)` / `mlx_whisper.load_models.load_model(path)`.
  pub fn load(path: impl AsRef<Path>) -> Result<Whisper> {
    let dir = path.as_ref();
    if !dir.is_dir() {
      return Err(Error::Model(format!(
        "{}: not a model folder (expected a directory)",
        dir.display()
      )));
    }
    if dir.join("model.bin").is_file() {
      return Whisper::load_ct2(dir);
    }
    if dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file()
    {
      return Whisper::load_hf(dir);
    }
    Err(Error::Model(format!(
      "{}: no model.bin (CTranslate2) or model.safetensors (Hugging Face) in the folder",
      dir.display()
    )))
  }

  fn load_hf(dir: &Path) -> Result<Whisper> {
    let cfg = read_json(&dir.join("config.json"))?;
    let gen_path = dir.join("generation_config.json");
    let gen_cfg = if gen_path.is_file() {
      Some(read_json(&gen_path)?)
    } else {
      None
    };
    let config = WhisperConfig::from_hf(&cfg, gen_cfg.as_ref())
      .map_err(|e| Error::Model(format!("{}: {e}", dir.join("config.json").display())))?;
    let mut files = Vec::new();
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
      let idx = read_json(&index)?;
      let map = idx
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Model(format!("{}: no weight_map", index.display())))?;
      let mut names: Vec<&str> = map.values().filter_map(Value::as_str).collect();
      names.sort_unstable();
      names.dedup();
      files.extend(names.into_iter().map(|n| dir.join(n)));
    } else {
      files.push(dir.join("model.safetensors"));
    }
    let mut tensors = HashMap::new();
    for f in files {
      let (m, _) = mlxrs_core::io::load_safetensors(&f)
        .map_err(|e| Error::Model(format!("{}: {e}", f.display())))?;
      tensors.extend(m);
    }
    // A bare WhisperModel checkpoint has no `model.` prefix.
    if !tensors.keys().any(|k| k.starts_with("model.")) {
      tensors = tensors
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    }
    tensors.remove("proj_out.weight");
    let model =
      build(config, tensors).map_err(|e| Error::Model(format!("{}: {e}", dir.display())))?;
    Ok(Whisper {
      model,
      tokenizer: load_tokenizer(dir)?,
      path: dir.to_path_buf(),
      format: ModelFormat::HuggingFace,
    })
  }

  fn load_ct2(dir: &Path) -> Result<Whisper> {
    let ct = Ct2Model::read(dir.join("model.bin"))?;
    if ct.spec != "WhisperSpec" {
      return Err(Error::Model(format!(
        "{}: model.bin holds a {:?}, not a WhisperSpec",
        dir.display(),
        ct.spec
      )));
    }
    let cfg_path = dir.join("config.json");
    let cfg = if cfg_path.is_file() {
      read_json(&cfg_path)?
    } else {
      Value::Null
    };
    let (config, tensors) =
      ct2_to_hf(&ct, &cfg).map_err(|e| Error::Model(format!("{}: {e}", dir.display())))?;
    let model =
      build(config, tensors).map_err(|e| Error::Model(format!("{}: {e}", dir.display())))?;
    Ok(Whisper {
      model,
      tokenizer: load_tokenizer(dir)?,
      path: dir.to_path_buf(),
      format: ModelFormat::CTranslate2,
    })
  }

  /// The config.
  pub fn config(&self) -> &WhisperConfig {
    &self.model.config
  }
}

fn build(config: WhisperConfig, tensors: HashMap<String, Array>) -> Result<WhisperModel> {
  let mut m = WhisperModel::new(config);
  let mut w = Weights::new(tensors);
  w.dtype = Some(Dtype::Float32);
  m.load(&mut w, "");
  w.finish()?;
  let params: Vec<Array> = m.parameters().into_values().collect();
  mlxrs_core::eval(&params)?;
  m.prepare()?;
  Ok(m)
}

/// The sink the CTranslate2 weight copy writes each tensor to: `(name,
/// values, shape)`.
type PutTensor<'a> = dyn FnMut(String, Vec<f32>, &[usize]) -> Result<()> + 'a;

/// Rename a CTranslate2 Whisper's variables to the HF names (splitting the
/// fused projections) and read its dimensions.
fn ct2_to_hf(ct: &Ct2Model, cfg: &Value) -> Result<(WhisperConfig, HashMap<String, Array>)> {
  let shape = |n: &str| -> Result<Vec<usize>> { Ok(ct.get(n)?.shape.clone()) };
  let count = |prefix: &str| {
    (0..)
      .take_while(|i| {
        ct.variables
          .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
      })
      .count() as i32
  };
  let conv1 = shape("encoder/conv1/weight")?;
  let enc_pos = shape("encoder/position_encodings/encodings")?;
  let emb = shape("decoder/embeddings/weight")?;
  let dec_pos = shape("decoder/position_encodings/encodings")?;
  if conv1.len() != 3 || enc_pos.len() != 2 || emb.len() != 2 || dec_pos.len() != 2 {
    return Err(Error::Model(
      "model.bin: unexpected shapes for conv1 / embeddings".into(),
    ));
  }
  let heads = |n: &str| -> Result<i32> {
    ct.get(n)?
      .scalar_i64()
      .map(|v| v as i32)
      .ok_or_else(|| Error::Model(format!("model.bin: {n} is not a scalar")))
  };
  let ffn =
    |p: &str| -> Result<i32> { Ok(shape(&format!("{p}/layer_0/ffn/linear_0/weight"))?[0] as i32) };
  let ids = |k: &str| -> Vec<u32> {
    cfg
      .get(k)
      .and_then(Value::as_array)
      .map(|a| {
        a.iter()
          .filter_map(Value::as_i64)
          .filter(|&x| x >= 0)
          .map(|x| x as u32)
          .collect()
      })
      .unwrap_or_default()
  };
  let config = WhisperConfig {
    n_mels: conv1[1] as i32,
    n_audio_ctx: enc_pos[0] as i32,
    n_audio_state: conv1[0] as i32,
    n_audio_head: heads("encoder/num_heads")?,
    n_audio_layer: count("encoder"),
    n_audio_ffn: ffn("encoder")?,
    n_vocab: emb[0] as i32,
    n_text_ctx: dec_pos[0] as i32,
    n_text_state: emb[1] as i32,
    n_text_head: heads("decoder/num_heads")?,
    n_text_layer: count("decoder"),
    n_text_ffn: ffn("decoder")?,
    suppress_tokens: ids("suppress_ids"),
    begin_suppress_tokens: ids("suppress_ids_begin"),
    alignment_heads: Vec::new(),
  };
  let mut config = config;
  config.alignment_heads = heads_from_json(cfg.get("alignment_heads"))
    .unwrap_or_else(|| default_alignment_heads(config.n_text_layer, config.n_text_head));
  config.check()?;
  if let Some(v) = ct
    .variables
    .get("decoder/activation")
    .and_then(|v| v.scalar_i64())
  {
    // ctranslate2 Activation: GELU = 3 (exact erf GELU, what Whisper uses).
    if v != 3 {
      return Err(Error::Model(format!(
        "model.bin: decoder activation {v} is not GELU (3)"
      )));
    }
  }
  let mut out: HashMap<String, Array> = HashMap::new();
  let mut put = |name: String, v: Vec<f32>, s: &[usize]| -> Result<()> {
    out.insert(name, to_array(v, s)?);
    Ok(())
  };
  let copy = |src: &str| ct.dequantized(src);
  // Split `rows` of a [R, C] weight / [R] bias into pieces of `d` rows.
  let split = |v: &[f32], s: &[usize], parts: usize| -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
    let rows = s[0];
    if rows % parts != 0 {
      return Err(Error::Model(format!(
        "cannot split {rows} rows into {parts} projections"
      )));
    }
    let r = rows / parts;
    let cols = if s.len() > 1 { s[1] } else { 1 };
    Ok(
      (0..parts)
        .map(|i| {
          let chunk = v[i * r * cols..(i + 1) * r * cols].to_vec();
          let mut sh = s.to_vec();
          sh[0] = r;
          (chunk, sh)
        })
        .collect(),
    )
  };
  let norm = |put: &mut PutTensor, src: &str, dst: &str| -> Result<()> {
    let (g, gs) = copy(&format!("{src}/gamma"))?;
    put(format!("{dst}.weight"), g, &gs)?;
    let (b, bs) = copy(&format!("{src}/beta"))?;
    put(format!("{dst}.bias"), b, &bs)
  };
  let linear = |put: &mut PutTensor, src: &str, dst: &str| -> Result<()> {
    let (w, ws) = copy(&format!("{src}/weight"))?;
    put(format!("{dst}.weight"), w, &ws)?;
    let (b, bs) = copy(&format!("{src}/bias"))?;
    put(format!("{dst}.bias"), b, &bs)
  };
  // Fused projections -> named ones (k has no bias in Whisper).
  let fused = |put: &mut PutTensor, src: &str, dst: &str, names: &[&str]| -> Result<()> {
    let (w, ws) = copy(&format!("{src}/weight"))?;
    let (b, bs) = copy(&format!("{src}/bias"))?;
    let ws_ = split(&w, &ws, names.len())?;
    let bs_ = split(&b, &bs, names.len())?;
    for ((n, (wv, wsh)), (bv, bsh)) in names.iter().zip(ws_).zip(bs_) {
      put(format!("{dst}.{n}.weight"), wv, &wsh)?;
      if *n != "k_proj" {
        put(format!("{dst}.{n}.bias"), bv, &bsh)?;
      }
    }
    Ok(())
  };
  for conv in ["conv1", "conv2"] {
    linear(
      &mut put,
      &format!("encoder/{conv}"),
      &format!("model.encoder.{conv}"),
    )?;
  }
  let (p, ps) = copy("encoder/position_encodings/encodings")?;
  put("model.encoder.embed_positions.weight".into(), p, &ps)?;
  norm(&mut put, "encoder/layer_norm", "model.encoder.layer_norm")?;
  for i in 0..config.n_audio_layer {
    let s = format!("encoder/layer_{i}");
    let d = format!("model.encoder.layers.{i}");
    fused(
      &mut put,
      &format!("{s}/self_attention/linear_0"),
      &format!("{d}.self_attn"),
      &["q_proj", "k_proj", "v_proj"],
    )?;
    linear(
      &mut put,
      &format!("{s}/self_attention/linear_1"),
      &format!("{d}.self_attn.out_proj"),
    )?;
    norm(
      &mut put,
      &format!("{s}/self_attention/layer_norm"),
      &format!("{d}.self_attn_layer_norm"),
    )?;
    linear(&mut put, &format!("{s}/ffn/linear_0"), &format!("{d}.fc1"))?;
    linear(&mut put, &format!("{s}/ffn/linear_1"), &format!("{d}.fc2"))?;
    norm(
      &mut put,
      &format!("{s}/ffn/layer_norm"),
      &format!("{d}.final_layer_norm"),
    )?;
  }
  let (e, es) = copy("decoder/embeddings/weight")?;
  put("model.decoder.embed_tokens.weight".into(), e, &es)?;
  let (p, ps) = copy("decoder/position_encodings/encodings")?;
  put("model.decoder.embed_positions.weight".into(), p, &ps)?;
  norm(&mut put, "decoder/layer_norm", "model.decoder.layer_norm")?;
  for i in 0..config.n_text_layer {
    let s = format!("decoder/layer_{i}");
    let d = format!("model.decoder.layers.{i}");
    fused(
      &mut put,
      &format!("{s}/self_attention/linear_0"),
      &format!("{d}.self_attn"),
      &["q_proj", "k_proj", "v_proj"],
    )?;
    linear(
      &mut put,
      &format!("{s}/self_attention/linear_1"),
      &format!("{d}.self_attn.out_proj"),
    )?;
    norm(
      &mut put,
      &format!("{s}/self_attention/layer_norm"),
      &format!("{d}.self_attn_layer_norm"),
    )?;
    linear(
      &mut put,
      &format!("{s}/attention/linear_0"),
      &format!("{d}.encoder_attn.q_proj"),
    )?;
    fused(
      &mut put,
      &format!("{s}/attention/linear_1"),
      &format!("{d}.encoder_attn"),
      &["k_proj", "v_proj"],
    )?;
    linear(
      &mut put,
      &format!("{s}/attention/linear_2"),
      &format!("{d}.encoder_attn.out_proj"),
    )?;
    norm(
      &mut put,
      &format!("{s}/attention/layer_norm"),
      &format!("{d}.encoder_attn_layer_norm"),
    )?;
    linear(&mut put, &format!("{s}/ffn/linear_0"), &format!("{d}.fc1"))?;
    linear(&mut put, &format!("{s}/ffn/linear_1"), &format!("{d}.fc2"))?;
    norm(
      &mut put,
      &format!("{s}/ffn/layer_norm"),
      &format!("{d}.final_layer_norm"),
    )?;
  }
  if let Some(v) = ct.variables.get("decoder/projection/weight") {
    let e = ct.get("decoder/embeddings/weight")?;
    if v.data != e.data {
      return Err(Error::Model(
        "model.bin: decoder/projection/weight is not tied to the embeddings (unsupported)".into(),
      ));
    }
  }
  Ok((config, out))
}
