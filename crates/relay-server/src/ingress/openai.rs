//! The OpenAI ingress: `POST /v1/chat/completions`, `POST /v1/responses` and `GET /v1/models` in
//! OpenAI's shape, also under `/openai/…`. The request is read as little as the relay needs
//! (model, stream, limits, the usage-chunk option and the conversation's identity); the body goes
//! to the relay untouched.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{HeaderValue, CONTENT_TYPE};
use relay_core::relay::{Endpoint, RelayError, RelayRequest};
use relay_core::sticky::SessionId;
use relay_protocol::anthropic::{session_identity, SessionIdentity, SessionSource};
use relay_protocol::{Dialect, ErrorKind};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::shared::{
    accept, authenticate, client_ip, new_request_id, observe, parse_head, relay, required_model,
};
use crate::error::{error, render_error};
use crate::AppState;

/// OpenAI's own bound on `n`.
const MAX_CHOICES: u64 = 128;

/// The fields of a Chat Completions request the relay reads.
#[derive(Deserialize)]
struct ChatHead<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    /// How many answers to generate.
    n: Option<u64>,
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    messages: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

pub(crate) async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let prepared = prepare(&state, request, &request_id, received_at).await;
    let endpoint = Endpoint::ChatCompletions;
    relay(
        &state,
        Dialect::OpenAiChat,
        endpoint.as_str(),
        &request_id,
        received_at,
        prepared,
    )
    .await
}

async fn prepare(
    state: &AppState,
    request: Request,
    request_id: &str,
    received_at: Instant,
) -> Result<RelayRequest, RelayError> {
    let (parts, key, body) = accept(state, request).await?;
    let head: ChatHead = parse_head(&body)?;
    let model = required_model(head.model)?;
    let choices = head.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&choices) {
        return Err(error(
            ErrorKind::InvalidRequest,
            format!("n: must be between 1 and {MAX_CHOICES}"),
        ));
    }
    if head.messages.is_empty() {
        return Err(error(
            ErrorKind::InvalidRequest,
            "messages: at least one message is required",
        ));
    }
    // The conversation's start: the system message (if first) and the first other message.
    let (system, first_message) = match head.messages.as_slice() {
        [first, second, ..] if starts_as_system(first) => (Some(*first), Some(*second)),
        [first, ..] => (None, Some(*first)),
        [] => (None, None),
    };
    let session = session_identity(&SessionSource {
        user_id: None,
        system,
        first_message,
    })
    .map(|identity| SessionId::new(&key.id, &identity));
    Ok(RelayRequest {
        request_id: request_id.to_owned(),
        key,
        endpoint: Endpoint::ChatCompletions,
        query: None,
        headers: parts.headers,
        model,
        stream: head.stream.unwrap_or(false),
        max_tokens: head.max_completion_tokens.or(head.max_tokens),
        choices,
        include_usage: head
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        compaction: false,
        session,
        claude_code_marks: false,
        client_ip: client_ip(&parts.extensions),
        received_at,
        body,
    })
}

/// The fields of a Responses request the relay reads.
#[derive(Deserialize)]
struct ResponsesHead<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_output_tokens: Option<u64>,
    /// Codex sends its session id here too.
    #[serde(borrow)]
    prompt_cache_key: Option<Cow<'a, str>>,
}

/// `POST /v1/responses`: the Responses API (Codex CLI, `client.responses.create`).
pub(crate) async fn responses(State(state): State<AppState>, request: Request) -> Response {
    responses_endpoint(state, request, Endpoint::Responses).await
}

/// `POST /v1/responses/compact`: Codex's remote compaction (its built-in OpenAI provider).
/// Passed through to Responses accounts; on other accounts the conversation is summarised by
/// the account's model under Codex's compaction instructions (never streamed).
pub(crate) async fn responses_compact(State(state): State<AppState>, request: Request) -> Response {
    responses_endpoint(state, request, Endpoint::ResponsesCompact).await
}

async fn responses_endpoint(state: AppState, request: Request, endpoint: Endpoint) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let prepared = prepare_responses(&state, request, endpoint, &request_id, received_at).await;
    relay(
        &state,
        Dialect::OpenAiResponses,
        endpoint.as_str(),
        &request_id,
        received_at,
        prepared,
    )
    .await
}

async fn prepare_responses(
    state: &AppState,
    request: Request,
    endpoint: Endpoint,
    request_id: &str,
    received_at: Instant,
) -> Result<RelayRequest, RelayError> {
    let (parts, key, body) = accept(state, request).await?;
    let head: ResponsesHead = parse_head(&body)?;
    let model = required_model(head.model)?;
    // A conversation sticks by Codex's session id, else by its prompt cache key.
    let header_session = parts
        .headers
        .get("session-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty());
    let session = header_session
        .or(head.prompt_cache_key.as_deref().filter(|id| !id.is_empty()))
        .map(|id| SessionId::new(&key.id, &SessionIdentity::Session(id)));
    Ok(RelayRequest {
        request_id: request_id.to_owned(),
        key,
        endpoint,
        query: None,
        headers: parts.headers,
        model,
        stream: head.stream.unwrap_or(false) && endpoint == Endpoint::Responses,
        max_tokens: head.max_output_tokens,
        choices: 1,
        include_usage: false,
        compaction: endpoint == Endpoint::Responses
            && relay_protocol::convert::openai_responses::compaction::is_trigger_request(&body),
        session,
        claude_code_marks: false,
        client_ip: client_ip(&parts.extensions),
        received_at,
        body,
    })
}

/// `GET /v1/responses`: Codex's WebSocket transport, which the relay does not offer. Answered at
/// once with 426 (after the key is checked), so Codex falls back to `POST` with one attempt.
pub(crate) async fn responses_websocket(
    State(state): State<AppState>,
    request: Request,
) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let (parts, _) = request.into_parts();
    let response = match authenticate(&state, &parts) {
        Err(relay_error) => render_error(Dialect::OpenAiResponses, &relay_error, &request_id),
        Ok(_) => {
            let body = relay_protocol::dialect::error_body(
                Dialect::OpenAiResponses,
                ErrorKind::InvalidRequest,
                "this relay serves the Responses API over HTTP only: POST /v1/responses",
                &request_id,
            );
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    observe(&state, "responses", &request_id, &response, received_at);
    response
}

fn starts_as_system(message: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Role<'a> {
        #[serde(borrow)]
        role: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Role>(message.get())
        .ok()
        .and_then(|role| role.role)
        .is_some_and(|role| role == "system" || role == "developer")
}

/// `GET /v1/models` (without `anthropic-version`) and `/openai/v1/models`: the models the key
/// may use, in OpenAI's list shape.
pub(crate) async fn models(State(state): State<AppState>, request: Request) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let (parts, _) = request.into_parts();
    let response = match authenticate(&state, &parts) {
        Err(relay_error) => render_error(Dialect::OpenAiChat, &relay_error, &request_id),
        Ok(key) => {
            let data: Vec<serde_json::Value> = state
                .relay
                .model_names()
                .into_iter()
                .filter(|id| relay_core::access::model_allowed(&key.policy, id))
                .map(|id| {
                    serde_json::json!({
                        "id": id,
                        "object": "model",
                        "created": 1_735_689_600,
                        "owned_by": "claude-relay",
                    })
                })
                .collect();
            let body = serde_json::json!({"object": "list", "data": data});
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
