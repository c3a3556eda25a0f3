//! Kokoro's `config.json` (python `mlx_audio.tts.models.kokoro.ModelConfig`,
//! hexgrad `Kokoro-82M/config.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The iSTFTNet generator settings (`config["istftnet"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IstftNetConfig {
  /// Transposed-conv kernel per upsampling stage (`[20, 12]`).
  pub upsample_kernel_sizes: Vec<i32>,
  /// Upsampling factor per stage (`[10, 6]`).
  pub upsample_rates: Vec<i32>,
  /// iSTFT hop (5).
  pub gen_istft_hop_size: i32,
  /// iSTFT size (20).
  pub gen_istft_n_fft: i32,
  /// Dilations of each residual block kind.
  pub resblock_dilation_sizes: Vec<Vec<i32>>,
  /// Kernel of each residual block kind (`[3, 7, 11]`).
  pub resblock_kernel_sizes: Vec<i32>,
  /// Channels entering the first stage (512).
  pub upsample_initial_channel: i32,
}

/// The ALBERT settings (`config["plbert"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlbertConfig {
  /// Width (768).
  pub hidden_size: i32,
  /// Heads (12).
  pub num_attention_heads: i32,
  /// MLP width (2048).
  pub intermediate_size: i32,
  /// Positions (512).
  pub max_position_embeddings: i32,
  /// Layer applications (12; one shared layer).
  pub num_hidden_layers: i32,
  /// Embedding width (128).
  #[serde(default = "default_embedding_size")]
  pub embedding_size: i32,
}

fn default_embedding_size() -> i32 {
  128
}

fn default_sample_rate() -> i32 {
  24000
}

/// `config.json` of a Kokoro folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KokoroConfig {
  /// Generator settings.
  pub istftnet: IstftNetConfig,
  /// `dim_in` (64).
  #[serde(default)]
  pub dim_in: i32,
  /// Prosody / text width (512).
  pub hidden_dim: i32,
  /// Duration classes (50).
  pub max_dur: i32,
  /// Prosody layers (3).
  pub n_layer: i32,
  /// Mel bins of the decoder (80; not used at inference).
  #[serde(default)]
  pub n_mels: i32,
  /// Token vocabulary size (178).
  pub n_token: i32,
  /// Style width per half (128; voices are `2 * style_dim`).
  pub style_dim: i32,
  /// Text-encoder conv kernel (5).
  pub text_encoder_kernel_size: i32,
  /// ALBERT settings.
  pub plbert: PlbertConfig,
  /// Phoneme symbol -> token id.
  pub vocab: BTreeMap<String, i32>,
  /// Output sample rate (24000).
  #[serde(default = "default_sample_rate")]
  pub sample_rate: i32,
}

impl KokoroConfig {
  /// The Kokoro-82M v1.0 architecture (hexgrad `config.json`) with `vocab`.
  pub fn kokoro_82m(vocab: BTreeMap<String, i32>) -> KokoroConfig {
    KokoroConfig {
      istftnet: IstftNetConfig {
        upsample_kernel_sizes: vec![20, 12],
        upsample_rates: vec![10, 6],
        gen_istft_hop_size: 5,
        gen_istft_n_fft: 20,
        resblock_dilation_sizes: vec![vec![1, 3, 5], vec![1, 3, 5], vec![1, 3, 5]],
        resblock_kernel_sizes: vec![3, 7, 11],
        upsample_initial_channel: 512,
      },
      dim_in: 64,
      hidden_dim: 512,
      max_dur: 50,
      n_layer: 3,
      n_mels: 80,
      n_token: 178,
      style_dim: 128,
      text_encoder_kernel_size: 5,
      plbert: PlbertConfig {
        hidden_size: 768,
        num_attention_heads: 12,
        intermediate_size: 2048,
        max_position_embeddings: 512,
        num_hidden_layers: 12,
        embedding_size: 128,
      },
      vocab,
      sample_rate: 24000,
    }
  }

  /// Parses `config.json` text; fields outside what this port supports are errors.
  pub fn from_json(text: &str) -> Result<KokoroConfig> {
    let c: KokoroConfig =
      serde_json::from_str(text).map_err(|e| Error::Model(format!("kokoro config.json: {e}")))?;
    c.check()?;
    Ok(c)
  }

  /// Checks the sizes this implementation assumes.
  pub fn check(&self) -> Result<()> {
    let bad = |m: String| Err(Error::Model(format!("kokoro config.json: {m}")));
    let g = &self.istftnet;
    if self.hidden_dim <= 0
      || self.hidden_dim % 2 != 0
      || self.style_dim <= 0
      || self.n_token <= 0
      || self.max_dur <= 0
    {
      return bad("hidden_dim (even), style_dim, n_token, max_dur must be > 0".into());
    }
    if self.n_layer <= 0
      || self.text_encoder_kernel_size <= 0
      || self.text_encoder_kernel_size % 2 == 0
    {
      return bad("n_layer > 0 and an odd text_encoder_kernel_size needed".into());
    }
    let p = &self.plbert;
    if p.hidden_size <= 0
      || p.num_attention_heads <= 0
      || p.hidden_size % p.num_attention_heads != 0
      || p.num_hidden_layers <= 0
      || p.max_position_embeddings < 3
    {
      return bad("plbert sizes are inconsistent".into());
    }
    if g.upsample_rates.is_empty()
      || g.upsample_rates.len() != g.upsample_kernel_sizes.len()
      || g.resblock_kernel_sizes.len() != g.resblock_dilation_sizes.len()
      || g.gen_istft_n_fft < 2
      || g.gen_istft_hop_size < 1
      || g.upsample_rates.iter().any(|&r| r < 1)
    {
      return bad("istftnet sizes are inconsistent".into());
    }
    if self.hidden_dim != 512 || g.upsample_initial_channel != 512 || g.upsample_rates.len() != 2 {
      return bad(
        "only the Kokoro-82M decoder (hidden_dim 512, 2 upsampling stages) is supported".into(),
      );
    }
    if self.vocab.values().any(|&v| v <= 0 || v >= self.n_token) {
      return bad(format!("vocab ids must be in 1..{}", self.n_token));
    }
    Ok(())
  }
}
