//! Audio in: decode wav (8/16/24/32-bit integer, 32/64-bit float), flac,
//! mp3 and ogg/vorbis with symphonia, mix to mono, resample to 16 kHz.
//!
//! Python: `faster_whisper.decode_audio(path, sampling_rate=16000)` /
//! `whisper.load_audio(path)` (both decode through ffmpeg).

use std::io::Cursor;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result, io_err};

/// The sample rate Whisper consumes (python `whisper.audio.SAMPLE_RATE`).
pub const SAMPLE_RATE: u32 = 16_000;

/// The highest sample rate accepted (768 kHz, the top of professional
/// audio). The resampler's FFT grows with `rate / gcd(rate, 16000)`: a
/// header claiming billions of Hz (found by libFuzzer) made it plan a
/// 32-million-point FFT and run for minutes.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// The largest sample magnitude accepted. Decoded audio lies in [-1, 1]
/// (a float file may clip a little past it) and unnormalised 16/24-bit
/// values stay far below; magnitudes near `f32::MAX` (found by libFuzzer in
/// a float WAV) overflow the resampler's FFT to NaN and make it panic.
pub const MAX_SAMPLE_ABS: f32 = 1e6;

/// Whether `v` is a usable sample: finite and within [`MAX_SAMPLE_ABS`].
fn is_audio_sample(v: f32) -> bool {
  v.is_finite() && v.abs() <= MAX_SAMPLE_ABS
}

/// Decoded audio: mono `f32` samples in `[-1, 1]` at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
  /// Mono samples.
  pub samples: Vec<f32>,
  /// Samples per second.
  pub sample_rate: u32,
  /// Channels in the source before the mono mix.
  pub source_channels: usize,
  /// Sample rate of the source before resampling.
  pub source_sample_rate: u32,
}

impl Audio {
  /// Mono 16 kHz samples, as Whisper takes them.
  pub fn from_samples_16k(samples: Vec<f32>) -> Audio {
    Audio {
      samples,
      sample_rate: SAMPLE_RATE,
      source_channels: 1,
      source_sample_rate: SAMPLE_RATE,
    }
  }

  /// Duration in seconds.
  pub fn duration(&self) -> f64 {
    if self.sample_rate == 0 {
      0.0
    } else {
      self.samples.len() as f64 / f64::from(self.sample_rate)
    }
  }
}

/// Read an audio file, mix it to mono and resample it to 16 kHz (python
/// `faster_whisper.decode_audio(path)`).
pub fn load_audio(path: impl AsRef<Path>) -> Result<Audio> {
  let path = path.as_ref();
  let bytes = std::fs::read(path).map_err(io_err(path))?;
  let ext = path
    .extension()
    .and_then(|e| e.to_str())
    .map(str::to_ascii_lowercase);
  let a = decode_audio_bytes(&bytes, ext.as_deref()).map_err(|e| match e {
    Error::Audio(m) => Error::Audio(format!("{}: {m}", path.display())),
    other => other,
  })?;
  to_whisper_rate(a)
}

/// Resample decoded audio to 16 kHz mono (no-op when it already is).
pub fn to_whisper_rate(a: Audio) -> Result<Audio> {
  if a.sample_rate == SAMPLE_RATE {
    return Ok(a);
  }
  let samples = resample(&a.samples, a.sample_rate, SAMPLE_RATE)?;
  Ok(Audio {
    samples,
    sample_rate: SAMPLE_RATE,
    ..a
  })
}

/// Decode an in-memory audio file (any supported container) to mono `f32`
/// at its own sample rate. `ext` is an optional extension hint (`"wav"`).
pub fn decode_audio_bytes(bytes: &[u8], ext: Option<&str>) -> Result<Audio> {
  if bytes.is_empty() {
    return Err(Error::Audio("empty file (0 bytes)".into()));
  }
  check_wav_header(bytes)?;
  // The decoders are third-party parsers of untrusted bytes: a panic in one
  // (a header field it divides by, ...) is reported as a malformed file.
  match std::panic::catch_unwind(|| decode_unchecked(bytes, ext)) {
    Ok(r) => r,
    Err(p) => {
      let why = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
      Err(Error::Audio(format!(
        "malformed audio file: the decoder failed on it ({why})"
      )))
    }
  }
}

