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

/// Node id, version, uptime, engine, and counts (document 004's connection status).
pub async fn status(State(herald): State<Herald>) -> Json<Value> {
    let engine = herald.engine();
    Json(json!({
        "nodeId": herald.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": herald.uptime().as_secs(),
        "engine": {"name": engine.name(), "healthy": engine.is_healthy()},
        "draining": herald.is_draining(),
        "connections": herald.connection_count(),
        "channels": herald.channel_count(),
    }))
}
