//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param",
//! "code"}}` with the matching HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to one request.
#[derive(Debug, Clone)]
pub struct ApiError {
  /// HTTP status.
  pub status: StatusCode,
  /// Human-readable message naming the problem.
  pub message: String,
  /// OpenAI's `type` (`invalid_request_error`, `server_error`, ...).
  pub kind: &'static str,
  /// The offending parameter, when one is.
  pub param: Option<String>,
}

impl ApiError {
  /// A 400 `invalid_request_error`.
  pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
    ApiError {
      status: StatusCode::BAD_REQUEST,
      message: message.into(),
      kind: "invalid_request_error",
      param: param.map(String::from),
    }
  }

  /// An error with any status.
  pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
      status,
      message: message.into(),
      kind,
      param: None,
    }
  }

  /// The JSON body.
  pub fn body(&self) -> serde_json::Value {
    json!({
      "error": {
        "message": self.message,
        "type": self.kind,
        "param": self.param,
        "code": self.status.as_u16(),
      }
    })
  }
}

impl IntoResponse for ApiError {
  fn into_response(self) -> Response {
    (self.status, axum::Json(self.body())).into_response()
  }
}
