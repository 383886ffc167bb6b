//! The router. Layers, outermost first:
//! 1. `catch_panic` — a panic in a handler becomes a clean 500 in the dialect the path implies,
//!    never a dropped connection or a panic message;
//! 2. `check_host` — only when `allowed_hosts` is set: a request for any other `Host` is refused
//!    (421), so DNS rebinding cannot reach a loopback install from a browser;
//! 3. the routes; authentication happens inside each relay handler (it needs the key anyway),
//!    and only the routes in [`UNAUTHENTICATED_ROUTES`] answer without a key.

mod anthropic;
mod gemini;
mod openai;
mod ops;
mod shared;

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::FutureExt;
use relay_protocol::ErrorKind;

use crate::error::{error, render_error};
use crate::AppState;
use shared::{dialect_of_path, new_request_id};

/// Routes that answer without a relay key or an admin session (`/admin/v1/login` checks a
/// password instead).
pub const UNAUTHENTICATED_ROUTES: &[&str] = &["/health", "/ready", "/metrics", "/admin/v1/login"];

/// Prefixes under which the Anthropic API is served: the native one and the aliases of the
/// previous relay (claude-relay-service), so migrating users keep their base URLs.
const ANTHROPIC_PREFIXES: &[&str] = &["", "/api", "/claude"];

/// Prefixes under which the OpenAI API is served.
const OPENAI_PREFIXES: &[&str] = &["", "/openai"];

async fn models(state: axum::extract::State<AppState>, request: Request) -> Response {
    if request.headers().contains_key("anthropic-version") {
        anthropic::models(state, request).await
    } else {
        openai::models(state, request).await
    }
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics));
    for prefix in ANTHROPIC_PREFIXES {
        router = router
            .route(&format!("{prefix}/v1/messages"), post(anthropic::messages))
            .route(
                &format!("{prefix}/v1/messages/count_tokens"),
                post(anthropic::count_tokens),
            );
        if !prefix.is_empty() {
            router = router.route(&format!("{prefix}/v1/models"), get(anthropic::models));
        }
    }
    // `GET /v1/models` is shared: Anthropic's shape when the request names an
    // `anthropic-version`, OpenAI's otherwise.
    router = router.route("/v1/models", get(models));
    for prefix in OPENAI_PREFIXES {
        router = router
            .route(
                &format!("{prefix}/v1/chat/completions"),
                post(openai::chat_completions),
            )
            .route(
                &format!("{prefix}/v1/responses"),
                post(openai::responses).get(openai::responses_websocket),
            )
            .route(
                &format!("{prefix}/v1/responses/compact"),
                post(openai::responses_compact),
            );
    }
    router = router.route("/openai/v1/models", get(openai::models));
    // The Gemini API, under its own versions and the `/gemini` alias (`GET /v1/models` stays
    // the shared listing above).
    for prefix in ["", "/gemini"] {
        for version in ["/v1beta", "/v1"] {
            router = router.route(
                &format!("{prefix}{version}/models/{{*target}}"),
                post(gemini::model_action).get(gemini::get_model),
            );
        }
        router = router.route(&format!("{prefix}/v1beta/models"), get(gemini::list_models));
    }
    router = router.route("/gemini/v1/models", get(gemini::list_models));
    for path in [
        "/v1/usage",
        "/api/v1/usage",
        "/v1/key-info",
        "/api/v1/key-info",
    ] {
        router = router.route(path, get(anthropic::key_info));
    }
    router = router
        .merge(crate::admin::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    if state.settings.allowed_hosts.is_some() {
        router = router.layer(middleware::from_fn_with_state(state.clone(), check_host));
    }
    router
        .layer(middleware::from_fn(catch_panic))
        .with_state(state)
}

/// The request's host name without its port: from `Host`, or the URI for HTTP/2.
fn host_name(request: &Request) -> Option<String> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host())?;
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(address, _)| address)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    Some(name.to_ascii_lowercase())
}

async fn check_host(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = state.settings.allowed_hosts.as_deref().unwrap_or_default();
    if host_name(&request).is_some_and(|host| allowed.contains(&host)) {
        return next.run(request).await;
    }
    with_status(
        request.uri().path(),
        ErrorKind::Permission,
        "this relay does not serve that host name (see server.allowed_hosts)",
        http::StatusCode::MISDIRECTED_REQUEST,
    )
}

/// An error in the dialect `path` implies, with a status other than its kind's own.
fn with_status(path: &str, kind: ErrorKind, message: &str, status: http::StatusCode) -> Response {
    let mut response = render_error(
        dialect_of_path(path),
        &error(kind, message),
        &new_request_id(),
    );
    *response.status_mut() = status;
    response
}

async fn not_found(uri: http::Uri) -> Response {
    render_error(
        dialect_of_path(uri.path()),
        &error(ErrorKind::NotFound, "no such endpoint on this relay"),
        &new_request_id(),
    )
}

async fn method_not_allowed(uri: http::Uri) -> Response {
    with_status(
        uri.path(),
        ErrorKind::InvalidRequest,
        "method not allowed on this endpoint",
        http::StatusCode::METHOD_NOT_ALLOWED,
    )
}

async fn catch_panic(request: Request, next: Next) -> Response {
    let dialect = dialect_of_path(request.uri().path());
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("handler panicked; answered 500");
            render_error(
                dialect,
                &error(ErrorKind::Api, "internal error in the relay"),
                &new_request_id(),
            )
        }
    }
}
