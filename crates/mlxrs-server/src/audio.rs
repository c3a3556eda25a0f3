//! `POST /v1/audio/transcriptions` and `POST /v1/audio/translations`
//! (OpenAI's multipart shape; computed as python faster-whisper's
//! `WhisperModel.transcribe`, i.e. `mlxrs transcribe`).
//!
//! The upload is read whole (bounded by `--max-audio-bytes`), decoded and
//! transcribed on the Whisper thread, never on the async runtime. Bytes
//! that do not decode as wav / flac / mp3 / ogg are a 400.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlxrs_audio::{Task, TranscribeOptions, Transcription, output};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extras::{AuxEndpoint, Extras, not_loaded};
use crate::http::read_body_of;

/// The `response_format`s served.
pub const RESPONSE_FORMATS: [&str; 5] = ["json", "text", "srt", "vtt", "verbose_json"];

/// A parsed transcription request.
#[derive(Debug, Clone, Default)]
pub struct AudioRequest {
  /// The uploaded bytes.
  pub file: Vec<u8>,
  /// Its file name's extension (a decoder hint).
  pub ext: Option<String>,
  /// `language` (ISO code).
  pub language: Option<String>,
  /// `prompt` (Whisper's initial prompt).
  pub prompt: Option<String>,
  /// `temperature` (0: the fallback ladder 0, 0.2, ..., 1).
  pub temperature: f32,
  /// `response_format`.
  pub format: String,
  /// `timestamp_granularities[]` includes `word`.
  pub words: bool,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
  ApiError::invalid(message, Some(param))
}

/// The temperatures tried for `temperature` t: 0 gives Whisper's fallback
/// ladder `0, 0.2, ..., 1.0` (OpenAI: "0 raises the temperature
/// automatically"; the `mlxrs transcribe` default); t > 0 starts the
/// ladder at t (python whisper's `arange(t, 1 + 1e-6, 0.2)`).
pub fn temperatures(t: f32) -> Vec<f32> {
  let mut v = Vec::new();
  let mut k = 0;
  loop {
    let x = t + 0.2 * k as f32;
    if x > 1.0 + 1e-6 {
      break;
    }
    v.push(((x * 1e4).round() / 1e4).min(1.0));
    k += 1;
  }
  if v.is_empty() {
    v.push(t);
  }
  v
}

async fn parse(req: Request, max: usize) -> Result<AudioRequest, ApiError> {
  let (parts, body) = req.into_parts();
  let bytes = read_body_of(&parts.headers, body, max, "--max-audio-bytes").await?;
  let req = Request::from_parts(parts, Body::from(bytes));
  let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
    ApiError::invalid(
      format!("expected a multipart/form-data body with a `file` field: {e}"),
      None,
    )
  })?;
  let mut out = AudioRequest {
    format: "json".into(),
    ..Default::default()
  };
  let mut got_file = false;
  loop {
    let field = match mp.next_field().await {
      Ok(Some(f)) => f,
      Ok(None) => break,
      Err(e) => {
        return Err(ApiError::invalid(
          format!("malformed multipart body: {e}"),
          None,
        ));
      }
    };
    let name = field.name().unwrap_or("").to_string();
    if name == "file" {
      out.ext = field
        .file_name()
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
      out.file = field
        .bytes()
        .await
        .map_err(|e| bad(format!("reading `file`: {e}"), "file"))?
        .to_vec();
      got_file = true;
      continue;
    }
    let text = field
      .text()
      .await
      .map_err(|e| bad(format!("`{name}` must be UTF-8 text: {e}"), &name))?;
    match name.as_str() {
      "language" if !text.is_empty() => out.language = Some(text),
      "prompt" if !text.is_empty() => out.prompt = Some(text),
      "temperature" => {
        out.temperature = match text.trim().parse::<f32>() {
          Ok(t) if (0.0..=1.0).contains(&t) => t,
          _ => {
            return Err(bad(
              format!("`temperature` must be a number in [0, 1], got {text:?}"),
              "temperature",
            ));
          }
        }
      }
      "response_format" => {
        if !RESPONSE_FORMATS.contains(&text.as_str()) {
          return Err(bad(
            format!("`response_format` {text:?}: expected one of {RESPONSE_FORMATS:?}"),
            "response_format",
          ));
        }
        out.format = text;
      }
      "timestamp_granularities[]" | "timestamp_granularities" => match text.as_str() {
        "word" => out.words = true,
        "segment" => {}
        other => {
          return Err(bad(
            format!("`timestamp_granularities[]` {other:?}: expected \"word\" or \"segment\""),
            "timestamp_granularities",
          ));
        }
      },
      _ => {}
    }
  }
  if !got_file {
    return Err(bad(
      "the multipart field `file` (the audio) is required",
      "file",
    ));
  }
  if out.file.is_empty() {
    return Err(bad("the uploaded `file` is empty", "file"));
  }
  Ok(out)
}

