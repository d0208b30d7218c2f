//! Messages: the transport-neutral connection an embedding application (or a WebSocket
//! transport) reads with [`Connection::recv`].
//!
//! Each [`Message`] is one event or notice with the id that lets its client resume; the
//! JSON of a shared event is a slice of the bytes framed once for every subscriber. What a
//! message becomes on the wire, and what a heartbeat or the end of the stream looks like
//! there, is the reading transport's business (see [`crate::transport`]).

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::event::Copy;
use crate::hub::connection::{CloseReason, Emit, StreamCore};

/// One message of a [`Connection`]: an event for the connection, with the id that lets
/// its client resume (the SSE `id`), its type and its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub event_type: String,
    pub json: Bytes,
}

/// Gathers a connection's output as [`Message`]s.
#[derive(Default)]
pub(crate) struct MessageOut {
    pub(crate) queue: VecDeque<Message>,
}

impl Emit for MessageOut {
    fn event(&mut self, event_type: &str, copy: &Copy, id: Option<&str>) {
        let id = id.map_or_else(|| copy.frame.id().to_owned(), str::to_owned);
        self.queue.push_back(Message { id, event_type: event_type.to_owned(), json: copy.frame.json_bytes() });
    }

    fn notice(&mut self, event_type: &str, id: &str, json: &[u8]) {
        self.queue.push_back(Message {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            json: Bytes::copy_from_slice(json),
        });
    }
}

/// A live connection for a transport other than Herald's SSE: the same queue, cursor,
/// channels, filters, joins and leaves as an SSE stream, handed out as [`Message`]s.
/// Dropping it unregisters the connection.
///
/// ```no_run
/// # async fn demo(herald: herald::Herald) -> Result<(), Box<dyn std::error::Error>> {
/// use herald::{Principal, StreamRequest};
/// let channel = herald.parse_channel("channel:general")?;
/// let mut conn = herald.connect(StreamRequest::new(Principal::Anonymous, vec![channel])).await?;
/// while let Some(msg) = conn.recv().await {
///     println!("{} {} {}", msg.id, msg.event_type, String::from_utf8_lossy(&msg.json));
/// }
/// # Ok(()) }
/// ```
pub struct Connection {
    core: StreamCore,
    out: MessageOut,
    done: bool,
}

impl Connection {
    /// The connection opened into `out`: what `out` holds comes first.
    pub(crate) fn new(core: StreamCore, out: MessageOut) -> Self {
        Self { core, out, done: false }
    }

    /// The connection's id, for [`crate::Herald::join`], [`crate::Herald::leave`] and
    /// [`crate::Herald::send_to_connection`].
    pub fn id(&self) -> &str {
        self.core.id()
    }

    /// The channels (and patterns) the connection follows now.
    pub fn channels(&self) -> &[ChannelName] {
        self.core.channels()
    }

    /// The next message; `None` once the server closed the connection (slow consumer,
    /// timeout, drain, or the user's token expired, announced by a last `token_expired`
    /// message: the client should resume with the last id it got).
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Why the server closed the connection, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.core.close_reason()
    }

    /// Heartbeats are not messages: a transport of the application's own keeps its
    /// connection alive its own way.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            if let Some(msg) = self.out.queue.pop_front() {
                return Poll::Ready(Some(msg));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.core.poll(cx, &mut self.out) {
                Poll::Pending => {
                    // Nothing more for now: the queue's buffer is given back, since a
                    // connection spends most of its life idle and the buffer holds what
                    // its largest burst held.
                    if self.out.queue.is_empty() && self.out.queue.capacity() > 0 {
                        self.out.queue = VecDeque::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(polled) => {
                    if polled.close.is_some() {
                        self.done = true;
                    }
                }
            }
        }
    }
}
