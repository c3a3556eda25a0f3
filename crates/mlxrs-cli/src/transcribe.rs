//! `mlxrs transcribe --model M FILE...`: Whisper speech-to-text (python
//! `faster-whisper` / `mlx_whisper.transcribe` / the `whisper` CLI's output
//! writers).
//!
//! Reads wav / flac / mp3 / ogg, decodes with the model's greedy (or beam)
//! search as faster-whisper does, and prints or writes txt / json / srt / vtt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use mlxrs_audio::output::{self, timestamp};
use mlxrs_audio::{Segment, Task, TranscribeOptions, Transcription, Whisper, load_audio};

/// Arguments of `mlxrs transcribe`.
#[derive(Args, Debug, Clone)]
pub struct TranscribeArgs {
  /// Model folder: Hugging Face (`model.safetensors` + `config.json`) or
  /// CTranslate2 / faster-whisper (`model.bin` + `config.json` +
  /// `tokenizer.json` or `vocabulary.txt`).
  #[arg(long)]
  pub model: PathBuf,
  /// Audio files (wav, flac, mp3, ogg).
  #[arg(required = true)]
  pub files: Vec<PathBuf>,
  /// Spoken language code (e.g. `en`); detected when omitted (multilingual
  /// models).
  #[arg(long)]
  pub language: Option<String>,
  /// `transcribe` or `translate` (to English).
  #[arg(long, default_value = "transcribe")]
  pub task: String,
  /// Beam size at temperature 0 (1 = greedy).
  #[arg(long = "beam-size", default_value_t = 1)]
  pub beam_size: usize,
  /// Candidates sampled at temperature > 0.
  #[arg(long = "best-of", default_value_t = 5)]
  pub best_of: usize,
  /// Temperatures tried in order on failure (comma separated; `0` alone
  /// disables the fallback).
  #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6,0.8,1.0")]
  pub temperature: Vec<f32>,
  /// Text to prompt the first window with.
  #[arg(long = "initial-prompt")]
  pub initial_prompt: Option<String>,
  /// Prompt each window with the previous text.
  #[arg(long = "condition-on-previous-text", default_value_t = true, action = clap::ArgAction::Set)]
  pub condition_on_previous_text: bool,
  /// Decode text only: one segment per 30 s window.
  #[arg(long = "without-timestamps")]
  pub without_timestamps: bool,
  /// Word-level timestamps (cross-attention DTW, python
  /// `word_timestamps=True`): words in json, one srt / vtt cue per word.
  #[arg(long = "word-timestamps")]
  pub word_timestamps: bool,
  /// Treat a window as silent above this `<|nospeech|>` probability.
  #[arg(long = "no-speech-threshold", default_value_t = 0.6)]
  pub no_speech_threshold: f32,
  /// Retry hotter when the gzip compression ratio is above this.
  #[arg(long = "compression-ratio-threshold", default_value_t = 2.4)]
  pub compression_ratio_threshold: f32,
  /// Retry hotter when the average log-probability is below this.
  #[arg(long = "logprob-threshold", default_value_t = -1.0)]
  pub logprob_threshold: f32,
  /// Transcribe only the speech found by voice activity detection
  /// (faster-whisper's `vad_filter`; silence is skipped, times are kept).
  #[arg(long = "vad-filter")]
  pub vad_filter: bool,
  /// With `--vad-filter`: speech probability threshold (0-1).
  #[arg(long = "vad-threshold", default_value_t = 0.5)]
  pub vad_threshold: f32,
  /// With `--vad-filter`: silence shorter than this (ms) does not split speech.
  #[arg(long = "vad-min-silence-ms", default_value_t = 2000)]
  pub vad_min_silence_ms: u32,
  /// Output format: txt, json, srt or vtt.
  #[arg(long = "output-format", default_value = "txt")]
  pub output_format: String,
  /// Write `<file stem>.<format>` into this folder instead of printing.
  #[arg(long = "output-dir")]
  pub output_dir: Option<PathBuf>,
  /// Print one JSON object per file (text, segments, language, timings).
  #[arg(long)]
  pub json: bool,
  /// Print segments to stderr as they are decoded.
  #[arg(long)]
  pub verbose: bool,
}

/// Render a transcription in `format` (txt, json, srt or vtt;
/// [`mlxrs_audio::output::render`]).
pub fn render(t: &Transcription, format: &str) -> Result<String> {
  Ok(output::render(t, format)?)
}

