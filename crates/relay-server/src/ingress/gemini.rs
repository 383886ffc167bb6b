//! The Gemini ingress (Gemini CLI, the google-genai SDKs): `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (SSE with `?alt=sse`, else one JSON array arriving over time) and
//! `:countTokens`; `GET /v1beta/models` and `/v1beta/models/{model}`; the same under `/v1/` and
//! `/gemini/…`. Errors in Gemini's shape.
//!
//! The relay key comes in `x-goog-api-key`, `?key=` or `Authorization: Bearer` (two different
//! ones are refused). `?key=` is never forwarded upstream, and the query is never logged.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::StatusCode;
use relay_core::relay::{Endpoint, RelayError, RelayRequest};
use relay_protocol::{Dialect, ErrorKind};
use serde::Deserialize;
use tokio::time::Instant;

use super::shared::{
    client_ip, new_request_id, observe, one_credential, parse_head, read_body, rejection_error,
    relay,
};
use crate::error::{error, render_error};
use crate::AppState;

/// The fields of a `generateContent` request the relay reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateHead {
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<u64>,
    candidate_count: Option<u64>,
}

/// The relay key as Gemini clients send it.
fn presented_key<'a>(
    headers: &'a http::HeaderMap,
    query: &'a [(Cow<'a, str>, Cow<'a, str>)],
) -> Result<Option<&'a str>, RelayError> {
    let google = headers
        .get_all("x-goog-api-key")
        .iter()
        .map(|value| value.to_str().ok().map(str::trim));
    let in_query = query
        .iter()
        .filter(|(name, _)| name == "key")
        .map(|(_, value)| Some(value.trim()));
    let bearers = headers.get_all(AUTHORIZATION).iter().filter_map(|value| {
        let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(Some(token.trim()))
    });
    one_credential(
        google.chain(in_query).chain(bearers),
        "x-goog-api-key, ?key= or Authorization",
    )
}

/// The query as it goes upstream: everything but the key.
fn forwarded_query(query: &[(Cow<'_, str>, Cow<'_, str>)]) -> Option<String> {
    let kept: Vec<_> = query.iter().filter(|(name, _)| name != "key").collect();
    (!kept.is_empty()).then(|| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish()
    })
}

/// An error as Gemini clients expect it: a refused key is Google's 400 `API_KEY_INVALID`.
fn render(relay_error: &RelayError, request_id: &str) -> Response {
    if relay_error.kind != ErrorKind::Authentication {
        return render_error(Dialect::Gemini, relay_error, request_id);
    }
    let body = serde_json::json!({"error": {
        "code": 400,
        "message": format!("API key not valid: {}", relay_error.message),
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "claude-relay"}],
    }});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn authenticate(
    state: &AppState,
    parts: &http::request::Parts,
    query: &[(Cow<'_, str>, Cow<'_, str>)],
) -> Result<std::sync::Arc<relay_core::keys::KeyEntry>, RelayError> {
    let key = presented_key(&parts.headers, query)?;
    state
        .keys
        .authenticate(key, client_ip(&parts.extensions))
        .map_err(rejection_error)
}

/// `POST …/models/{model}:{method}`.
pub(crate) async fn model_action(
    State(state): State<AppState>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let prepared = prepare(&state, request, &target, &request_id, received_at).await;
    let route = match &prepared {
        Ok(request) if request.endpoint == Endpoint::GeminiCountTokens => "gemini_count_tokens",
        _ => "gemini_generate",
    };
    match prepared {
        Ok(request) => {
            relay(
                &state,
                Dialect::Gemini,
                route,
                &request_id,
                received_at,
                Ok(request),
            )
            .await
        }
        Err(relay_error) => {
            let response = render(&relay_error, &request_id);
            observe(&state, route, &request_id, &response, received_at);
            response
        }
    }
}

