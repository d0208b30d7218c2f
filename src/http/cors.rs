//! Cross-origin access (CORS) for browser apps served from another origin than Herald.
//!
//! Off unless `cors_origins` lists origins. Listed origins may call every endpoint from a
//! page with credentials (cookies, `Authorization`), so the cookie's protection against
//! cross-site requests (see `auth::check_cookie_publish`) holds for every other origin;
//! `["*"]` lets any origin in, never with credentials. Preflights are answered here, before any
//! handler; every other answer, errors included, carries the headers, so a page can read
//! Herald's JSON errors.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The layer for `origins` (checked by `Config::validate`), or `None` when CORS is off.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let listed: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(listed)).allow_credentials(true))
}
