//! The Anthropic Messages ingress: `POST /v1/messages`, `POST /v1/messages/count_tokens`,
//! `GET /v1/models`, under every prefix of [`super::ANTHROPIC_PREFIXES`].

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use relay_core::keys::KeyRejection;
use relay_core::relay::{Endpoint, RelayError, RelayRequest};
use relay_core::sticky::SessionId;
use relay_protocol::anthropic::{session_identity, SessionSource};
use relay_protocol::Dialect;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::shared::{
    accept, authenticate, client_ip, new_request_id, observe, parse_head, presented_key,
    rejection_error, relay, required_model,
};
use crate::error::anthropic_error;
use crate::AppState;

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
    let prepared = prepare(&state, request, endpoint, &request_id, received_at).await;
    let dialect = Dialect::AnthropicMessages;
    relay(
        &state,
        dialect,
        endpoint.as_str(),
        &request_id,
        received_at,
        prepared,
    )
    .await
}

/// Authenticates, reads the body within its limit and parses the little the relay needs.
async fn prepare(
    state: &AppState,
    request: Request,
    endpoint: Endpoint,
    request_id: &str,
    received_at: Instant,
) -> Result<RelayRequest, RelayError> {
    let (parts, key, body) = accept(state, request).await?;
    let head: MessagesHead = parse_head(&body)?;
    let model = required_model(head.model)?;
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
    let claude_code_marks = has_session_metadata && claude_code_headers(&parts.headers);
    Ok(RelayRequest {
        request_id: request_id.to_owned(),
        key,
        endpoint,
        query: forwarded_query(parts.uri.query()),
        headers: parts.headers,
        body,
        model,
        stream,
        max_tokens,
        choices: 1,
        include_usage: false,
        compaction: false,
        session,
        claude_code_marks,
        client_ip: client_ip(&parts.extensions),
        received_at,
    })
}

/// Claude Code's own headers besides its User-Agent: `x-app: cli`, or a `claude-code-*` beta.
fn claude_code_headers(headers: &HeaderMap) -> bool {
    let app_is_cli = headers
        .get("x-app")
        .is_some_and(|value| value.as_bytes() == b"cli");
    let claude_code_beta = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| {
            value
                .split(',')
                .any(|beta| beta.trim().starts_with("claude-code-"))
        });
    app_is_cli || claude_code_beta
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
        .keys
        .authenticate(presented, client_ip(&parts.extensions));
    let key = match key {
        Ok(key) => Ok(key),
        Err(KeyRejection::Disabled) => state.keys.find(presented).ok_or(KeyRejection::Unknown),
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
