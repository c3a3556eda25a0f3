//! The chat page at `/`: static HTML, JS and CSS compiled into the binary
//! (`static/`). It streams replies from `/v1/chat/completions`, lists the
//! chat models of `/v1/models`, attaches images as `image_url` data URLs,
//! and has system prompt / temperature / max tokens / API key settings.
//! (Python twin: none in mlx_lm.server; llama.cpp's server has a web UI.)

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub const HTML: &str = include_str!("../static/chat.html");
/// Its script.
pub const JS: &str = include_str!("../static/chat.js");
/// Its style sheet.
pub const CSS: &str = include_str!("../static/chat.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
  (
    [
      (header::CONTENT_TYPE, content_type),
      (header::CACHE_CONTROL, "no-cache"),
    ],
    body,
  )
    .into_response()
}

/// `GET /`.
pub async fn index() -> Response {
  asset("text/html; charset=utf-8", HTML)
}

/// `GET /chat.js`.
pub async fn script() -> Response {
  asset("text/javascript; charset=utf-8", JS)
}

/// `GET /chat.css`.
pub async fn style() -> Response {
  asset("text/css; charset=utf-8", CSS)
}
