//! The Qwen2 decoder with multimodal RoPE (mlx-vlm `qwen2_vl/language.py`)
//! and its positions (`get_rope_index`). It stays its own model rather than
//! mlxrs-lm's qwen2: its rotary positions are per-token (t, h, w) triples
//! from the image grids, with a per-prompt `rope_delta` for decoding, which
//! the token-index positions of mlxrs-lm's models cannot express.

use super::*;

// ---------------------------------------------------------------------------
// Language model with M-RoPE
// ---------------------------------------------------------------------------

pub(super) struct TextAttention {
  pub(super) q_proj: Linear,
  pub(super) k_proj: Linear,
  pub(super) v_proj: Linear,
  pub(super) o_proj: Linear,
  pub(super) n_heads: i32,
  pub(super) n_kv: i32,
  pub(super) scale: f32,
}
module!(TextAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl TextAttention {
  pub(super) fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    cos: &Array,
    sin: &Array,
  ) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array, n: i32| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, n, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let k = heads(self.k_proj.forward(x)?, self.n_kv)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv)?;
    let rope = |t: &Array| -> Result<Array> {
      let o = ops::add(
        &ops::multiply(t, cos)?,
        &ops::multiply(&rotate_half(t)?, sin)?,
      )?;
      Ok(ops::astype(&o, t.dtype())?)
    };
    let (q, k) = (rope(&q)?, rope(&k)?);
    // Cache update + fused attention (quantized KV caches included).
    let o = attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    Ok(self.o_proj.forward(&o)?)
  }
}

pub(super) struct TextMlp {
  pub(super) gate_proj: Linear,
  pub(super) up_proj: Linear,
  pub(super) down_proj: Linear,
}
module!(TextMlp {
  gate_proj,
  up_proj,
  down_proj
});

pub(super) struct TextBlock {
  pub(super) self_attn: TextAttention,
  pub(super) mlp: TextMlp,
  pub(super) input_layernorm: RmsNorm,
  pub(super) post_attention_layernorm: RmsNorm,
}
module!(TextBlock {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl TextBlock {
  pub(super) fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    cos: &Array,
    sin: &Array,
  ) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache, cos, sin)?,
    )?;
    let m = &self.mlp;
    let y = self.post_attention_layernorm.forward(&h)?;
    let y = m
      .down_proj
      .forward(&swiglu(&m.gate_proj.forward(&y)?, &m.up_proj.forward(&y)?)?)?;
    Ok(ops::add(&h, &y)?)
  }
}

pub(super) struct TextInner {
  pub(super) embed_tokens: Embedding,
  pub(super) layers: Vec<TextBlock>,
  pub(super) norm: RmsNorm,
}
module!(TextInner {
  embed_tokens,
  layers,
  norm
});

/// The multimodal part of the prompt being generated from, shared between
/// [`crate::VlmModel`] (which sets it) and the language model (which reads
/// it while the prompt is prefilled).
pub struct MultimodalPrompt {
  /// The expanded prompt ids.
  pub ids: Vec<u32>,
  /// Image features `[n_image_tokens, hidden]` (lazy), in prompt order.
  pub features: Option<Array>,
  /// Per prompt position: the feature row of an image token, else -1.
  pub feature_row: Vec<i32>,
  /// M-RoPE positions `[3][len]` (temporal, height, width).
  pub positions: [Vec<i32>; 3],
  /// `max(position) + 1 - len`: added to the cache offset after the prompt.
  pub rope_delta: i32,
}

/// The slot through which a prompt's multimodal data reaches the LM.
pub type PromptSlot = Arc<Mutex<Option<MultimodalPrompt>>>;

/// The Qwen2-VL language model (mlx-vlm's `LanguageModel`): the Qwen2
/// decoder with M-RoPE. As an [`mlxrs_lm::LanguageModel`] it runs in
/// mlxrs-lm's generation loop; while a [`MultimodalPrompt`] is set, prompt
/// positions take their embeddings (image features merged in) and M-RoPE
/// positions from it, and later positions continue at
/// `offset + rope_delta`, as mlx-vlm's `_rope_deltas` bookkeeping does.
pub struct Qwen2VlText {
  pub(super) model: TextInner,
  pub(super) lm_head: Option<Linear>,
  pub(super) vocab: i32,
  pub(super) tie: bool,
  pub(super) inv_freq: Vec<f32>,
  pub(super) selector: Vec<usize>,
  pub(super) slot: PromptSlot,
}
module!(Qwen2VlText { model, lm_head });