/// The fields of a RIFF/WAVE `fmt ` chunk that symphonia trusts (and would
/// divide by): channels, sample rate, block alignment and bits per sample
/// must all be non-zero. Files that are not RIFF/WAVE pass unchecked.
fn check_wav_header(b: &[u8]) -> Result<()> {
  if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
    return Ok(());
  }
  let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
  let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
  let mut at = 12usize;
  while at + 8 <= b.len() {
    let size = u32_at(at + 4) as usize;
    if &b[at..at + 4] == b"fmt " {
      if size < 16 || at + 8 + 16 > b.len() {
        return Err(Error::Audio(
          "malformed wav file: the fmt chunk is shorter than 16 bytes".into(),
        ));
      }
      let f = at + 8;
      let (format, channels, rate) = (u16_at(f), u16_at(f + 2), u32_at(f + 4));
      let (align, bits) = (u16_at(f + 12), u16_at(f + 14));
      // Compressed formats may leave alignment and sample width at 0.
      let pcm = matches!(format, 1 | 3 | 0xFFFE);
      for (what, v) in [
        ("channel count", u32::from(channels)),
        ("sample rate", rate),
        ("block alignment", if pcm { u32::from(align) } else { 1 }),
        ("bits per sample", if pcm { u32::from(bits) } else { 1 }),
      ] {
        if v == 0 {
          return Err(Error::Audio(format!(
            "malformed wav file: the fmt chunk gives a {what} of 0"
          )));
        }
      }
      return Ok(());
    }
    at = match at.checked_add(8 + size + (size & 1)) {
      Some(n) => n,
      None => break,
    };
  }
  Ok(())
}

fn decode_unchecked(bytes: &[u8], ext: Option<&str>) -> Result<Audio> {
  let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
  let mut hint = Hint::new();
  if let Some(e) = ext {
    hint.with_extension(e);
  }
  let probed = symphonia::default::get_probe()
    .format(
      &hint,
      mss,
      &FormatOptions {
        enable_gapless: true,
        ..Default::default()
      },
      &MetadataOptions::default(),
    )
    .map_err(|e| match (e, sniff(bytes)) {
      (_, Some(kind)) if bytes.len() < 64 => {
        Error::Audio(format!("truncated {kind} file: the header ends early"))
      }
      (SymError::Unsupported(_), Some(kind)) => Error::Audio(format!(
        "malformed or unsupported {kind} file (the header could not be read)"
      )),
      (SymError::Unsupported(_), None) => {
        Error::Audio("not a recognized audio file (supported: wav, flac, mp3, ogg/vorbis)".into())
      }
      (SymError::IoError(ref io), _) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
        Error::Audio("truncated audio file: the header ends early".into())
      }
      (other, _) => Error::Audio(format!("malformed audio header: {other}")),
    })?;
  let mut format = probed.format;
  let track = format
    .tracks()
    .iter()
    .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
    .ok_or_else(|| Error::Audio("no audio track in the file".into()))?;
  let track_id = track.id;
  let params = track.codec_params.clone();
  let sample_rate = params
    .sample_rate
    .ok_or_else(|| Error::Audio("the audio track has no sample rate".into()))?;
  if sample_rate == 0 {
    return Err(Error::Audio(
      "the audio track has a sample rate of 0".into(),
    ));
  }
  if sample_rate > MAX_SAMPLE_RATE {
    return Err(Error::Audio(format!(
      "the audio track has a sample rate of {sample_rate} Hz (supported: up to {MAX_SAMPLE_RATE} Hz)"
    )));
  }
  let mut decoder = symphonia::default::get_codecs()
    .make(&params, &DecoderOptions::default())
    .map_err(|e| match e {
      SymError::Unsupported(m) => Error::Audio(format!("unsupported audio codec ({m})")),
      other => Error::Audio(format!("cannot decode the audio track: {other}")),
    })?;
  let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
  let mut mono: Vec<f32> = Vec::new();
  let mut buf: Option<SampleBuffer<f32>> = None;
  let mut decode_errors = 0usize;
  let mut last_err = String::new();
  loop {
    let packet = match format.next_packet() {
      Ok(p) => p,
      Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
      Err(SymError::ResetRequired) => break,
      Err(e) => {
        if mono.is_empty() {
          return Err(Error::Audio(format!("cannot read the audio stream: {e}")));
        }
        break;
      }
    };
    if packet.track_id() != track_id {
      continue;
    }
    let decoded = match decoder.decode(&packet) {
      Ok(d) => d,
      Err(SymError::DecodeError(m)) => {
        // A corrupt packet: skip it, as ffmpeg does.
        decode_errors += 1;
        last_err = m.to_string();
        continue;
      }
      Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
      Err(SymError::Unsupported(m)) => {
        return Err(Error::Audio(format!(
          "unsupported audio codec feature ({m})"
        )));
      }
      Err(e) => return Err(Error::Audio(format!("cannot decode the audio: {e}"))),
    };
    let spec = *decoded.spec();
    let n = decoded.frames();
    if n == 0 {
      continue;
    }
    let ch = spec.channels.count().max(1);
    channels = ch;
    let sb = match &mut buf {
      Some(b) if b.capacity() >= n * ch => b,
      _ => {
        buf = Some(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec));
        buf.as_mut().expect("just set")
      }
    };
    sb.copy_interleaved_ref(decoded);
    mix_into(&mut mono, sb.samples(), ch);
  }
  if mono.is_empty() {
    if decode_errors > 0 {
      return Err(Error::Audio(format!(
        "no packet could be decoded ({decode_errors} errors, last: {last_err})"
      )));
    }
    return Err(Error::Audio("the file holds no audio samples".into()));
  }
  let bad = mono.iter().filter(|&&v| !is_audio_sample(v)).count();
  if bad > 0 {
    return Err(Error::Audio(format!(
      "malformed audio: {bad} of {} samples are NaN, infinite or beyond +-{MAX_SAMPLE_ABS}",
      mono.len()
    )));
  }
  Ok(Audio {
    samples: mono,
    sample_rate,
    source_channels: channels.max(1),
    source_sample_rate: sample_rate,
  })
}

