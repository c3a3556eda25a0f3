//! GGUF checkpoints (llama.cpp's single-file format) as language models:
//! `mlxrs generate --model model.gguf` / [`crate::load()`]`("model.gguf")`.
//!
//! Python twins: transformers' GGUF loader
//! (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, its
//! `integrations/gguf` config / tensor / tokenizer mappings) and gguf-py's
//! `GGUFReader` + `gguf.quants.dequantize`. Unlike transformers, quantized
//! tensors are not dequantized: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q5_K
//! run as exact MLX affine-quantized layers (group 32), Q2_K / Q3_K / Q6_K
//! (and IQ4_NL / IQ4_XS) requantized to 4 / 5 / 8 (6) bits
//! ([`GgufReadOptions::dequantize`]: floats).
//!
//! What happens to a file:
//! 1. [`mlxrs_core::io::read_gguf`] validates the header and reads the
//!    metadata (a malformed file is an error), and
//!    [`mlxrs_core::io::load_gguf_tensor`] reads each tensor from the file's
//!    bytes (not MLX's GGUF loader, which refuses or misreads several types);
//! 2. [`config_from_metadata`] turns `general.architecture` and the
//!    `{arch}.*` keys into the HF-style `config.json` [`crate::build_model`]
//!    takes, plus a `quantization` block naming each quantized layer's bits;
//! 3. [`hf_tensor_name`] maps llama.cpp tensor names to mlx-lm module paths,
//!    and llama.cpp's rotary permutation of Q/K rows (done by
//!    `convert_hf_to_gguf.py` for llama-family files) is undone, on the
//!    packed weight, scales and biases alike (it only reorders rows);
//! 4. [`tokenizer_from_metadata`] builds a `tokenizers` tokenizer from
//!    `tokenizer.ggml.*` (byte-level BPE, `tokenizer.ggml.model = gpt2`, with
//!    the pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`; or
//!    SentencePiece, `llama`), and the chat template from
//!    `tokenizer.chat_template`.
//!
//! `docs/gguf.md` lists the supported architectures and tensor types.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlxrs_core::io::{GgufMeta, GgufTensorInfo};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{QuantConfig, Weights};
use serde_json::{Map, Value, json};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{LanguageModel, build_model};
use crate::tokenizer::Tokenizer;

mod spm;

/// GGUF architectures (`general.architecture`) this loader maps, with the
/// `model_type` each becomes. A `llama` file with `llama.expert_count > 0`
/// becomes `mixtral`.
pub const SUPPORTED_ARCHITECTURES: &[(&str, &str)] = &[
  ("llama", "llama"),
  ("qwen2", "qwen2"),
  ("qwen3", "qwen3"),
  ("qwen3moe", "qwen3_moe"),
  ("phi3", "phi3"),
  ("gemma2", "gemma2"),
  ("gemma3", "gemma3_text"),
  ("qwen2moe", "qwen2_moe"),
];

/// `tokenizer.ggml.pre` values understood for byte-level BPE vocabularies,
/// with the pre-tokenizer llama.cpp (`llama-vocab.cpp`) applies for each.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
  "default",
  "gpt2",
  "gpt-2",
  "smollm",
  "starcoder",
  "refact",
  "command-r",
  "codeshell",
  "exaone",
  "llama3",
  "llama-v3",
  "llama-bpe",
  "smaug-bpe",
  "dbrx",
  "falcon3",
  "qwen2",
  "deepseek-r1-qwen",
  "megrez",
];

/// Whether `model` names a GGUF file (by its `.gguf` extension), which
/// [`crate::load()`] then reads with [`load_gguf_model`].
pub fn is_gguf_path(model: &str) -> bool {
  Path::new(model)
    .extension()
    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
  Error::Core(mlxrs_core::Error::Format {
    path: path.display().to_string(),
    msg: msg.into(),
  })
}

/// A GGUF file's metadata with typed accessors that name the key at fault.
pub struct GgufMetadata<'a> {
  path: &'a Path,
  meta: &'a HashMap<String, GgufMeta>,
}

impl<'a> GgufMetadata<'a> {
  /// Wrap the metadata of `mlxrs_core::io::read_gguf` (or `load_gguf`).
  pub fn new(path: &'a Path, meta: &'a HashMap<String, GgufMeta>) -> Self {
    GgufMetadata { path, meta }
  }

  fn wrong(&self, key: &str, want: &str) -> Error {
    Error::config(self.path, key, format!("GGUF metadata: expected {want}"))
  }

  /// Whether `key` is present.
  pub fn has(&self, key: &str) -> bool {
    self.meta.contains_key(key)
  }

  /// A string value (`None` when absent; an error for another type).
  pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
    match self.meta.get(key) {
      None => Ok(None),
      Some(GgufMeta::String(s)) => Ok(Some(s.as_str())),
      Some(_) => Err(self.wrong(key, "a string")),
    }
  }

  /// A list of strings.
  pub fn strings(&self, key: &str) -> Result<Option<&'a [String]>> {
    match self.meta.get(key) {
      None => Ok(None),
      Some(GgufMeta::Strings(v)) => Ok(Some(v.as_slice())),
      Some(_) => Err(self.wrong(key, "a list of strings")),
    }
  }

  fn scalar_array(&self, key: &str) -> Result<Option<Array>> {
    match self.meta.get(key) {
      None => Ok(None),
      Some(GgufMeta::Array(a)) if a.ndim() == 0 => Ok(Some(a.clone())),
      Some(_) => Err(self.wrong(key, "a number")),
    }
  }

  /// A number, as f64.
  pub fn f64(&self, key: &str) -> Result<Option<f64>> {
    let Some(a) = self.scalar_array(key)? else {
      return Ok(None);
    };
    let mut a = ops::astype(&a, Dtype::Float32)?;
    Ok(Some(a.item::<f32>()? as f64))
  }

  /// A non-negative integer.
  pub fn u64(&self, key: &str) -> Result<Option<u64>> {
    let Some(a) = self.scalar_array(key)? else {
      return Ok(None);
    };
    if a.dtype().is_float() {
      return Err(self.wrong(key, "an integer"));
    }
    let mut a = ops::astype(&a, Dtype::Int64)?;
    let v = a.item::<i64>()?;
    u64::try_from(v)
      .map(Some)
      .map_err(|_| self.wrong(key, "a non-negative integer"))
  }

  /// A boolean (GGUF bool, or an integer 0/1).
  pub fn bool(&self, key: &str) -> Result<Option<bool>> {
    let Some(a) = self.scalar_array(key)? else {
      return Ok(None);
    };
    if a.dtype().is_float() {
      return Err(self.wrong(key, "a boolean"));
    }
    let mut a = ops::astype(&a, Dtype::Int32)?;
    Ok(Some(a.item::<i32>()? != 0))
  }

  /// A list of integers (e.g. `tokenizer.ggml.token_type`).
  pub fn i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
    match self.meta.get(key) {
      None => Ok(None),
      Some(GgufMeta::Array(a)) if a.ndim() == 1 && !a.dtype().is_float() => {
        let mut a = ops::astype(a, Dtype::Int32)?;
        Ok(Some(a.to_vec::<i32>()?))
      }
      Some(_) => Err(self.wrong(key, "a list of integers")),
    }
  }

  /// A list of numbers as f32 (e.g. `tokenizer.ggml.scores`).
  pub fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
    match self.meta.get(key) {
      None => Ok(None),
      Some(GgufMeta::Array(a)) if a.ndim() == 1 => {
        let mut a = ops::astype(a, Dtype::Float32)?;
        Ok(Some(a.to_vec::<f32>()?))
      }
      Some(_) => Err(self.wrong(key, "a list of numbers")),
    }
  }

  /// Per-layer flags: a list of booleans (or integers 0/1).
  pub fn bools(&self, key: &str) -> Result<Option<Vec<bool>>> {
    Ok(
      self
        .i32s(key)?
        .map(|v| v.into_iter().map(|x| x != 0).collect()),
    )
  }

  /// Whether `key` holds a list (1-d) rather than a single value.
  fn is_list(&self, key: &str) -> bool {
    matches!(self.meta.get(key), Some(GgufMeta::Array(a)) if a.ndim() == 1)
      || matches!(self.meta.get(key), Some(GgufMeta::Strings(_)))
  }

  fn require_u64(&self, key: &str) -> Result<u64> {
    self
      .u64(key)?
      .ok_or_else(|| Error::config(self.path, key, "GGUF metadata: missing"))
  }
}

