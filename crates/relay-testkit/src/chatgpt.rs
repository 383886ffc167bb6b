//! The mock of what a ChatGPT subscription talks to: OpenAI's OAuth token endpoint
//! (`POST /oauth/token`, as `codex login` and its refreshes use it) and the ChatGPT backend's
//! Codex endpoint (`POST /backend-api/codex/responses` and `/responses/compact`).
//!
//! The token endpoint issues JWTs: an id token whose `https://api.openai.com/auth` claim names
//! the workspace (`chatgpt_account_id`) and plan, and an access token that says when it expires.
//! Refresh tokens rotate: each works once; reusing one is a 401 `refresh_token_reused`, as with
//! the real server.
//!
//! The backend checks what the real one does: a bearer access token it issued, the workspace in
//! `chatgpt-account-id`, `stream: true` and `store: false`, and no `max_output_tokens`. It
//! answers as the mock Responses API does (`crate::responses`), always streamed, with the usage
//! window headers (`x-codex-primary-*`, `x-codex-secondary-*`). Faults are scripted per access
//! token; [`Behavior::codex_usage_limit`] is the 429 of a used-up window.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use crate::behavior::{deliver, Script};
pub use crate::behavior::{Behavior, RecordedRequest};
use crate::openai::{json_response, unix_now};

/// The workspace the mock's sign-ins belong to.
pub const ACCOUNT_ID: &str = "ws-mock-0001";
/// The code the mock's authorization "page" gives.
pub const AUTH_CODE: &str = "mock-chatgpt-code";

#[derive(Debug)]
struct Auth {
    issued: u32,
    refreshes: u32,
    current_refresh: Option<String>,
    valid_access: HashSet<String>,
    last_access: String,
    expires_in_s: i64,
    delay: Duration,
    plan: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            issued: 0,
            refreshes: 0,
            current_refresh: None,
            valid_access: HashSet::new(),
            last_access: String::new(),
            expires_in_s: 3600,
            delay: Duration::ZERO,
            plan: "plus".into(),
        }
    }
}

#[derive(Debug, Default)]
struct ChatGptState {
    script: Script,
    auth: Mutex<Auth>,
    /// Used percentages of the primary and secondary windows the backend reports.
    windows: Mutex<(f64, f64)>,
}

/// A running mock; stops when dropped.
#[derive(Debug)]
pub struct MockChatGpt {
    addr: SocketAddr,
    state: Arc<ChatGptState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MockChatGpt {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn jwt(payload: &Value) -> String {
    let encode =
        |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.mock-signature",
        encode(&json!({"alg": "RS256", "typ": "JWT"})),
        encode(payload)
    )
}

impl MockChatGpt {
    pub async fn start() -> Self {
        let state = Arc::new(ChatGptState {
            windows: Mutex::new((12.0, 30.0)),
            ..ChatGptState::default()
        });
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/backend-api/codex/responses", post(responses))
            .route("/backend-api/codex/responses/compact", post(compact))
            .with_state(state.clone());
        let (addr, server) = crate::behavior::serve_on_loopback(app, "ChatGPT").await;
        Self {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Codex endpoint's base, as a `codex` account's `--base-url`.
    pub fn base_url(&self) -> String {
        format!("{}/backend-api/codex", self.url())
    }

    /// The token endpoint (`oauth.token_url` of the ChatGPT provider).
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url())
    }

    fn auth(&self) -> std::sync::MutexGuard<'_, Auth> {
        self.state
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lifetime of the access tokens issued from now on, and how long the token endpoint takes.
    pub fn set_token_behavior(&self, expires_in_s: i64, delay: Duration) {
        let mut auth = self.auth();
        auth.expires_in_s = expires_in_s;
        auth.delay = delay;
    }

    /// The plan the id tokens name from now on.
    pub fn set_plan(&self, plan: &str) {
        self.auth().plan = plan.to_owned();
    }

    /// How many refresh grants succeeded.
    pub fn refresh_count(&self) -> u32 {
        self.auth().refreshes
    }

    /// The access token issued last.
    pub fn current_access(&self) -> String {
        self.auth().last_access.clone()
    }

    /// Revokes an access token early: requests with it get 401.
    pub fn revoke_access(&self, token: &str) {
        self.auth().valid_access.remove(token);
    }

    /// The used percentages of the windows the backend reports from now on.
    pub fn set_windows(&self, primary_used: f64, secondary_used: f64) {
        *self
            .state
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (primary_used, secondary_used);
    }

    /// Signs in as `codex login` would and returns the `auth.json` it writes.
    pub fn auth_json(&self) -> String {
        let grant = issue(&mut self.auth());
        json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": grant["id_token"],
                "access_token": grant["access_token"],
                "refresh_token": grant["refresh_token"],
                "account_id": ACCOUNT_ID,
            },
            "last_refresh": "2026-12-01T00:00:00Z",
        })
        .to_string()
    }

    /// Queues behaviours for requests carrying this access token, in order.
    pub fn script(&self, access_token: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state.script.push(access_token, behaviors);
    }

    /// Every backend request received so far (`api_key` is its bearer token).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.script.requests()
    }
}

