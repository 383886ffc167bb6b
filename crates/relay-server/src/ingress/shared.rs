//! What every ingress does the same way, whatever the dialect: request ids, reading the relay
//! key, authenticating, reading the body within its limits, handing the request to the relay,
//! rendering the answer (or the error, in the caller's dialect) and observing it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use relay_core::keys::{KeyEntry, KeyRejection};
use relay_core::metrics::{RequestLabels, RouteLabels};
use relay_core::relay::{RelayBody, RelayError, RelayRequest};
use relay_protocol::{Dialect, ErrorKind};
use tokio::time::Instant;

use crate::error::{error, render_error, REQUEST_ID_HEADER};
use crate::serve::ClientAddr;
use crate::AppState;

/// A request id unique across restarts without a syscall per request: a random per-process
/// prefix and a counter.
pub(crate) fn new_request_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("req_{prefix:016x}{count:016x}")
}

/// The relay key as Anthropic clients send it: `x-api-key`, or `Authorization: Bearer`. The
/// same key in several places is fine; two *different* ones are refused rather than one of
/// them picked silently.
pub(crate) fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, RelayError> {
    let api_keys = headers
        .get_all("x-api-key")
        .iter()
        .map(|value| value.to_str().ok().map(str::trim));
    let bearers = headers.get_all(AUTHORIZATION).iter().filter_map(|value| {
        let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(Some(token.trim()))
    });
    one_credential(
        api_keys.chain(bearers),
        "x-api-key and Authorization, or one twice",
    )
}

/// The credential `candidates` present (one unreadable is `None`): the same one in several
/// places is fine; two different ones (sent in `places`) are refused rather than one of them
/// picked silently.
pub(crate) fn one_credential<'a>(
    candidates: impl IntoIterator<Item = Option<&'a str>>,
    places: &str,
) -> Result<Option<&'a str>, RelayError> {
    let mut presented: Option<Option<&str>> = None;
    for candidate in candidates {
        match presented {
            None => presented = Some(candidate),
            Some(first) if first == candidate => {}
            Some(_) => {
                return Err(error(
                    ErrorKind::InvalidRequest,
                    format!(
                        "two different credentials were sent ({places}); send the relay key once"
                    ),
                ))
            }
        }
    }
    Ok(presented.flatten())
}

pub(crate) fn rejection_error(rejection: KeyRejection) -> RelayError {
    match rejection {
        KeyRejection::Throttled { retry_after_ms } => RelayError {
            retry_after_s: Some(
                u64::try_from(retry_after_ms)
                    .unwrap_or(0)
                    .div_ceil(1000)
                    .max(1),
            ),
            ..error(
                ErrorKind::RateLimit,
                "too many failed key attempts from this address; try again later",
            )
        },
        KeyRejection::Missing => error(
            ErrorKind::Authentication,
            "missing relay key: send it in x-api-key or Authorization: Bearer",
        ),
        KeyRejection::Unknown => error(ErrorKind::Authentication, "invalid relay key"),
        KeyRejection::Disabled => error(ErrorKind::Permission, "this relay key is disabled"),
    }
}

pub(crate) fn client_ip(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions.get::<ClientAddr>().map(|addr| addr.0)
}

pub(crate) fn authenticate(
    state: &AppState,
    parts: &http::request::Parts,
) -> Result<Arc<KeyEntry>, RelayError> {
    state
        .keys
        .authenticate(presented_key(&parts.headers)?, client_ip(&parts.extensions))
        .map_err(rejection_error)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, RelayError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(read_error) if read_error.downcast_ref::<LengthLimitError>().is_some() => Err(error(
            ErrorKind::RequestTooLarge,
            format!("request body exceeds the relay's limit of {limit} bytes"),
        )),
        Err(read_error) if crate::pace::is_too_slow(read_error.as_ref()) => Err(error(
            ErrorKind::RequestTimeout,
            "the request body arrived too slowly; send it at once",
        )),
        Err(_) => Err(error(
            ErrorKind::InvalidRequest,
            "the request body could not be read",
        )),
    }
}

pub(crate) fn observe(
    state: &AppState,
    route: &'static str,
    request_id: &str,
    response: &Response,
    received_at: Instant,
) {
    let elapsed = received_at.elapsed();
    tracing::debug!(
        request_id,
        route,
        status = response.status().as_u16(),
        head_latency_us = elapsed.as_micros() as u64,
        "answered"
    );
    let metrics = state.relay.metrics();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .response_latency
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
}

