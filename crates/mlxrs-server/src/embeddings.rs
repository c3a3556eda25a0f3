//! `POST /v1/embeddings` (OpenAI's shape; python: the OpenAI API served by
//! vLLM / llama.cpp, computed as `SentenceTransformer(path).encode`) and
//! `POST /v1/rerank` (the Jina / Cohere shape llama.cpp and vLLM accept,
//! computed as python `CrossEncoder(path).rank`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use mlxrs_embed::{EmbedOptions, RerankOptions};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::extras::{AuxEndpoint, Extras, not_loaded};
use crate::http::read_body;

/// Most inputs (texts or token rows) of one embeddings request, and most
/// documents of one rerank request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// The `input` of an embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
  /// Texts.
  Texts(Vec<String>),
  /// Token id rows (used as given).
  Tokens(Vec<Vec<u32>>),
}

/// A parsed embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
  /// What to embed.
  pub input: EmbedInput,
  /// `encoding_format == "base64"`.
  pub base64: bool,
  /// `dimensions`: keep the first `n` (Matryoshka truncation).
  pub dimensions: Option<usize>,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
  match serde_json::from_slice::<Value>(body) {
    Ok(Value::Object(m)) => Ok(m),
    Ok(_) => Err(ApiError::invalid(
      "the request body must be a JSON object",
      None,
    )),
    Err(e) => Err(ApiError::invalid(format!("invalid JSON body: {e}"), None)),
  }
}

fn token_row(v: &[Value], what: &str) -> Result<Vec<u32>, ApiError> {
  if v.is_empty() {
    return Err(ApiError::invalid(
      format!("{what} is an empty token array"),
      Some("input"),
    ));
  }
  v.iter()
    .map(|t| {
      t.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
          ApiError::invalid(
            format!("{what}: token ids must be non-negative integers, got {t}"),
            Some("input"),
          )
        })
    })
    .collect()
}

/// Parse an embeddings body: `input` a string, an array of strings, an
/// array of token ids, or an array of token-id arrays; `encoding_format`
/// `float` (default) or `base64`; `dimensions` a positive integer.
pub fn parse_embed(body: &[u8]) -> Result<EmbedRequest, ApiError> {
  let m = object(body)?;
  let input = match m.get("input") {
    None | Some(Value::Null) => {
      return Err(ApiError::invalid("`input` is required", Some("input")));
    }
    Some(Value::String(s)) => EmbedInput::Texts(vec![s.clone()]),
    Some(Value::Array(a)) => {
      if a.is_empty() {
        return Err(ApiError::invalid(
          "`input` must not be an empty array",
          Some("input"),
        ));
      }
      if a.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
          format!(
            "`input` has {} items; at most {MAX_INPUTS} per request",
            a.len()
          ),
          Some("input"),
        ));
      }
      match &a[0] {
        Value::String(_) => EmbedInput::Texts(
          a.iter()
            .enumerate()
            .map(|(i, v)| {
              v.as_str().map(String::from).ok_or_else(|| {
                ApiError::invalid(
                  format!("`input[{i}]` must be a string like the other items, got {v}"),
                  Some("input"),
                )
              })
            })
            .collect::<Result<_, _>>()?,
        ),
        Value::Number(_) => EmbedInput::Tokens(vec![token_row(a, "`input`")?]),
        Value::Array(_) => EmbedInput::Tokens(
          a.iter()
            .enumerate()
            .map(|(i, v)| match v {
              Value::Array(r) => token_row(r, &format!("`input[{i}]`")),
              other => Err(ApiError::invalid(
                format!("`input[{i}]` must be a token array like the other items, got {other}"),
                Some("input"),
              )),
            })
            .collect::<Result<_, _>>()?,
        ),
        other => {
          return Err(ApiError::invalid(
            format!("`input` items must be strings or token arrays, got {other}"),
            Some("input"),
          ));
        }
      }
    }
    Some(other) => {
      return Err(ApiError::invalid(
        format!("`input` must be a string or an array, got {other}"),
        Some("input"),
      ));
    }
  };
  let base64 = match m.get("encoding_format") {
    None | Some(Value::Null) => false,
    Some(Value::String(s)) if s == "float" => false,
    Some(Value::String(s)) if s == "base64" => true,
    Some(other) => {
      return Err(ApiError::invalid(
        format!("`encoding_format` must be \"float\" or \"base64\", got {other}"),
        Some("encoding_format"),
      ));
    }
  };
  let dimensions = match m.get("dimensions") {
    None | Some(Value::Null) => None,
    Some(v) => match v.as_u64() {
      Some(n) if n > 0 => Some(n as usize),
      _ => {
        return Err(ApiError::invalid(
          format!("`dimensions` must be a positive integer, got {v}"),
          Some("dimensions"),
        ));
      }
    },
  };
  if let Some(v) = m.get("model") {
    if !(v.is_string() || v.is_null()) {
      return Err(ApiError::invalid("`model` must be a string", Some("model")));
    }
  }
  Ok(EmbedRequest {
    input,
    base64,
    dimensions,
  })
}

