//! Cross-origin access (CORS) for browser apps served from another origin than Herald.
//!
//! Off unless `cors_origins` lists origins. Listed origins may call every endpoint from a
//! page with credentials (cookies, `Authorization`), so the cookie's protection against
//! cross-site requests (see `auth::check_cookie_request`) holds for every other origin;
//! `["*"]` lets any origin in, never with credentials. Preflights are answered here, before any
//! handler; every other answer, errors included, carries the headers, so a page can read
//! Herald's JSON errors. A request from an origin that is not listed (or with no `Origin`)
//! passes by the CORS rules untouched and gets no CORS header at all: nothing in its answer
//! may suggest to a browser that its page can read it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use futures_util::future::Either;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The layer for `origins` (checked by `Config::validate`), or `None` when CORS is off.
pub fn layer(origins: &[String]) -> Option<ListedOnlyLayer> {
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
        return Some(ListedOnlyLayer { cors: layer.allow_origin(AllowOrigin::any()), listed: None });
    }
    // Origins compare without regard to case (scheme and host are case-insensitive, and a
    // browser sends them in lowercase), as the cookie guard compares them: a listed
    // `https://App.example` admits the page at `https://app.example`.
    let listed: Arc<[HeaderValue]> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let allowed = Arc::clone(&listed);
    let allow = AllowOrigin::predicate(move |origin, _| is_listed(&allowed, origin));
    Some(ListedOnlyLayer { cors: layer.allow_origin(allow).allow_credentials(true), listed: Some(listed) })
}

fn is_listed(listed: &[HeaderValue], origin: &HeaderValue) -> bool {
    listed.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
}

/// Applies the CORS rules to requests from a listed origin only (every origin with `*`).
#[derive(Clone)]
pub struct ListedOnlyLayer {
    cors: CorsLayer,
    /// `None`: any origin (`*`).
    listed: Option<Arc<[HeaderValue]>>,
}

impl<S> Layer<S> for ListedOnlyLayer {
    type Service = ListedOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ListedOnly { cors: self.cors.layer(inner), listed: self.listed.clone() }
    }
}

/// The service of [`ListedOnlyLayer`].
#[derive(Clone)]
pub struct ListedOnly<S> {
    cors: Cors<S>,
    listed: Option<Arc<[HeaderValue]>>,
}

impl<S, B, R> Service<Request<B>> for ListedOnly<S>
where
    S: Service<Request<B>, Response = axum::http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<<Cors<S> as Service<Request<B>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Polls the inner service: both paths call it.
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let admitted = match (&self.listed, req.headers().get(header::ORIGIN)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(listed), Some(origin)) => is_listed(listed, origin),
        };
        if admitted { Either::Left(self.cors.call(req)) } else { Either::Right(self.cors.get_mut().call(req)) }
    }
}
