//! The HTTP surface: routes, request parsing, and the mapping of errors to responses.
//!
//! [`router`] builds the axum `Router` that `herald serve` runs and that an embedding
//! application can mount. Handlers only translate between HTTP and [`Herald`]'s methods.

mod answers;
pub mod auth;
mod centrifugo;
pub mod cors;
pub mod error;
pub mod head;
mod history;
mod hooked;
pub mod observe;
mod presence;
pub(crate) mod publish;
pub mod refusal;
mod rooms;
mod sessions;
mod status;
pub(crate) mod subscribe;
mod tickets;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tower::ServiceBuilder;

use crate::herald::Herald;
pub use error::ApiError;
pub use refusal::Refusal;

/// All of Herald's routes, with `herald` as state.
pub fn router(herald: Herald) -> Router {
    let body_limit = herald.config().max_body_bytes;
    let cors = cors::layer(&herald.config().cors_origins);
    let router = Router::new()
        .route("/api/publish", post(publish::publish))
        .route("/api/channels/{channel}/events", post(publish::publish_to_channel))
        .route("/api/events", get(subscribe::subscribe))
        .route("/api/tickets", post(tickets::issue))
        .route("/api/presence", post(presence::set_status))
        .route("/api/channels", get(history::channels))
        .route("/api/channels/{channel}", get(rooms::channel_info))
        .route("/api/channels/{channel}/history", get(history::history))
        .route("/api/channels/{channel}/presence", get(presence::channel))
        .route("/api/users/{user}/presence", get(presence::user))
        .route("/api/users/{user}/connections", get(history::user_connections))
        .route("/api/connections/{connection}/channels", post(rooms::join))
        .route("/api/connections/{connection}/channels/{channel}", delete(rooms::leave))
        .route("/api/disconnect", post(sessions::disconnect))
        .route("/api/bans", post(sessions::ban))
        .route("/api/bans/{user}", delete(sessions::unban))
        .route("/metrics", get(status::metrics))
        .route("/admin", get(status::admin))
        .route("/api/status", get(status::status))
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz));
    // Off unless configured: then `/api/ws` is a `404` like any unknown path.
    let router = if herald.config().websocket { router.route("/api/ws", ws::route()) } else { router };
    let router = match &herald.config().centrifugo {
        Some(c) => {
            let router = router
                .route(&c.path, centrifugo::route())
                .route(&format!("{}/{{method}}", c.api_prefix), post(centrifugo::api::call));
            let router = match c.uni_prefix() {
                Some(prefix) => router
                    .route(&format!("{prefix}/uni_sse"), centrifugo::uni::sse_route())
                    .route(&format!("{prefix}/uni_http_stream"), centrifugo::uni::http_stream_route())
                    .route(&format!("{prefix}/uni_websocket"), centrifugo::uni::websocket_route()),
                None => router,
            };
            match c.emulation_prefix() {
                Some(prefix) => router
                    .route(&format!("{prefix}/http_stream"), centrifugo::emulation::http_stream_route())
                    .route(&format!("{prefix}/sse"), centrifugo::emulation::sse_route())
                    .route(crate::config::EMULATION_PATH, centrifugo::emulation::emulation_route()),
                None => router,
            }
        }
        None => router,
    };
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One `layer` call for both: axum wraps every route once per call, and each wrapping
        // costs a boxed clone of the route per request.
        .layer(ServiceBuilder::new().layer(observe::RequestIdLayer).layer(DefaultBodyLimit::max(body_limit)));
    // Outermost, so that preflights are answered before any handler and every answer, errors
    // included, carries the CORS headers.
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(herald)
}

/// The JSON 404 of Herald's API, for an embedding app's own router.
pub async fn not_found() -> ApiError {
    ApiError::refuse(Refusal::NotFound, "no such endpoint")
}

/// The JSON 405 of Herald's API, for an embedding app's own router.
pub async fn method_not_allowed() -> ApiError {
    ApiError::refuse(Refusal::MethodNotAllowed, "this endpoint does not accept that method")
}
