//! The Anthropic Messages ingress: `POST /v1/messages`, `POST /v1/messages/count_tokens`,
//! `GET /v1/models`, under every prefix of [`super::ANTHROPIC_PREFIXES`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use relay_core::keys::{KeyEntry, KeyRejection};
use relay_core::metrics::{RequestLabels, RouteLabels};
use relay_core::relay::{Endpoint, ForwardRequest, RelayBody, RelayError};
use relay_core::sticky::SessionId;
use relay_protocol::anthropic::{session_identity, SessionSource};
use relay_protocol::ErrorKind;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::error::{anthropic_error, error, REQUEST_ID_HEADER};
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
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, RelayError> {
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
    let mut presented: Option<Option<&str>> = None;
    for candidate in api_keys.chain(bearers) {
        match presented {
            None => presented = Some(candidate),
            Some(first) if first == candidate => {}
            Some(_) => {
                return Err(error(
                    ErrorKind::InvalidRequest,
                    "two different credentials were sent (x-api-key and Authorization, or one twice); send the relay key once",
                ))
            }
        }
    }
    Ok(presented.flatten())
}

/// The query parameters forwarded upstream: only those the Anthropic API defines (Claude Code
/// sends `beta=true`). Anything else — a `key=` above all — stays here.
const FORWARDED_QUERY: &[&str] = &["beta"];

fn forwarded_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            FORWARDED_QUERY.contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn rejection_error(rejection: KeyRejection) -> RelayError {
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

fn client_ip(extensions: &http::Extensions) -> Option<std::net::IpAddr> {
    extensions.get::<ClientAddr>().map(|addr| addr.0)
}

fn authenticate(
    state: &AppState,
    parts: &http::request::Parts,
) -> Result<Arc<KeyEntry>, RelayError> {
    state
        .relay
        .authenticate(presented_key(&parts.headers)?, client_ip(&parts.extensions))
        .map_err(rejection_error)
}

/// The fields of a Messages request the relay reads; everything else passes through unparsed.
#[derive(Deserialize)]
struct MessagesHead<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: FirstMessage<'a>,
}

/// The first entry of `messages`, the rest skipped without being collected.
#[derive(Default)]
struct FirstMessage<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstMessage<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = FirstMessage<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an array of messages")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<&'de RawValue>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstMessage(first))
            }
        }
        deserializer.deserialize_seq(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
}

pub(crate) async fn messages(State(state): State<AppState>, request: Request) -> Response {
    relay_endpoint(state, request, Endpoint::Messages).await
}

pub(crate) async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    relay_endpoint(state, request, Endpoint::CountTokens).await
}

async fn relay_endpoint(state: AppState, request: Request, endpoint: Endpoint) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let route = endpoint.as_str();
    let result = prepare(&state, request, endpoint, &request_id, received_at).await;
    let response = match result {
        Ok(forward) => match state.relay.forward(forward).await {
            Ok(relayed) => {
                let mut response = Response::new(match relayed.body {
                    RelayBody::Buffered(bytes) => Body::from(bytes),
                    RelayBody::Streaming(stream) => Body::from_stream(*stream),
                });
                *response.status_mut() = relayed.status;
                *response.headers_mut() = relayed.headers;
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                response
            }
            Err(relay_error) => anthropic_error(&relay_error, &request_id),
        },
        Err(relay_error) => anthropic_error(&relay_error, &request_id),
    };
    observe(&state, route, &request_id, &response, received_at);
    response
}

