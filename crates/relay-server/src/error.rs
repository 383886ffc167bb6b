//! Errors rendered at the edge, in the caller's dialect: the core says what went wrong
//! ([`RelayError`]), this module says it the way the caller's SDK expects.

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use relay_core::relay::RelayError;
use relay_protocol::dialect::error_body;
use relay_protocol::{Dialect, ErrorKind};

pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Renders an error in `dialect`'s shape with its status and, where waiting helps, `retry-after`.
pub(crate) fn render_error(dialect: Dialect, error: &RelayError, request_id: &str) -> Response {
    let status =
        StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = error_body(dialect, error.kind, &error.message, request_id);
    if let (Dialect::Gemini, Some(seconds)) = (dialect, error.retry_after_s) {
        body = with_retry_info(&body, seconds);
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = error.retry_after_s {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    // Clients must not retry a refusal that will not change by waiting.
    if error.kind.is_final() {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

/// A Gemini error body with Google's `RetryInfo` detail, which Gemini clients wait by.
fn with_retry_info(body: &[u8], seconds: u64) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    value["error"]["details"] = serde_json::json!([{
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": format!("{seconds}s"),
    }]);
    serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
}

/// Renders an error in Anthropic's shape.
pub(crate) fn anthropic_error(error: &RelayError, request_id: &str) -> Response {
    render_error(Dialect::AnthropicMessages, error, request_id)
}

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> RelayError {
    RelayError::new(kind, message)
}
