//! Transcript writers: txt, json, srt and vtt (python openai `whisper`'s
//! `utils.get_writer` / `format_timestamp`), shared by `mlxrs transcribe`
//! and the server's `/v1/audio/transcriptions`.

use crate::error::{Error, Result};
use crate::transcribe::Transcription;

/// The formats [`render`] writes.
pub const FORMATS: [&str; 4] = ["txt", "json", "srt", "vtt"];

/// `HH:MM:SS,mmm` (srt: `always_hours`, marker `,`) or `[HH:]MM:SS.mmm`
/// (vtt: marker `.`), as openai whisper's `format_timestamp`.
pub fn timestamp(seconds: f64, always_hours: bool, marker: char) -> String {
  let ms = (seconds.max(0.0) * 1000.0).round() as u64;
  let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
  if always_hours || h > 0 {
    format!("{h:02}:{m:02}:{s:02}{marker}{ms:03}")
  } else {
    format!("{m:02}:{s:02}{marker}{ms:03}")
  }
}

/// The cues of srt / vtt output: `(start, end, text)` per segment, or per
/// word when the segments carry words.
pub fn cues(t: &Transcription) -> Vec<(f64, f64, String)> {
  let mut out = Vec::new();
  for s in &t.segments {
    match &s.words {
      Some(words) if !words.is_empty() => out.extend(
        words
          .iter()
          .map(|w| (w.start, w.end, w.word.trim().to_string())),
      ),
      _ => out.push((s.start, s.end, s.text.trim().to_string())),
    }
  }
  out
}

/// Render a transcription as `txt` (one trimmed segment per line), `srt`,
/// `vtt` or `json` (`{"text", "segments", "language"}` on one line).
pub fn render(t: &Transcription, format: &str) -> Result<String> {
  let mut out = String::new();
  match format {
    "txt" => {
      for s in &t.segments {
        out.push_str(s.text.trim());
        out.push('\n');
      }
    }
    "srt" => {
      for (i, (start, end, text)) in cues(t).into_iter().enumerate() {
        out.push_str(&format!(
          "{}\n{} --> {}\n{}\n\n",
          i + 1,
          timestamp(start, true, ','),
          timestamp(end, true, ','),
          text.replace("-->", "->")
        ));
      }
    }
    "vtt" => {
      out.push_str("WEBVTT\n\n");
      for (start, end, text) in cues(t) {
        out.push_str(&format!(
          "{} --> {}\n{}\n\n",
          timestamp(start, false, '.'),
          timestamp(end, false, '.'),
          text.replace("-->", "->")
        ));
      }
    }
    "json" => {
      let v =
        serde_json::json!({ "text": t.text(), "segments": t.segments, "language": t.language });
      out.push_str(&v.to_string());
      out.push('\n');
    }
    other => {
      return Err(Error::InvalidArgument(format!(
        "output format {other:?}: expected txt, json, srt or vtt"
      )));
    }
  }
  Ok(out)
}
