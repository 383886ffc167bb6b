//! The mock Anthropic upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::behavior::{deliver, paced_body, Script};
pub use crate::behavior::{Behavior, RecordedRequest};

#[derive(Debug, Default)]
struct MockState {
    script: Script,
    oauth: Mutex<OAuthMock>,
}

/// A mock of Anthropic's OAuth token endpoint with rotating refresh tokens: each refresh token
/// works once; reusing one is `invalid_grant`, as with the real server.
#[derive(Debug, Default)]
struct OAuthMock {
    issued: u32,
    refreshes: u32,
    current_refresh: Option<String>,
    valid_access: std::collections::HashSet<String>,
    expires_in_s: Option<i64>,
    delay: Duration,
    /// The plan the profile endpoint reports: `max` (default) or `pro`.
    plan: Option<String>,
    /// Answers every token request with 200 and this body, whatever it asks.
    raw_reply: Option<String>,
}

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/oauth/token", post(oauth_token))
            .route("/api/oauth/profile", axum::routing::get(oauth_profile))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .with_state(state.clone());
        let (addr, server) = crate::behavior::serve_on_loopback(app, "upstream").await;
        Self {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues behaviours for requests carrying this upstream API key, in order.
    pub fn script(&self, api_key: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state.script.push(api_key, behaviors);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.script.requests()
    }

    /// The token endpoint's URL (for `OAuthSettings::token_url`).
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.url())
    }

    /// Lifetime of the tokens issued from now on, and how long the token endpoint takes.
    pub fn set_token_behavior(&self, expires_in_s: i64, delay: Duration) {
        if let Ok(mut oauth) = self.state.oauth.lock() {
            oauth.expires_in_s = Some(expires_in_s);
            oauth.delay = delay;
        }
    }

    /// From now on the token endpoint answers every grant with 200 and `body` verbatim (a
    /// well-formed token response with chosen tokens, or a malformed one); `None` restores it.
    pub fn set_token_reply(&self, body: Option<&str>) {
        if let Ok(mut oauth) = self.state.oauth.lock() {
            oauth.raw_reply = body.map(str::to_owned);
        }
    }

    /// How many refresh grants succeeded.
    pub fn refresh_count(&self) -> u32 {
        self.state
            .oauth
            .lock()
            .map(|oauth| oauth.refreshes)
            .unwrap_or(0)
    }

    /// The plan the profile endpoint reports (`max` or `pro`).
    pub fn set_plan(&self, plan: &str) {
        if let Ok(mut oauth) = self.state.oauth.lock() {
            oauth.plan = Some(plan.to_owned());
        }
    }

    /// Makes the current refresh token unusable (as if revoked).
    pub fn revoke_refresh(&self) {
        if let Ok(mut oauth) = self.state.oauth.lock() {
            oauth.current_refresh = None;
        }
    }

    /// Revokes an access token early: requests with it get 401.
    pub fn revoke_access(&self, token: &str) {
        if let Ok(mut oauth) = self.state.oauth.lock() {
            oauth.valid_access.remove(token);
        }
    }

    /// How many requests carried this upstream API key.
    pub fn count_for(&self, api_key: &str) -> usize {
        self.state.script.count_for(api_key)
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn record(
    state: &MockState,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Value,
) -> Behavior {
    let api_key = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| bearer(headers))
        .unwrap_or_default();
    state.script.record(RecordedRequest {
        path: path.to_owned(),
        query,
        headers: headers.clone(),
        body: body.clone(),
        api_key,
    })
}

async fn read_json(request: Request) -> (String, Option<String>, HeaderMap, Value) {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (
        parts.uri.path().to_owned(),
        parts.uri.query().map(str::to_owned),
        parts.headers,
        value,
    )
}

fn json_response(status: u16, headers: &[(String, String)], body: String) -> Response {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        builder = builder.header("content-type", "application/json");
    }
    builder = builder
        .header("request-id", "req_mock_upstream")
        .header("anthropic-organization-id", "org-mock-secret");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder.body(Body::from(body)).unwrap_or_default()
}

/// A subscription token the mock issued must still be valid; anything else is not checked.
fn subscription_refused(state: &MockState, headers: &HeaderMap) -> Option<Response> {
    let token = bearer(headers)?;
    if !token.starts_with("mock-access-") {
        return None;
    }
    let valid = state
        .oauth
        .lock()
        .map(|oauth| oauth.valid_access.contains(&token))
        .unwrap_or(false);
    (!valid).then(|| {
        json_response(
            401,
            &[],
            json!({"type":"error","error":{"type":"authentication_error","message":"OAuth token has expired"}}).to_string(),
        )
    })
}

