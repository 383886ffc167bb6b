//! The mock Gemini API (`generativelanguage.googleapis.com`): real HTTP on a random loopback
//! port, `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with
//! `?alt=sse`, else one JSON array sent chunk by chunk, as Google does) and `:countTokens`, behind
//! `x-goog-api-key` (or `?key=`).
//!
//! Deterministic answers read from `contents`: a last turn holding a `functionResponse` gets
//! `TOOL_DONE: <its output>`; `USE_TOOL:Bash NONCE-<nonce>` in the last user text gets a
//! `functionCall` of Codex's `exec_command` (`{"cmd": "echo TOOLRESULT-<nonce>"}`) when it is
//! declared, else of Gemini CLI's `read_file` (its first parameter set to
//! `TOOLRESULT-<nonce>.txt`), else of `Bash` with `{"command": "echo TOOLRESULT-<nonce>"}`; a request in JSON mode (`responseMimeType: application/json`) a value of its
//! schema; anything else `MOCK_OK from <model>.`. Usage is a pure function of the request
//! body: [`expected_gemini_usage`]. Faults are scripted per key with [`MockGemini::script`];
//! [`Behavior::gemini_status`] builds Gemini-shaped errors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::anthropic::tool_nonce;
use crate::behavior::{deliver, paced_body, Delivery, Script};
pub use crate::behavior::{Behavior, RecordedRequest};
use crate::openai::json_response;

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockGemini {
    addr: SocketAddr,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockGemini {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockGemini {
    pub async fn start() -> Self {
        let script = Arc::new(Script::default());
        let app = Router::new()
            .route("/v1beta/models/{*target}", post(model_action))
            .with_state(script.clone());
        let (addr, server) = crate::behavior::serve_on_loopback(app, "Gemini").await;
        Self {
            addr,
            script,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, the base URL of a `gemini` account.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues behaviours for requests carrying this key, in order.
    pub fn script(&self, api_key: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        self.script.push(api_key, behaviors);
    }

    /// Every request received so far (`api_key` is its key; `query` what came after `?`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.script.requests()
    }
}

/// The usage the mock reports for a `generateContent` body, as Gemini counts it:
/// `promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is apart from
/// `candidatesTokenCount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockGeminiUsage {
    pub prompt_tokens: u64,
    /// Half the prompt once the conversation has a function response in it.
    pub cached_tokens: u64,
    pub candidates_tokens: u64,
    /// Non-zero for models whose name has `pro` (they think first).
    pub thoughts_tokens: u64,
}

impl MockGeminiUsage {
    fn to_json(self, partial: bool) -> Value {
        let candidates = if partial { 1 } else { self.candidates_tokens };
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates + self.thoughts_tokens,
            "thoughtsTokenCount": self.thoughts_tokens,
        });
        if self.cached_tokens > 0 {
            usage["cachedContentTokenCount"] = json!(self.cached_tokens);
        }
        usage
    }
}

/// The usage the mock reports for this body (a pure function of it).
pub fn expected_gemini_usage(model: &str, body: &Value) -> MockGeminiUsage {
    let prompt_tokens = 3 + body.to_string().len() as u64 / 64;
    let later_turn = contents(body).iter().any(|content| {
        parts(content)
            .iter()
            .any(|part| part.get("functionResponse").is_some())
    });
    MockGeminiUsage {
        prompt_tokens,
        cached_tokens: if later_turn { prompt_tokens / 2 } else { 0 },
        candidates_tokens: reply_for(model, body).tokens(),
        thoughts_tokens: if model.contains("pro") { 7 } else { 0 },
    }
}

fn contents(body: &Value) -> &[Value] {
    body["contents"].as_array().map_or(&[], Vec::as_slice)
}

fn parts(content: &Value) -> &[Value] {
    content["parts"].as_array().map_or(&[], Vec::as_slice)
}

pub(crate) enum Reply {
    Text(String),
    Call { name: String, args: Value },
}

impl Reply {
    fn tokens(&self) -> u64 {
        match self {
            Self::Text(text) => text.split_whitespace().count() as u64 + 1,
            Self::Call { args, .. } => 10 + args.to_string().len() as u64 / 4,
        }
    }
}

/// A value that fits `schema` (upper- or lower-case OpenAPI types, as Gemini CLI sends them):
/// an enum's first value, `mock` for strings, 1 for numbers, every property of an object.
fn value_for(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    match schema["type"]
        .as_str()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("object") => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, property)| (name.clone(), value_for(property)))
                .collect(),
        ),
        Some("array") => json!([value_for(&schema["items"])]),
        Some("integer" | "number") => json!(1),
        Some("boolean") => json!(true),
        _ => json!("mock"),
    }
}

