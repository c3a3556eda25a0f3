//! Decoding one 30 s window: CTranslate2's `Whisper.generate` (greedy,
//! sampled, beam search) over the rules of [`super::rules`].

use mlxrs_core::{Array, ops};

use crate::error::{Error, Result};
use crate::tokenizer::SpecialTokens;
use crate::whisper::{DecoderState, WhisperModel};

use super::rules::*;

/// One decoding result of a window (CTranslate2's `WhisperGenerationResult`).
#[derive(Debug, Clone)]
pub struct Generation {
  /// Sampled tokens (no prefix, no end-of-text).
  pub tokens: Vec<u32>,
  /// Length-normalized cumulative log-probability.
  pub score: f32,
  /// `P(<|nospeech|>)` at the sot position.
  pub no_speech_prob: f32,
}

/// Per-window decoding parameters (CTranslate2's `WhisperOptions`).
#[derive(Debug, Clone)]
pub struct GenerateParams {
  /// Beam size (temperature 0).
  pub beam_size: usize,
  /// Patience factor.
  pub patience: f32,
  /// Length penalty exponent.
  pub length_penalty: f32,
  /// Prompt + new tokens at most.
  pub max_length: usize,
  /// Sampling temperature (0: argmax / beam).
  pub temperature: f32,
  /// Samples to draw when `temperature > 0`.
  pub num_hypotheses: usize,
  /// Suppress `begin_suppress_tokens` at the first sampled position.
  pub suppress_blank: bool,
  /// Suppressed everywhere (explicit ids).
  pub suppress_tokens: Vec<u32>,
  /// Index of the latest allowed first timestamp (`round(1.0 / 0.02)`).
  pub max_initial_timestamp_index: usize,
  /// Greedy / sampled decoding applies the rules on the device (see
  /// [`TranscribeOptions::rules_on_device`]); beam search ignores it.
  pub rules_on_device: bool,
}

/// A small, seeded generator (splitmix64) for sampling.
pub(super) struct Rng(pub(super) u64);

impl Rng {
  pub(super) fn next_f64(&mut self) -> f64 {
    self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = self.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
  }
}

/// The sot-sequence end of `prompt`: (index of sot, prompt length up to
/// and including the last special token).
pub(super) fn prompt_layout(prompt: &[u32], sp: &SpecialTokens) -> Result<(usize, usize)> {
  let sot = prompt.iter().position(|&t| t == sp.sot).ok_or_else(|| {
    Error::InvalidArgument("the prompt has no <|startoftranscript|> token".into())
  })?;
  let mut len = sot;
  while len < prompt.len() && prompt[len] >= sp.sot && prompt[len] <= sp.no_timestamps {
    len += 1;
  }
  Ok((sot, len))
}

pub(super) fn last_logits(model: &WhisperModel, hidden: &Array, pos: i32) -> Result<Vec<f32>> {
  let d = hidden.dim(2).unwrap_or(0);
  let h = ops::slice(hidden, &[0, pos, 0], &[1, pos + 1, d], &[1, 1, 1])?;
  let mut l = model.logits(&h)?;
  Ok(l.to_vec::<f32>()?)
}

/// The logits `[vocab]` (float32, on the device) at position `pos` of `hidden`.
pub(super) fn logits_row(model: &WhisperModel, hidden: &Array, pos: i32) -> Result<Array> {
  let d = hidden.dim(2).unwrap_or(0);
  let h = ops::slice(hidden, &[0, pos, 0], &[1, pos + 1, d], &[1, 1, 1])?;
  let l = model.logits(&h)?;
  let l = ops::reshape(&l, &[-1])?;
  Ok(ops::astype(&l, mlxrs_core::Dtype::Float32)?)
}

pub(super) fn feed(
  model: &WhisperModel,
  tokens: &[u32],
  state: &mut DecoderState,
) -> Result<Array> {
  let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
  let a = Array::from_slice(&ids, &[1, ids.len() as i32])?;
  model.decode_hidden(&a, state)
}

pub(super) fn softmax_at(logits: &[f32], id: u32) -> f32 {
  let lp = log_softmax(logits);
  lp.get(id as usize).map(|v| v.exp()).unwrap_or(0.0)
}

