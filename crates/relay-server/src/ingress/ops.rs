//! Operational endpoints: liveness with dependency status, and Prometheus metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use serde_json::json;

use crate::AppState;

pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let store_ok = state.relay.check_store().await;
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if store_ok { "ok" } else { "degraded" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "usage_queue_depth": state.relay.usage_sink().queue_depth(),
    });
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let relay = &state.relay;
    let sink = relay.usage_sink();
    let metrics = relay.metrics();
    metrics
        .usage_queue_depth
        .set(i64::try_from(sink.queue_depth()).unwrap_or(i64::MAX));
    metrics
        .usage_written
        .set(i64::try_from(sink.written_total()).unwrap_or(i64::MAX));
    metrics
        .usage_lost
        .set(i64::try_from(sink.lost_total()).unwrap_or(i64::MAX));
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
        .into_response()
}
