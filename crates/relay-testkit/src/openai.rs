//! The mock OpenAI-compatible upstream (OpenAI, DeepSeek, Kimi, GLM, vLLM …): real HTTP on a
//! random loopback port, `POST /v1/chat/completions` (JSON or SSE exactly as OpenAI streams it),
//! `POST /v1/responses` (`crate::responses`) and `GET /v1/models`, all behind
//! `Authorization: Bearer <key>`.
//!
//! Deterministic answers read from the OpenAI `messages`: `USE_TOOL:Bash NONCE-<nonce>` in the
//! last `user` message gets a `Bash` function call (`id: call_mock_<nonce>`) running
//! `echo TOOLRESULT-<nonce>`; a conversation ending with a `tool` message gets
//! `TOOL_DONE: <tool content>`; `response_format.type == "json_schema"` gets
//! `{"title":"Mock title"}`; anything else `MOCK_OK from <model>.`. A model whose name contains
//! `reasoner` also reasons first, DeepSeek-style (`reasoning_content`). Usage is a pure function
//! of the request body: [`expected_chat_usage`].
//!
//! Faults are scripted per bearer key with [`MockOpenAi::script`]; [`Behavior::openai_status`]
//! builds OpenAI-shaped errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::anthropic::tool_nonce;
use crate::behavior::{deliver, openai_error_body, paced_body, Delivery, Script};
pub use crate::behavior::{Behavior, RecordedRequest};

/// The models `GET /v1/models` lists.
pub const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "deepseek-chat",
    "deepseek-reasoner",
];