fn embed_error(e: mlxrs_embed::Error) -> ApiError {
  match e {
    mlxrs_embed::Error::InvalidArgument(m) => ApiError::invalid(m, Some("input")),
    e @ mlxrs_embed::Error::InputTooLong { .. } => ApiError::invalid(e.to_string(), Some("input")),
    e => ApiError::new(
      StatusCode::INTERNAL_SERVER_ERROR,
      "server_error",
      e.to_string(),
    ),
  }
}

/// Little-endian float32 bytes, base64 (what the `openai` client decodes).
pub fn base64_f32(v: &[f32]) -> String {
  let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
  base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(x): State<Arc<Extras>>, req: Request) -> Response {
  let r = embeddings_inner(&x, req).await;
  x.aux_metrics.count(AuxEndpoint::Embeddings, r.is_ok());
  r.unwrap_or_else(IntoResponse::into_response)
}

async fn embeddings_inner(x: &Arc<Extras>, req: Request) -> Result<Response, ApiError> {
  x.check_auth(req.headers())?;
  let Some(served) = &x.embed else {
    return Err(not_loaded("embedding", "--embedding-model"));
  };
  let body = read_body(req, x.max_body, "--max-body-bytes").await?;
  let r = parse_embed(&body)?;
  if let Some(d) = r.dimensions {
    if d > served.info.dim {
      return Err(ApiError::invalid(
        format!(
          "`dimensions` {d} is larger than the model's {} dimensions",
          served.info.dim
        ),
        Some("dimensions"),
      ));
    }
  }
  // `dimensions` keeps the first d values (Matryoshka); the vectors of a
  // model that normalizes are normalized again after the cut, as OpenAI's
  // shortened embeddings are.
  let opts = EmbedOptions {
    truncate_dim: r.dimensions.filter(|&d| d < served.info.dim),
    normalize: (r.dimensions.is_some() && served.info.normalizes).then_some(true),
    ..EmbedOptions::default()
  };
  let input = r.input;
  let (vectors, tokens) = served
    .worker
    .run(
      move |m| -> Result<(Vec<Vec<f32>>, usize), mlxrs_embed::Error> {
        match &input {
          EmbedInput::Texts(t) => {
            let tokens = m.tokenize(t, &opts)?.iter().map(|e| e.ids.len()).sum();
            Ok((m.embed_with(t, &opts)?, tokens))
          }
          EmbedInput::Tokens(rows) => {
            let max = m.max_seq_length();
            let tokens = rows.iter().map(|r| r.len().min(max)).sum();
            Ok((m.embed_ids_with(rows, &opts)?, tokens))
          }
        }
      },
    )
    .await?
    .map_err(embed_error)?;
  x.aux_metrics
    .embedded_inputs
    .fetch_add(vectors.len() as u64, std::sync::atomic::Ordering::Relaxed);
  // Written by hand so that floats take their shortest float32 form
  // ("0.48084584", which parses back to the same f32) rather than the
  // f64 expansion serde_json gives an f32 ("0.4808458387851715").
  let mut body = String::with_capacity(64 + vectors.len() * (16 + 12 * served.info.dim));
  body.push_str("{\"object\":\"list\",\"data\":[");
  for (i, v) in vectors.iter().enumerate() {
    if i > 0 {
      body.push(',');
    }
    body.push_str(&format!(
      "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":"
    ));
    if r.base64 {
      body.push('"');
      body.push_str(&base64_f32(v));
      body.push('"');
    } else {
      body.push_str(&f32_array(v));
    }
    body.push('}');
  }
  let tail = json!({"prompt_tokens": tokens, "total_tokens": tokens});
  body.push_str(&format!(
    "],\"model\":{},\"usage\":{tail}}}",
    Value::String(served.id.clone())
  ));
  Ok(
    (
      [(axum::http::header::CONTENT_TYPE, "application/json")],
      body,
    )
      .into_response(),
  )
}