/// Decode one window: CTranslate2's `WhisperReplica::generate` for one
/// prompt. `xa` is the encoder output `[1, T, d]`.
pub fn generate(
  model: &WhisperModel,
  sp: &SpecialTokens,
  xa: &Array,
  prompt: &[u32],
  params: &GenerateParams,
  rng_seed: u64,
) -> Result<Vec<Generation>> {
  let (sot_index, prompt_length) = prompt_layout(prompt, sp)?;
  if prompt_length == 0 {
    return Err(Error::InvalidArgument("empty prompt".into()));
  }
  let vocab = model.config.n_vocab as usize;
  if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
    return Err(Error::InvalidArgument(format!(
      "prompt token {bad} is outside the vocabulary of {vocab}"
    )));
  }
  let mut state = model.decoder_state(xa)?;
  let sot_is_start = sot_index == prompt_length - 1;
  let mut no_speech_prob = 0.0;
  let mut start_step = 0usize;
  if prompt_length > 1 {
    let h = feed(model, &prompt[..prompt_length - 1], &mut state)?;
    if !sot_is_start {
      no_speech_prob = softmax_at(&last_logits(model, &h, sot_index as i32)?, sp.no_speech);
    }
    start_step = prompt_length - 1;
  }
  let total = params.max_length;
  let max_length = (total / 2).min(total.saturating_sub(start_step));
  let prefix: Vec<u32> = prompt[prompt_length..].to_vec();
  let start = prompt[prompt_length - 1];
  let timestamps = start != sp.no_timestamps;
  let begin: Vec<u32> = model.config.begin_suppress_tokens.clone();
  let rules = Rules {
    sp,
    params,
    begin_suppress: &begin,
    timestamps,
    prefix_len: prefix.len(),
    vocab,
  };
  let dev = if params.rules_on_device {
    Some(DeviceRules::new(&rules)?)
  } else {
    None
  };
  let ctx_left = (model.config.n_text_ctx as usize).saturating_sub(start_step);
  let max_steps = (prefix.len() + max_length).min(ctx_left);
  if params.temperature > 0.0 {
    let mut out = Vec::new();
    let mut rng = Rng(rng_seed ^ 0x5EED);
    for _ in 0..params.num_hypotheses.max(1) {
      let mut st = model.decoder_state(xa)?;
      if prompt_length > 1 {
        feed(model, &prompt[..prompt_length - 1], &mut st)?;
      }
      let (g, nsp) = greedy(
        model,
        &rules,
        dev.as_ref(),
        &mut st,
        start,
        &prefix,
        max_steps,
        params,
        sot_is_start,
        Some(&mut rng),
      )?;
      if sot_is_start {
        no_speech_prob = nsp;
      }
      out.push(g);
    }
    out.sort_by(|a, b| {
      b.score
        .partial_cmp(&a.score)
        .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
      .iter_mut()
      .for_each(|g| g.no_speech_prob = no_speech_prob);
    return Ok(out);
  }
  if params.beam_size > 1 {
    let (g, nsp) = beam_search(
      model,
      &rules,
      state,
      start,
      &prefix,
      max_steps,
      params,
      sot_is_start,
    )?;
    let nsp = if sot_is_start { nsp } else { no_speech_prob };
    return Ok(vec![Generation {
      no_speech_prob: nsp,
      ..g
    }]);
  }
  let (mut g, nsp) = greedy(
    model,
    &rules,
    dev.as_ref(),
    &mut state,
    start,
    &prefix,
    max_steps,
    params,
    sot_is_start,
    None,
  )?;
  g.no_speech_prob = if sot_is_start { nsp } else { no_speech_prob };
  Ok(vec![g])
}

/// Greedy / sampled decoding of one hypothesis: with `dev` the rules run on
/// the device ([`greedy_device`]), else on host copies of the logits.
#[allow(clippy::too_many_arguments)]
pub(super) fn greedy(
  model: &WhisperModel,
  rules: &Rules<'_>,
  dev: Option<&DeviceRules>,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  match dev {
    Some(d) => greedy_device(
      model,
      rules,
      d,
      state,
      start,
      prefix,
      max_steps,
      params,
      sot_is_start,
      rng,
    ),
    None => greedy_host(
      model,
      rules,
      state,
      start,
      prefix,
      max_steps,
      params,
      sot_is_start,
      rng,
    ),
  }
}

/// [`greedy`] with the rules on the device: per step only the chosen token,
/// its log-probability and (first step) `P(<|nospeech|>)` are read back.
#[allow(clippy::too_many_arguments)]
pub(super) fn greedy_device(
  model: &WhisperModel,
  rules: &Rules<'_>,
  dev: &DeviceRules,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  mut rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  let sp = rules.sp;
  let mut seq: Vec<u32> = Vec::new();
  let mut hyp: Vec<u32> = Vec::new();
  let mut score = 0f32;
  let mut no_speech = 0f32;
  let mut input = start;
  for step in 0..max_steps {
    let h = feed(model, &[input], state)?;
    let logits = logits_row(model, &h, 0)?;
    let lp = dev.log_probs(rules, step, &seq, &logits)?;
    let tok = if step < prefix.len() {
      Array::scalar(prefix[step] as i32)
    } else if let Some(r) = rng.as_deref_mut() {
      // Inverse-CDF sampling of softmax(lp / t) with the host's uniform draw.
      let t = Array::scalar(params.temperature.max(1e-6));
      let p = log_softmax_dev(&ops::divide(&lp, &t)?)?;
      sample_dev(&p, dev.vocab, r.next_f64())?
    } else {
      ops::astype(&ops::argmax(&lp, false)?, mlxrs_core::Dtype::Int32)?
    };
    let tok_lp = ops::take(&lp, &tok)?;
    let mut parts = vec![ops::astype(&tok, mlxrs_core::Dtype::Float32)?, tok_lp];
    if step == 0 && sot_is_start {
      let ns = Array::scalar(sp.no_speech as i32);
      parts.push(ops::exp(&ops::take(&log_softmax_dev(&logits)?, &ns)?)?);
    }
    let vals = ops::stack(&parts)?.to_vec::<f32>()?;
    let tok = vals[0] as u32;
    if let Some(&ns) = vals.get(2) {
      no_speech = ns;
    }
    seq.push(tok);
    score += vals[1];
    let is_eot = tok == sp.eot;
    if !is_eot && step >= prefix.len() {
      hyp.push(tok);
    }
    if is_eot && step >= prefix.len() {
      break;
    }
    input = tok;
  }
  let len = hyp.len() as f32;
  let score = score / len.powf(params.length_penalty);
  Ok((
    Generation {
      tokens: hyp,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}

/// [`greedy`] with the rules on a host copy of each step's logits (the path
/// before [`greedy_device`]; `MLXRS_WHISPER_HOST_RULES=1`).
#[allow(clippy::too_many_arguments)]
pub(super) fn greedy_host(
  model: &WhisperModel,
  rules: &Rules<'_>,
  state: &mut DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
  mut rng: Option<&mut Rng>,
) -> Result<(Generation, f32)> {
  let sp = rules.sp;
  let mut seq: Vec<u32> = Vec::new();
  let mut hyp: Vec<u32> = Vec::new();
  let mut score = 0f32;
  let mut no_speech = 0f32;
  let mut input = start;
  for step in 0..max_steps {
    let h = feed(model, &[input], state)?;
    let mut logits = last_logits(model, &h, 0)?;
    if step == 0 && sot_is_start {
      no_speech = softmax_at(&logits, sp.no_speech);
    }
    rules.apply(step, &seq, &mut logits);
    let lp = log_softmax(&logits);
    let tok = if step < prefix.len() {
      prefix[step] as usize
    } else if let Some(r) = rng.as_deref_mut() {
      let t = params.temperature.max(1e-6);
      let scaled: Vec<f32> = lp.iter().map(|v| v / t).collect();
      let p = log_softmax(&scaled);
      let u = r.next_f64();
      let mut acc = 0f64;
      let mut pick = argmax(&p);
      for (i, v) in p.iter().enumerate() {
        acc += f64::from(v.exp());
        if acc > u {
          pick = i;
          break;
        }
      }
      pick
    } else {
      argmax(&lp)
    };
    seq.push(tok as u32);
    score += lp[tok];
    let is_eot = tok as u32 == sp.eot;
    if !is_eot && step >= prefix.len() {
      hyp.push(tok as u32);
    }
    if is_eot && step >= prefix.len() {
      break;
    }
    input = tok as u32;
  }
  let len = hyp.len() as f32;
  let score = score / len.powf(params.length_penalty);
  Ok((
    Generation {
      tokens: hyp,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}

/// Beam search at temperature 0 (python `BeamSearchDecoder` /
/// CTranslate2's `BeamSearch`): keep the `beam_size` best live sequences by
/// cumulative log-probability; a sequence ending in end-of-text becomes a
/// finished candidate scored `sum / len^length_penalty`; stop once
/// `round(beam_size * patience)` candidates are collected.
#[allow(clippy::too_many_arguments)]
pub(super) fn beam_search(
  model: &WhisperModel,
  rules: &Rules<'_>,
  state: DecoderState,
  start: u32,
  prefix: &[u32],
  max_steps: usize,
  params: &GenerateParams,
  sot_is_start: bool,
) -> Result<(Generation, f32)> {
  struct Beam {
    seq: Vec<u32>,
    score: f32,
    state: DecoderState,
  }
  let sp = rules.sp;
  let k = params.beam_size;
  let max_candidates = ((k as f32) * params.patience).round().max(1.0) as usize;
  let norm = |hyp: &[u32], s: f32| s / (hyp.len() as f32).powf(params.length_penalty);
  let mut beams = vec![Beam {
    seq: Vec::new(),
    score: 0.0,
    state,
  }];
  let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
  let mut no_speech = 0f32;
  for step in 0..max_steps {
    // (score, beam, token)
    let mut cands: Vec<(f32, usize, u32)> = Vec::new();
    for (bi, b) in beams.iter_mut().enumerate() {
      let input = b.seq.last().copied().unwrap_or(start);
      let h = feed(model, &[input], &mut b.state)?;
      let mut logits = last_logits(model, &h, 0)?;
      if step == 0 && sot_is_start {
        no_speech = softmax_at(&logits, sp.no_speech);
      }
      rules.apply(step, &b.seq, &mut logits);
      let lp = log_softmax(&logits);
      if step < prefix.len() {
        let t = prefix[step];
        cands.push((b.score + lp[t as usize], bi, t));
        continue;
      }
      let mut idx: Vec<usize> = (0..lp.len()).collect();
      let take = (2 * k).min(idx.len());
      idx.select_nth_unstable_by(take - 1, |&a, &c| {
        lp[c]
          .partial_cmp(&lp[a])
          .unwrap_or(std::cmp::Ordering::Equal)
      });
      for &i in &idx[..take] {
        cands.push((b.score + lp[i], bi, i as u32));
      }
    }
    cands.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut next: Vec<Beam> = Vec::new();
    for &(s, bi, t) in &cands {
      if next.len() >= k {
        break;
      }
      let mut seq = beams[bi].seq.clone();
      seq.push(t);
      if t == sp.eot && step >= prefix.len() {
        let hyp = seq[prefix.len()..seq.len() - 1].to_vec();
        let sc = norm(&hyp, s);
        finished.push((hyp, sc));
        continue;
      }
      next.push(Beam {
        seq,
        score: s,
        state: beams[bi].state.clone(),
      });
    }
    beams = next;
    if beams.is_empty() || finished.len() >= max_candidates {
      break;
    }
  }
  if finished.is_empty() {
    for b in &beams {
      let hyp = b.seq[prefix.len().min(b.seq.len())..].to_vec();
      let sc = norm(&hyp, b.score);
      finished.push((hyp, sc));
    }
  }
  finished.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
  let (tokens, score) = finished
    .into_iter()
    .next()
    .unwrap_or((Vec::new(), f32::NEG_INFINITY));
  Ok((
    Generation {
      tokens,
      score,
      no_speech_prob: 0.0,
    },
    no_speech,
  ))
}
