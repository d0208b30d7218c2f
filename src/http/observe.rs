//! Request observation: a request id and a tracing span per request, and refusal counters.
//!
//! Every response carries `x-request-id` (the client's, if it sent a sane one). The span
//! records method and path, never the query string, so tickets and ids in queries stay out
//! of the logs. Refusals of publishes and streams are counted by reason from the error code
//! that [`super::ApiError`] leaves in the response.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::herald::Herald;

/// The `code` of an [`super::ApiError`], left in its response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id and a span.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(crate::ids::new_id, str::to_owned);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v.clone());
        let mut resp = next.run(req).instrument(span).await;
        resp.headers_mut().insert(REQUEST_ID, v);
        return resp;
    }
    next.run(req).instrument(span).await
}

/// Counts refused publishes by reason.
pub async fn count_publish_refusals(State(herald): State<Herald>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        herald.metrics().refuse_publish(match (resp.status(), error_code(&resp)) {
            (StatusCode::UNAUTHORIZED, _) => "unauthorized",
            (StatusCode::FORBIDDEN, _) => "forbidden",
            (StatusCode::TOO_MANY_REQUESTS, _) => "rate_limited",
            (StatusCode::PAYLOAD_TOO_LARGE, _) => "too_large",
            (_, "auth_unavailable") => "auth_unavailable",
            (StatusCode::SERVICE_UNAVAILABLE, _) => "engine_unavailable",
            _ => "invalid",
        });
    }
    resp
}

/// Counts refused streams by reason.
pub async fn count_subscribe_refusals(State(herald): State<Herald>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        herald.metrics().refuse_subscribe(match (resp.status(), error_code(&resp)) {
            (StatusCode::UNAUTHORIZED, _) => "unauthorized",
            (StatusCode::FORBIDDEN, _) => "forbidden",
            (StatusCode::TOO_MANY_REQUESTS, _) => "user_limit",
            (_, "server_at_capacity") => "at_capacity",
            (_, "too_many_channels") => "channel_limit",
            (_, "server_draining") => "draining",
            (_, "auth_unavailable") => "auth_unavailable",
            (StatusCode::SERVICE_UNAVAILABLE, _) => "engine_unavailable",
            _ => "invalid",
        });
    }
    resp
}

/// The `code` of the [`super::ApiError`] behind a response, or `""`.
fn error_code(resp: &Response) -> &'static str {
    resp.extensions().get::<ErrorCode>().map_or("", |c| c.0)
}
