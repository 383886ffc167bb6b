//! The mock of what a Google account signed in as Gemini CLI does it talks to: Google's OAuth
//! token endpoint (`POST /token`, forms with the client's secret; refresh tokens that do not
//! rotate, as Google's) and Gemini Code Assist (`POST /v1internal:loadCodeAssist`,
//! `:onboardUser`, `:generateContent`, `:streamGenerateContent?alt=sse`, `:countTokens`).
//!
//! A new account has no project: `loadCodeAssist` offers the free tier, `onboardUser` answers
//! "not done" once and then names [`PROJECT`]. Generation checks the bearer token, the project
//! and the model in the envelope, and answers as the mock Gemini API does
//! (`crate::gemini`), each response inside `{"response": …}`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::behavior::{deliver, paced_body, Script};
pub use crate::behavior::{Behavior, RecordedRequest};
use crate::gemini::{chunks, expected_gemini_usage, reply_for, whole};
use crate::openai::json_response;

/// The project the mock sets the account up with.
pub const PROJECT: &str = "mock-project-1";
/// The code the mock's consent page gives.
pub const AUTH_CODE: &str = "mock-google-code";

#[derive(Debug, Default)]
struct Google {
    issued: u32,
    refreshes: u32,
    refresh_token: Option<String>,
    valid_access: HashSet<String>,
    expires_in_s: i64,
    delay: Duration,
    onboard_calls: u32,
}

#[derive(Debug, Default)]
struct CodeAssistState {
    script: Script,
    google: Mutex<Google>,
}

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockCodeAssist {
    addr: SocketAddr,
    state: Arc<CodeAssistState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockCodeAssist {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MockCodeAssist {
    pub async fn start() -> Self {
        let state = Arc::new(CodeAssistState::default());
        if let Ok(mut google) = state.google.lock() {
            google.expires_in_s = 3600;
        }
        let app = Router::new()
            .route("/token", post(token))
            .route("/v1internal:loadCodeAssist", post(load))
            .route("/v1internal:onboardUser", post(onboard))
            .route("/v1internal:generateContent", post(generate))
            .route("/v1internal:streamGenerateContent", post(generate))
            .route("/v1internal:countTokens", post(count))
            .with_state(state.clone());
        let (addr, server) = crate::behavior::serve_on_loopback(app, "Code Assist").await;
        Self {
            addr,
            state,
            server,
        }
    }

    /// The base URL of a `gemini-oauth` account.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint (`oauth.token_url` of the Google provider).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    fn google(&self) -> std::sync::MutexGuard<'_, Google> {
        self.state
            .google
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lifetime of the access tokens issued from now on, and how long the token endpoint takes.
    pub fn set_token_behavior(&self, expires_in_s: i64, delay: Duration) {
        let mut google = self.google();
        google.expires_in_s = expires_in_s;
        google.delay = delay;
    }

    pub fn refresh_count(&self) -> u32 {
        self.google().refreshes
    }

    /// Signs in as Gemini CLI would and returns the `oauth_creds.json` it writes.
    pub fn oauth_creds(&self) -> String {
        let granted = issue(&mut self.google());
        let expiry = crate::openai::unix_now() as i64 * 1000
            + granted["expires_in"].as_i64().unwrap_or(0) * 1000;
        json!({"access_token": granted["access_token"], "refresh_token": granted["refresh_token"],
            "scope": "https://www.googleapis.com/auth/cloud-platform", "token_type": "Bearer",
            "expiry_date": expiry})
        .to_string()
    }

    /// Every generation request received so far (`api_key` is its bearer token).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.script.requests()
    }

    /// Queues behaviours for requests carrying this access token.
    pub fn script(&self, access_token: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state.script.push(access_token, behaviors);
    }
}

fn issue(google: &mut Google) -> Value {
    google.issued += 1;
    let access = format!("ya29.mock-{}", google.issued);
    google.valid_access.insert(access.clone());
    let refresh = google
        .refresh_token
        .get_or_insert_with(|| "1//mock-refresh".to_owned())
        .clone();
    json!({"access_token": access, "refresh_token": refresh, "expires_in": google.expires_in_s,
        "token_type": "Bearer", "scope": "https://www.googleapis.com/auth/cloud-platform"})
}

fn google_error(status: u16, error: &str) -> Response {
    json_response(
        status,
        &[],
        json!({"error": error, "error_description": "mock"}).to_string(),
    )
}

async fn token(State(state): State<Arc<CodeAssistState>>, request: Request) -> Response {
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let fields: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&bytes).into_owned().collect();
    let delay = state
        .google
        .lock()
        .map(|google| google.delay)
        .unwrap_or_default();
    tokio::time::sleep(delay).await;
    let mut google = state
        .google
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let client_ok = fields.get("client_secret").map(String::as_str)
        == Some("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")
        && fields
            .get("client_id")
            .is_some_and(|id| id.ends_with(".apps.googleusercontent.com"));
    if !client_ok {
        return google_error(401, "invalid_client");
    }
    match fields.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let valid = fields.get("code").map(String::as_str) == Some(AUTH_CODE)
                && fields.get("code_verifier").is_some_and(|v| v.len() >= 43);
            if !valid {
                return google_error(400, "invalid_grant");
            }
        }
        Some("refresh_token") => {
            if google.refresh_token.is_none()
                || fields.get("refresh_token") != google.refresh_token.as_ref()
            {
                return google_error(400, "invalid_grant");
            }
            google.refreshes += 1;
            // Google keeps the refresh token: none comes back.
            let mut granted = issue(&mut google);
            if let Some(object) = granted.as_object_mut() {
                object.remove("refresh_token");
            }
            return json_response(200, &[], granted.to_string());
        }
        _ => return google_error(400, "unsupported_grant_type"),
    }
    json_response(200, &[], issue(&mut google).to_string())
}

