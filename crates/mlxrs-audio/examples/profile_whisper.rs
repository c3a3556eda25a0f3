//! Where `transcribe` spends its time on a model and clip: log-mel, one
//! encoder window, a decoder step (forward, logits, host copy), and the
//! whole transcription.
//!
//! ```text
//! cargo run --release -p mlxrs-audio --example profile_whisper -- MODEL_DIR clip.wav [encoder]
//! ```
//!
//! (`encoder` as a third argument stops after the encoder timing.)

use std::time::Instant;

use mlxrs_audio::{TranscribeOptions, Whisper, load_audio};
use mlxrs_core::Array;

fn main() -> Result<(), Box<dyn std::error::Error>> {
  let args: Vec<String> = std::env::args().collect();
  if args.len() < 3 {
    return Err("usage: profile_whisper MODEL_DIR AUDIO".into());
  }
  let w = Whisper::load(&args[1])?;
  let audio = load_audio(&args[2])?;
  let reps = 3;
  let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;

  let t = Instant::now();
  let mut f = w.features(&audio.samples)?;
  f.eval()?;
  println!(
    "log-mel ({:.1} s of audio): {:.1} ms",
    audio.duration(),
    ms(t)
  );

  let frames = (f.dim(1).unwrap_or(1) as usize - 1).min(3000);
  let _ = w.encode_window(&f, 0, frames)?; // warm-up
  let t = Instant::now();
  for _ in 0..reps {
    let _ = w.encode_window(&f, 0, frames)?;
  }
  println!("encoder, one 30 s window: {:.1} ms", ms(t) / reps as f64);
  let xa = w.encode_window(&f, 0, frames)?;
  if args.get(3).is_some_and(|a| a == "encoder") {
    return Ok(());
  }

  let sot = w.tokenizer.as_ref().map(|t| t.special.sot).unwrap_or(0) as i32;
  let steps = 40;
  for (label, copy) in [
    ("forward only", 0),
    ("+ logits", 1),
    ("+ logits to host", 2),
  ] {
    let mut st = w.model.decoder_state(&xa)?;
    let t = Instant::now();
    for _ in 0..steps {
      let ids = Array::from_slice(&[sot], &[1, 1])?;
      let mut h = w.model.decode_hidden(&ids, &mut st)?;
      match copy {
        0 => h.eval()?,
        1 => w.model.logits(&h)?.eval()?,
        _ => {
          let _ = w.model.logits(&h)?.to_vec::<f32>()?;
        }
      }
    }
    println!("decoder step, {label}: {:.2} ms", ms(t) / steps as f64);
  }

  // Same step over a 10-frame encoder output: isolates the cross-attention.
  let xs = mlxrs_core::ops::slice(
    &xa,
    &[0, 0, 0],
    &[1, 10, xa.dim(2).unwrap_or(0)],
    &[1, 1, 1],
  )?;
  let mut st = w.model.decoder_state(&xs)?;
  let t = Instant::now();
  for _ in 0..steps {
    let ids = Array::from_slice(&[sot], &[1, 1])?;
    w.model.decode_hidden(&ids, &mut st)?.eval()?;
  }
  println!(
    "decoder step over 10 encoder frames, forward only: {:.2} ms",
    ms(t) / steps as f64
  );

  let opts = TranscribeOptions {
    temperatures: vec![0.0],
    ..TranscribeOptions::default()
  };
  let _ = w.transcribe(&audio, &opts)?;
  let t = Instant::now();
  let r = w.transcribe(&audio, &opts)?;
  let n: usize = r.segments.iter().map(|s| s.tokens.len()).sum();
  let secs = t.elapsed().as_secs_f64();
  println!(
    "transcribe: {:.2} s, RTF {:.3}, {n} tokens in {} segments",
    secs,
    secs / audio.duration(),
    r.segments.len()
  );
  Ok(())
}