async fn oauth_profile(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = subscription_refused(&state, &headers) {
        return refused;
    }
    let plan = state
        .oauth
        .lock()
        .ok()
        .and_then(|oauth| oauth.plan.clone())
        .unwrap_or_else(|| "max".to_owned());
    json_response(
        200,
        &[],
        json!({"account": {"has_claude_max": plan == "max", "has_claude_pro": plan == "pro"}})
            .to_string(),
    )
}

async fn oauth_token(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (_, _, _, body) = read_json(request).await;
    let delay = state
        .oauth
        .lock()
        .map(|oauth| oauth.delay)
        .unwrap_or_default();
    tokio::time::sleep(delay).await;
    let Ok(mut oauth) = state.oauth.lock() else {
        return json_response(500, &[], "{}".into());
    };
    if let Some(raw) = &oauth.raw_reply {
        return json_response(200, &[], raw.clone());
    }
    let granted = match body["grant_type"].as_str() {
        Some("authorization_code") => {
            body["code"] == "mock-code"
                && body["code_verifier"]
                    .as_str()
                    .is_some_and(|v| v.len() >= 43)
        }
        Some("refresh_token") => {
            let valid = oauth.current_refresh.is_some()
                && body["refresh_token"].as_str() == oauth.current_refresh.as_deref();
            if valid {
                oauth.refreshes += 1;
            }
            valid
        }
        _ => false,
    };
    if !granted {
        return json_response(400, &[], json!({"error": "invalid_grant", "error_description": "grant is invalid or was already used"}).to_string());
    }
    oauth.issued += 1;
    let access = format!("mock-access-{}", oauth.issued);
    let refresh = format!("mock-refresh-{}", oauth.issued);
    oauth.valid_access.insert(access.clone());
    oauth.current_refresh = Some(refresh.clone());
    let expires_in = oauth.expires_in_s.unwrap_or(3600);
    json_response(
        200,
        &[],
        json!({"access_token": access, "refresh_token": refresh, "expires_in": expires_in, "token_type": "Bearer"}).to_string(),
    )
}

async fn count_tokens(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (path, query, headers, body) = read_json(request).await;
    if let Behavior::Status {
        status,
        headers,
        body,
    } = record(&state, &path, query, &headers, &body)
    {
        return json_response(status, &headers, body);
    }
    let usage = expected_usage(&body);
    json_response(
        200,
        &[],
        json!({"input_tokens": usage.input_tokens}).to_string(),
    )
}

/// The usage the mock reports for a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockUsage {
    pub input_tokens: u64,
    pub cache_creation_5m: u64,
    pub cache_creation_1h: u64,
    pub cache_read: u64,
}

/// Input-side usage: input from the body size; cache writes if anything is marked for caching
/// (1h writes if a `"ttl":"1h"` mark is present); cache reads from the second turn on.
pub fn expected_usage(body: &Value) -> MockUsage {
    let text = body.to_string();
    let turns = body["messages"].as_array().map_or(0, Vec::len) as u64;
    let cached = text.contains("cache_control");
    let one_hour = text.contains("\"ttl\":\"1h\"");
    MockUsage {
        input_tokens: 3 + text.len() as u64 / 64,
        cache_creation_5m: if cached { 120 } else { 0 },
        cache_creation_1h: if one_hour { 40 } else { 0 },
        cache_read: if cached && turns > 1 { 900 } else { 0 },
    }
}

enum Reply {
    Text(String),
    /// A tool call: `Bash` with `{command, description}`, or Codex's `exec_command` with
    /// `{cmd}` when the request offers that tool, or Gemini CLI's `read_file` of
    /// `TOOLRESULT-<nonce>.txt` when it offers that one.
    ToolUse {
        id: String,
        command: String,
        name: &'static str,
        input: Value,
    },
}