/// The reasoning a `*reasoner*` model streams before its answer.
pub const REASONING: &str = "Thinking about it.";

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockOpenAi {
    addr: SocketAddr,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockOpenAi {
    pub async fn start() -> Self {
        let script = Arc::new(Script::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/responses", post(crate::responses::responses))
            .route("/v1/responses/compact", post(crate::responses::compact))
            // Azure OpenAI's paths (`api-key` auth, `?api-version=`).
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(chat_completions),
            )
            .route("/openai/responses", post(crate::responses::responses))
            .route("/v1/models", get(models))
            .with_state(script.clone());
        let (addr, server) = crate::behavior::serve_on_loopback(app, "OpenAI upstream").await;
        Self {
            addr,
            script,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL as providers document it for OpenAI SDKs (the
    /// client appends `/chat/completions`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// Queues behaviours for requests carrying this bearer key, in order.
    pub fn script(&self, api_key: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        self.script.push(api_key, behaviors);
    }

    /// Every request received so far (`api_key` is its bearer token, empty without one).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.script.requests()
    }

    /// How many requests carried this bearer key.
    pub fn count_for(&self, api_key: &str) -> usize {
        self.script.count_for(api_key)
    }
}

/// The usage the mock reports for a request body, as OpenAI counts it: `prompt_tokens`
/// includes `cached_tokens`, `completion_tokens` includes `reasoning_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockChatUsage {
    pub prompt_tokens: u64,
    /// Half the prompt from the second `user` message on; none on a first turn.
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// Non-zero only for `*reasoner*` models.
    pub reasoning_tokens: u64,
}

impl MockChatUsage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The `usage` object as OpenAI reports it.
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// The usage the mock reports for this chat-completions body (a pure function of it).
pub fn expected_chat_usage(body: &Value) -> MockChatUsage {
    let prompt_tokens = 3 + body.to_string().len() as u64 / 64;
    let user_turns = messages(body)
        .iter()
        .filter(|message| message["role"] == "user")
        .count();
    let reasoning_tokens = if reasons(body) {
        word_tokens(REASONING)
    } else {
        0
    };
    MockChatUsage {
        prompt_tokens,
        cached_tokens: if user_turns > 1 { prompt_tokens / 2 } else { 0 },
        completion_tokens: reply_for(body).tokens() + reasoning_tokens,
        reasoning_tokens,
    }
}

enum Reply {
    Text(String),
    /// `Bash`, or Codex's `exec_command` when the request offers it.
    ToolCall {
        id: String,
        name: &'static str,
        arguments: String,
    },
}

impl Reply {
    fn tokens(&self) -> u64 {
        match self {
            Self::Text(text) => word_tokens(text),
            Self::ToolCall { arguments, .. } => 10 + arguments.len() as u64 / 4,
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Self::Text(_) => "stop",
            Self::ToolCall { .. } => "tool_calls",
        }
    }
}

fn word_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64 + 1
}

fn messages(body: &Value) -> &[Value] {
    body["messages"].as_array().map_or(&[], Vec::as_slice)
}

fn reasons(body: &Value) -> bool {
    body["model"]
        .as_str()
        .is_some_and(|model| model.contains("reasoner"))
}

/// A message's text: a string, or the `text` of its content parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

fn reply_for(body: &Value) -> Reply {
    if body["response_format"]["type"] == "json_schema" {
        return Reply::Text(json!({"title": "Mock title"}).to_string());
    }
    let messages = messages(body);
    if let Some(last) = messages.last().filter(|message| message["role"] == "tool") {
        return Reply::Text(format!(
            "TOOL_DONE: {}",
            content_text(&last["content"]).trim()
        ));
    }
    let prompt = messages
        .iter()
        .rev()
        .find(|message| message["role"] == "user")
        .map(|message| content_text(&message["content"]))
        .unwrap_or_default();
    if let Some(nonce) = tool_nonce(&prompt) {
        let command = format!("echo TOOLRESULT-{nonce}");
        let codex = body["tools"].as_array().is_some_and(|tools| {
            tools
                .iter()
                .any(|tool| tool["function"]["name"] == "exec_command")
        });
        let (name, arguments) = if codex {
            ("exec_command", json!({"cmd": command}))
        } else {
            (
                "Bash",
                json!({"command": command, "description": "Echo the nonce"}),
            )
        };
        return Reply::ToolCall {
            id: format!("call_mock_{nonce}"),
            name,
            arguments: arguments.to_string(),
        };
    }
    let model = body["model"].as_str().unwrap_or("unknown");
    Reply::Text(format!("MOCK_OK from {model}."))
}

/// The caller's key: `Authorization: Bearer`, or Azure's `api-key`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    bearer
        .or_else(|| headers.get("api-key").and_then(|value| value.to_str().ok()))
        .map(str::to_owned)
}

pub(crate) fn json_response(status: u16, headers: &[(String, String)], body: String) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        builder = builder.header("content-type", "application/json");
    }
    builder = builder.header("x-request-id", "req_mock_openai");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder.body(Body::from(body)).unwrap_or_default()
}

fn missing_key() -> Response {
    json_response(
        401,
        &[],
        openai_error_body(
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
        ),
    )
}

/// Reads and records a request; `Err` is the reply when it carries no bearer key or its
/// scripted behaviour is an error.
pub(crate) async fn admit(
    script: &Script,
    request: Request,
) -> Result<(Value, Delivery), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let api_key = bearer(&parts.headers);
    let behavior = script.record(RecordedRequest {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.clone(),
        api_key: api_key.clone().unwrap_or_default(),
    });
    if api_key.is_none() {
        return Err(missing_key());
    }
    match deliver(behavior).await {
        Ok(delivery) => Ok((body, delivery)),
        Err((status, headers, body)) => Err(json_response(status, &headers, body)),
    }
}