/// A relay request's first steps, the same in every dialect: the key, then the body within its
/// size and pace limits.
pub(crate) async fn accept(
    state: &AppState,
    request: Request,
) -> Result<(http::request::Parts, Arc<KeyEntry>, Bytes), RelayError> {
    let (parts, body) = request.into_parts();
    let key = authenticate(state, &parts)?;
    let body = read_body(body, state.settings.max_body_bytes).await?;
    Ok((parts, key, body))
}

/// The fields of a JSON body the relay reads, or a 400 saying why it cannot.
pub(crate) fn parse_head<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, RelayError> {
    serde_json::from_slice(body).map_err(|parse_error| {
        error(
            ErrorKind::InvalidRequest,
            format!("request body is not valid JSON: {parse_error}"),
        )
    })
}

/// The request's model, which every relayed request must name.
pub(crate) fn required_model(
    model: Option<std::borrow::Cow<'_, str>>,
) -> Result<String, RelayError> {
    model
        .filter(|model| !model.is_empty())
        .map(std::borrow::Cow::into_owned)
        .ok_or_else(|| error(ErrorKind::InvalidRequest, "model: field required"))
}

/// Hands a prepared request to the relay and renders what comes back: the upstream's answer
/// (status, filtered headers, the relayed body) or an error in the caller's dialect.
pub(crate) async fn relay(
    state: &AppState,
    dialect: Dialect,
    route: &'static str,
    request_id: &str,
    received_at: Instant,
    prepared: Result<RelayRequest, RelayError>,
) -> Response {
    let response = match prepared {
        Ok(request) => match state.relay.forward(request).await {
            Ok(relayed) => {
                let mut response = Response::new(match relayed.body {
                    RelayBody::Buffered(bytes) => Body::from(bytes),
                    RelayBody::Streaming(stream) => Body::from_stream(*stream),
                });
                *response.status_mut() = relayed.status;
                *response.headers_mut() = relayed.headers;
                if let Ok(value) = HeaderValue::from_str(request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                response
            }
            Err(relay_error) => render_error(dialect, &relay_error, request_id),
        },
        Err(relay_error) => render_error(dialect, &relay_error, request_id),
    };
    observe(state, route, request_id, &response, received_at);
    response
}

/// The dialect a path's answers (and errors) are in, for the fallbacks.
pub(crate) fn dialect_of_path(path: &str) -> Dialect {
    let path = path.strip_prefix("/openai").unwrap_or(path);
    if path.starts_with("/v1/chat/") || path.starts_with("/v1/responses") {
        Dialect::OpenAiChat
    } else if path.starts_with("/v1beta") || path.starts_with("/gemini") {
        Dialect::Gemini
    } else {
        Dialect::AnthropicMessages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_either_header_and_two_different_ones_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer cr_abc"));
        assert_eq!(presented_key(&headers), Ok(Some("cr_abc")));
        headers.insert("x-api-key", HeaderValue::from_static("cr_abc"));
        assert_eq!(
            presented_key(&headers),
            Ok(Some("cr_abc")),
            "the same key twice"
        );
        headers.insert("x-api-key", HeaderValue::from_static("cr_xyz"));
        assert!(presented_key(&headers).is_err());
        let mut twice = HeaderMap::new();
        twice.append("x-api-key", HeaderValue::from_static("cr_1"));
        twice.append("x-api-key", HeaderValue::from_static("cr_2"));
        assert!(presented_key(&twice).is_err());
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&basic), Ok(None));
    }

    #[test]
    fn fallbacks_answer_in_the_dialect_the_path_implies() {
        assert_eq!(
            dialect_of_path("/v1/chat/completions/x"),
            Dialect::OpenAiChat
        );
        assert_eq!(dialect_of_path("/openai/v1/chat/nope"), Dialect::OpenAiChat);
        assert_eq!(dialect_of_path("/v1beta/models/x:y"), Dialect::Gemini);
        assert_eq!(
            dialect_of_path("/v1/messages/nope"),
            Dialect::AnthropicMessages
        );
        assert_eq!(dialect_of_path("/nothing"), Dialect::AnthropicMessages);
    }
}
