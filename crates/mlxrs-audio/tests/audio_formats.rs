//! Audio decoding: wav of every sample format (written here), flac / mp3 /
//! ogg against PyAV's decode (faster_whisper.decode_audio), and the errors.

mod common;

use mlxrs_audio::audio::{decode_audio_bytes, load_audio};

/// A RIFF/WAVE file: `format` 1 (PCM) or 3 (float), interleaved `data`.
fn wav(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
  let mut b = Vec::new();
  let block = channels * bits / 8;
  b.extend_from_slice(b"RIFF");
  b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
  b.extend_from_slice(b"WAVEfmt ");
  b.extend_from_slice(&16u32.to_le_bytes());
  b.extend_from_slice(&format.to_le_bytes());
  b.extend_from_slice(&channels.to_le_bytes());
  b.extend_from_slice(&rate.to_le_bytes());
  b.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
  b.extend_from_slice(&block.to_le_bytes());
  b.extend_from_slice(&bits.to_le_bytes());
  b.extend_from_slice(b"data");
  b.extend_from_slice(&(data.len() as u32).to_le_bytes());
  b.extend_from_slice(data);
  b
}

fn tone(i: usize, ch: usize) -> f64 {
  let t = i as f64 / 16000.0;
  if ch == 0 {
    0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
  } else {
    0.25 * (2.0 * std::f64::consts::PI * 300.0 * t).sin()
  }
}

#[test]
fn wav_sample_formats_decode_and_mix_to_mono() {
  let n = 1600;
  for (fmt, bits) in [(1u16, 8u16), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)] {
    let mut data = Vec::new();
    for i in 0..n {
      for ch in 0..2 {
        let v = tone(i, ch);
        match (fmt, bits) {
          (1, 8) => data.push(((v * 127.0).round() as i16 + 128) as u8),
          (1, 16) => data.extend_from_slice(&((v * 32767.0).round() as i16).to_le_bytes()),
          (1, 24) => data.extend_from_slice(&((v * 8_388_607.0).round() as i32).to_le_bytes()[..3]),
          (1, 32) => data.extend_from_slice(&((v * 2_147_483_647.0).round() as i32).to_le_bytes()),
          (3, 32) => data.extend_from_slice(&(v as f32).to_le_bytes()),
          (3, 64) => data.extend_from_slice(&v.to_le_bytes()),
          _ => unreachable!(),
        }
      }
    }
    let a = decode_audio_bytes(&wav(fmt, 2, 16000, bits, &data), Some("wav")).unwrap();
    assert_eq!(
      (a.samples.len(), a.sample_rate, a.source_channels),
      (n, 16000, 2),
      "fmt {fmt} bits {bits}"
    );
    let tol = if bits == 8 { 2.0 / 128.0 } else { 1e-4 };
    for (i, s) in a.samples.iter().enumerate() {
      let want = (tone(i, 0) + tone(i, 1)) / 2.0;
      assert!(
        (f64::from(*s) - want).abs() < tol,
        "fmt {fmt} bits {bits} sample {i}: {s} vs {want}"
      );
    }
  }
}

#[test]
fn compressed_formats_match_pyav() {
  let dir = common::data().join("formats");
  let refs = dir.join("decoded16k.safetensors");
  for (file, key, tol_rms) in [
    ("tone.flac", "tone_flac", 2e-3),
    ("tone.mp3", "tone_mp3", 2e-2),
    ("tone.ogg", "tone_ogg", 2e-2),
  ] {
    let a = load_audio(dir.join(file)).unwrap();
    assert_eq!(
      (a.sample_rate, a.source_channels, a.source_sample_rate),
      (16000, 2, 44100),
      "{file}"
    );
    let (want, _) = common::tensor(&refs, key);
    // Decoders differ in priming / padding by a few ms for the lossy ones:
    // compare over the common length, after aligning by the best lag.
    let n = a.samples.len().min(want.len());
    let mut best = (f64::MAX, 0i64);
    for lag in -1200i64..=1200 {
      let mut se = 0.0;
      let mut cnt = 0;
      #[allow(clippy::needless_range_loop)] // i indexes both signals, shifted by lag
      for i in 2000..n.saturating_sub(2000) {
        let j = i as i64 + lag;
        if j < 0 || j as usize >= a.samples.len() {
          continue;
        }
        let d = f64::from(a.samples[j as usize] - want[i]);
        se += d * d;
        cnt += 1;
      }
      let rms = (se / cnt.max(1) as f64).sqrt();
      if rms < best.0 {
        best = (rms, lag);
      }
    }
    eprintln!(
      "{file}: {} samples (PyAV {}), rms diff {:.2e} at lag {}",
      a.samples.len(),
      want.len(),
      best.0,
      best.1
    );
    assert!(best.0 < tol_rms, "{file}: rms {}", best.0);
    assert!(
      (a.samples.len() as i64 - want.len() as i64).abs() < 1600,
      "{file}: length {} vs {}",
      a.samples.len(),
      want.len()
    );
  }
}

#[test]
fn bad_files_are_clear_errors() {
  let err = |bytes: &[u8]| {
    decode_audio_bytes(bytes, None)
      .expect_err("an error")
      .to_string()
  };
  assert!(err(&[]).contains("empty"));
  assert!(
    err(b"just some text, certainly not audio; long enough to probe")
      .contains("not a recognized audio")
  );
  let full = wav(1, 1, 16000, 16, &[0u8; 3200]);
  let e = err(&full[..20]);
  assert!(e.contains("truncated") || e.contains("malformed"), "{e}");
  assert!(err(&wav(1, 1, 16000, 16, &[])).contains("no audio samples"));
  // Format tag 0x0161 (WMA) in a wav: not a codec we decode.
  let e = err(&wav(0x0161, 1, 16000, 16, &[0u8; 64]));
  assert!(e.contains("unsupported") || e.contains("malformed"), "{e}");
  // Header fields symphonia divides by (issue #20: sample rate 0 panicked
  // inside the decoder): a clear error, no panic.
  let e = err(&wav(1, 1, 0, 16, &[0u8; 64]));
  assert!(e.contains("sample rate of 0"), "{e}");
  let e = err(&wav(1, 0, 16000, 16, &[0u8; 64]));
  assert!(e.contains("channel count of 0"), "{e}");
  let e = err(&wav(1, 1, 16000, 0, &[0u8; 64]));
  assert!(e.contains("of 0"), "{e}");
  let missing = load_audio("/nonexistent/file.wav")
    .err()
    .unwrap()
    .to_string();
  assert!(missing.contains("/nonexistent/file.wav"), "{missing}");
}