/// A JSON array of floats in their shortest round-trip float32 form
/// (non-finite values, which JSON cannot hold, as `null`).
pub fn f32_array(v: &[f32]) -> String {
  let mut s = String::with_capacity(2 + v.len() * 12);
  s.push('[');
  for (i, x) in v.iter().enumerate() {
    if i > 0 {
      s.push(',');
    }
    if x.is_finite() {
      s.push_str(&format!("{x}"));
    } else {
      s.push_str("null");
    }
  }
  s.push(']');
  s
}

/// A parsed rerank request.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankRequest {
  /// The query.
  pub query: String,
  /// The documents' texts.
  pub documents: Vec<String>,
  /// Keep the best `top_n` (default: all).
  pub top_n: Option<usize>,
  /// Echo each document's text (default true, as vLLM).
  pub return_documents: bool,
}

/// Parse a rerank body: `query` (string), `documents` (strings or
/// `{"text": ...}` objects), `top_n`, `return_documents`.
pub fn parse_rerank(body: &[u8]) -> Result<RerankRequest, ApiError> {
  let m = object(body)?;
  let query = match m.get("query") {
    Some(Value::String(s)) => s.clone(),
    None | Some(Value::Null) => {
      return Err(ApiError::invalid("`query` is required", Some("query")));
    }
    Some(other) => {
      return Err(ApiError::invalid(
        format!("`query` must be a string, got {other}"),
        Some("query"),
      ));
    }
  };
  let docs = match m.get("documents") {
    Some(Value::Array(a)) => a,
    None | Some(Value::Null) => {
      return Err(ApiError::invalid(
        "`documents` is required",
        Some("documents"),
      ));
    }
    Some(other) => {
      return Err(ApiError::invalid(
        format!("`documents` must be an array, got {other}"),
        Some("documents"),
      ));
    }
  };
  if docs.is_empty() {
    return Err(ApiError::invalid(
      "`documents` must not be empty",
      Some("documents"),
    ));
  }
  if docs.len() > MAX_INPUTS {
    return Err(ApiError::invalid(
      format!(
        "`documents` has {} items; at most {MAX_INPUTS} per request",
        docs.len()
      ),
      Some("documents"),
    ));
  }
  let documents = docs
    .iter()
    .enumerate()
    .map(|(i, d)| match d {
      Value::String(s) => Ok(s.clone()),
      Value::Object(o) => match o.get("text") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ApiError::invalid(
          format!("`documents[{i}]` must have a string `text`"),
          Some("documents"),
        )),
      },
      other => Err(ApiError::invalid(
        format!("`documents[{i}]` must be a string or {{\"text\": ...}}, got {other}"),
        Some("documents"),
      )),
    })
    .collect::<Result<Vec<_>, _>>()?;
  let top_n = match m.get("top_n") {
    None | Some(Value::Null) => None,
    Some(v) => match v.as_u64() {
      Some(n) if n > 0 => Some(n as usize),
      _ => {
        return Err(ApiError::invalid(
          format!("`top_n` must be a positive integer, got {v}"),
          Some("top_n"),
        ));
      }
    },
  };
  let return_documents = match m.get("return_documents") {
    None | Some(Value::Null) => true,
    Some(Value::Bool(b)) => *b,
    Some(other) => {
      return Err(ApiError::invalid(
        format!("`return_documents` must be a boolean, got {other}"),
        Some("return_documents"),
      ));
    }
  };
  Ok(RerankRequest {
    query,
    documents,
    top_n,
    return_documents,
  })
}

/// `POST /v1/rerank` (also `/rerank`, `/v2/rerank`).
pub async fn rerank(State(x): State<Arc<Extras>>, req: Request) -> Response {
  let r = rerank_inner(&x, req).await;
  x.aux_metrics.count(AuxEndpoint::Rerank, r.is_ok());
  r.unwrap_or_else(IntoResponse::into_response)
}

