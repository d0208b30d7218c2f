//! Herald: a real-time event hub. Clients publish with plain HTTP; Herald pushes events to
//! subscribers over Server-Sent Events, on HTTP/1.1 or HTTP/2.
//!
//! The data path is short and one-way:
//!
//! ```text
//! publish (http / library) → engine (order, history, other nodes) → hub (local fan-out)
//!   → connection queue → transport (SSE body) → client
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the typed configuration, its defaults and validation |
//! | [`channel`] | channel names (`user:<id>`, `channel:<name>`, `system`) |
//! | [`auth`] | who is asking: JWT (HS256/RS256/ES256, JWKS), API keys, tickets |
//! | [`policy`] | who may subscribe and publish where, per namespace |
//! | [`limits`] | publish rate limits (token buckets) |
//! | [`event`] | the event model: what is published, what is stored and fanned out |
//! | [`catalogue`] | typed constructors for every event type in `docs/channels.md` |
//! | [`cursor`] | stream positions and the SSE id that lets a client resume |
//! | [`sse`] | the wire format: frames, heartbeats, `retry:` |
//! | [`engine`] | publishing, ordering and history (in-memory; Redis for several nodes) |
//! | [`hub`] | this node's registry of connections and channels, and fan-out |
//! | [`transport`] | how a connection's events leave the node: SSE over HTTP, or messages |
//! | [`herald`] | the node handle tying them together: [`Herald`] |
//! | [`http`] | the HTTP API (axum routes) |
//! | [`server`] | listening, TLS, HTTP/2, graceful shutdown |
//! | [`metrics`] | counters and the Prometheus exposition |
//! | `demo` | the demo page and its routes, which `herald serve` adds at `/` (cargo feature `demo`) |
//!
//! Embedding in an axum application:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let herald = herald::Herald::new(herald::Config::default())?;
//! let app = axum::Router::new().merge(herald::http::router(herald.clone()));
//! herald.send_to_user("42", herald::Event::new("notification").with("title", "Hi")).await?;
//! # let _ = app; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod catalogue;
pub mod channel;
pub mod config;
pub mod cursor;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod event;
pub mod herald;
pub(crate) mod histogram;
pub mod hooks;
pub mod http;
pub mod hub;
pub(crate) mod ids;
pub mod limits;
pub(crate) mod maps;
pub mod metrics;
pub(crate) mod outbound;
pub mod policy;
pub mod server;
pub mod sse;
pub mod transport;

// What an embedding application names: the node handle, its requests and results, and every
// error it returns, so that no one needs to spell a module path (`herald::herald::RoomError`).
pub use auth::{Principal, UserIdentity};
pub use channel::{ChannelError, ChannelName};
pub use config::{Config, ConfigError};
pub use engine::{EngineError, PresenceEntry, PublishAck};
pub use event::{Event, EventError, Publisher};
pub use herald::{
    ChannelInfo, DisconnectError, DisconnectOptions, DisconnectTarget, Herald, PresenceError, PublishError, RoomError,
    StartError, Stats, StreamRequest, SubscribeError, UserPresence,
};
pub use http::ApiError;
pub use policy::Denied;
pub use server::Server;
pub use transport::{Connection, Message};