/// A new token set (a sign-in or a refresh).
fn issue(auth: &mut Auth) -> Value {
    auth.issued += 1;
    let exp = unix_now() as i64 + auth.expires_in_s;
    // The access token is a JWT whose `exp` says when it expires; its `jti` makes each unique.
    let access = jwt(&json!({
        "exp": exp, "jti": format!("chatgpt-access-{}", auth.issued),
        "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT_ID},
    }));
    let refresh = format!("chatgpt-refresh-{}", auth.issued);
    auth.valid_access.insert(access.clone());
    auth.last_access.clone_from(&access);
    auth.current_refresh = Some(refresh.clone());
    let id_token = jwt(&json!({
        "email": "member@example.com",
        "https://api.openai.com/auth": {
            "chatgpt_account_id": ACCOUNT_ID, "chatgpt_plan_type": auth.plan,
            "chatgpt_user_id": "user-mock",
        },
    }));
    json!({
        "id_token": id_token, "access_token": access, "refresh_token": refresh,
        "expires_in": auth.expires_in_s, "token_type": "Bearer",
        "scope": "openid profile email offline_access",
    })
}

fn token_error(code: &str, message: &str) -> Response {
    json_response(
        401,
        &[],
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
            .to_string(),
    )
}

async fn token(State(state): State<Arc<ChatGptState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let form = parts
        .headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let fields: Value = if form {
        form_urlencoded::parse(&bytes)
            .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let delay = state.auth.lock().map(|auth| auth.delay).unwrap_or_default();
    tokio::time::sleep(delay).await;
    let mut auth = state
        .auth
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if fields["client_id"] != "app_EMoamEEZ73f0CkXaXp7hrann" {
        return token_error("invalid_client", "Unknown client.");
    }
    match fields["grant_type"].as_str() {
        // `codex login` exchanges the code as a form, with its PKCE verifier.
        Some("authorization_code") if form => {
            let valid = fields["code"] == AUTH_CODE
                && fields["redirect_uri"] == "http://localhost:1455/auth/callback"
                && fields["code_verifier"]
                    .as_str()
                    .is_some_and(|verifier| verifier.len() >= 43);
            if !valid {
                return token_error("invalid_grant", "The authorization code is invalid.");
            }
        }
        Some("refresh_token") if !form => {
            let valid = auth.current_refresh.is_some()
                && fields["refresh_token"].as_str() == auth.current_refresh.as_deref();
            if !valid {
                return token_error(
                    "refresh_token_reused",
                    "Your refresh token has already been used to generate a new access token. Please try signing in again.",
                );
            }
            auth.refreshes += 1;
        }
        _ => return token_error("unsupported_grant_type", "Unsupported grant."),
    }
    json_response(200, &[], issue(&mut auth).to_string())
}

/// The window headers the backend sends on every answer.
fn window_headers(state: &ChatGptState) -> Vec<(String, String)> {
    let (primary, secondary) = *state
        .windows
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    [
        ("x-codex-primary-used-percent", primary.to_string()),
        ("x-codex-primary-window-minutes", "300".into()),
        ("x-codex-primary-reset-after-seconds", "3600".into()),
        ("x-codex-secondary-used-percent", secondary.to_string()),
        ("x-codex-secondary-window-minutes", "10080".into()),
        ("x-codex-secondary-reset-after-seconds", "86400".into()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

fn detail(status: u16, message: &str) -> Response {
    json_response(status, &[], json!({"detail": message}).to_string())
}

/// Records the request, applies a scripted fault, checks the credentials; the body if it may
/// be answered.
async fn admit(
    state: &ChatGptState,
    request: Request,
) -> Result<(Value, crate::behavior::Delivery), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let token = parts
        .headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let account = parts
        .headers
        .get("chatgpt-account-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let behavior = state.script.record(RecordedRequest {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: body.clone(),
        api_key: token.clone(),
    });
    let mut delivery = match deliver(behavior).await {
        Ok(delivery) => delivery,
        Err((status, mut headers, body)) => {
            headers.extend(window_headers(state));
            return Err(json_response(status, &headers, body));
        }
    };
    let known = state
        .auth
        .lock()
        .map(|auth| auth.valid_access.contains(&token))
        .unwrap_or(false);
    if !known {
        return Err(token_error(
            "token_expired",
            "Provided authentication token is expired. Please try signing in again.",
        ));
    }
    if account.as_deref() != Some(ACCOUNT_ID) {
        return Err(detail(403, "chatgpt-account-id does not match the token"));
    }
    delivery.headers.extend(window_headers(state));
    Ok((body, delivery))
}

async fn responses(State(state): State<Arc<ChatGptState>>, request: Request) -> Response {
    let (body, delivery) = match admit(&state, request).await {
        Ok(admitted) => admitted,
        Err(reply) => return reply,
    };
    if body["stream"] != true {
        return detail(400, "Stream must be set to true");
    }
    if body["store"] != false {
        return detail(400, "Store must be set to false");
    }
    if body.get("max_output_tokens").is_some() {
        return detail(400, "Unsupported parameter: max_output_tokens");
    }
    crate::responses::answer(&body, &delivery)
}

async fn compact(State(state): State<Arc<ChatGptState>>, request: Request) -> Response {
    match admit(&state, request).await {
        Ok((body, delivery)) => crate::responses::compaction(&body, &delivery),
        Err(reply) => reply,
    }
}

impl Behavior {
    /// The backend's 429 when a subscription window is used up, naming when it resets.
    pub fn codex_usage_limit(resets_in_seconds: u64) -> Self {
        Self::Status {
            status: 429,
            headers: Vec::new(),
            body: json!({"error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_in_seconds": resets_in_seconds,
            }})
            .to_string(),
        }
    }
}