pub(crate) fn reply_for(model: &str, body: &Value) -> Reply {
    // JSON mode (Gemini CLI's model router): a value of the schema asked for.
    let config = &body["generationConfig"];
    if config["responseMimeType"] == "application/json" {
        let schema = config
            .get("responseJsonSchema")
            .or_else(|| config.get("responseSchema"));
        return Reply::Text(schema.map_or_else(|| json!({}), value_for).to_string());
    }
    let last = contents(body).last();
    let last_parts = last.map_or(&[][..], parts);
    if let Some(response) = last_parts
        .iter()
        .find_map(|part| part.get("functionResponse"))
    {
        let output = match &response["response"] {
            Value::Object(object) => object
                .get("output")
                .or_else(|| object.get("content"))
                .map_or_else(
                    || Value::Object(object.clone()).to_string(),
                    |value| {
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned)
                    },
                ),
            other => other.to_string(),
        };
        return Reply::Text(format!("TOOL_DONE: {}", output.trim()));
    }
    let prompt: String = last_parts
        .iter()
        .filter_map(|part| part["text"].as_str())
        .collect();
    if let Some(nonce) = tool_nonce(&prompt) {
        let declared = |name: &str| {
            body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|tool| {
                    tool["functionDeclarations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                })
                .find(|declaration| declaration["name"] == name)
        };
        // Codex (through conversion) runs commands with `exec_command`.
        if declared("exec_command").is_some() {
            return Reply::Call {
                name: "exec_command".into(),
                args: json!({"cmd": format!("echo TOOLRESULT-{nonce}")}),
            };
        }
        return match declared("read_file") {
            Some(declaration) => {
                let schema = declaration
                    .get("parametersJsonSchema")
                    .or_else(|| declaration.get("parameters"));
                let parameter = schema
                    .and_then(|schema| schema["properties"].as_object())
                    .and_then(|properties| properties.keys().next().cloned())
                    .unwrap_or_else(|| "file_path".to_owned());
                Reply::Call {
                    name: "read_file".into(),
                    args: json!({ parameter: format!("TOOLRESULT-{nonce}.txt") }),
                }
            }
            None => Reply::Call {
                name: "Bash".into(),
                args: json!({"command": format!("echo TOOLRESULT-{nonce}")}),
            },
        };
    }
    Reply::Text(format!("MOCK_OK from {model}."))
}

fn response(model: &str, parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "mock-response-1"})
}

impl Behavior {
    /// A Gemini-shaped error: `{"error":{"code","message","status"}}` with Google's status name
    /// for the HTTP status (429 is `RESOURCE_EXHAUSTED`).
    pub fn gemini_status(status: u16) -> Self {
        let name = match status {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        Self::Status {
            status,
            headers: Vec::new(),
            body: json!({"error": {"code": status, "message": format!("mock {status}"), "status": name}})
                .to_string(),
        }
    }
}

async fn model_action(
    State(script): State<Arc<Script>>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let query = parts.uri.query().map(str::to_owned);
    let key = parts
        .headers
        .get("x-goog-api-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            query.as_deref().and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "key")
                    .map(|(_, value)| value.into_owned())
            })
        });
    let behavior = script.record(RecordedRequest {
        path: parts.uri.path().to_owned(),
        query: query.clone(),
        headers: parts.headers,
        body: body.clone(),
        api_key: key.clone().unwrap_or_default(),
    });
    if key.is_none() {
        return json_response(
            403,
            &[],
            json!({"error": {"code": 403, "message": "Method doesn't allow unregistered callers. Please use an API key.", "status": "PERMISSION_DENIED"}}).to_string(),
        );
    }
    let delivery = match deliver(behavior).await {
        Ok(delivery) => delivery,
        Err((status, headers, body)) => return json_response(status, &headers, body),
    };
    let Some((model, method)) = target.rsplit_once(':') else {
        return json_response(404, &[], "{}".into());
    };
    let usage = expected_gemini_usage(model, &body);
    let reply = reply_for(model, &body);
    match method {
        "countTokens" => json_response(
            200,
            &delivery.headers,
            json!({"totalTokens": usage.prompt_tokens}).to_string(),
        ),
        "generateContent" => {
            let parts = match &reply {
                Reply::Text(text) => json!([{"text": text}]),
                Reply::Call { name, args } => {
                    json!([{"functionCall": {"name": name, "args": args}}])
                }
            };
            json_response(
                200,
                &delivery.headers,
                response(model, parts, Some("STOP"), usage.to_json(false)).to_string(),
            )
        }
        "streamGenerateContent" => {
            let sse = query
                .as_deref()
                .is_some_and(|query| query.split('&').any(|pair| pair == "alt=sse"));
            stream(model, &reply, usage, sse, &delivery)
        }
        _ => json_response(404, &[], "{}".into()),
    }
}

/// The chunks of one streamed answer: the text word by word (a call in one chunk), the last
/// with the finish reason and the whole usage.
pub(crate) fn chunks(model: &str, reply: &Reply, usage: MockGeminiUsage) -> Vec<Value> {
    let mut chunks: Vec<Value> = match reply {
        Reply::Text(text) => text
            .split_inclusive(' ')
            .map(|word| response(model, json!([{"text": word}]), None, usage.to_json(true)))
            .collect(),
        Reply::Call { name, args } => vec![response(
            model,
            json!([{"functionCall": {"name": name, "args": args}}]),
            None,
            usage.to_json(true),
        )],
    };
    if let Some(last) = chunks.last_mut() {
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = usage.to_json(false);
    }
    chunks
}

/// A whole answer.
pub(crate) fn whole(model: &str, reply: &Reply, usage: MockGeminiUsage) -> Value {
    let parts = match reply {
        Reply::Text(text) => json!([{"text": text}]),
        Reply::Call { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
    };
    response(model, parts, Some("STOP"), usage.to_json(false))
}

/// A streamed answer as SSE or as the JSON array.
fn stream(
    model: &str,
    reply: &Reply,
    usage: MockGeminiUsage,
    sse: bool,
    delivery: &Delivery,
) -> Response {
    let chunks = chunks(model, reply, usage);
    let count = chunks.len();
    let frames: Vec<String> = chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            if sse {
                format!("data: {chunk}\r\n\r\n")
            } else {
                let open = if index == 0 { "[" } else { ",\r\n" };
                let close = if index + 1 == count { "]" } else { "" };
                format!("{open}{chunk}{close}")
            }
        })
        .collect();
    let mut builder = Response::builder().status(200).header(
        "content-type",
        if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        },
    );
    for (name, value) in &delivery.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(paced_body(frames, delivery))
        .unwrap_or_default()
}