async fn models(State(script): State<Arc<Script>>, request: Request) -> Response {
    let delivery = match admit(&script, request).await {
        Ok((_, delivery)) => delivery,
        Err(reply) => return reply,
    };
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    json_response(
        200,
        &delivery.headers,
        json!({"object": "list", "data": data}).to_string(),
    )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

async fn chat_completions(State(script): State<Arc<Script>>, request: Request) -> Response {
    let (body, delivery) = match admit(&script, request).await {
        Ok(admitted) => admitted,
        Err(reply) => return reply,
    };
    let Some(model) = body["model"].as_str().map(str::to_owned) else {
        return json_response(
            400,
            &[],
            openai_error_body(
                "you must provide a model parameter",
                "invalid_request_error",
                None,
            ),
        );
    };
    if !body["messages"].is_array() {
        return json_response(
            400,
            &[],
            openai_error_body(
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                Some("missing_required_parameter"),
            ),
        );
    }
    let reply = reply_for(&body);
    let usage = expected_chat_usage(&body);
    let reasoning = reasons(&body);
    let created = unix_now();
    if body["stream"] != json!(true) {
        let mut message = json!({"role": "assistant", "content": null, "refusal": null});
        match &reply {
            Reply::Text(text) => message["content"] = json!(text),
            Reply::ToolCall {
                id,
                name,
                arguments,
            } => {
                message["tool_calls"] = json!([{"id": id, "type": "function",
                    "function": {"name": name, "arguments": arguments}}]);
            }
        }
        if reasoning {
            message["reasoning_content"] = json!(REASONING);
        }
        let completion = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": created,
            "model": model, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": message, "logprobs": null,
                "finish_reason": reply.finish_reason()}],
            "usage": usage.to_json(),
        });
        return json_response(200, &delivery.headers, completion.to_string());
    }
    let chunks = Chunks {
        model: &model,
        created,
        include_usage: body["stream_options"]["include_usage"] == json!(true),
    };
    let frames = chunks.frames(&reply, reasoning, &usage);
    sse_response(frames, &delivery)
}

/// A 200 event stream of `frames`, paced and with the headers `delivery` asks for.
pub(crate) fn sse_response(frames: Vec<String>, delivery: &Delivery) -> Response {
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("x-request-id", "req_mock_openai");
    for (name, value) in &delivery.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(paced_body(frames, delivery))
        .unwrap_or_default()
}

/// Builds the `chat.completion.chunk` SSE frames of one streamed answer.
struct Chunks<'a> {
    model: &'a str,
    created: u64,
    /// `stream_options.include_usage`: every chunk carries `usage: null`, and a last chunk
    /// with no choices carries the usage.
    include_usage: bool,
}

impl Chunks<'_> {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": "fp_mock", "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {chunk}\n\n")
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> String {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
            None,
        )
    }

    fn frames(&self, reply: &Reply, reasoning: bool, usage: &MockChatUsage) -> Vec<String> {
        let mut frames = Vec::new();
        let first = match (reply, reasoning) {
            (_, true) => json!({"role": "assistant", "content": null, "reasoning_content": ""}),
            (Reply::Text(_), false) => json!({"role": "assistant", "content": "", "refusal": null}),
            (Reply::ToolCall { .. }, false) => {
                json!({"role": "assistant", "content": null, "refusal": null})
            }
        };
        frames.push(self.delta(first, None));
        if reasoning {
            for word in REASONING.split_inclusive(' ') {
                frames.push(self.delta(json!({"content": null, "reasoning_content": word}), None));
            }
        }
        match reply {
            Reply::Text(text) => {
                for word in text.split_inclusive(' ') {
                    let mut delta = json!({"content": word});
                    if reasoning {
                        delta["reasoning_content"] = Value::Null;
                    }
                    frames.push(self.delta(delta, None));
                }
            }
            Reply::ToolCall {
                id,
                name,
                arguments,
            } => {
                frames.push(self.delta(
                    json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                let chars: Vec<char> = arguments.chars().collect();
                for piece in chars.chunks(chars.len().div_ceil(3).max(1)) {
                    let piece: String = piece.iter().collect();
                    frames.push(self.delta(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
            }
        }
        frames.push(self.delta(json!({}), Some(reply.finish_reason())));
        if self.include_usage {
            frames.push(self.chunk(json!([]), Some(usage.to_json())));
        }
        frames.push("data: [DONE]\n\n".to_owned());
        frames
    }
}
