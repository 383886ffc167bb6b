//! Operational endpoints: liveness with dependency status, and Prometheus metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::CONTENT_TYPE;
use http::StatusCode;
use serde_json::json;

use crate::AppState;

/// Each dependency's state: 200 when all answer, 503 (`degraded`) when one does not.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let relay = &state.relay;
    let (store_ok, shared) = tokio::join!(relay.check_store(), relay.check_shared());
    let redis_ok = shared.is_none_or(|shared| shared.round_trip.is_some());
    let healthy = store_ok && redis_ok;
    let backend = relay.store_backend();
    let mut body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "store_backend": backend,
        "usage_queue_depth": relay.usage_sink().queue_depth(),
    });
    if let Some(shared) = shared {
        body["redis"] = json!(match shared.round_trip {
            Some(_) => "ok",
            None => "unreachable",
        });
        body["redis_round_trip_ms"] = json!(shared
            .round_trip
            .map(|round_trip| round_trip.as_secs_f64() * 1000.0));
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Whether this instance serves requests now: keys and accounts are in memory, so only a
/// shared Redis that does not answer (with `redis_unavailable = refuse`) makes it unready, or
/// a database that has not answered for so long that the usage queue is full. A database
/// that does not answer for a while does not: requests are served and their usage queued.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let shared = state.relay.check_shared().await;
    let ready = shared.is_none_or(|shared| shared.round_trip.is_some() || shared.serves_without)
        && !state.relay.usage_sink().is_full();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
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
    metrics.observe_store(relay.store_stats());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
        .into_response()
}