impl Qwen2VlText {
  pub(super) fn new(c: &Qwen2VlConfig, slot: PromptSlot) -> Result<Qwen2VlText> {
    let t = &c.text;
    let h = t.hidden_size;
    let nh = t.num_attention_heads;
    let nkv = t.num_key_value_heads.unwrap_or(nh);
    let hd = h / nh;
    let layers = (0..t.num_hidden_layers)
      .map(|_| TextBlock {
        self_attn: TextAttention {
          q_proj: Linear::new(h, nh * hd, true),
          k_proj: Linear::new(h, nkv * hd, true),
          v_proj: Linear::new(h, nkv * hd, true),
          o_proj: Linear::new(nh * hd, h, false),
          n_heads: nh,
          n_kv: nkv,
          scale: (hd as f32).powf(-0.5),
        },
        mlp: TextMlp {
          gate_proj: Linear::new(h, t.intermediate_size, false),
          up_proj: Linear::new(h, t.intermediate_size, false),
          down_proj: Linear::new(t.intermediate_size, h, false),
        },
        input_layernorm: RmsNorm::new(h, t.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new(h, t.rms_norm_eps),
      })
      .collect();
    let tie = c.tie_word_embeddings();
    let mut f = inv_freq(hd, t.rope_theta)?;
    let inv = f.to_vec::<f32>()?;
    // mlx-vlm's chunked selector: frequency i rotates by coordinate
    // 0 (t) below section[0], 1 (h) in the next section[1], 2 (w) in the
    // next section[2]; anything past the sections stays temporal.
    let fdim = inv.len();
    let mut selector = vec![0usize; fdim];
    let mut off = c.mrope_section[0];
    for (dim, &len) in c.mrope_section.iter().enumerate().skip(1) {
      for s in selector
        .iter_mut()
        .take((off + len).min(fdim))
        .skip(off.min(fdim))
      {
        *s = dim;
      }
      off += len;
    }
    Ok(Qwen2VlText {
      model: TextInner {
        embed_tokens: Embedding::new(t.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, t.rms_norm_eps),
      },
      lm_head: (!tie).then(|| Linear::new(h, t.vocab_size, false)),
      vocab: t.vocab_size,
      tie,
      inv_freq: inv,
      selector,
      slot,
    })
  }

  /// cos / sin `[1, 1, L, head_dim]` for M-RoPE positions `[3][L]`.
  pub(super) fn cos_sin(&self, pos: [&[i32]; 3], dtype: Dtype) -> Result<(Array, Array)> {
    let l = pos[0].len();
    let f = self.inv_freq.len();
    let mut freqs = Vec::with_capacity(l * 2 * f);
    for (i, _) in pos[0].iter().enumerate() {
      let row: Vec<f32> = (0..f)
        .map(|j| pos[self.selector[j]][i] as f32 * self.inv_freq[j])
        .collect();
      freqs.extend_from_slice(&row);
      freqs.extend_from_slice(&row);
    }
    let emb = Array::from_slice(&freqs, &[1, 1, l as i32, (2 * f) as i32])?;
    Ok((
      ops::astype(&ops::cos(&emb)?, dtype)?,
      ops::astype(&ops::sin(&emb)?, dtype)?,
    ))
  }

  pub(super) fn embed(
    &self,
    tokens: &Array,
    offset: i32,
    n: i32,
  ) -> Result<(Array, [Vec<i32>; 3])> {
    let h = self.model.embed_tokens.forward(tokens)?;
    let guard = self
      .slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))?;
    let Some(st) = guard.as_ref() else {
      let p: Vec<i32> = (offset..offset + n).collect();
      return Ok((h, [p.clone(), p.clone(), p]));
    };
    let (start, end) = (offset as usize, (offset + n) as usize);
    if start < st.ids.len() && end > st.ids.len() {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} run past the end of the multimodal prompt ({} tokens)",
        st.ids.len()
      )));
    }
    if end > st.ids.len() {
      // After the prompt: all three coordinates continue at offset + delta.
      let p: Vec<i32> = (offset..offset + n).map(|x| x + st.rope_delta).collect();
      return Ok((h, [p.clone(), p.clone(), p]));
    }
    let mut tk = tokens.clone();
    let got = tk.to_vec::<i32>()?;
    let want = &st.ids[start..end];
    if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| *a as u32 != *b) {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} differ from the multimodal prompt prepared by VlmModel; \
         generate through VlmModel, or clear the prompt (VlmModel::clear_prompt) before text-only use"
      )));
    }
    let rows = &st.feature_row[start..end];
    let h = match (&st.features, rows.iter().any(|&r| r >= 0)) {
      (Some(feat), true) => {
        let idx: Vec<i32> = rows.iter().map(|&r| r.max(0)).collect();
        let mask: Vec<bool> = rows.iter().map(|&r| r >= 0).collect();
        let idx = Array::from_slice(&idx, &[n])?;
        let mask = Array::from_slice(&mask, &[1, n, 1])?;
        let gathered = ops::expand_dims(&ops::take_axis(feat, &idx, 0)?, 0)?;
        ops::where_(&mask, &gathered, &h)?
      }
      _ => h,
    };
    let p = [
      st.positions[0][start..end].to_vec(),
      st.positions[1][start..end].to_vec(),
      st.positions[2][start..end].to_vec(),
    ];
    Ok((h, p))
  }

  pub(super) fn hidden_inner(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    if caches.len() != self.model.layers.len() {
      return Err(Error::invalid(format!(
        "{} caches for {} layers",
        caches.len(),
        self.model.layers.len()
      )));
    }
    let s = tokens.shape();
    if s.len() != 2 || s[0] != 1 {
      return Err(Error::invalid(format!("tokens must be [1, T], got {s:?}")));
    }
    let n = s[1];
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    let (mut h, pos) = self.embed(tokens, offset, n)?;
    let (cos, sin) = self.cos_sin([&pos[0], &pos[1], &pos[2]], h.dtype())?;
    let mask = match caches.first() {
      Some(c) => c.make_mask(n, None)?,
      None => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache, &cos, &sin)?;
    }
    Ok(self.model.norm.forward(&h)?)
  }
}