/// The `model_type` for a GGUF `general.architecture`, or an error listing
/// the supported ones.
fn model_type_for(path: &Path, arch: &str) -> Result<&'static str> {
  SUPPORTED_ARCHITECTURES
    .iter()
    .find(|(a, _)| *a == arch)
    .map(|(_, t)| *t)
    .ok_or_else(|| {
      let names: Vec<&str> = SUPPORTED_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
      Error::config(
        path,
        "general.architecture",
        format!(
          "GGUF architecture {arch:?} is not supported (supported: {})",
          names.join(", ")
        ),
      )
    })
}

/// Whether llama.cpp's converter permuted this architecture's Q/K rows for
/// its interleaved ("normal") rotary embedding: `LlamaModel` and its
/// subclasses (Mistral, Mixtral) do; Qwen, Phi-3 and Gemma use the NeoX
/// (half-split) layout, which is HF's, and are written as is.
fn qk_permuted(arch: &str) -> bool {
  matches!(arch, "llama" | "mistral")
}

/// The HF-style `config.json` (as a JSON object) for a GGUF file's
/// metadata and tensor table (transformers' `GGUF_CONFIG_MAPPING`, plus
/// what it leaves out: tied embeddings from a missing `output.weight`,
/// q/k/v biases, llama3 rope frequencies from `rope_freqs.weight`).
pub fn config_from_metadata(
  md: &GgufMetadata<'_>,
  tensors: &BTreeMap<String, GgufTensorInfo>,
  rope_tensors: &HashMap<String, Vec<f32>>,
) -> Result<Value> {
  let path = md.path;
  let arch = md
    .str("general.architecture")?
    .ok_or_else(|| Error::config(path, "general.architecture", "GGUF metadata: missing"))?;
  let mut model_type = model_type_for(path, arch)?;
  let k = |s: &str| format!("{arch}.{s}");
  let experts = md.u64(&k("expert_count"))?.unwrap_or(0);
  if arch == "llama" && experts > 0 {
    model_type = "mixtral";
  }
  let hidden = md.require_u64(&k("embedding_length"))?;
  let layers = md.require_u64(&k("block_count"))?;
  let heads = md.require_u64(&k("attention.head_count"))?;
  if heads == 0 {
    return Err(Error::config(
      path,
      k("attention.head_count"),
      "GGUF metadata: must be positive",
    ));
  }
  let kv_heads = md.u64(&k("attention.head_count_kv"))?.unwrap_or(heads);
  let ff = md.require_u64(&k("feed_forward_length"))?;
  let eps = md
    .f64(&k("attention.layer_norm_rms_epsilon"))?
    .ok_or_else(|| Error::config(path, k("attention.layer_norm_rms_epsilon"), "missing"))?;
  let head_dim = md
    .u64(&k("attention.key_length"))?
    .unwrap_or(hidden / heads);
  let vocab = match md.u64(&k("vocab_size"))? {
    Some(v) => v,
    None => match md.strings("tokenizer.ggml.tokens")? {
      Some(t) => t.len() as u64,
      None => tensors
        .get("token_embd.weight")
        .and_then(|t| t.shape.first())
        .map(|&d| d as u64)
        .ok_or_else(|| {
          Error::config(
            path,
            k("vocab_size"),
            "missing (and no tokenizer.ggml.tokens)",
          )
        })?,
    },
  };
  let mut c = Map::new();
  c.insert("model_type".into(), json!(model_type));
  c.insert("hidden_size".into(), json!(hidden));
  c.insert("num_hidden_layers".into(), json!(layers));
  c.insert("intermediate_size".into(), json!(ff));
  c.insert("num_attention_heads".into(), json!(heads));
  c.insert("num_key_value_heads".into(), json!(kv_heads));
  c.insert("head_dim".into(), json!(head_dim));
  c.insert("rms_norm_eps".into(), json!(eps));
  c.insert("vocab_size".into(), json!(vocab));
  if let Some(theta) = md.f64(&k("rope.freq_base"))? {
    c.insert("rope_theta".into(), json!(theta));
  }
  if let Some(ctx) = md.u64(&k("context_length"))? {
    c.insert("max_position_embeddings".into(), json!(ctx));
  }
  c.insert(
    "tie_word_embeddings".into(),
    json!(!tensors.contains_key("output.weight")),
  );
  if tensors.contains_key("blk.0.attn_q.bias") && model_type != "qwen2" {
    c.insert("attention_bias".into(), json!(true));
  }
  // Rope scaling: `{arch}.rope.scaling.*` keys, or llama3-style per-frequency
  // factors stored as the `rope_freqs.weight` tensor.
  if let Some(kind) = md.str(&k("rope.scaling.type"))? {
    let factor = md.f64(&k("rope.scaling.factor"))?.unwrap_or(1.0);
    let orig = md.u64(&k("rope.scaling.original_context_length"))?;
    match kind {
      "none" => {}
      "linear" | "yarn" => {
        let mut s = json!({"rope_type": kind, "factor": factor});
        if let Some(o) = orig {
          s["original_max_position_embeddings"] = json!(o);
        }
        c.insert("rope_scaling".into(), s);
      }
      other => {
        return Err(Error::config(
          path,
          k("rope.scaling.type"),
          format!("GGUF rope scaling {other:?} is not supported (none, linear, yarn)"),
        ));
      }
    }
  } else if model_type == "phi3" {
    // Phi-3 longrope: the factors are tensors, the original context a key.
    if let (Some(long), Some(short)) = (
      rope_tensors.get("rope_factors_long.weight"),
      rope_tensors.get("rope_factors_short.weight"),
    ) {
      c.insert(
        "rope_scaling".into(),
        json!({"type": "longrope", "long_factor": long, "short_factor": short}),
      );
    }
  } else if let Some(factors) = rope_tensors.get("rope_freqs.weight") {
    // llama.cpp divides each rotary frequency by its factor, i.e. multiplies
    // MLX's per-dimension wavelength (`freqs`): the same as longrope with
    // `long_factor` = the factors and no magnitude scaling.
    let expect = (head_dim / 2) as usize;
    if factors.len() != expect {
      return Err(fmt_err(
        path,
        format!(
          "GGUF: rope_freqs.weight has {} entries, expected head_dim/2 = {expect}",
          factors.len()
        ),
      ));
    }
    c.insert(
      "rope_scaling".into(),
      json!({
        "rope_type": "longrope",
        "long_factor": factors,
        "short_factor": factors,
        "original_max_position_embeddings": md.u64(&k("context_length"))?.unwrap_or(131072),
        "long_mscale": 1.0,
      }),
    );
  }
  match model_type {
    "mixtral" => {
      c.insert("num_local_experts".into(), json!(experts));
      let used = md.require_u64(&k("expert_used_count"))?;
      c.insert("num_experts_per_tok".into(), json!(used));
    }
    "qwen3_moe" => {
      c.insert("num_experts".into(), json!(experts));
      c.insert(
        "num_experts_per_tok".into(),
        json!(md.require_u64(&k("expert_used_count"))?),
      );
      c.insert(
        "moe_intermediate_size".into(),
        json!(md.require_u64(&k("expert_feed_forward_length"))?),
      );
      c.insert("norm_topk_prob".into(), json!(true));
      c.insert("decoder_sparse_step".into(), json!(1));
      c.insert("mlp_only_layers".into(), json!([]));
    }
    "qwen2" => {
      c.insert("use_sliding_window".into(), json!(false));
    }
    "qwen2_moe" => {
      // llama.cpp's qwen2moe graph does not renormalise the top-k weights.
      c.insert("num_experts".into(), json!(experts));
      c.insert(
        "num_experts_per_tok".into(),
        json!(md.require_u64(&k("expert_used_count"))?),
      );
      c.insert(
        "moe_intermediate_size".into(),
        json!(md.require_u64(&k("expert_feed_forward_length"))?),
      );
      c.insert(
        "shared_expert_intermediate_size".into(),
        json!(md.require_u64(&k("expert_shared_feed_forward_length"))?),
      );
      c.insert("norm_topk_prob".into(), json!(false));
      c.insert("decoder_sparse_step".into(), json!(1));
      c.insert("mlp_only_layers".into(), json!([]));
    }
    "gemma2" | "gemma3_text" => gemma_config(md, arch, &mut c, layers, hidden, heads, head_dim)?,
    "phi3" => {
      if let Some(o) = md.u64(&k("rope.scaling.original_context_length"))? {
        c.insert("original_max_position_embeddings".into(), json!(o));
      }
      if let Some(d) = md.u64(&k("rope.dimension_count"))? {
        if head_dim > 0 && d != head_dim {
          c.insert(
            "partial_rotary_factor".into(),
            json!(d as f64 / head_dim as f64),
          );
        }
      }
      if let Some(w) = md.u64(&k("attention.sliding_window"))?.filter(|&w| w > 0) {
        c.insert("sliding_window".into(), json!(w));
      }
    }
    _ => {}
  }
  for (key, field) in [
    ("tokenizer.ggml.bos_token_id", "bos_token_id"),
    ("tokenizer.ggml.eos_token_id", "eos_token_id"),
  ] {
    if let Some(id) = md.u64(key)? {
      c.insert(field.into(), json!(id));
    }
  }
  Ok(Value::Object(c))
}

