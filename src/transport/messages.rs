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
//! whole WebSocket frame already written (the header of a server's text frame, then
//! `{"id":..,"data":..}`), built once per event and channel and written as it is by every
//! socket that is shown the copy's own id.

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

/// One item of a connection's output.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event or notice, as [`Connection::recv`] hands it out.
    Message(Message),
    /// An event of a connection read by Herald's WebSocket transport: its whole WebSocket
    /// frame (see [`websocket_event_frame`]), as the socket writes it.
    WebSocket(Bytes),
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
                let frame = copy.websocket(|frame| websocket_event_frame(frame.id(), frame.json()));
                self.queue.push_back(Item::WebSocket(frame));
            }
            (true, Some(id)) => {
                self.queue.push_back(Item::WebSocket(websocket_event_frame(id, copy.frame.json())));
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

/// The opcode of a WebSocket text frame.
pub(crate) const TEXT: u8 = 0x1;

/// A server's WebSocket frame (RFC 6455, section 5.2): final, unmasked, of `opcode`, with
/// `payload`, in one allocation of its exact size.
pub(crate) fn websocket_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(frame_head_len(payload.len()) + payload.len());
    push_frame_head(&mut frame, opcode, payload.len());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// Bytes of the header of a server's frame with `len` bytes of payload.
fn frame_head_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// The header of a server's frame: FIN, no extension bits, `opcode`, no mask, the length.
fn push_frame_head(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The WebSocket transport's event (`docs/websocket.md`) as the whole text frame a socket
/// writes: the frame's header, then the SSE id and the SSE data of the same event,
/// `{"id":<id>,"data":<json>}` ([`websocket_message`]), in one allocation. `json` is checked
/// as UTF-8 here, once per frame, so that the frame is valid text with no check by each
/// socket that writes it.
pub(crate) fn websocket_event_frame(id: &str, json: &[u8]) -> Bytes {
    if !plain_id(id) || std::str::from_utf8(json).is_err() {
        return websocket_frame(TEXT, websocket_message(id, json).as_bytes());
    }
    // `{"id":"` id `","data":` json `}`
    let len = 17 + id.len() + json.len();
    let mut frame = Vec::with_capacity(frame_head_len(len) + len);
    push_frame_head(&mut frame, TEXT, len);
    frame.extend_from_slice(b"{\"id\":\"");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b"\",\"data\":");
    frame.extend_from_slice(json);
    frame.push(b'}');
    Bytes::from(frame)
}

/// An id is visible ASCII with no `"` or `\` (cursor::encode): a JSON string as it is.
fn plain_id(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The WebSocket transport's event message (`docs/websocket.md`): the SSE id and the SSE
/// data of the same event, `{"id":<id>,"data":<json>}`, in one allocation. `json` is
/// checked as UTF-8 (Herald's event JSON always is; anything else is replaced lossily).
pub(crate) fn websocket_message(id: &str, json: &[u8]) -> String {
    let mut text = String::with_capacity(id.len() + json.len() + 20);
    text.push_str("{\"id\":");
    // Anything but a plain id is escaped.
    if plain_id(id) {
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

    fn websocket(out: &MessageOut) -> Vec<Bytes> {
        out.queue
            .iter()
            .filter_map(|item| match item {
                Item::WebSocket(frame) => Some(frame.clone()),
                Item::Message(_) => None,
            })
            .collect()
    }

    /// A server's text frame: its payload, after checking the header.
    fn text_of(frame: &[u8]) -> &str {
        let (head, len) = match frame[1] {
            126 => (4, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
            127 => (10, u64::from_be_bytes(frame[2..10].try_into().unwrap_or_default()) as usize),
            n => (2, usize::from(n)),
        };
        assert_eq!(frame[0], 0x81, "final, text, no extension bits");
        assert_eq!(frame.len(), head + len, "the length is the payload's");
        std::str::from_utf8(&frame[head..]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sockets_shown_a_copys_own_id_share_one_frame_and_others_get_their_own() {
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
        assert_eq!(text_of(&one[0]), expected);
        assert_eq!(one[0].as_ptr(), two[0].as_ptr(), "the same bytes, not a copy");
        assert_eq!(text_of(&multi[0]), r#"{"id":"a:5,b:7","data":{"x":"\u00e9"}}"#);
    }

    #[test]
    fn an_event_frame_has_the_length_of_its_message_at_every_length_format() {
        for pad in [0, 90, 200, 70_000] {
            let json = format!(r#"{{"p":"{}"}}"#, "a".repeat(pad));
            let frame = websocket_event_frame("c:1", json.as_bytes());
            assert_eq!(text_of(&frame), websocket_message("c:1", json.as_bytes()));
        }
        let odd = websocket_event_frame("a\"b", b"{}");
        assert_eq!(text_of(&odd), r#"{"id":"a\"b","data":{}}"#, "an unexpected id is still a JSON string");
        let lossy = websocket_event_frame("c:1", b"{\"x\":\"\xff\"}");
        assert!(text_of(&lossy).contains('\u{fffd}'), "text frames carry UTF-8 only");
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
