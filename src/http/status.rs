//! Probes and status: `GET /healthz`, `GET /readyz`, `GET /api/status`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::herald::Herald;

/// Alive: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to take traffic: the engine is healthy and the node is not draining.
pub async fn readyz(State(herald): State<Herald>) -> (StatusCode, Json<Value>) {
    if herald.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        let reason = if herald.is_draining() { "draining" } else { "engine_unavailable" };
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": reason})))
    }
}

/// `GET /admin`: the live admin view, when `admin` is on (404 otherwise). The page holds
/// no data; it streams `admin:nodes` with an API key the operator types in.
pub async fn admin(State(herald): State<Herald>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !herald.config().admin {
        return crate::http::not_found().await.into_response();
    }
    axum::response::Html(include_str!("assets/admin.html")).into_response()
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics(State(herald): State<Herald>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render(&herald))
}

/// Node id, version, uptime, engine, and counts (`GET /api/status` in `docs/http-api.md`).
pub async fn status(State(herald): State<Herald>) -> Json<Value> {
    let engine = herald.engine();
    Json(json!({
        "nodeId": herald.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": herald.uptime().as_secs(),
        "engine": {"name": engine.name(), "healthy": engine.is_healthy(), "channels": engine.counters().channels},
        "draining": herald.is_draining(),
        "connections": herald.connection_count(),
        "users": herald.hub().user_count(),
        "channels": herald.channel_count(),
    }))
}