/// Gemma 2 / Gemma 3 settings llama.cpp (`llama-model.cpp`) reads from the
/// metadata or derives: the attention scale (GGUF has no
/// `query_pre_attn_scalar`: llama.cpp uses `head_dim`, and `hidden / heads`
/// for the 27B models, 46 and 62 layers), the softcapping values (Gemma 2;
/// llama.cpp's defaults 50 / 30 apply when absent), the sliding window, and
/// for Gemma 3 the local rope base (10000, fixed in llama.cpp) and which
/// layers slide (`attention.sliding_window_pattern`, a period or per-layer
/// flags; 6 when absent, as in llama.cpp).
fn gemma_config(
  md: &GgufMetadata<'_>,
  arch: &str,
  c: &mut Map<String, Value>,
  layers: u64,
  hidden: u64,
  heads: u64,
  head_dim: u64,
) -> Result<()> {
  let path = md.path;
  let k = |s: &str| format!("{arch}.{s}");
  let big = (arch == "gemma2" && layers == 46) || (arch == "gemma3" && layers == 62);
  let qpas = if big { hidden / heads } else { head_dim };
  c.insert("query_pre_attn_scalar".into(), json!(qpas));
  if let Some(w) = md.u64(&k("attention.sliding_window"))?.filter(|&w| w > 0) {
    c.insert("sliding_window".into(), json!(w));
  }
  if arch == "gemma2" {
    for (key, field) in [
      ("attn_logit_softcapping", "attn_logit_softcapping"),
      ("final_logit_softcapping", "final_logit_softcapping"),
    ] {
      if let Some(v) = md.f64(&k(key))? {
        c.insert(field.into(), json!(v));
      }
    }
    return Ok(());
  }
  c.insert("rope_local_base_freq".into(), json!(10000.0));
  let key = k("attention.sliding_window_pattern");
  let pattern = if md.is_list(&key) {
    // Per-layer flags (true = sliding): must be mlx-lm's repeating pattern,
    // layer i global iff (i + 1) % period == 0.
    let flags = md.bools(&key)?.unwrap_or_default();
    if flags.len() as u64 != layers {
      return Err(Error::config(
        path,
        &key,
        format!("GGUF metadata: {} flags for {layers} layers", flags.len()),
      ));
    }
    let period = flags
      .iter()
      .position(|&f| !f)
      .map_or(layers + 1, |i| i as u64 + 1);
    let ok = flags
      .iter()
      .enumerate()
      .all(|(i, &f)| f == ((i as u64 + 1) % period != 0));
    if !ok {
      return Err(Error::config(
        path,
        &key,
        "GGUF metadata: the sliding / global layers do not repeat with a fixed period",
      ));
    }
    period
  } else {
    md.u64(&key)?.unwrap_or(6)
  };
  if pattern == 0 {
    return Err(Error::config(path, &key, "GGUF metadata: must be positive"));
  }
  c.insert("sliding_window_pattern".into(), json!(pattern));
  Ok(())
}

