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
//! The public API is what an embedding application needs, re-exported here: the node handle
//! [`Herald`] with its requests, results and errors; [`Config`]; [`Event`] and the typed
//! [`catalogue`]; [`ChannelName`]; the [`http`] routes ([`http::router`], and the helpers a
//! handler of the application's own uses to authenticate like Herald); [`Server`]; the
//! transport-neutral [`Connection`]; and the [`engine`] traits, for an engine of one's own
//! ([`Herald::with_engine`]). The rest (the hub, the SSE transport, policies, limits, metrics)
//! is the crate's own; `docs/architecture.md` describes it.
//!
//! | public module | what |
//! |---|---|
//! | [`config`] | the typed configuration, its defaults and validation |
//! | [`channel`] | channel names (`user:<id>`, `channel:<name>`, `system`) |
//! | [`event`] | the event model: what is published, what is stored and fanned out |
//! | [`catalogue`] | typed constructors for every event type in `docs/channels.md` |
//! | [`cursor`] | stream positions, which an engine assigns |
//! | [`engine`] | publishing, ordering and history (in-memory; Redis for several nodes) |
//! | [`http`] | the HTTP API (axum routes) |
//! | `demo` | the demo page and its routes, which `herald serve` adds at `/` (cargo feature `demo`, off by default; the `herald` binary turns it on) |
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

pub(crate) mod ascii;
pub(crate) mod auth;
pub mod catalogue;
pub mod channel;
pub(crate) mod clock;
pub mod config;
pub mod cursor;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod event;
pub(crate) mod herald;
pub(crate) mod histogram;
pub(crate) mod hooks;
pub mod http;
pub(crate) mod hub;
pub(crate) mod ids;
pub(crate) mod limits;
pub(crate) mod maps;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod outbound;
pub(crate) mod policy;
pub(crate) mod server;
pub(crate) mod sse;
pub(crate) mod transport;
pub(crate) mod webhooks;

// What an embedding application names: the node handle, its requests and results, and every
// error it returns, so that no one needs to spell a module path (`herald::herald::RoomError`).
pub use auth::{ApiKey, Principal, UserIdentity};
pub use channel::{ChannelError, ChannelName};
pub use config::{Config, ConfigError};
pub use cursor::Position;
pub use engine::{ConnectionInfo, EngineError, JoinFrom, PresenceEntry, PublishAck};
pub use event::{Event, EventError, Publisher};
pub use herald::{
    CensusError, ChannelCount, ChannelInfo, DisconnectError, DisconnectOptions, DisconnectTarget, Herald, History,
    HistoryError, HistoryOrder, HistoryQuery, LastEvents, MAX_HISTORY_LIMIT, PresenceError, PublishError, RoomError,
    StartError, Stats, StreamRequest, SubscribeError, UserPresence,
};
pub use http::ApiError;
pub use hub::connection::CloseReason;
pub use policy::Denied;
pub use server::Server;
pub use transport::{Connection, KillSwitch, Message, SseBody};
/// Checks a webhook's `X-Herald-Signature` (`docs/backend.md`), for a Rust application.
pub use webhooks::signature::verify as verify_webhook_signature;
