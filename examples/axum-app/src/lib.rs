//! An axum application that embeds Herald: it mounts Herald's routes (`/api/events`,
//! `/api/publish`, ...) next to its own, and its handlers push events straight into the hub
//! with [`Herald::send_to_user`] and [`Herald::broadcast`], without a round trip over HTTP.
//!
//! Herald checks who subscribes: `user:<id>` channels are private, so a browser needs a
//! token for its user. Here `GET /token/{user_id}` hands one out to anyone, to keep the
//! example short; in a real application the login does this, and the app's own routes
//! (`/notify`, `/rooms`) sit behind the app's auth, since they push to any user or room.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald::{ApiError, Event, Herald};
use serde::Deserialize;
use serde_json::{Value, json};

/// The body of `POST /notify/{user_id}` and `POST /rooms/{room}/announce`.
#[derive(Debug, Deserialize)]
pub struct Notice {
    pub title: String,
    pub message: String,
}

impl Notice {
    fn into_event(self, event_type: &str) -> Event {
        Event::new(event_type).with("title", self.title).with("message", self.message)
    }
}

/// The application's routes merged with Herald's, all sharing one [`Herald`] node.
pub fn app(herald: Herald) -> Router {
    Router::new()
        .route("/notify/{user_id}", post(notify))
        .route("/rooms/{room}/announce", post(announce))
        .route("/stats", get(stats))
        .route("/token/{user_id}", get(token))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(herald.clone())
        .merge(herald::http::router(herald))
}

/// `GET /token/{user_id}`: a one-hour token for the user, signed with Herald's HS256
/// secret (a real app issues it at login).
async fn token(State(herald): State<Herald>, Path(user_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let Some(secret) = herald.config().auth.jwt_secret.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_tokens", "this app runs without a JWT secret"));
    };
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let claims = json!({"sub": user_id, "name": format!("User {user_id}"), "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_error", e.to_string()))?;
    Ok(Json(json!({ "token": token })))
}

/// `POST /notify/{user_id}`: a `notification` on the user's private channel `user:<id>`.
async fn notify(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Notice>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Path(user_id) = path.map_err(|r| rejected("invalid_path", r.status(), r.body_text()))?;
    let Json(notice) = body.map_err(|r| rejected("invalid_body", r.status(), r.body_text()))?;
    // A user id that cannot name a channel (`a b`) comes back as a PublishError, which
    // ApiError turns into Herald's own 400/413/503 JSON error.
    let ack = herald.send_to_user(&user_id, notice.into_event("notification")).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": &*ack.id }))))
}

/// `POST /rooms/{room}/announce`: an `announcement` to everyone in `channel:<room>`.
async fn announce(
    State(herald): State<Herald>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Notice>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Path(room) = path.map_err(|r| rejected("invalid_path", r.status(), r.body_text()))?;
    let Json(notice) = body.map_err(|r| rejected("invalid_body", r.status(), r.body_text()))?;
    // `broadcast` reaches rooms only; prefixing keeps a client-chosen name a room name, so
    // `/rooms/user:42/announce` asks for `channel:user:42`, which is refused.
    let ack = herald.broadcast(&format!("channel:{room}"), notice.into_event("announcement")).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": &*ack.id }))))
}

/// `GET /stats`: this node's open SSE connections and channels with subscribers.
async fn stats(State(herald): State<Herald>) -> Json<Value> {
    Json(json!({
        "connections": herald.connection_count(),
        "channels": herald.channel_count(),
    }))
}

/// Extractor rejections leave in the same `{"error":{..}}` shape as Herald's errors.
fn rejected(code: &'static str, status: StatusCode, message: String) -> ApiError {
    ApiError::new(status, code, message)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not accept that method")
}
