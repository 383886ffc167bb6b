//! The admin API (`/admin/v1/…`): versioned JSON over the same admin actions as the CLI.
//!
//! Layers, outermost first: the router's panic guard (see `ingress`), then [`require_json_body`]
//! on every admin route (a request body must be `application/json`: a cross-site HTML form can
//! only send the other types, so this closes CSRF against the login), then [`require_admin`] on
//! every route but `POST /admin/v1/login`, which is throttled per address instead.
//! Errors are `{"error":{"type":…,"message":…}}` with the matching status.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use relay_core::account_settings::AccountSettings;
use relay_core::admin::{merge_patch, AdminError, KeyMeta, KeyRow, StoreError};
use relay_core::admin_auth::LoginError;
use relay_core::policy::KeyPolicy;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::serve::ClientAddr;
use crate::AppState;

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/admin/v1/logout", post(logout))
        .route("/admin/v1/keys", get(list_keys).post(create_keys))
        .route("/admin/v1/keys.csv", get(export_keys))
        .route("/admin/v1/keys/batch", post(batch))
        .route("/admin/v1/keys/purge", post(purge))
        .route(
            "/admin/v1/keys/{name}",
            get(get_key).patch(patch_key).delete(delete_key),
        )
        .route("/admin/v1/keys/{name}/restore", post(restore_key))
        .route("/admin/v1/accounts", get(list_accounts).post(add_account))
        .route("/admin/v1/accounts/oauth/start", post(oauth_start))
        .route("/admin/v1/accounts/oauth/finish", post(oauth_finish))
        .route(
            "/admin/v1/accounts/{name}",
            axum::routing::patch(patch_account),
        )
        .route("/admin/v1/accounts/{name}/reset", post(reset_account))
        .route("/admin/v1/accounts/{name}/test", post(test_account))
        .route("/admin/v1/accounts/{name}/events", get(account_events))
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .route("/admin/v1/login", post(login))
        .merge(protected)
        .route_layer(middleware::from_fn(require_json_body))
}

struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Invalid(message) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
            }
            AdminError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            AdminError::Store(StoreError::Conflict { .. }) => {
                Self::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            AdminError::Store(store_error) => {
                tracing::error!(error = %store_error, "admin action failed in the store");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store failed",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"type": self.kind, "message": self.message}})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Refuses a request that carries a body not declared as `application/json` (415).
async fn require_json_body(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared_empty = headers
        .get(CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() == b"0");
    let has_body = !declared_empty && !request.body().is_end_stream();
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !is_json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "admin request bodies are JSON: send Content-Type: application/json",
        )
        .into_response();
    }
    next.run(request).await
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = bearer(request.headers()).map(str::to_owned);
    let admin = match token {
        Some(token) => state.admin_auth.authenticate(&token).await,
        None => Ok(None),
    };
    match admin {
        Ok(Some(_)) => next.run(request).await,
        Ok(None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in at POST /admin/v1/login and send the token as Authorization: Bearer",
        )
        .into_response(),
        Err(error) => ApiError::from(AdminError::Store(error)).into_response(),
    }
}

/// An admin body (at most [`MAX_ADMIN_BODY`]) must have arrived whole within this: the body pace
/// alone would let an unauthenticated sign-in trickle 64 KiB for ten minutes and keep its
/// connection busy (never evicted) all that time.
const ADMIN_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body arrived too slowly",
    )
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let collected = tokio::time::timeout(
        ADMIN_BODY_DEADLINE,
        Limited::new(body, MAX_ADMIN_BODY).collect(),
    )
    .await
    .map_err(|_| too_slow())?;
    Ok(collected
        .map_err(|read_error| {
            if crate::pace::is_too_slow(read_error.as_ref()) {
                return too_slow();
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("admin requests are at most {MAX_ADMIN_BODY} bytes"),
            )
        })?
        .to_bytes())
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body: {error}"),
        )
    })
}

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    parse_json(&read_body(body).await?)
}

