//! Messages: the transport-neutral connection an embedding application (or a WebSocket
//! transport) reads with [`Connection::recv`].
//!
//! Each [`Message`] is one event or notice with the id that lets its client resume; the
//! JSON of a shared event is a slice of the bytes framed once for every subscriber. What a
//! message becomes on the wire, and what a heartbeat or the end of the stream looks like
//! there, is the reading transport's business (see [`crate::transport`]).
//!
//! Herald's own WebSocket transport reads the same connection without the `Message`s of its
//! events: it asks for [`Item`]s ([`Connection::for_websocket`]), and an event comes as its
//! WebSocket message already written (`{"id":..,"data":..}`), built once per event and
//! channel and shared by every socket that is shown the copy's own id.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
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

/// One item of a connection's output.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event or notice, as [`Connection::recv`] hands it out.
    Message(Message),
    /// An event of a connection read by Herald's WebSocket transport: its whole WebSocket
    /// message (see [`websocket_message`]), as the text the socket sends.
    WebSocket(Utf8Bytes),
}

/// Gathers a connection's output as [`Item`]s: [`Message`]s, or for the WebSocket
/// transport the events' messages as it sends them.
#[derive(Default)]
pub(crate) struct MessageOut {
    pub(crate) queue: VecDeque<Item>,
    /// Events as [`Item::WebSocket`].
    websocket: bool,
}

impl Item {
    /// The message, unless the item is a WebSocket transport's.
    #[cfg(test)]
    pub(crate) fn message(&self) -> Option<&Message> {
        match self {
            Self::Message(msg) => Some(msg),
            Self::WebSocket(_) => None,
        }
    }
}

impl MessageOut {
    fn message(&mut self, id: String, event_type: &str, json: Bytes) {
        self.queue.push_back(Item::Message(Message { id, event_type: event_type.to_owned(), json }));
    }
}

impl Emit for MessageOut {
    fn event(&mut self, event_type: &str, copy: &Copy, id: Option<&str>) {
        match (self.websocket, id) {
            // The common case: one message for every socket shown the copy's own id.
            (true, None) => {
                let message = copy.websocket(|frame| Utf8Bytes::from(websocket_message(frame.id(), frame.json())));
                self.queue.push_back(Item::WebSocket(message));
            }
            (true, Some(id)) => {
                self.queue.push_back(Item::WebSocket(Utf8Bytes::from(websocket_message(id, copy.frame.json()))));
            }
            (false, id) => {
                let id = id.map_or_else(|| copy.frame.id().to_owned(), str::to_owned);
                self.message(id, event_type, copy.frame.json_bytes());
            }
        }
    }

    fn notice(&mut self, event_type: &str, id: &str, json: &[u8]) {
        self.message(id.to_owned(), event_type, Bytes::copy_from_slice(json));
    }

    /// The queue is given back whenever the connection waits (`Connection::poll_item`), so
    /// a batch would otherwise grow it from nothing, reallocating as it doubles.
    fn reserve(&mut self, n: usize) {
        self.queue.reserve(n);
    }
}

/// The WebSocket transport's event message (`docs/websocket.md`): the SSE id and the SSE
/// data of the same event, `{"id":<id>,"data":<json>}`, in one allocation. Written as a
/// `String`, so that a socket sends it as text with no check of its own; `json` is checked
/// as UTF-8 here, once per message (Herald's event JSON always is; anything else is replaced
/// lossily).
pub(crate) fn websocket_message(id: &str, json: &[u8]) -> String {
    let mut text = String::with_capacity(id.len() + json.len() + 20);
    text.push_str("{\"id\":");
    // An id is visible ASCII with no `"` or `\` (cursor::encode); anything else is escaped.
    if id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        text.push('"');
        text.push_str(id);
        text.push('"');
    } else {
        // A string always serializes.
        text.push_str(&serde_json::to_string(id).unwrap_or_default());
    }
    text.push_str(",\"data\":");
    match std::str::from_utf8(json) {
        Ok(json) => text.push_str(json),
        Err(_) => text.push_str(&String::from_utf8_lossy(json)),
    }
    text.push('}');
    text
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

    /// From now on, the connection's events come as [`Item::WebSocket`], for
    /// [`Connection::poll_item`]; what was queued before stays as it was. Herald's WebSocket
    /// transport alone reads a connection this way, and never with [`Connection::recv`].
    pub(crate) fn for_websocket(mut self) -> Self {
        self.out.websocket = true;
        self
    }

    /// [`Connection::poll_item`] for the public API: a connection of the application's
    /// never reads WebSocket messages ([`Connection::for_websocket`] is Herald's), so
    /// there is nothing to skip.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match std::task::ready!(self.poll_item(cx)) {
                Some(Item::Message(msg)) => return Poll::Ready(Some(msg)),
                Some(Item::WebSocket(_)) => {}
                None => return Poll::Ready(None),
            }
        }
    }

    /// The next item; `None` once the server closed the connection (as [`Connection::recv`]).
    /// Heartbeats are not messages: a transport of the application's own keeps its
    /// connection alive its own way.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        loop {
            if let Some(item) = self.out.queue.pop_front() {
                return Poll::Ready(Some(item));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::cursor::Position;

    fn websocket(out: &MessageOut) -> Vec<Utf8Bytes> {
        out.queue
            .iter()
            .filter_map(|item| match item {
                Item::WebSocket(message) => Some(message.clone()),
                Item::Message(_) => None,
            })
            .collect()
    }

    #[test]
    fn sockets_shown_a_copys_own_id_share_one_message_and_others_get_their_own() {
        let channel = ChannelName::parse("channel:a").unwrap_or_else(|e| panic!("{e}"));
        let copy = Copy::new(channel, Position::new(5, 0), "chat", br#"{"x":"\u00e9"}"#);
        let (mut one, mut two, mut multi) = (MessageOut::default(), MessageOut::default(), MessageOut::default());
        for out in [&mut one, &mut two, &mut multi] {
            out.websocket = true;
        }
        one.event("chat", &copy, None);
        two.event("chat", &copy, None);
        multi.event("chat", &copy, Some("a:5,b:7"));
        let (one, two, multi) = (websocket(&one), websocket(&two), websocket(&multi));
        let expected = format!(r#"{{"id":"{}","data":{{"x":"\u00e9"}}}}"#, copy.frame.id());
        assert_eq!(one[0], expected.as_str());
        assert_eq!(one[0].as_ptr(), two[0].as_ptr(), "the same bytes, not a copy");
        assert_eq!(multi[0], r#"{"id":"a:5,b:7","data":{"x":"\u00e9"}}"#);
    }

    #[test]
    fn an_application_connection_reads_messages_with_ids_and_types() {
        let channel = ChannelName::parse("channel:a").unwrap_or_else(|e| panic!("{e}"));
        let copy = Copy::new(channel, Position::new(5, 0), "chat", b"{}");
        let mut out = MessageOut::default();
        out.event("chat", &copy, None);
        let msg = out.queue.front().and_then(Item::message).cloned();
        let expected = Message { id: copy.frame.id().to_owned(), event_type: "chat".into(), json: Bytes::from("{}") };
        assert_eq!(msg, Some(expected));
    }
}
