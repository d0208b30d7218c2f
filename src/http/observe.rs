//! Request observation: a request id and a tracing span per request, and refusal counters.
//!
//! Every response carries `x-request-id` (the client's, if it sent a sane one). The span
//! records method and path, never the query string, so tickets and ids in queries stay out
//! of the logs. Refusals of publishes and streams are counted by reason from the
//! [`Refusal`] that [`super::ApiError`] leaves in the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;
use tower::{Layer, Service};
use tracing::Span;

use super::refusal::Refusal;
use crate::herald::Herald;
use crate::metrics::{PublishRefusal, SubscribeRefusal};

/// A name, not a `&str`: a lookup by `&str` parses the name again every time.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

// The request id is a layer written out, and the refusal counters are plain functions the
// handlers call, rather than `axum::middleware::from_fn` or a route layer, which clone and
// box the route and box a future on every request: on the publish path that was a visible
// share of the server's work (docs/benchmarks.md, "Private channels"). The request id's
// future polls the inner one in place, so it needs it to be `Unpin`, as axum's route futures
// are.

/// Gives every request an id and a span: the layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// Gives every request an id and a span: the service.
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

impl<S> Service<Request> for RequestId<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = request_id(req.headers_mut());
        let span = request_span(id.as_ref().and_then(|v| v.to_str().ok()), req.method(), req.uri().path());
        let inner = span.in_scope(|| self.inner.call(req));
        WithRequestId { inner, id, span }
    }
}

/// The request's id: the client's, if it sent a sane one, else a new one, set in `headers`
/// too. The response carries it back as `x-request-id`.
pub(crate) fn request_id(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let given = headers.get(&REQUEST_ID).filter(|v| sane(v.as_bytes())).cloned();
    let id = given.or_else(|| HeaderValue::try_from(crate::ids::new_id()).ok());
    if let Some(id) = &id {
        headers.insert(REQUEST_ID.clone(), id.clone());
    }
    id
}

/// Whether a client's request id is kept: 1 to 64 visible ASCII characters.
fn sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 64 && id.iter().all(u8::is_ascii_graphic)
}

/// A request's id as the lean publish path keeps it (`server::lean_publish`): the client's
/// (a slice of its head), else a new one in place; a `HeaderValue` only for a refusal.
#[derive(Clone)]
pub(crate) enum LeanRequestId {
    Given(Bytes),
    New([u8; 26]),
}

impl LeanRequestId {
    /// [`request_id`]'s choice for a request whose first `x-request-id` is `given`.
    pub(crate) fn of(given: Option<Bytes>) -> Self {
        match given {
            Some(id) if sane(&id) => Self::Given(id),
            _ => Self::New(crate::ids::new_id_bytes()),
        }
    }

    /// The header's name.
    pub(crate) fn name() -> &'static HeaderName {
        &REQUEST_ID
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Given(id) => id,
            Self::New(id) => id,
        }
    }

    /// The id as text: it is visible ASCII either way.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value, for a refusal's response.
    pub(crate) fn to_value(&self) -> Option<HeaderValue> {
        match self {
            Self::Given(id) => HeaderValue::from_maybe_shared(id.clone()).ok(),
            Self::New(id) => HeaderValue::from_bytes(id).ok(),
        }
    }
}

impl std::fmt::Display for LeanRequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request's span: its id, method and path (never the query). The id and the path are
/// formatted only if the span is recorded (not at all under `--log warn`).
pub(crate) fn request_span(id: Option<impl std::fmt::Display>, method: &Method, path: impl std::fmt::Display) -> Span {
    match id {
        Some(id) => tracing::info_span!("request", request_id = %id, method = %method, path = %path),
        None => tracing::info_span!("request", method = %method, path = %path),
    }
}

/// Puts the request's id on its response.
pub(crate) fn answer_with_id(resp: &mut Response, id: HeaderValue) {
    resp.headers_mut().insert(REQUEST_ID.clone(), id);
}

/// The response of a [`RequestId`] service, with the id added.
pub struct WithRequestId<F> {
    inner: F,
    id: Option<HeaderValue>,
    span: Span,
}

impl<F, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let mut resp = ready!(Pin::new(&mut this.inner).poll(cx))?;
        if let Some(id) = this.id.take() {
            answer_with_id(&mut resp, id);
        }
        Poll::Ready(Ok(resp))
    }
}

/// Counts a refused publish by reason; the publish handlers pass every answer through it.
pub fn count_publish_refusal(herald: &Herald, resp: Response) -> Response {
    if !resp.status().is_success() {
        let reason = refusal(&resp).map_or(PublishRefusal::Invalid, Refusal::publish_reason);
        herald.metrics().refuse_publish(reason);
    }
    resp
}

/// Counts a refused stream by reason; the stream handler passes every answer through it.
pub fn count_subscribe_refusal(herald: &Herald, resp: Response) -> Response {
    if !resp.status().is_success() {
        let reason = refusal(&resp).map_or(SubscribeRefusal::Invalid, Refusal::subscribe_reason);
        herald.metrics().refuse_subscribe(reason);
    }
    resp
}

/// The refusal behind a response; `None` for an application's own [`super::ApiError`], which
/// counts as `invalid`.
fn refusal(resp: &Response) -> Option<Refusal> {
    resp.extensions().get::<Refusal>().copied()
}