/// Authenticates, reads the body within its limit and parses the little the relay needs.
async fn prepare(
    state: &AppState,
    request: Request,
    endpoint: Endpoint,
    request_id: &str,
    received_at: Instant,
) -> Result<ForwardRequest, RelayError> {
    let (parts, body) = request.into_parts();
    let key = authenticate(state, &parts)?;
    let body = read_body(body, state.settings.max_body_bytes).await?;
    let head: MessagesHead = serde_json::from_slice(&body).map_err(|parse_error| {
        error(
            ErrorKind::InvalidRequest,
            format!("request body is not valid JSON: {parse_error}"),
        )
    })?;
    let model = head
        .model
        .filter(|model| !model.is_empty())
        .ok_or_else(|| error(ErrorKind::InvalidRequest, "model: field required"))?
        .into_owned();
    let stream = head.stream.unwrap_or(false) && endpoint == Endpoint::Messages;
    let max_tokens = head.max_tokens;
    let session = session_identity(&SessionSource {
        user_id: head
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.user_id.as_deref()),
        system: head.system,
        first_message: head.messages.0,
    })
    .map(|identity| SessionId::new(&key.id, &identity));
    let has_session_metadata = head
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.user_id.as_ref())
        .is_some_and(|user_id| !user_id.is_empty());
    Ok(ForwardRequest {
        request_id: request_id.to_owned(),
        key,
        endpoint,
        query: forwarded_query(parts.uri.query()),
        headers: parts.headers,
        body,
        model,
        stream,
        max_tokens,
        session,
        has_session_metadata,
        client_ip: client_ip(&parts.extensions),
        received_at,
    })
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, RelayError> {
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

fn observe(
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

/// `GET /v1/models`: the Claude models this relay can price, in Anthropic's list shape.
pub(crate) async fn models(State(state): State<AppState>, request: Request) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let (parts, _) = request.into_parts();
    let response = match authenticate(&state, &parts) {
        Err(relay_error) => anthropic_error(&relay_error, &request_id),
        Ok(key) => {
            let data: Vec<serde_json::Value> = relay_core::pricing::known_models()
                .filter(|id| relay_core::access::model_allowed(&key.policy, id))
                .map(|id| {
                    serde_json::json!({
                        "type": "model",
                        "id": id,
                        "display_name": display_name(id),
                        "created_at": "2025-01-01T00:00:00Z",
                    })
                })
                .collect();
            let body = serde_json::json!({
                "data": data,
                "has_more": false,
                "first_id": data.first().map(|model| model["id"].clone()),
                "last_id": data.last().map(|model| model["id"].clone()),
            });
            let mut response = Response::new(Body::from(body.to_string()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    observe(&state, "models", &request_id, &response, received_at);
    response
}

/// `GET /v1/usage`, `/v1/key-info` (and `/api/…`): the key's own limits, standing and recent
/// requests, authenticated by the key itself. A disabled key may still look at itself.
pub(crate) async fn key_info(State(state): State<AppState>, request: Request) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let (parts, _) = request.into_parts();
    let presented = match presented_key(&parts.headers) {
        Ok(presented) => presented,
        Err(relay_error) => {
            let response = anthropic_error(&relay_error, &request_id);
            observe(&state, "key_info", &request_id, &response, received_at);
            return response;
        }
    };
    let key = state
        .relay
        .authenticate(presented, client_ip(&parts.extensions));
    let key = match key {
        Ok(key) => Ok(key),
        Err(KeyRejection::Disabled) => state.relay.find_key(presented).ok_or(KeyRejection::Unknown),
        Err(rejection) => Err(rejection),
    };
    let response = match key {
        Err(rejection) => anthropic_error(&rejection_error(rejection), &request_id),
        Ok(key) => {
            let report = state.relay.key_report(&key).await;
            let mut response =
                Response::new(Body::from(serde_json::to_vec(&report).unwrap_or_default()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    observe(&state, "key_info", &request_id, &response, received_at);
    response
}

/// `claude-opus-4-8` → `Claude Opus 4.8`; `claude-3-5-haiku` → `Claude 3.5 Haiku`.
fn display_name(id: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for part in id.split('-') {
        let is_number = part.chars().all(|c| c.is_ascii_digit());
        match words.last_mut() {
            Some(last) if is_number && last.chars().all(|c| c.is_ascii_digit() || c == '.') => {
                last.push('.');
                last.push_str(part);
            }
            _ => {
                let mut chars = part.chars();
                let word = match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => String::new(),
                };
                words.push(word);
            }
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_read_like_anthropics() {
        assert_eq!(display_name("claude-opus-4-8"), "Claude Opus 4.8");
        assert_eq!(display_name("claude-3-5-haiku"), "Claude 3.5 Haiku");
        assert_eq!(display_name("claude-opus-4"), "Claude Opus 4");
    }

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
    fn only_known_query_parameters_are_forwarded() {
        assert_eq!(
            forwarded_query(Some("beta=true")).as_deref(),
            Some("beta=true")
        );
        assert_eq!(
            forwarded_query(Some("key=secret&beta=true&x=1")).as_deref(),
            Some("beta=true")
        );
        assert_eq!(forwarded_query(Some("key=secret")), None);
        assert_eq!(forwarded_query(None), None);
    }
}
