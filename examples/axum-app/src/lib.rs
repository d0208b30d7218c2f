//! An axum application that embeds Herald: it mounts Herald's routes (`/api/events`,
//! `/api/publish`, ...) next to its own, and its handlers push events straight into the hub
//! with [`Herald::send_to_user`] and [`Herald::broadcast`], without a round trip over HTTP.
//!
//! Herald checks who subscribes: `user:<id>` channels are private, so a browser must be its
//! user. Two ways are shown. With cookie sessions (no JWT at all): `POST /login/{user_id}`
//! sets a `sid` cookie, and Herald's connect hook (`docs/backend.md`), served by [`hooks`] on a
//! listener of its own that only Herald calls, names the session's user. With tokens:
//! `GET /token/{user_id}` hands one out. Both log in anyone, to keep the example short; in a
//! real application the login checks a password, and the app's own routes (`/notify`,
//! `/rooms`) sit behind the app's auth, since they push to any user or room.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
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

/// The name of the session cookie; Herald passes it to the connect hook (`hooks.cookies`).
pub const SESSION_COOKIE: &str = "sid";

/// Logged-in sessions: session id to user id, in memory.
#[derive(Clone, Debug, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, String>>>);

impl Sessions {
    /// A new session for `user`: its id, random and unguessable.
    fn open(&self, user: &str) -> Option<String> {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
        let sid: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.0.lock().ok()?.insert(sid.clone(), user.to_owned());
        Some(sid)
    }

    /// The user of the request's session cookie, if it has a live one.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let sid = cookies.split(';').find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))?;
        self.0.lock().ok()?.get(sid).cloned()
    }
}

/// The application's routes merged with Herald's, all sharing one [`Herald`] node.
pub fn app(herald: Herald, sessions: Sessions) -> Router {
    Router::new()
        .route("/notify/{user_id}", post(notify))
        .route("/rooms/{room}/announce", post(announce))
        .route("/stats", get(stats))
        .route("/token/{user_id}", get(token))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(herald.clone())
        .merge(Router::new().route("/login/{user_id}", post(login)).with_state(sessions))
        .merge(herald::http::router(herald))
}

/// The hooks Herald asks (`docs/backend.md`): `POST /hooks/connect` names the user of the
/// request's session. Serve them where only Herald reaches them (see [`serve_hooks`]):
/// whoever can call them can be anyone.
pub fn hooks(sessions: Sessions) -> Router {
    Router::new().route("/hooks/connect", post(connect_hook)).with_state(sessions)
}

/// Serves [`hooks`] on a loopback port of its own and points `config`'s connect hook at it,
/// passing the session cookie.
pub async fn serve_hooks(config: &mut herald::Config, sessions: Sessions) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    config.hooks.connect_url = Some(format!("http://{addr}/hooks/connect"));
    config.hooks.cookies = vec![SESSION_COOKIE.to_owned()];
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, hooks(sessions)).await {
            eprintln!("the hooks listener stopped: {e}");
        }
    });
    Ok(addr)
}

/// `POST /login/{user_id}`: a session for the user, in the `sid` cookie (a real app checks a
/// password first).
async fn login(State(sessions): State<Sessions>, Path(user_id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let sid = sessions.open(&user_id).ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "session_error", "no session could be opened")
    })?;
    let cookie = format!("{SESSION_COOKIE}={sid}; HttpOnly; SameSite=Lax; Path=/");
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({ "userId": user_id }))))
}

/// Herald's connect hook: the session's user, or (no session) the stream goes on as its
/// credential says, a token's user or anonymous.
async fn connect_hook(State(sessions): State<Sessions>, headers: HeaderMap) -> Json<Value> {
    match sessions.user(&headers) {
        Some(id) => Json(json!({"result": {"user": {"id": id, "name": format!("User {id}")}}})),
        None => Json(json!({"result": {}})),
    }
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
