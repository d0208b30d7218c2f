//! Large answers: written a piece at a time, and counted per client while they are.
//!
//! A history page or a presence list is built whole before it is written, and a client
//! that asks for many and reads none (a thousand HTTP/2 streams on one connection cost it
//! nothing) made the node hold every one: one connection held 5.7 GB of history pages so.
//! An answer over [`LARGE`] bytes holds one of its client's [`MAX_LARGE`] slots until the
//! connection has taken its last piece; past them the client is refused `429 rate_limited`
//! (before anything is read for it) until it reads what it asked for. A client is a user,
//! or an anonymous caller's address; backends (API keys) are not counted.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::auth::{PeerAddr, RateKey, rate_key};
use super::error::ApiError;
use crate::auth::Principal;
use crate::herald::Herald;
use crate::limits::Slot;

/// An answer longer than this is counted while it is written.
pub(super) const LARGE: usize = 64 * 1024;
/// Large answers a client may have being written at once.
pub(super) const MAX_LARGE: usize = 8;
/// The pieces a large answer is handed to the connection in: it asks for the next one only
/// when it has room (HTTP/2's flow control, HTTP/1.1's socket), so an unread answer keeps
/// its slot until the client reads it or goes away.
const PIECE: usize = 16 * 1024;

/// Who an answer is counted for: `None` for a backend.
pub(super) struct Client(Option<RateKey>);

impl Client {
    /// `who` (and, for an anonymous caller, its address), refused at once when all its
    /// slots are taken, so that no page is read for it meanwhile.
    pub(super) fn admit(herald: &Herald, who: &Principal, peer: Option<PeerAddr>) -> Result<Self, ApiError> {
        if matches!(who, Principal::ApiKey(_)) {
            return Ok(Self(None));
        }
        let key = rate_key(who, peer);
        if herald.answers_in_flight().full(&key, MAX_LARGE) {
            return Err(too_many());
        }
        Ok(Self(Some(key)))
    }

    /// `value` as this client's JSON answer, counted while it is written if it is large.
    pub(super) fn json(&self, herald: &Herald, value: &impl serde::Serialize) -> Result<Response, ApiError> {
        let bytes = Bytes::from(
            serde_json::to_vec(value)
                .map_err(|e| ApiError::refuse(super::Refusal::Internal, format!("an answer is not JSON: {e}")))?,
        );
        let body = match &self.0 {
            Some(key) if bytes.len() > LARGE => {
                let slot = herald.answers_in_flight().take(key, MAX_LARGE).ok_or_else(too_many)?;
                Body::new(Pieces { rest: bytes, _slot: slot })
            }
            _ => Body::from(bytes),
        };
        let json = HeaderValue::from_static("application/json");
        Ok(([(header::CONTENT_TYPE, json)], body).into_response())
    }
}

fn too_many() -> ApiError {
    ApiError::rate_limited(
        format!("{MAX_LARGE} large answers to this client are still being written; read them, then ask again"),
        Duration::from_secs(1),
    )
}

/// A large answer's body: [`PIECE`]s of one buffer, holding its client's slot until the last
/// is taken.
struct Pieces {
    rest: Bytes,
    _slot: Slot,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(PIECE);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}