/// The mlx-lm parameter name of a llama.cpp tensor name
/// (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for tensors that are not parameters (`rope_freqs.weight`) or
/// unknown ones. `suffix` (`weight`, `bias`, `scales`, `biases`) is kept.
pub fn hf_tensor_name(name: &str) -> Option<String> {
  hf_tensor_name_for("", name)
}

/// [`hf_tensor_name`] for a GGUF architecture whose names differ: Gemma 2 /
/// Gemma 3 blocks have four norms (`attn_norm`, `post_attention_norm`,
/// `ffn_norm` = the pre-feedforward norm, `post_ffw_norm`).
pub fn hf_tensor_name_for(arch: &str, name: &str) -> Option<String> {
  let gemma = matches!(arch, "gemma2" | "gemma3");
  let (stem, suffix) = name.rsplit_once('.')?;
  let module = match stem {
    "token_embd" => "model.embed_tokens".to_string(),
    "output_norm" => "model.norm".to_string(),
    "output" => "lm_head".to_string(),
    _ => {
      let rest = stem.strip_prefix("blk.")?;
      let (layer, part) = rest.split_once('.')?;
      let layer: usize = layer.parse().ok()?;
      let p = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // Mixture of experts (stacked experts, `[experts, out, in]`).
        "ffn_gate_inp" => "MOE.gate",
        "ffn_gate_exps" => "MOE.switch_mlp.gate_proj",
        "ffn_up_exps" => "MOE.switch_mlp.up_proj",
        "ffn_down_exps" => "MOE.switch_mlp.down_proj",
        // Shared expert (qwen2moe).
        "ffn_gate_inp_shexp" => "MOE.shared_expert_gate",
        "ffn_gate_shexp" => "MOE.shared_expert.gate_proj",
        "ffn_up_shexp" => "MOE.shared_expert.up_proj",
        "ffn_down_shexp" => "MOE.shared_expert.down_proj",
        _ => return None,
      };
      format!("model.layers.{layer}.{p}")
    }
  };
  Some(format!("{module}.{suffix}"))
}

/// Row order that undoes llama.cpp's rotary permutation of a Q or K
/// projection with `n_heads` heads and `rows` output rows
/// (`convert_hf_to_gguf.py`'s `permute`: per head, the two halves of HF's
/// layout are interleaved). Row `r` of the HF layout is row `src[r]` of the
/// GGUF one.
pub fn unpermute_rows(rows: usize, n_heads: usize) -> Option<Vec<i32>> {
  if n_heads == 0 || rows % n_heads != 0 {
    return None;
  }
  let d = rows / n_heads;
  if d % 2 != 0 {
    return None;
  }
  let half = d / 2;
  Some(
    (0..rows)
      .map(|r| {
        let (h, rem) = (r / d, r % d);
        let (j, i) = (rem / half, rem % half);
        (h * d + 2 * i + j) as i32
      })
      .collect(),
  )
}

/// Rope-frequency tensors llama.cpp stores, read into the config instead of
/// loaded as parameters.
const ROPE_TENSORS: &[&str] = &[
  "rope_freqs.weight",
  "rope_factors_long.weight",
  "rope_factors_short.weight",
];

/// A GGUF file turned into what [`crate::load_model_dir`] gets from a
/// folder: the config, the tensors under mlx-lm names, and the tokenizer.
pub struct GgufCheckpoint {
  /// The HF-style config (with a `quantization` block when any layer is
  /// quantized).
  pub config: Value,
  /// Tensors under mlx-lm parameter names, Q/K rows un-permuted.
  pub weights: HashMap<String, Array>,
  /// The tokenizer, when the file has `tokenizer.ggml.*` metadata.
  pub tokenizer: Option<Tokenizer>,
  /// The tokenizer as `tokenizer.json` / `tokenizer_config.json` content.
  pub tokenizer_parts: Option<TokenizerParts>,
}

/// How [`read_checkpoint_with`] reads a GGUF file.
#[derive(Debug, Clone, Copy, Default)]
pub struct GgufReadOptions {
  /// Skip the tokenizer.
  pub no_tokenizer: bool,
  /// Keep no layer quantized: every block-quantized tensor becomes float32
  /// (its exact values, as gguf-py's `dequantize`), instead of MLX affine
  /// layers (see `docs/gguf.md` for the per-type mapping).
  pub dequantize: bool,
}

/// Read a GGUF file into config, mlx-lm-named tensors and (unless
/// `no_tokenizer`) its tokenizer; quantized tensors as MLX affine layers.
pub fn read_checkpoint(path: &Path, no_tokenizer: bool) -> Result<GgufCheckpoint> {
  read_checkpoint_with(
    path,
    &GgufReadOptions {
      no_tokenizer,
      dequantize: false,
    },
  )
}