fn options(a: &TranscribeArgs) -> Result<TranscribeOptions> {
  let task: Task = a.task.parse().map_err(|e| anyhow::anyhow!("--task: {e}"))?;
  if a.temperature.is_empty() {
    bail!("--temperature: give at least one value (0 = greedy)");
  }
  if !(a.vad_threshold.is_finite() && (0.0..=1.0).contains(&a.vad_threshold)) {
    bail!("--vad-threshold {}: must be in [0, 1]", a.vad_threshold);
  }
  Ok(TranscribeOptions {
    language: a.language.clone(),
    task,
    beam_size: a.beam_size,
    best_of: a.best_of,
    temperatures: a.temperature.clone(),
    initial_prompt: a.initial_prompt.clone(),
    condition_on_previous_text: a.condition_on_previous_text,
    without_timestamps: a.without_timestamps,
    word_timestamps: a.word_timestamps,
    no_speech_threshold: Some(a.no_speech_threshold),
    compression_ratio_threshold: Some(a.compression_ratio_threshold),
    log_prob_threshold: Some(a.logprob_threshold),
    vad_filter: a.vad_filter.then(|| mlxrs_audio::vad::VadOptions {
      threshold: a.vad_threshold,
      min_silence_duration_ms: a.vad_min_silence_ms,
      ..Default::default()
    }),
    ..TranscribeOptions::default()
  })
}

fn print_segment(s: &Segment) {
  eprintln!(
    "[{} --> {}] {}",
    timestamp(s.start, false, '.'),
    timestamp(s.end, false, '.'),
    s.text.trim()
  );
}

/// Run `mlxrs transcribe`.
pub fn run(args: TranscribeArgs) -> Result<()> {
  if !["txt", "json", "srt", "vtt"].contains(&args.output_format.as_str()) {
    bail!(
      "--output-format {:?}: expected txt, json, srt or vtt",
      args.output_format
    );
  }
  let opts = options(&args)?;
  let t0 = Instant::now();
  let model =
    Whisper::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
  let load_s = t0.elapsed().as_secs_f64();
  if let Some(d) = &args.output_dir {
    std::fs::create_dir_all(d).with_context(|| format!("creating --output-dir {}", d.display()))?;
  }
  let mut stdout = std::io::stdout().lock();
  for file in &args.files {
    let audio = load_audio(file).with_context(|| format!("reading {}", file.display()))?;
    let t1 = Instant::now();
    let verbose = args.verbose;
    let t = model
      .transcribe_with(&audio, &opts, |s| {
        if verbose {
          print_segment(s)
        }
      })
      .with_context(|| format!("transcribing {}", file.display()))?;
    let secs = t1.elapsed().as_secs_f64();
    if args.json {
      let v = serde_json::json!({
        "file": file.display().to_string(),
        "language": t.language,
        "language_probability": t.language_probability,
        "duration": t.duration,
        "text": t.text(),
        "segments": t.segments,
        "load_seconds": load_s,
        "transcribe_seconds": secs,
        "real_time_factor": if t.duration > 0.0 { secs / t.duration } else { 0.0 },
        "device": mlxrs_core::Device::default_device().map(|d| d.to_string()).unwrap_or_default(),
      });
      writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
      continue;
    }
    let text = render(&t, &args.output_format)?;
    match &args.output_dir {
      Some(d) => {
        let stem = file
          .file_stem()
          .map(Path::new)
          .unwrap_or(Path::new("audio"));
        let out = d.join(stem).with_extension(&args.output_format);
        mlxrs_core::atomic::atomic_write(&out, text)
          .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
          "{} -> {} ({:.2} s, real-time factor {:.3})",
          file.display(),
          out.display(),
          secs,
          secs / t.duration.max(1e-9)
        );
      }
      None => {
        if args.files.len() > 1 && args.output_format == "txt" {
          writeln!(stdout, "==> {} <==", file.display())?;
        }
        write!(stdout, "{text}")?;
      }
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn timestamps_format_like_whisper() {
    assert_eq!(timestamp(3725.5, true, ','), "01:02:05,500");
    assert_eq!(timestamp(65.004, false, '.'), "01:05.004");
    assert_eq!(timestamp(3600.0, false, '.'), "01:00:00.000");
  }

  #[test]
  fn word_cues_in_srt_and_vtt() {
    let w = |word: &str, start, end| mlxrs_audio::Word {
      word: word.into(),
      start,
      end,
      probability: 0.9,
    };
    let seg = Segment {
      id: 1,
      seek: 0,
      start: 0.0,
      end: 1.0,
      text: " Hello there.".into(),
      tokens: vec![],
      temperature: 0.0,
      avg_logprob: -0.1,
      compression_ratio: 1.0,
      no_speech_prob: 0.0,
      words: Some(vec![w(" Hello", 0.0, 0.42), w(" there.", 0.42, 1.0)]),
    };
    let t = Transcription {
      segments: vec![seg],
      language: "en".into(),
      language_probability: 1.0,
      duration: 1.0,
    };
    let srt = render(&t, "srt").unwrap();
    assert_eq!(
      srt,
      "1\n00:00:00,000 --> 00:00:00,420\nHello\n\n2\n00:00:00,420 --> 00:00:01,000\nthere.\n\n"
    );
    assert!(
      render(&t, "vtt")
        .unwrap()
        .contains("00:00.420 --> 00:01.000\nthere.")
    );
    let json: serde_json::Value = serde_json::from_str(&render(&t, "json").unwrap()).unwrap();
    let w0 = &json["segments"][0]["words"][0];
    assert_eq!(w0["word"], " Hello");
    assert_eq!(w0["end"], 0.42);
  }
}
