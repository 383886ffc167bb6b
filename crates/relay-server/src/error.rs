//! Errors rendered at the edge, in the caller's protocol. Only Anthropic's for now; the OpenAI
//! and Gemini ingresses will add their own renderer over the same [`RelayError`].

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use relay_core::relay::RelayError;
use relay_protocol::anthropic::{error_body, ErrorType};

pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Renders an error in Anthropic's shape with its status and, where waiting helps, `retry-after`.
pub(crate) fn anthropic_error(error: &RelayError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.error_type.status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(error_body(
        error.error_type,
        &error.message,
        request_id,
    )));
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
    if matches!(
        error.error_type,
        ErrorType::Authentication
            | ErrorType::Permission
            | ErrorType::InvalidRequest
            | ErrorType::NotFound
            | ErrorType::RequestTooLarge
    ) {
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    response
}

pub(crate) fn error(error_type: ErrorType, message: impl Into<String>) -> RelayError {
    RelayError::new(error_type, message)
}