/// The container a file's magic bytes announce, if any.
fn sniff(b: &[u8]) -> Option<&'static str> {
  if b.len() >= 4 && (&b[..4] == b"RIFF" || &b[..4] == b"RIFX" || &b[..4] == b"RF64") {
    Some("wav")
  } else if b.starts_with(b"fLaC") {
    Some("flac")
  } else if b.starts_with(b"OggS") {
    Some("ogg")
  } else if b.starts_with(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && b[1] & 0xE0 == 0xE0) {
    Some("mp3")
  } else {
    None
  }
}

/// Append the mono mix (channel mean) of interleaved `frames` to `out`.
fn mix_into(out: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
  if channels <= 1 {
    out.extend_from_slice(interleaved);
    return;
  }
  let inv = 1.0 / channels as f32;
  out.extend(
    interleaved
      .chunks_exact(channels)
      .map(|f| f.iter().sum::<f32>() * inv),
  );
}

/// Mix interleaved samples of `channels` channels to mono (the channel mean,
/// ffmpeg's default downmix for `-ac 1`).
pub fn to_mono(interleaved: &[f32], channels: usize) -> Result<Vec<f32>> {
  if channels == 0 {
    return Err(Error::InvalidArgument("to_mono: 0 channels".into()));
  }
  if interleaved.len() % channels != 0 {
    return Err(Error::InvalidArgument(format!(
      "to_mono: {} samples is not a whole number of {channels}-channel frames",
      interleaved.len()
    )));
  }
  let mut out = Vec::with_capacity(interleaved.len() / channels);
  mix_into(&mut out, interleaved, channels);
  Ok(out)
}

/// Resample mono `samples` from `from` Hz to `to` Hz with rubato's FFT
/// resampler (band-limited, anti-aliased). The output has
/// `round(len * to / from)` samples, aligned with the input (the filter
/// delay is removed). Errors: a rate of 0 or above [`MAX_SAMPLE_RATE`], a
/// sample that is NaN, infinite or beyond [`MAX_SAMPLE_ABS`].
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
  if from == 0 || to == 0 || from > MAX_SAMPLE_RATE || to > MAX_SAMPLE_RATE {
    return Err(Error::InvalidArgument(format!(
      "resample: sample rates must be in 1..={MAX_SAMPLE_RATE} Hz (got {from} -> {to})"
    )));
  }
  if from == to || samples.is_empty() {
    return Ok(samples.to_vec());
  }
  // rubato's inverse FFT panics on NaN / infinite input (realfft refuses a
  // spectrum whose DC bin has a non-zero imaginary part), and huge values
  // overflow to infinity inside it.
  if let Some(i) = samples.iter().position(|&v| !is_audio_sample(v)) {
    return Err(Error::InvalidArgument(format!(
      "resample: sample {i} is {} (NaN, infinite or beyond +-{MAX_SAMPLE_ABS}: not audio)",
      samples[i]
    )));
  }
  // Any other panic inside the resampler is a clear error too.
  std::panic::catch_unwind(|| resample_checked(samples, from, to)).unwrap_or_else(|_| {
    Err(Error::Audio(format!(
      "resampling {from} -> {to} Hz failed inside the resampler"
    )))
  })
}