/// A body that may be left out (then every field takes its default); one that is sent must parse.
async fn read_optional_json<T: DeserializeOwned + Default>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse_json(&bytes)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(State(state): State<AppState>, request: Request) -> ApiResult {
    let client_ip = request.extensions().get::<ClientAddr>().map(|addr| addr.0);
    let body: LoginBody = read_json(request.into_body()).await?;
    match state
        .admin_auth
        .login(&body.username, &body.password, client_ip)
        .await
    {
        Ok(session) => Ok(Json(
            json!({"token": session.token, "expires_at_ms": session.expires_at_ms}),
        )
        .into_response()),
        Err(LoginError::Invalid) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            LoginError::Invalid.to_string(),
        )),
        Err(error @ LoginError::Throttled { retry_after_ms }) => Err(ApiError {
            retry_after_s: Some(
                u64::try_from(retry_after_ms)
                    .unwrap_or(0)
                    .div_ceil(1000)
                    .max(1),
            ),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                error.to_string(),
            )
        }),
        Err(LoginError::Busy) => Err(ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                LoginError::Busy.to_string(),
            )
        }),
        Err(LoginError::Store(error)) => Err(ApiError::from(AdminError::Store(error))),
    }
}

async fn logout(State(state): State<AppState>, request: Request) -> ApiResult {
    if let Some(token) = bearer(request.headers()) {
        state
            .admin_auth
            .logout(token)
            .await
            .map_err(|error| ApiError::from(AdminError::Store(error)))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn key_json(key: &KeyRow) -> Value {
    let mut value = serde_json::to_value(key).unwrap_or_default();
    value["policy"] = serde_json::from_str(&key.policy).unwrap_or_default();
    value
}

async fn list_keys(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let trash = query.get("trash").is_some_and(|value| value == "true");
    let keys = state.admin.list_keys(trash).await?;
    Ok(Json(json!({"keys": keys.iter().map(key_json).collect::<Vec<_>>()})).into_response())
}

async fn get_key(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let keys = state
        .admin
        .list_keys(false)
        .await?
        .into_iter()
        .chain(state.admin.list_keys(true).await?);
    let key = keys
        .into_iter()
        .find(|key| key.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no key named '{name}'"),
            )
        })?;
    Ok(Json(key_json(&key)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    count: Option<u32>,
    #[serde(default)]
    policy: KeyPolicy,
    #[serde(default)]
    description: String,
    owner: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

async fn create_keys(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: CreateBody = read_json(request.into_body()).await?;
    let meta = KeyMeta {
        description: body.description,
        owner: body.owner,
        tags: body.tags,
    };
    let created = match body.count {
        Some(count) => {
            state
                .admin
                .create_keys(&body.name, count, &body.policy, &meta)
                .await?
        }
        None => vec![
            state
                .admin
                .create_key(&body.name, &body.policy, &meta)
                .await?,
        ],
    };
    let keys: Vec<Value> = created
        .iter()
        .map(|key| json!({"id": key.id, "name": key.name, "key": key.secret, "key_hint": key.hint}))
        .collect();
    Ok((StatusCode::CREATED, Json(json!({"keys": keys}))).into_response())
}

/// A change to a key: policy fields (merge patch: `null` removes), notes, status.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    policy: Option<serde_json::Map<String, Value>>,
    description: Option<String>,
    owner: Option<Option<String>>,
    tags: Option<Vec<String>>,
    status: Option<String>,
}

async fn apply_patch(state: &AppState, name: &str, patch: &KeyPatch) -> Result<(), ApiError> {
    if let Some(policy) = &patch.policy {
        state.admin.patch_key_policy(name, policy).await?;
    }
    if patch.description.is_some() || patch.owner.is_some() || patch.tags.is_some() {
        state
            .admin
            .edit_key_meta(name, |meta| {
                if let Some(description) = &patch.description {
                    meta.description.clone_from(description);
                }
                if let Some(owner) = &patch.owner {
                    meta.owner.clone_from(owner);
                }
                if let Some(tags) = &patch.tags {
                    meta.tags.clone_from(tags);
                }
            })
            .await?;
    }
    match patch.status.as_deref() {
        None => {}
        Some("active") => state.admin.set_key_enabled(name, true).await?,
        Some("disabled") => state.admin.set_key_enabled(name, false).await?,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("status '{other}' is not active or disabled"),
            ))
        }
    }
    Ok(())
}