/// [`read_checkpoint`] with [`GgufReadOptions`]. Tensors are read by
/// `mlxrs_core::io::load_gguf_tensor` (not MLX's GGUF loader), after the
/// header and the config were validated.
pub fn read_checkpoint_with(path: &Path, opts: &GgufReadOptions) -> Result<GgufCheckpoint> {
  use mlxrs_core::io::GgufTensor;
  let no_tokenizer = opts.no_tokenizer;
  let (header, meta) = mlxrs_core::io::read_gguf(path)?;
  let md = GgufMetadata::new(path, &meta);
  let mut rope_tensors = HashMap::new();
  for name in ROPE_TENSORS {
    if let Some(info) = header.tensors.get(*name) {
      if let GgufTensor::Dense(a) = mlxrs_core::io::load_gguf_tensor(path, info, true)? {
        let mut a = ops::astype(&a, Dtype::Float32)?;
        rope_tensors.insert(name.to_string(), a.to_vec::<f32>()?);
      }
    }
  }
  let mut config = config_from_metadata(&md, &header.tensors, &rope_tensors)?;
  let arch = md
    .str("general.architecture")?
    .unwrap_or_default()
    .to_string();
  let model_type = config["model_type"]
    .as_str()
    .unwrap_or_default()
    .to_string();
  let moe = match model_type.as_str() {
    "mixtral" => "block_sparse_moe",
    _ => "mlp",
  };
  let heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
  let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
  let permuted = qk_permuted(&arch);
  let gemma_norms = matches!(arch.as_str(), "gemma2" | "gemma3");

  // Every tensor as (GGUF-style name, array): a quantized `x.weight` gives
  // `x.weight` (packed), `x.scales`, `x.biases`, its bits noted per `x`.
  let mut raw = Vec::with_capacity(header.tensors.len());
  let mut bits_of: HashMap<String, i32> = HashMap::new();
  for (gname, info) in &header.tensors {
    if ROPE_TENSORS.contains(&gname.as_str()) {
      continue;
    }
    let keep_quant = !opts.dequantize && gname.ends_with(".weight");
    match mlxrs_core::io::load_gguf_tensor(path, info, !keep_quant)? {
      GgufTensor::Dense(a) => raw.push((gname.clone(), a)),
      GgufTensor::Quantized {
        weight,
        scales,
        biases,
        bits,
        ..
      } => {
        let base = gname.trim_end_matches(".weight");
        bits_of.insert(base.to_string(), bits);
        raw.push((gname.clone(), weight));
        raw.push((format!("{base}.scales"), scales));
        raw.push((format!("{base}.biases"), biases));
      }
    }
  }
  let mut weights = HashMap::with_capacity(raw.len());
  let mut quant = Map::new();
  for (gname, a) in raw {
    let mut name = hf_tensor_name_for(&arch, &gname)
      .ok_or_else(|| {
        fmt_err(
          path,
          format!("GGUF: tensor {gname:?} has no counterpart in the {model_type} model"),
        )
      })?
      .replace("MOE.", &format!("{moe}."));
    if model_type == "phi3" {
      // Phi-3's `ffn_up` is the fused gate|up projection.
      name = name.replace(".mlp.up_proj.", ".mlp.gate_up_proj.");
    }
    let a = if permuted && (gname.contains(".attn_q.") || gname.contains(".attn_k.")) {
      let n = if gname.contains(".attn_q.") {
        heads
      } else {
        kv_heads
      };
      let rows = a.shape().first().copied().unwrap_or(0) as usize;
      let idx = unpermute_rows(rows, n).ok_or_else(|| {
        fmt_err(
          path,
          format!("GGUF: tensor {gname:?}: {rows} rows do not split into {n} heads of even size"),
        )
      })?;
      let n_idx = idx.len() as i32;
      ops::take_axis(&a, &Array::from_slice(&idx, &[n_idx])?, 0)?
    } else {
      a
    };
    // llama.cpp's converter stores Gemma's `(1 + w)` norm weights as `1 + w`.
    let a = if gemma_norms && gname.ends_with("norm.weight") {
      ops::subtract(&ops::astype(&a, Dtype::Float32)?, &Array::scalar(1.0f32))?
    } else {
      a
    };
    // The packed weight of a quantized tensor names its layer's bits.
    if let Some(module) = name.strip_suffix(".weight") {
      if let Some(bits) = bits_of.get(gname.trim_end_matches(".weight")) {
        quant.insert(
          module.to_string(),
          json!({"group_size": 32, "bits": bits, "mode": "affine"}),
        );
      }
    }
    weights.insert(name, a);
  }
  if !quant.is_empty() {
    quant.insert("group_size".into(), json!(32));
    quant.insert("bits".into(), json!(4));
    quant.insert("mode".into(), json!("affine"));
    // mlx_lm.convert writes both keys; mlxrs's folder loader reads
    // `quantization_config`, python mlx-lm `quantization`.
    config["quantization"] = Value::Object(quant.clone());
    config["quantization_config"] = Value::Object(quant);
  }
  let (tokenizer, tokenizer_parts) = if no_tokenizer {
    (None, None)
  } else {
    let parts = tokenizer_parts(&md)?.ok_or_else(|| {
      Error::tokenizer(
        Some(path),
        "the GGUF file has no tokenizer (tokenizer.ggml.tokens); load it with no_tokenizer",
      )
    })?;
    let tok = build_tokenizer(path, &parts, &config)?;
    (Some(tok), Some(parts))
  };
  Ok(GgufCheckpoint {
    config,
    weights,
    tokenizer,
    tokenizer_parts,
  })
}

/// Load a GGUF file as a model (python: transformers'
/// `from_pretrained(dir, gguf_file=...)`, but quantized layers stay
/// quantized). Returns the model, its config and the tokenizer (unless
/// `no_tokenizer`).
pub fn load_gguf_model(
  path: &Path,
  dtype: Option<Dtype>,
  no_tokenizer: bool,
) -> Result<(Box<dyn LanguageModel>, ModelConfig, Option<Tokenizer>)> {
  load_gguf_model_with(
    path,
    dtype,
    &GgufReadOptions {
      no_tokenizer,
      dequantize: false,
    },
  )
}

/// [`load_gguf_model`] with [`GgufReadOptions`] (e.g. `dequantize`: run
/// every layer in floats, with the file's exact values).
pub fn load_gguf_model_with(
  path: &Path,
  dtype: Option<Dtype>,
  opts: &GgufReadOptions,
) -> Result<(Box<dyn LanguageModel>, ModelConfig, Option<Tokenizer>)> {
  let ck = read_checkpoint_with(path, opts)?;
  let config = ModelConfig::from_value(path, ck.config)?;
  let cfg = config.text_config();
  let mut model = build_model(&cfg)?;
  let mut weights = model.sanitize(ck.weights)?;
  // MLX's loader gives float16 scales / biases. With a float32 compute dtype
  // (the CPU default) they are widened (exactly), so the quantized layers
  // compute what llama.cpp's dequantized weights give in float32 instead of
  // rounding each dequantized weight to float16.
  if let Some(dt) = dtype {
    for (k, v) in weights.iter_mut() {
      if (k.ends_with(".scales") || k.ends_with(".biases"))
        && v.dtype().is_float()
        && v.dtype() != dt
      {
        *v = ops::astype(v, dt)?;
      }
    }
  }
  let mut w = Weights::new(weights);
  w.dtype = dtype;
  if let Some(q) = config.raw().get("quantization") {
    w.quant = Some(QuantConfig::from_json(q).map_err(Error::Core)?);
  }
  model.load(&mut w);
  w.finish().map_err(|e| fmt_err(path, e.to_string()))?;
  let mut params = Vec::new();
  model.visit(&mut |_, a| params.push(a.clone()));
  mlxrs_core::eval(&params)?;
  Ok((model, config, ck.tokenizer))
}