async fn prepare(
    state: &AppState,
    request: Request,
    target: &str,
    request_id: &str,
    received_at: Instant,
) -> Result<RelayRequest, RelayError> {
    let (parts, body) = request.into_parts();
    let query: Vec<(Cow<'_, str>, Cow<'_, str>)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).collect();
    let key = authenticate(state, &parts, &query)?;
    let (model, method) = target.rsplit_once(':').ok_or_else(|| {
        error(
            ErrorKind::NotFound,
            format!("no method in '{target}': use models/MODEL:generateContent, :streamGenerateContent or :countTokens"),
        )
    })?;
    let (endpoint, stream) = match method {
        "generateContent" => (Endpoint::GeminiGenerate, false),
        "streamGenerateContent" => (Endpoint::GeminiGenerate, true),
        "countTokens" => (Endpoint::GeminiCountTokens, false),
        other => {
            return Err(error(
                ErrorKind::NotFound,
                format!("the relay does not serve models/{model}:{other}"),
            ))
        }
    };
    if model.is_empty() {
        return Err(error(ErrorKind::InvalidRequest, "the path names no model"));
    }
    let body = read_body(body, state.settings.max_body_bytes).await?;
    let head: GenerateHead = parse_head(&body)?;
    let config = head.generation_config;
    let forwarded = forwarded_query(&query);
    Ok(RelayRequest {
        request_id: request_id.to_owned(),
        key,
        endpoint,
        query: forwarded,
        headers: parts.headers,
        model: model.to_owned(),
        stream,
        max_tokens: config.as_ref().and_then(|config| config.max_output_tokens),
        choices: config
            .as_ref()
            .and_then(|config| config.candidate_count)
            .unwrap_or(1)
            .clamp(1, 8),
        include_usage: false,
        compaction: false,
        session: None,
        claude_code_marks: false,
        client_ip: client_ip(&parts.extensions),
        received_at,
        body,
    })
}

fn model_object(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("models/{name}"),
        "baseModelId": name,
        "displayName": name,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    })
}

/// `GET …/models` and `GET …/models/{model}`: the models the key may use, in Gemini's shape.
async fn listing(state: AppState, request: Request, one: Option<String>) -> Response {
    let received_at = Instant::now();
    let request_id = new_request_id();
    let (parts, _) = request.into_parts();
    let query: Vec<(Cow<'_, str>, Cow<'_, str>)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).collect();
    let response = match authenticate(&state, &parts, &query) {
        Err(relay_error) => render(&relay_error, &request_id),
        Ok(key) => {
            let names: Vec<String> = state
                .relay
                .model_names()
                .into_iter()
                .filter(|id| relay_core::access::model_allowed(&key.policy, id))
                .collect();
            let body = match one {
                None => Some(serde_json::json!({
                    "models": names.iter().map(|name| model_object(name)).collect::<Vec<_>>(),
                })),
                Some(name) => {
                    let name = name.strip_prefix("models/").unwrap_or(&name).to_owned();
                    (names.contains(&name) || name.starts_with("gemini-"))
                        .then(|| model_object(&name))
                }
            };
            match body {
                Some(body) => {
                    let mut response = Response::new(Body::from(body.to_string()));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                None => render(
                    &error(ErrorKind::NotFound, "no such model here"),
                    &request_id,
                ),
            }
        }
    };
    observe(&state, "gemini_models", &request_id, &response, received_at);
    response
}

pub(crate) async fn list_models(State(state): State<AppState>, request: Request) -> Response {
    listing(state, request, None).await
}

pub(crate) async fn get_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    listing(state, request, Some(model)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(text.as_bytes()).collect()
    }

    #[test]
    fn the_key_is_read_from_any_place_and_never_forwarded() {
        let mut headers = http::HeaderMap::new();
        let pairs = query("alt=sse&key=cr_a");
        assert_eq!(presented_key(&headers, &pairs), Ok(Some("cr_a")));
        assert_eq!(forwarded_query(&pairs).as_deref(), Some("alt=sse"));
        assert_eq!(forwarded_query(&query("key=cr_a")), None);
        headers.insert("x-goog-api-key", HeaderValue::from_static("cr_a"));
        assert_eq!(presented_key(&headers, &pairs), Ok(Some("cr_a")));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer cr_b"));
        assert!(presented_key(&headers, &pairs).is_err());
        assert_eq!(presented_key(&http::HeaderMap::new(), &[]), Ok(None));
    }
}