/// `POST /v1/audio/transcriptions`.
pub async fn transcriptions(State(x): State<Arc<Extras>>, req: Request) -> Response {
  let r = run(&x, req, Task::Transcribe).await;
  x.aux_metrics.count(AuxEndpoint::Transcriptions, r.is_ok());
  r.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/audio/translations` (to English; multilingual models only).
pub async fn translations(State(x): State<Arc<Extras>>, req: Request) -> Response {
  let r = run(&x, req, Task::Translate).await;
  x.aux_metrics.count(AuxEndpoint::Transcriptions, r.is_ok());
  r.unwrap_or_else(IntoResponse::into_response)
}

fn audio_error(e: mlxrs_audio::Error) -> ApiError {
  match e {
    mlxrs_audio::Error::Audio(m) => bad(
      format!("the uploaded `file` is not audio that can be decoded (wav, flac, mp3, ogg): {m}"),
      "file",
    ),
    mlxrs_audio::Error::InvalidArgument(m) => ApiError::invalid(m, None),
    e => ApiError::new(
      StatusCode::INTERNAL_SERVER_ERROR,
      "server_error",
      e.to_string(),
    ),
  }
}

async fn run(x: &Arc<Extras>, req: Request, task: Task) -> Result<Response, ApiError> {
  x.check_auth(req.headers())?;
  let Some(served) = &x.whisper else {
    return Err(not_loaded("whisper", "--whisper-model"));
  };
  let r = parse(req, x.max_audio).await?;
  let opts = TranscribeOptions {
    language: r.language.clone(),
    task,
    temperatures: temperatures(r.temperature),
    initial_prompt: r.prompt.clone(),
    word_timestamps: r.words,
    ..TranscribeOptions::default()
  };
  let (file, ext) = (r.file, r.ext.clone());
  let t = served
    .worker
    .run(move |m| -> Result<Transcription, mlxrs_audio::Error> {
      let audio = mlxrs_audio::audio::decode_audio_bytes(&file, ext.as_deref())
        .and_then(mlxrs_audio::audio::to_whisper_rate)?;
      m.transcribe(&audio, &opts)
    })
    .await?
    .map_err(audio_error)?;
  x.aux_metrics.audio_ms.fetch_add(
    (t.duration * 1000.0).round() as u64,
    std::sync::atomic::Ordering::Relaxed,
  );
  let text = |s: String| ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s).into_response();
  Ok(match r.format.as_str() {
    "text" => text(output::render(&t, "txt").map_err(audio_error)?),
    "srt" => text(output::render(&t, "srt").map_err(audio_error)?),
    "vtt" => text(output::render(&t, "vtt").map_err(audio_error)?),
    "verbose_json" => {
      let mut v = json!({
        "task": match task { Task::Transcribe => "transcribe", Task::Translate => "translate" },
        "language": mlxrs_audio::tokenizer::language_name(&t.language).unwrap_or(&t.language),
        "duration": t.duration,
        "text": t.text().trim(),
        "segments": t.segments,
      });
      if r.words {
        let words: Vec<Value> = t
          .segments
          .iter()
          .flat_map(|s| s.words.iter().flatten())
          .map(|w| json!({"word": w.word.trim(), "start": w.start, "end": w.end, "probability": w.probability}))
          .collect();
        v["words"] = Value::Array(words);
      }
      axum::Json(v).into_response()
    }
    _ => axum::Json(json!({"text": t.text().trim()})).into_response(),
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn temperature_ladders() {
    assert_eq!(temperatures(0.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(temperatures(0.5), vec![0.5, 0.7, 0.9]);
    assert_eq!(temperatures(1.0), vec![1.0]);
  }
}