async fn patch_key(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let patch: KeyPatch = read_json(request.into_body()).await?;
    apply_patch(&state, &name, &patch).await?;
    get_key(State(state), Path(name)).await
}

async fn delete_key(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    state.admin.delete_key(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restore_key(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    state.admin.restore_key(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    names: Vec<String>,
    /// `edit`, `disable`, `enable`, `delete` or `restore`.
    action: String,
    #[serde(default)]
    patch: Option<KeyPatch>,
}

async fn batch(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: BatchBody = read_json(request.into_body()).await?;
    for name in &body.names {
        match body.action.as_str() {
            "edit" => {
                apply_patch(
                    &state,
                    name,
                    body.patch.as_ref().unwrap_or(&KeyPatch::default()),
                )
                .await?
            }
            "disable" => state.admin.set_key_enabled(name, false).await?,
            "enable" => state.admin.set_key_enabled(name, true).await?,
            "delete" => state.admin.delete_key(name).await?,
            "restore" => state.admin.restore_key(name).await?,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("unknown batch action '{other}'"),
                ))
            }
        }
    }
    Ok(Json(json!({"done": body.names.len()})).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    older_than_secs: Option<u64>,
}

async fn purge(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: PurgeBody = read_optional_json(request.into_body()).await?;
    let older_than_ms = body.older_than_secs.map_or(-1, |secs| {
        i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
    });
    let purged = state.admin.purge_trash(older_than_ms).await?;
    Ok(Json(json!({"purged": purged})).into_response())
}

async fn export_keys(State(state): State<AppState>) -> ApiResult {
    let csv = state.admin.export_keys_csv().await?;
    let mut response = Response::new(Body::from(csv));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(response)
}

fn account_json(
    account: &relay_core::admin::AccountRow,
    status: Option<&relay_core::relay::AccountStatus>,
) -> Value {
    let mut value = serde_json::to_value(account).unwrap_or_default();
    value["settings"] = serde_json::from_str(&account.settings).unwrap_or_default();
    value["live"] = serde_json::to_value(status).unwrap_or_default();
    value["has_proxy"] = json!(account.proxy_sealed.is_some());
    value
}

async fn list_accounts(State(state): State<AppState>) -> ApiResult {
    let statuses = state.relay.account_statuses();
    let accounts = state.admin.list_accounts().await?;
    let listed: Vec<Value> = accounts
        .iter()
        .map(|account| {
            account_json(
                account,
                statuses.iter().find(|status| status.name == account.name),
            )
        })
        .collect();
    Ok(Json(json!({"accounts": listed})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAccountBody {
    platform: String,
    name: String,
    /// An API key, or for `claude-oauth` a setup token; none for `codex` (see `auth_json`).
    #[serde(default)]
    api_key: String,
    /// A `codex` account's sign-in: Codex's `auth.json`, as an object or as its text.
    auth_json: Option<Value>,
    /// A `gemini-oauth` account's sign-in: Gemini CLI's `oauth_creds.json`, likewise.
    oauth_creds: Option<Value>,
    base_url: Option<String>,
    #[serde(default = "default_priority")]
    priority: i64,
    settings: Option<serde_json::Map<String, Value>>,
    /// `http://`, `https://` or `socks5://[user:pass@]host:port`.
    proxy: Option<String>,
}

fn default_priority() -> i64 {
    50
}

async fn add_account(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: AddAccountBody = read_json(request.into_body()).await?;
    let settings = match &body.settings {
        Some(patch) => merge_patch(&AccountSettings::default(), patch, "settings")?,
        None => AccountSettings::default(),
    };
    let row = state
        .admin
        .add_account(relay_core::admin::NewAccountInput {
            platform: body.platform,
            name: body.name,
            api_key: body.api_key,
            base_url: body.base_url,
            priority: body.priority,
            settings,
            proxy: body.proxy,
            auth_json: body
                .auth_json
                .or(body.oauth_creds)
                .map(|value| match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                }),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(account_json(&row, None))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountPatch {
    settings: Option<serde_json::Map<String, Value>>,
    status: Option<String>,
    /// A proxy URL, or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    proxy: Option<Option<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

async fn patch_account(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let patch: AccountPatch = read_json(request.into_body()).await?;
    // Every part is checked before any is written: a patch is applied whole or not at all.
    let enabled = match patch.status.as_deref() {
        None => None,
        Some("active") => Some(true),
        Some("disabled") => Some(false),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("status '{other}' is not active or disabled"),
            ))
        }
    };
    if let Some(Some(url)) = &patch.proxy {
        state.admin.check_proxy(url)?;
    }
    // Settings are validated before they are written (the proxy, already checked, after).
    if let Some(settings) = &patch.settings {
        state.admin.patch_account_settings(&name, settings).await?;
    }
    if let Some(proxy) = &patch.proxy {
        state
            .admin
            .set_account_proxy(&name, proxy.as_deref())
            .await?;
    }
    if let Some(enabled) = enabled {
        state.admin.set_account_enabled(&name, enabled).await?;
    }
    let account = state
        .admin
        .list_accounts()
        .await?
        .into_iter()
        .find(|account| account.name == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no account named '{name}'"),
            )
        })?;
    Ok(Json(account_json(&account, None)).into_response())
}

async fn reset_account(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    state.admin.reset_account(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn test_account(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let result = state.relay.test_account(&name).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no account named '{name}'"),
        )
    })?;
    Ok(Json(result).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthStartBody {
    name: String,
    /// `claude-oauth` (the default) or `codex`.
    platform: Option<String>,
}

async fn oauth_start(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: OAuthStartBody = read_json(request.into_body()).await?;
    let url = state
        .admin
        .start_oauth(
            &body.name,
            body.platform.as_deref().unwrap_or("claude-oauth"),
            state.relay.oauth_settings(),
        )
        .await?;
    Ok(Json(json!({"authorize_url": url})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthFinishBody {
    name: String,
    code: String,
    base_url: Option<String>,
    #[serde(default = "default_priority")]
    priority: i64,
}

async fn oauth_finish(State(state): State<AppState>, request: Request) -> ApiResult {
    let body: OAuthFinishBody = read_json(request.into_body()).await?;
    let row = state
        .admin
        .finish_oauth(
            &body.name,
            &body.code,
            state.relay.oauth_settings(),
            body.base_url,
            body.priority,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(account_json(&row, None))).into_response())
}

async fn account_events(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let events = state.admin.account_events(&name, 100).await?;
    Ok(Json(json!({"events": events})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_admin_body_that_keeps_a_pace_but_never_ends_is_cut_at_the_deadline() {
        // 1 KiB every 5 s meets the pace; at that rate 64 KiB would take five minutes.
        let chunks = futures_util::stream::unfold(0u32, |sent| async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Some((
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                    b' ';
                    1024
                ]))),
                sent + 1,
            ))
        });
        let started = tokio::time::Instant::now();
        let refused = read_body(Body::new(http_body_util::StreamBody::new(chunks)))
            .await
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() <= ADMIN_BODY_DEADLINE + std::time::Duration::from_secs(1));
    }
}