/// GPT-2's byte-to-unicode table (`bytes_to_unicode`): the alphabet every
/// byte-level BPE token is spelled in.
fn byte_alphabet() -> std::collections::HashSet<char> {
  let mut set = std::collections::HashSet::new();
  let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
  let mut n = 0;
  for b in 0u32..256 {
    if printable(b) {
      set.insert(char::from_u32(b).unwrap_or('?'));
    } else {
      set.insert(char::from_u32(256 + n).unwrap_or('?'));
      n += 1;
    }
  }
  set
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The HF pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` of a
/// byte-level vocabulary.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<Value> {
  let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
  let split = |re: &str| {
    json!({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
      byte_level(false),
    ]})
  };
  Ok(match pre {
    "default" | "gpt2" | "gpt-2" => byte_level(true),
    // llama.cpp: `\p{N}` (each digit alone), then GPT-2's regex; SmolLM's
    // tokenizer.json: Digits(individual_digits) + ByteLevel.
    "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => json!({
      "type": "Sequence",
      "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
    }),
    "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => split(LLAMA3_SPLIT),
    "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
    other => {
      return Err(Error::tokenizer(
        Some(path),
        format!(
          "GGUF tokenizer.ggml.pre {other:?} is not supported (supported: {}); load with \
           no_tokenizer and bring the model's tokenizer.json",
          SUPPORTED_PRE_TOKENIZERS.join(", ")
        ),
      ));
    }
  })
}

/// A GGUF file's tokenizer as files: the text of a `tokenizer.json` and a
/// `tokenizer_config.json` object (special tokens, `add_bos_token`,
/// `chat_template`), or `None` when the file has no `tokenizer.ggml.*`
/// vocabulary (python: transformers' `convert_gguf_tokenizer`).
pub struct TokenizerParts {
  /// `tokenizer.json` text.
  pub tokenizer_json: String,
  /// `tokenizer_config.json` content.
  pub tokenizer_config: Value,
}

/// Build the tokenizer a GGUF file describes (python: transformers'
/// `convert_gguf_tokenizer`), or `None` when it has no `tokenizer.ggml.*`
/// vocabulary: byte-level BPE (`tokenizer.ggml.model = gpt2`) or
/// SentencePiece (`llama`, see `gguf/spm.rs`); others are an error. EOS ids:
/// `config`'s `eos_token_id` plus the tokenizer's `eos_token`.
pub fn tokenizer_from_metadata(md: &GgufMetadata<'_>, config: &Value) -> Result<Option<Tokenizer>> {
  match tokenizer_parts(md)? {
    Some(parts) => build_tokenizer(md.path, &parts, config).map(Some),
    None => Ok(None),
  }
}

/// The [`Tokenizer`] of [`TokenizerParts`]; EOS ids from `config`'s
/// `eos_token_id` plus the tokenizer's `eos_token`.
fn build_tokenizer(path: &Path, parts: &TokenizerParts, config: &Value) -> Result<Tokenizer> {
  let eos_ids = crate::config::value_token_ids(
    path,
    "eos_token_id",
    config.get("eos_token_id").unwrap_or(&Value::Null),
  )?;
  Tokenizer::from_json_parts(
    &parts.tokenizer_json,
    parts.tokenizer_config.clone(),
    path,
    eos_ids,
  )
}

/// The `tokenizer.json` / `tokenizer_config.json` content of a GGUF file's
/// `tokenizer.ggml.*` metadata (see [`tokenizer_from_metadata`]).
pub fn tokenizer_parts(md: &GgufMetadata<'_>) -> Result<Option<TokenizerParts>> {
  let path = md.path;
  let Some(tokens) = md.strings("tokenizer.ggml.tokens")? else {
    return Ok(None);
  };
  let model = md.str("tokenizer.ggml.model")?.unwrap_or("gpt2");
  if model != "gpt2" && model != "llama" {
    return Err(Error::tokenizer(
      Some(path),
      format!(
        "GGUF tokenizer.ggml.model {model:?} is not supported (byte-level BPE \"gpt2\" and \
         SentencePiece \"llama\" are); load with no_tokenizer and bring the model's tokenizer.json"
      ),
    ));
  }
  let spm = model == "llama";
  let types = md.i32s("tokenizer.ggml.token_type")?.unwrap_or_default();
  if !types.is_empty() && types.len() != tokens.len() {
    return Err(Error::config(
      path,
      "tokenizer.ggml.token_type",
      format!(
        "GGUF metadata: {} entries for {} tokens",
        types.len(),
        tokens.len()
      ),
    ));
  }

  let id_of = |key: &str| -> Result<Option<u32>> {
    match md.u64(key)? {
      None => Ok(None),
      Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
      Some(id) => Err(Error::config(
        path,
        key,
        format!(
          "GGUF metadata: token id {id} is not in the {}-token vocabulary",
          tokens.len()
        ),
      )),
    }
  };
  let bos = id_of("tokenizer.ggml.bos_token_id")?;
  let eos = id_of("tokenizer.ggml.eos_token_id")?;
  let unk = id_of("tokenizer.ggml.unknown_token_id")?;
  let pad = id_of("tokenizer.ggml.padding_token_id")?;
  // llama.cpp (and transformers) add BOS to a SentencePiece vocabulary that
  // does not say otherwise.
  let add_bos = md.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(spm);
  let add_eos = md.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

  // Gemma files need their whitespace tokens respelled, and rank merges by
  // file order (transformers' `gemma_tokenizer`).
  let arch = md.str("general.architecture")?.unwrap_or_default();
  let gemma = spm && matches!(arch, "gemma" | "gemma2" | "gemma3");
  let respelled;
  let tokens: &[String] = if gemma {
    respelled = spm::respell_space_tokens(tokens);
    &respelled
  } else {
    tokens
  };

  let mut vocab = Map::with_capacity(tokens.len());
  for (i, t) in tokens.iter().enumerate() {
    // A repeated token keeps its last index, as transformers' `{token: index}`.
    vocab.insert(t.clone(), json!(i));
  }
  // Control (3) tokens become special added tokens, user-defined (4) plain
  // added ones (transformers' `add_gguf_special_tokens`); in a SentencePiece
  // vocabulary the unknown piece (2) is special too.
  let alphabet = byte_alphabet();
  let mut added = Vec::new();
  for (i, (t, &ty)) in tokens.iter().zip(types.iter()).enumerate() {
    let special = match ty {
      spm::TOKEN_CONTROL if spm || t.chars().all(|c| alphabet.contains(&c)) => true,
      spm::TOKEN_UNKNOWN if spm => true,
      spm::TOKEN_USER_DEFINED => false,
      _ => continue,
    };
    added.push(json!({
      "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
      "normalized": false, "special": special,
    }));
  }
  let file_merges = md.strings("tokenizer.ggml.merges")?;
  let (normalizer, pre_tok, decoder, model_json) = if spm {
    let merges: Vec<(String, String)> = match file_merges {
      Some(m) => m
        .iter()
        .map(|m| match m.split_once(' ') {
          Some((l, r)) => Ok((l.to_string(), r.to_string())),
          None => Err(Error::config(
            path,
            "tokenizer.ggml.merges",
            format!("GGUF metadata: merge {m:?} is not two tokens"),
          )),
        })
        .collect::<Result<_>>()?,
      None => {
        let scores = if gemma {
          (0..tokens.len()).map(|i| -(i as f32)).collect()
        } else {
          md.f32s("tokenizer.ggml.scores")?.ok_or_else(|| {
            Error::config(
              path,
              "tokenizer.ggml.scores",
              "GGUF metadata: a SentencePiece vocabulary without merges needs its scores",
            )
          })?
        };
        if scores.len() != tokens.len() {
          return Err(Error::config(
            path,
            "tokenizer.ggml.scores",
            format!(
              "GGUF metadata: {} scores for {} tokens",
              scores.len(),
              tokens.len()
            ),
          ));
        }
        spm::merges_from_scores(tokens, &scores)
      }
    };
    let prefix = md.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let unk_tok = unk
      .map(|i| tokens[i as usize].as_str())
      .or_else(|| tokens.iter().any(|t| t == "<unk>").then_some("<unk>"));
    (
      spm::normalizer(prefix),
      Value::Null,
      spm::decoder(prefix),
      spm::model(Value::Object(vocab), &merges, unk_tok),
    )
  } else {
    let pre = md.str("tokenizer.ggml.pre")?.unwrap_or("default");
    let merges = file_merges.unwrap_or(&[]);
    (
      Value::Null,
      pre_tokenizer(path, pre)?,
      json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
      json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": false, "vocab": vocab, "merges": merges,
      }),
    )
  };
  let tok_str = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
  let mut single = Vec::new();
  let mut special_tokens = Map::new();
  if add_bos {
    if let Some(b) = tok_str(bos) {
      single.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
      special_tokens.insert(b.clone(), json!({"id": b, "ids": [bos], "tokens": [b]}));
    }
  }
  single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
  if add_eos {
    if let Some(e) = tok_str(eos) {
      single.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
      special_tokens.insert(e.clone(), json!({"id": e, "ids": [eos], "tokens": [e]}));
    }
  }
  let post = if special_tokens.is_empty() {
    if spm {
      Value::Null
    } else {
      json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
    }
  } else {
    let mut pair = single.clone();
    pair.extend(single.iter().map(|p| {
      let mut p = p.clone();
      if let Some(s) = p.get_mut("Sequence") {
        s["id"] = json!("B");
      }
      p
    }));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
  };
  let tj = json!({
    "version": "1.0",
    "truncation": null,
    "padding": null,
    "added_tokens": added,
    "normalizer": normalizer,
    "pre_tokenizer": pre_tok,
    "post_processor": post,
    "decoder": decoder,
    "model": model_json,
  });
  let mut tc = Map::new();
  tc.insert("bos_token".into(), json!(tok_str(bos)));
  tc.insert("eos_token".into(), json!(tok_str(eos)));
  tc.insert("unk_token".into(), json!(tok_str(unk)));
  tc.insert("pad_token".into(), json!(tok_str(pad)));
  tc.insert("add_bos_token".into(), json!(add_bos));
  tc.insert("add_eos_token".into(), json!(add_eos));
  if let Some(t) = md.str("tokenizer.chat_template")? {
    tc.insert("chat_template".into(), json!(t));
  }
  let text = serde_json::to_string(&tj)
    .map_err(|e| Error::tokenizer(Some(path), format!("building tokenizer.json: {e}")))?;
  Ok(Some(TokenizerParts {
    tokenizer_json: text,
    tokenizer_config: Value::Object(tc),
  }))
}

/// Write a GGUF file as an MLX checkpoint folder in mlx-community's layout
/// (what `mlx_lm.convert` writes, and what [`crate::load`] and python
/// `mlx_lm.load` read): `config.json` (with the `quantization` block),
/// `model.safetensors` (quantized tensors as MLX packed weights, scales and
/// biases, as [`read_checkpoint`] maps them; Q/K rows in HF order),
/// `tokenizer.json` and `tokenizer_config.json`. `out` is created; existing
/// files of those names are overwritten.
pub fn to_mlx_folder(gguf: &Path, out: &Path) -> Result<()> {
  to_mlx_folder_with(gguf, out, &GgufReadOptions::default())
}

/// [`to_mlx_folder`] with [`GgufReadOptions`] (`dequantize`: a float folder
/// with the exact values of the quantized tensors).
pub fn to_mlx_folder_with(gguf: &Path, out: &Path, opts: &GgufReadOptions) -> Result<()> {
  let ck = read_checkpoint_with(
    gguf,
    &GgufReadOptions {
      no_tokenizer: false,
      ..*opts
    },
  )?;
  std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
  let write = |name: &str, text: &str| -> Result<()> {
    let p = out.join(name);
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
  };
  let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
  write("config.json", &pretty(&ck.config))?;
  let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
  mlxrs_core::io::save_safetensors(out.join("model.safetensors"), &ck.weights, &meta)?;
  if let Some(parts) = &ck.tokenizer_parts {
    write("tokenizer.json", &parts.tokenizer_json)?;
    write("tokenizer_config.json", &pretty(&parts.tokenizer_config))?;
  }
  Ok(())
}

/// The local path of a GGUF `model` argument, with a clear error when the
/// file does not exist.
pub fn resolve_gguf(model: &str) -> Result<PathBuf> {
  let p = PathBuf::from(model);
  if !p.is_file() {
    return Err(Error::Hub {
      model: model.to_string(),
      message: "GGUF file not found".into(),
    });
  }
  Ok(p)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn unpermute_inverts_llama_cpp_permute() {
    // convert_hf_to_gguf.py: w.reshape(n_head, 2, d/2).swapaxes(1, 2).
    let (heads, d) = (3usize, 8usize);
    let rows = heads * d;
    let hf: Vec<usize> = (0..rows).collect();
    let mut gguf = vec![0; rows];
    for h in 0..heads {
      for j in 0..2 {
        for i in 0..d / 2 {
          gguf[h * d + i * 2 + j] = hf[h * d + j * (d / 2) + i];
        }
      }
    }
    let idx = unpermute_rows(rows, heads).unwrap();
    let back: Vec<usize> = idx.iter().map(|&s| gguf[s as usize]).collect();
    assert_eq!(back, hf);
    assert!(unpermute_rows(10, 3).is_none());
    assert!(unpermute_rows(9, 3).is_none());
  }

  #[test]
  fn tensor_names() {
    assert_eq!(
      hf_tensor_name("blk.12.attn_q.weight").as_deref(),
      Some("model.layers.12.self_attn.q_proj.weight")
    );
    assert_eq!(
      hf_tensor_name("token_embd.scales").as_deref(),
      Some("model.embed_tokens.scales")
    );
    assert_eq!(
      hf_tensor_name("output.weight").as_deref(),
      Some("lm_head.weight")
    );
    assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
    assert_eq!(hf_tensor_name("blk.0.mystery.weight"), None);
  }

  /// Metadata for a toy byte-level vocabulary: the 256 byte tokens, a few
  /// merges, `<s>` / `</s>` control tokens.
  fn toy_meta(pre: &str, model: &str, add_bos: bool) -> HashMap<String, GgufMeta> {
    let mut alphabet: Vec<char> = byte_alphabet().into_iter().collect();
    alphabet.sort();
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let merges = vec!["1 2".to_string(), "H e".to_string(), "He l".to_string()];
    tokens.extend(["12".to_string(), "He".to_string(), "Hel".to_string()]);
    let mut types = vec![3i32, 3];
    types.extend(std::iter::repeat_n(1, tokens.len() - 2));
    let n = types.len() as i32;
    HashMap::from([
      (
        "tokenizer.ggml.model".into(),
        GgufMeta::String(model.into()),
      ),
      ("tokenizer.ggml.pre".into(), GgufMeta::String(pre.into())),
      ("tokenizer.ggml.tokens".into(), GgufMeta::Strings(tokens)),
      ("tokenizer.ggml.merges".into(), GgufMeta::Strings(merges)),
      (
        "tokenizer.ggml.token_type".into(),
        GgufMeta::Array(Array::from_slice(&types, &[n]).unwrap()),
      ),
      (
        "tokenizer.ggml.bos_token_id".into(),
        GgufMeta::Array(Array::scalar(0u32)),
      ),
      (
        "tokenizer.ggml.eos_token_id".into(),
        GgufMeta::Array(Array::scalar(1u32)),
      ),
      (
        "tokenizer.ggml.add_bos_token".into(),
        GgufMeta::Array(Array::scalar(add_bos)),
      ),
    ])
  }

  #[test]
  fn tokenizer_from_toy_metadata() {
    let path = Path::new("toy.gguf");
    let cfg = json!({});
    for pre in SUPPORTED_PRE_TOKENIZERS {
      let meta = toy_meta(pre, "gpt2", false);
      let tok = tokenizer_from_metadata(&GgufMetadata::new(path, &meta), &cfg)
        .unwrap_or_else(|e| panic!("{pre}: {e}"))
        .unwrap();
      let ids = tok.encode("Hello 12 <s>", true).unwrap();
      assert_eq!(tok.decode(&ids, false).unwrap(), "Hello 12 <s>", "{pre}");
      assert_eq!(ids.last(), Some(&0), "{pre}: <s> stays one (special) token");
      let twelve = tok.token_to_id("12").unwrap();
      // smollm-style rules and Qwen2's regex cut digits apart before the
      // merges; GPT-2's and Llama 3's regexes keep "12" whole.
      let split_digits = [
        "smollm",
        "starcoder",
        "refact",
        "command-r",
        "codeshell",
        "exaone",
        "qwen2",
        "deepseek-r1-qwen",
        "megrez",
      ];
      assert_eq!(
        ids.contains(&twelve),
        !split_digits.contains(pre),
        "{pre}: {ids:?}"
      );
      assert!(tok.is_eos(1));
    }
    // add_bos_token: the post-processor prepends <s>.
    let meta = toy_meta("default", "gpt2", true);
    let tok = tokenizer_from_metadata(&GgufMetadata::new(path, &meta), &cfg)
      .unwrap()
      .unwrap();
    assert_eq!(tok.encode("He", true).unwrap().first(), Some(&0));
    assert_eq!(
      tok.encode("He", false).unwrap().first(),
      tok.token_to_id("He").as_ref()
    );
    // Unknown pre-tokenizer and SentencePiece vocabularies: errors naming them.
    let meta = toy_meta("mystery-pre", "gpt2", false);
    let e = tokenizer_from_metadata(&GgufMetadata::new(path, &meta), &cfg)
      .unwrap_err()
      .to_string();
    assert!(e.contains("mystery-pre"), "{e}");
    let meta = toy_meta("default", "t5", false);
    let e = tokenizer_from_metadata(&GgufMetadata::new(path, &meta), &cfg)
      .unwrap_err()
      .to_string();
    assert!(e.contains("\"t5\""), "{e}");
  }

  #[test]
  fn gemma3_sliding_pattern_from_flags() {
    let path = Path::new("g.gguf");
    let cfg_for = |flags: &[bool]| {
      let n = flags.len() as i32;
      let meta = HashMap::from([(
        "gemma3.attention.sliding_window_pattern".to_string(),
        GgufMeta::Array(Array::from_slice(flags, &[n]).unwrap()),
      )]);
      let mut c = Map::new();
      gemma_config(
        &GgufMetadata::new(path, &meta),
        "gemma3",
        &mut c,
        n as u64,
        96,
        4,
        16,
      )
      .map(|_| c)
    };
    // 5 local + 1 global, repeated: llama.cpp's Gemma 3 layout.
    let flags: Vec<bool> = (0..12).map(|i| (i + 1) % 6 != 0).collect();
    let c = cfg_for(&flags).unwrap();
    assert_eq!(c["sliding_window_pattern"], 6);
    assert_eq!(c["query_pre_attn_scalar"], 16);
    // All sliding: no global layer.
    assert_eq!(cfg_for(&[true, true]).unwrap()["sliding_window_pattern"], 3);
    // Not a repeating pattern.
    let e = cfg_for(&[true, false, false, true])
      .unwrap_err()
      .to_string();
    assert!(e.contains("sliding_window_pattern"), "{e}");
    // Absent: llama.cpp's default 6.
    let meta = HashMap::new();
    let mut c = Map::new();
    gemma_config(
      &GgufMetadata::new(path, &meta),
      "gemma3",
      &mut c,
      62,
      5376,
      32,
      128,
    )
    .unwrap();
    assert_eq!(c["sliding_window_pattern"], 6);
    // Gemma 3 27B: hidden / heads.
    assert_eq!(c["query_pre_attn_scalar"], 168);
  }

  #[test]
  fn gemma2_softcapping_and_scale_from_metadata() {
    let path = Path::new("g.gguf");
    let meta = HashMap::from([
      (
        "gemma2.attn_logit_softcapping".to_string(),
        GgufMeta::Array(Array::scalar(40.0f32)),
      ),
      (
        "gemma2.final_logit_softcapping".to_string(),
        GgufMeta::Array(Array::scalar(20.0f32)),
      ),
      (
        "gemma2.attention.sliding_window".to_string(),
        GgufMeta::Array(Array::scalar(4096u32)),
      ),
    ]);
    let md = GgufMetadata::new(path, &meta);
    let mut c = Map::new();
    gemma_config(&md, "gemma2", &mut c, 42, 3584, 16, 256).unwrap();
    assert_eq!(c["attn_logit_softcapping"], 40.0);
    assert_eq!(c["final_logit_softcapping"], 20.0);
    assert_eq!(c["sliding_window"], 4096);
    assert_eq!(c["query_pre_attn_scalar"], 256, "9B: head_dim");
    assert!(!c.contains_key("sliding_window_pattern"));
    // Gemma 2 27B (46 layers): hidden / heads = 4608 / 32.
    let mut c = Map::new();
    gemma_config(&md, "gemma2", &mut c, 46, 4608, 32, 128).unwrap();
    assert_eq!(c["query_pre_attn_scalar"], 144);
  }

  #[test]
  fn byte_alphabet_has_256_chars() {
    let a = byte_alphabet();
    assert_eq!(a.len(), 256);
    assert!(a.contains(&'Ġ') && a.contains(&'<') && !a.contains(&' '));
  }
}