/// The prompt of the last user message (its last text block that is not a system reminder: a
/// summary or note appended after a prompt is what the turn answers) and the tool result it
/// carries, if no prompt follows it.
fn last_user_text(body: &Value) -> (String, Option<String>) {
    let Some(message) = body["messages"].as_array().and_then(|messages| {
        messages
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
    }) else {
        return (String::new(), None);
    };
    let mut text = String::new();
    let mut tool_result = None;
    match &message["content"] {
        Value::String(content) => text.push_str(content),
        Value::Array(blocks) => {
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => {
                        let block_text = block["text"].as_str().unwrap_or_default();
                        // A new prompt after a tool result starts a new turn (Claude Code
                        // carries the result forward); system reminders do not.
                        if !block_text.trim_start().starts_with("<system-reminder>") {
                            tool_result = None;
                            block_text.clone_into(&mut text);
                        }
                    }
                    Some("tool_result") => {
                        let content = match &block["content"] {
                            Value::String(content) => content.clone(),
                            Value::Array(parts) => parts
                                .iter()
                                .filter_map(|part| part["text"].as_str())
                                .collect::<Vec<_>>()
                                .join(""),
                            _ => String::new(),
                        };
                        tool_result = Some(content);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    (text, tool_result)
}

/// The nonce of a `USE_TOOL:Bash NONCE-<nonce>` request in a prompt (`NONCE-` is optional).
pub(crate) fn tool_nonce(text: &str) -> Option<String> {
    let position = text.find("USE_TOOL:Bash ")?;
    let nonce: String = text[position + "USE_TOOL:Bash ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Some(nonce.strip_prefix("NONCE-").unwrap_or(&nonce).to_owned())
}

fn reply_for(body: &Value) -> Reply {
    let model = body["model"].as_str().unwrap_or("unknown");
    if body["output_config"]["format"].is_object() {
        return Reply::Text(json!({"title": "Mock title"}).to_string());
    }
    let (text, tool_result) = last_user_text(body);
    if let Some(result) = tool_result {
        return Reply::Text(format!("TOOL_DONE: {}", result.trim()));
    }
    if let Some(nonce) = tool_nonce(&text) {
        let command = format!("echo TOOLRESULT-{nonce}");
        let offered = |name: &str| {
            body["tools"]
                .as_array()
                .and_then(|tools| tools.iter().find(|tool| tool["name"] == name))
        };
        let (name, input) = if offered("exec_command").is_some() {
            ("exec_command", json!({"cmd": command}))
        } else if let Some(read_file) = offered("read_file") {
            // Gemini CLI (through conversion) offers no shell: it reads the nonce's file.
            let parameter = read_file["input_schema"]["properties"]
                .as_object()
                .and_then(|properties| properties.keys().next().cloned())
                .unwrap_or_else(|| "file_path".to_owned());
            (
                "read_file",
                json!({ parameter: format!("TOOLRESULT-{nonce}.txt") }),
            )
        } else {
            (
                "Bash",
                json!({"command": command, "description": "Echo the nonce"}),
            )
        };
        return Reply::ToolUse {
            id: format!("toolu_mock_{nonce}"),
            command,
            name,
            input,
        };
    }
    Reply::Text(format!("MOCK_OK from {model}."))
}

fn output_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text(text) => text.split_whitespace().count() as u64 + 1,
        Reply::ToolUse { command, .. } => 10 + command.len() as u64 / 4,
    }
}

fn usage_json(usage: &MockUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_5m + usage.cache_creation_1h,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_creation_5m,
            "ephemeral_1h_input_tokens": usage.cache_creation_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

async fn messages(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (path, query, headers, body) = read_json(request).await;
    let behavior = record(&state, &path, query, &headers, &body);
    if let Some(refused) = subscription_refused(&state, &headers) {
        return refused;
    }
    let delivery = match deliver(behavior).await {
        Ok(delivery) => delivery,
        Err((status, headers, body)) => return json_response(status, &headers, body),
    };
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let usage = expected_usage(&body);
    let reply = reply_for(&body);
    let output = output_tokens(&reply);
    let (content, stop_reason) = match &reply {
        Reply::Text(text) => (json!([{"type": "text", "text": text}]), "end_turn"),
        Reply::ToolUse {
            id, name, input, ..
        } => (
            json!([{"type": "tool_use", "id": id, "name": name, "input": input}]),
            "tool_use",
        ),
    };
    if body["stream"] != json!(true) {
        let message = json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage_json(&usage, output),
        });
        return json_response(200, &delivery.headers, message.to_string());
    }
    let events = sse_events(&model, &reply, &usage, output, stop_reason);
    let frames = events
        .into_iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("request-id", "req_mock_upstream")
        .header("anthropic-organization-id", "org-mock-secret")
        .body(paced_body(frames, &delivery))
        .unwrap_or_default()
}

fn sse_events(
    model: &str,
    reply: &Reply,
    usage: &MockUsage,
    output: u64,
    stop_reason: &str,
) -> Vec<(&'static str, String)> {
    let mut start_usage = usage_json(usage, 1);
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}})
        .to_string(),
    )];
    match reply {
        Reply::Text(text) => {
            events.push(("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()));
            events.push(("ping", json!({"type": "ping"}).to_string()));
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for word in words {
                events.push(("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}).to_string()));
            }
        }
        Reply::ToolUse {
            id, name, input, ..
        } => {
            events.push(("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}).to_string()));
            let input = input.to_string();
            let (head, tail) = input.split_at(input.len() / 2);
            for part in [head, tail] {
                events.push(("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}}).to_string()));
            }
        }
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}).to_string(),
    ));
    // Like the real API, message_delta repeats the cumulative input-side counts.
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage_json(usage, output)}).to_string(),
    ));
    events.push(("message_stop", json!({"type": "message_stop"}).to_string()));
    events
}