/// [`resample`] once the rates and samples are known to be valid.
fn resample_checked(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
  use rubato::{FftFixedIn, Resampler};
  let new_len =
    ((samples.len() as u128 * u128::from(to) + u128::from(from) / 2) / u128::from(from)) as usize;
  let chunk = 1024;
  let mut rs = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
    .map_err(|e| Error::InvalidArgument(format!("resample {from} -> {to} Hz: {e}")))?;
  let delay = rs.output_delay();
  let mut out: Vec<f32> = Vec::with_capacity(new_len + delay + chunk);
  let mut pos = 0;
  let err = |e: rubato::ResampleError| Error::Audio(format!("resampling failed: {e}"));
  while samples.len() - pos >= rs.input_frames_next() {
    let n = rs.input_frames_next();
    let o = rs.process(&[&samples[pos..pos + n]], None).map_err(err)?;
    out.extend_from_slice(&o[0]);
    pos += n;
  }
  if pos < samples.len() {
    let o = rs
      .process_partial(Some(&[&samples[pos..]]), None)
      .map_err(err)?;
    out.extend_from_slice(&o[0]);
  }
  let mut guard = 0;
  while out.len() < new_len + delay && guard < 64 {
    let o = rs.process_partial::<&[f32]>(None, None).map_err(err)?;
    out.extend_from_slice(&o[0]);
    guard += 1;
  }
  let end = (delay + new_len).min(out.len());
  let mut v = out[delay.min(end)..end].to_vec();
  v.resize(new_len, 0.0);
  Ok(v)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn mono_mix_and_bad_input() {
    assert_eq!(to_mono(&[1.0, 0.0, 0.5, 0.5], 2).unwrap(), vec![0.5, 0.5]);
    assert!(to_mono(&[1.0, 0.0, 0.5], 2).is_err());
    assert!(to_mono(&[1.0], 0).is_err());
    assert!(matches!(decode_audio_bytes(&[], None), Err(Error::Audio(m)) if m.contains("empty")));
    assert!(
      matches!(decode_audio_bytes(b"hello, not audio at all, just text", None), Err(Error::Audio(m)) if m.contains("not a recognized"))
    );
    assert!(resample(&[0.0; 10], 0, 16000).is_err());
  }

  /// libFuzzer's timeout input (`cargo fuzz run wav`): junk, then a
  /// RIFF/WAVE header (which symphonia finds past the junk) whose sample
  /// rate is 4,160,765,568 Hz. It must be a prompt error, not minutes in
  /// the resampler.
  #[test]
  fn absurd_sample_rate_is_a_prompt_error() {
    let mut b = vec![5u8; 56];
    b.extend_from_slice(b"RIFF\x24\x01\0\0WAVEfmt \x10\0\0\0\x03\0\x01\0");
    b.extend_from_slice(&0xF800_3E80u32.to_le_bytes());
    b.extend_from_slice(b"\xfa\0\0\0\x04\0\x20\0data\0\x01\0\0");
    b.extend((0..64).flat_map(|i: u32| (-1.0f32 + i as f32 / 64.0).to_le_bytes()));
    let t = std::time::Instant::now();
    for ext in [Some("wav"), None] {
      let r = decode_audio_bytes(&b, ext).and_then(to_whisper_rate);
      let Err(e) = r else { panic!("accepted") };
      let e = e.to_string();
      assert!(e.contains("sample rate"), "{e}");
    }
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    assert!(resample(&[0.0; 8], 4_160_765_568, SAMPLE_RATE).is_err());
  }

  /// libFuzzer's crash inputs: float WAVs (9344 / 16077 Hz) whose samples
  /// include NaN or values near `f32::MAX`; resampling them panicked inside
  /// rubato. Now a clear error, from the
  /// decoder and from `resample` alike.
  #[test]
  fn nan_samples_are_an_error_not_a_panic() {
    let mut b = b"RIFF\x24\x01\0\0WAVEfmt \x10\0\0\0\x03\0\x01\0".to_vec();
    b.extend_from_slice(&9344u32.to_le_bytes());
    b.extend_from_slice(b"\0\xfa\0\0\x04\0\x20\0data\x20\0\0\0");
    for v in [
      -1.0f32,
      f32::NAN,
      0.5,
      f32::INFINITY,
      0.25,
      -0.5,
      2.9e38,
      1.0,
    ] {
      b.extend_from_slice(&v.to_le_bytes());
    }
    let Err(e) = decode_audio_bytes(&b, Some("wav")) else {
      panic!("accepted")
    };
    let e = e.to_string();
    assert!(
      e.contains("3 of 8 samples are NaN, infinite or beyond"),
      "{e}"
    );
    for v in [f32::NAN, f32::NEG_INFINITY, 2.9e38] {
      let e = resample(&[0.0, v, 1.0], 9344, SAMPLE_RATE)
        .unwrap_err()
        .to_string();
      assert!(e.contains("not audio"), "{e}");
    }
  }

  #[test]
  fn resample_keeps_a_tone() {
    let sr = 44_100u32;
    let x: Vec<f32> = (0..sr as usize)
      .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin() * 0.5)
      .collect();
    let y = resample(&x, sr, 16_000).unwrap();
    assert_eq!(y.len(), 16_000);
    let mut max_err = 0f32;
    for (i, v) in y.iter().enumerate().skip(200).take(15_600) {
      let want = (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin() * 0.5;
      max_err = max_err.max((v - want).abs());
    }
    assert!(max_err < 1e-2, "max error {max_err}");
  }
}