impl LanguageModel for Qwen2VlText {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> mlxrs_core::Result<Array> {
    self.hidden_inner(tokens, caches).map_err(|e| match e {
      Error::Core(c) => c,
      other => mlxrs_core::Error::InvalidArgument(other.to_string()),
    })
  }

  fn logits(&self, hidden: &Array) -> mlxrs_core::Result<Array> {
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.embed_tokens.as_linear(hidden),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    mlxrs_lm::models::base::default_caches(self.model.layers.len(), max_kv_size)
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "language_model");
  }

  fn vocab_size(&self) -> i32 {
    self.vocab
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "language_model", f);
  }
}

// ---------------------------------------------------------------------------
// M-RoPE positions (get_rope_index)
// ---------------------------------------------------------------------------

/// mlx-vlm's `get_rope_index` for one prompt with images (no video): M-RoPE
/// positions `[3][len]` and `rope_delta = max + 1 - len`. Images are counted
/// as in mlx-vlm: a `vision_start` token followed by an image token.
pub fn rope_index(
  ids: &[u32],
  grids: &[[u32; 3]],
  c: &Qwen2VlConfig,
) -> Result<([Vec<i32>; 3], i32)> {
  let n = ids.len();
  let ms = c.vision.spatial_merge_size as usize;
  let image_nums = ids
    .windows(2)
    .filter(|w| w[0] == c.vision_start_token_id && w[1] == c.image_token_id)
    .count();
  if grids.is_empty() || image_nums == 0 {
    let p: Vec<i32> = (0..n as i32).collect();
    return Ok(([p.clone(), p.clone(), p], 0));
  }
  let mut pos: [Vec<i32>; 3] = [
    Vec::with_capacity(n),
    Vec::with_capacity(n),
    Vec::with_capacity(n),
  ];
  let mut st = 0usize;
  let mut next = 0i32; // max position so far + 1
  for g in grids.iter().take(image_nums) {
    let ed = ids[st..]
      .iter()
      .position(|&t| t == c.image_token_id)
      .map(|p| p + st)
      .ok_or_else(|| Error::invalid("fewer image tokens than images in the prompt"))?;
    let (lt, lh, lw) = (g[0] as usize, g[1] as usize / ms, g[2] as usize / ms);
    let text_len = ed - st;
    for i in 0..text_len as i32 {
      for p in pos.iter_mut() {
        p.push(next + i);
      }
    }
    let base = next + text_len as i32;
    for ti in 0..lt {
      for hi in 0..lh {
        for wi in 0..lw {
          pos[0].push(base + ti as i32);
          pos[1].push(base + hi as i32);
          pos[2].push(base + wi as i32);
        }
      }
    }
    let m = (lt.max(lh).max(lw) as i32 - 1).max(0);
    next = base + m + 1;
    st = ed + lt * lh * lw;
    if st > n {
      return Err(Error::invalid(format!(
        "image {} needs {} tokens but the prompt ends first",
        pos[0].len(),
        lt * lh * lw
      )));
    }
  }
  for i in 0..(n - st) as i32 {
    for p in pos.iter_mut() {
      p.push(next + i);
    }
  }
  let max = pos
    .iter()
    .flat_map(|p| p.iter())
    .copied()
    .max()
    .unwrap_or(-1);
  Ok((pos, max + 1 - n as i32))
}