async fn rerank_inner(x: &Arc<Extras>, req: Request) -> Result<Response, ApiError> {
  x.check_auth(req.headers())?;
  let Some(served) = &x.rerank else {
    return Err(not_loaded("rerank", "--rerank-model"));
  };
  let body = read_body(req, x.max_body, "--max-body-bytes").await?;
  let r = parse_rerank(&body)?;
  let (query, docs) = (r.query.clone(), r.documents.clone());
  let (ranked, tokens) = served
    .worker
    .run(
      move |m| -> Result<(Vec<(usize, f32)>, usize), mlxrs_embed::Error> {
        let opts = RerankOptions::default();
        let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query.as_str(), d.as_str())).collect();
        let tokens = m
          .tokenize(&pairs, opts.truncate)?
          .iter()
          .map(|e| e.ids.len())
          .sum();
        Ok((m.rank(&query, &docs, &opts)?, tokens))
      },
    )
    .await?
    .map_err(embed_error)?;
  let n = r.top_n.unwrap_or(ranked.len()).min(ranked.len());
  let results: Vec<Value> = ranked[..n]
    .iter()
    .map(|&(i, score)| {
      let mut o = json!({"index": i, "relevance_score": score});
      if r.return_documents {
        o["document"] = json!({"text": r.documents[i]});
      }
      o
    })
    .collect();
  Ok(
    axum::Json(json!({
      "id": x.id("rerank"),
      "object": "list",
      "model": served.id,
      "results": results,
      "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response(),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn embed_inputs_parse() {
    let p = |s: &str| parse_embed(s.as_bytes());
    assert_eq!(
      p(r#"{"input": "hi"}"#).unwrap().input,
      EmbedInput::Texts(vec!["hi".into()])
    );
    assert_eq!(
      p(r#"{"input": [1, 2]}"#).unwrap().input,
      EmbedInput::Tokens(vec![vec![1, 2]])
    );
    assert_eq!(
      p(r#"{"input": [[1], [2, 3]], "encoding_format": "base64", "dimensions": 4}"#).unwrap(),
      EmbedRequest {
        input: EmbedInput::Tokens(vec![vec![1], vec![2, 3]]),
        base64: true,
        dimensions: Some(4)
      }
    );
    for (bad, field) in [
      (r#"{"input": []}"#, "input"),
      (r#"{}"#, "input"),
      (r#"{"input": 3}"#, "input"),
      (r#"{"input": ["a", 1]}"#, "input"),
      (r#"{"input": [1, -2]}"#, "input"),
      (r#"{"input": [[1], "a"]}"#, "input"),
      (r#"{"input": [[]]}"#, "input"),
      (r#"{"input": [{"a": 1}]}"#, "input"),
      (
        r#"{"input": "a", "encoding_format": "int8"}"#,
        "encoding_format",
      ),
      (r#"{"input": "a", "dimensions": 0}"#, "dimensions"),
      (r#"{"input": "a", "model": 3}"#, "model"),
    ] {
      let e = p(bad).unwrap_err();
      assert_eq!(e.param.as_deref(), Some(field), "{bad}: {}", e.message);
    }
    let many = format!(
      r#"{{"input": [{}]}}"#,
      vec!["\"a\""; MAX_INPUTS + 1].join(",")
    );
    assert!(p(&many).unwrap_err().message.contains("at most 2048"));
  }

  #[test]
  fn rerank_parses() {
    let r =
      parse_rerank(br#"{"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1}"#).unwrap();
    assert_eq!(r.documents, vec!["a", "b"]);
    assert_eq!(r.top_n, Some(1));
    assert!(r.return_documents);
    for bad in [
      r#"{"documents": ["a"]}"#,
      r#"{"query": "q", "documents": []}"#,
      r#"{"query": "q", "documents": [1]}"#,
      r#"{"query": "q", "documents": ["a"], "top_n": 0}"#,
      r#"{"query": "q", "documents": ["a"], "return_documents": "yes"}"#,
    ] {
      assert!(parse_rerank(bad.as_bytes()).is_err(), "{bad}");
    }
  }

  #[test]
  fn f32_arrays_round_trip() {
    let v = [0.480_845_84f32, -1e-10, 3.0, f32::MIN_POSITIVE, 1.0 / 3.0];
    let s = f32_array(&v);
    let back: Vec<f64> = serde_json::from_str(&s).unwrap();
    let back: Vec<f32> = back.iter().map(|&x| x as f32).collect();
    assert_eq!(back, v);
    assert_eq!(f32_array(&[f32::NAN]), "[null]");
  }

  #[test]
  fn base64_is_little_endian_f32() {
    assert_eq!(base64_f32(&[1.0]), "AACAPw==");
  }
}