fn bearer(request: &Request) -> String {
    request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn known(state: &CodeAssistState, token: &str) -> bool {
    state
        .google
        .lock()
        .map(|google| google.valid_access.contains(token))
        .unwrap_or(false)
}

fn unauthenticated() -> Response {
    json_response(
        401,
        &[],
        json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}).to_string(),
    )
}

async fn load(State(state): State<Arc<CodeAssistState>>, request: Request) -> Response {
    if !known(&state, &bearer(&request)) {
        return unauthenticated();
    }
    let onboarded = state
        .google
        .lock()
        .map(|google| google.onboard_calls > 1)
        .unwrap_or(false);
    if onboarded {
        return json_response(
            200,
            &[],
            json!({"currentTier": {"id": "free-tier"}, "cloudaicompanionProject": PROJECT})
                .to_string(),
        );
    }
    json_response(
        200,
        &[],
        json!({"allowedTiers": [{"id": "free-tier", "isDefault": true}, {"id": "standard-tier"}]})
            .to_string(),
    )
}

async fn onboard(State(state): State<Arc<CodeAssistState>>, request: Request) -> Response {
    if !known(&state, &bearer(&request)) {
        return unauthenticated();
    }
    let calls = match state.google.lock() {
        Ok(mut google) => {
            google.onboard_calls += 1;
            google.onboard_calls
        }
        Err(_) => 0,
    };
    let body = if calls < 2 {
        json!({"name": "operations/onboard-1", "done": false})
    } else {
        json!({"name": "operations/onboard-1", "done": true,
            "response": {"cloudaicompanionProject": {"id": PROJECT, "name": "Mock project"}}})
    };
    json_response(200, &[], body.to_string())
}

async fn admitted(
    state: &CodeAssistState,
    request: Request,
) -> Result<(Value, crate::behavior::Delivery, bool), Response> {
    let token = bearer(&request);
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let sse = parts.uri.query() == Some("alt=sse");
    let behavior = state.script.record(RecordedRequest {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.clone(),
        api_key: token.clone(),
    });
    let delivery = match deliver(behavior).await {
        Ok(delivery) => delivery,
        Err((status, headers, body)) => return Err(json_response(status, &headers, body)),
    };
    if !known(state, &token) {
        return Err(unauthenticated());
    }
    Ok((body, delivery, sse))
}

async fn generate(State(state): State<Arc<CodeAssistState>>, request: Request) -> Response {
    let streamed = request.uri().path().ends_with(":streamGenerateContent");
    let (envelope, delivery, sse) = match admitted(&state, request).await {
        Ok(admitted) => admitted,
        Err(reply) => return reply,
    };
    if envelope["project"] != PROJECT || !envelope["model"].is_string() {
        return json_response(
            403,
            &[],
            json!({"error": {"code": 403, "message": "The caller does not have permission", "status": "PERMISSION_DENIED"}}).to_string(),
        );
    }
    let model = envelope["model"].as_str().unwrap_or_default();
    let request = &envelope["request"];
    let usage = expected_gemini_usage(model, request);
    let reply = reply_for(model, request);
    if !streamed {
        let body = json!({"response": whole(model, &reply, usage), "traceId": "mock-trace"});
        return json_response(200, &delivery.headers, body.to_string());
    }
    if !sse {
        return json_response(
            400,
            &[],
            json!({"error": {"code": 400, "message": "streams are SSE here", "status": "INVALID_ARGUMENT"}}).to_string(),
        );
    }
    let frames: Vec<String> = chunks(model, &reply, usage)
        .into_iter()
        .map(|chunk| {
            format!(
                "data: {}\r\n\r\n",
                json!({"response": chunk, "traceId": "mock-trace"})
            )
        })
        .collect();
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", "text/event-stream");
    for (name, value) in &delivery.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(paced_body(frames, &delivery))
        .unwrap_or_default()
}

async fn count(State(state): State<Arc<CodeAssistState>>, request: Request) -> Response {
    let (envelope, delivery, _) = match admitted(&state, request).await {
        Ok(admitted) => admitted,
        Err(reply) => return reply,
    };
    let tokens = 3 + envelope["request"].to_string().len() as u64 / 64;
    json_response(
        200,
        &delivery.headers,
        json!({"totalTokens": tokens}).to_string(),
    )
}
