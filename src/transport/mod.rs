//! Transports: how a connection's events leave the node. A transport takes the reader the
//! hub hands out for one connection and writes what it reads to one kind of client; it
//! holds no registry, no history and no policy of its own. Two live here, siblings over the
//! same reader: [`sse`] (Server-Sent Events over HTTP, `GET /api/events`) and [`messages`]
//! ([`Connection`], the messages an embedding application, or a WebSocket transport, reads).
//!
//! What a transport gets from the hub (`hub::connection`), once `Herald` has opened the
//! connection (checks, registration, resume, the preamble: everything before the live
//! events, written into the transport's own output; each transport has its opening method
//! in `herald/stream.rs`, `open_stream` and `connect`, both the same steps):
//!
//! - a `StreamCore`, the connection's reader. Polled with an output of the transport's own
//!   (an `Emit`), it takes what the hub queued (at most 64 items a poll), keeps the cursor,
//!   applies live joins and leaves (`subscribed`/`unsubscribed` notices), drops what the
//!   connection has seen already, and hands the output each event copy (its frame, shared by
//!   every subscriber) and each notice with the id that lets the client resume. It also
//!   writes the last notice of a close the client must be told of (`disconnect`,
//!   `token_expired`), after everything queued before it. Dropping it unregisters the
//!   connection.
//! - with each poll, whether a heartbeat is due and whether the connection is closing, and
//!   why (`CloseReason`).
//! - a [`KillSwitch`], if the transport handed one in when the connection opened: the hub
//!   fires it when it closes a connection and drops its queue (a slow consumer, a client
//!   timeout, a resync), or when a closing connection's last words are never read, because
//!   a writer blocked on a client that stopped reading never polls again.
//!
//! What a transport must do:
//!
//! - poll the reader whenever it is woken, heartbeats included: the hub closes a connection
//!   whose reader has not polled for `client_timeout` as stalled. A
//!   transport of bytes writes what one poll produced as one write;
//! - when a heartbeat is due and the poll wrote nothing else, write a keep-alive of its own
//!   (SSE: a comment line); a transport with its own keep-alive may skip it ([`Connection`]
//!   does);
//! - on a close, write its own last words after what the reader wrote (SSE: a drain's
//!   `retry:` hint; a WebSocket would send a close frame), then end and drop the reader;
//! - if its writer can block on a stalled client (hyper's HTTP/1.1 body, a WebSocket sink),
//!   tear its socket down when the [`KillSwitch`] fires.
//!
//! The SSE wire format itself (`crate::sse`) stays beside `event`, below the hub: an event
//! is framed once when it is published, and every transport reads those shared bytes (SSE
//! writes the frame; [`Message::json`] is a slice of it).

pub mod drain;
pub mod messages;
pub mod sse;

pub use crate::hub::connection::KillSwitch;
pub use drain::DrainGuard;
pub use messages::{Connection, Message};
pub use sse::SseBody;
