//! What keeps a drain waiting for a socket that outlives its request.
//!
//! hyper lets go of a connection once it is upgraded, so Herald's server no longer counts it
//! among the connections a drain waits for. The server puts a [`DrainGuard`] in the
//! extensions of every request that may take its connection over (an HTTP/1.1 `Upgrade`, an
//! HTTP/2 `CONNECT`); the transport that serves the upgraded socket (the WebSocket,
//! `http::ws`) holds it until the socket is closed.

/// Held while an upgraded socket is open; a drain waits until every one is dropped.
#[derive(Clone, Debug)]
pub struct DrainGuard(#[allow(dead_code, reason = "held, never read")] tokio::sync::watch::Receiver<()>);

impl DrainGuard {
    /// A guard on the server's shutdown watcher.
    pub fn new(watcher: tokio::sync::watch::Receiver<()>) -> Self {
        Self(watcher)
    }
}
