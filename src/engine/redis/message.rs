//! The pub/sub message formats, as the publish script (`scripts/publish.lua`) writes them and
//! every node reads them. A single message is one event:
//!
//! ```text
//! <stream id> <event id> <type> <channel count>\n
//! <channel> <stream id> <channel> <stream id> ...\n      (empty for an event on one channel)
//! <body>
//! ```
//!
//! The stream id is the event's position in the channel the message was published on; the
//! second line, for an event on several channels, names its position in each of them, so a
//! node delivers it once and a connection following several of them advances on all. The
//! body is the event's JSON without `id` and `channel`, which each node adds per channel.
//!
//! A batch message is several events of one batch, one after another on the message's
//! channel and on no other (an event on several channels always goes as single messages):
//!
//! ```text
//! batch <first stream id> <event count>\n
//! <stream id> <event id> <type> <channel count> <body length in bytes>\n<body>
//! <stream id> <event id> <type> <channel count> <body length in bytes>\n<body>
//! ...
//! ```
//!
//! A node of a version before batch messages cannot read one (its first word is not a stream
//! id): it logs a malformed message and drops it. So nodes always read batch messages but send
//! them only with `redis_batch_messages` (see docs/operations.md, upgrading).

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Copy, Published, json_for};

/// A message read: the event, and its position in each channel it names.
pub(super) struct Message {
    pub(super) event: Arc<Published>,
    pub(super) positions: Vec<(ChannelName, Position)>,
}

/// Reads a message that arrived on `channel`'s pub/sub channel: its events in order (one for
/// a single message); `None` if it is malformed.
pub(super) fn parse(channel: &ChannelName, payload: &[u8]) -> Option<Vec<Message>> {
    let text = std::str::from_utf8(payload).ok()?;
    match text.strip_prefix("batch ") {
        Some(batch) => parse_batch(channel, batch),
        None => parse_single(channel, text).map(|m| vec![m]),
    }
}

fn parse_single(channel: &ChannelName, text: &str) -> Option<Message> {
    let (head, rest) = text.split_once('\n')?;
    let (positions, body) = rest.split_once('\n')?;
    let mut parts = head.split(' ');
    let (sid, id, etype, n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let pos = Position::parse_stream_id(sid)?;
    let fanout: u16 = n.parse().ok()?;
    if positions.is_empty() {
        let event = published(channel, pos, id, etype, body, fanout);
        return Some(Message { event, positions: vec![(channel.clone(), pos)] });
    }
    let mut copies = Vec::new();
    let mut seen = Vec::new();
    let mut words = positions.split(' ');
    while let (Some(name), Some(sid)) = (words.next(), words.next()) {
        let ch = ChannelName::parse_with(name, |_| true).ok()?;
        let pos = Position::parse_stream_id(sid)?;
        copies.push(Copy::new(ch.clone(), pos, etype, &json_for(id, ch.as_str(), body)));
        seen.push((ch, pos));
    }
    let event = Arc::new(Published::new(Arc::from(id), Arc::from(etype), copies, fanout));
    Some(Message { event, positions: seen })
}

/// A batch message after its `batch ` word: every event is on `channel` alone.
fn parse_batch(channel: &ChannelName, text: &str) -> Option<Vec<Message>> {
    let (head, mut rest) = text.split_once('\n')?;
    let (_first, count) = head.split_once(' ')?;
    let count: usize = count.parse().ok()?;
    let mut events = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (line, after) = rest.split_once('\n')?;
        let mut parts = line.split(' ');
        let (sid, id, etype, n, len) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let len: usize = len.parse().ok()?;
        let (body, next) = (after.get(..len)?, after.get(len..)?);
        let pos = Position::parse_stream_id(sid)?;
        let event = published(channel, pos, id, etype, body, n.parse().ok()?);
        events.push(Message { event, positions: vec![(channel.clone(), pos)] });
        rest = next;
    }
    rest.is_empty().then_some(events)
}

/// An event on one channel at `pos`, from its id, type and body (a message, or a Stream entry).
pub(super) fn published(
    channel: &ChannelName,
    pos: Position,
    id: &str,
    etype: &str,
    body: &str,
    fanout: u16,
) -> Arc<Published> {
    let json = json_for(id, channel.as_str(), body);
    let copy = Copy::new(channel.clone(), pos, etype, &json);
    Arc::new(Published::new(Arc::from(id), Arc::from(etype), vec![copy], fanout))
}

/// The channel and first line (stream id, event id) of the last message delivered from
/// pub/sub: what a copy of it through another subscription repeats.
#[derive(Default)]
pub(super) struct LastMessage {
    channel: String,
    head: Vec<u8>,
}

impl LastMessage {
    /// Whether `payload` on `channel` is the message delivered last; if not, it becomes it.
    pub(super) fn repeats(&mut self, channel: &str, payload: &[u8]) -> bool {
        let head = payload.split(|b| *b == b'\n').next().unwrap_or(payload);
        if self.channel == channel && self.head == head {
            return true;
        }
        self.channel.clear();
        self.channel.push_str(channel);
        self.head.clear();
        self.head.extend_from_slice(head);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse_with(name, |_| true).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn sid(text: &str) -> Position {
        Position::parse_stream_id(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn a_one_channel_message_is_its_event_at_the_message_position() {
        let general = ch("channel:general");
        let msg = parse(&general, b"1700000000000-3 ev1 chat 1\n\n{\"text\":\"hi\"}").and_then(only);
        let Some(Message { event, positions }) = msg else { panic!("a well-formed message") };
        assert_eq!(positions, vec![(general.clone(), sid("1700000000000-3"))]);
        assert_eq!((&*event.id, &*event.event_type, event.fanout), ("ev1", "chat", 1));
        let copy = event.copy_on("channel:general").unwrap_or_else(|| panic!("a copy on its channel"));
        assert_eq!(copy.position, sid("1700000000000-3"));
        assert_eq!(copy.frame.json(), &json_for("ev1", "channel:general", r#"{"text":"hi"}"#)[..]);
    }

    #[test]
    fn a_several_channel_message_names_the_event_position_in_each() {
        let payload = b"5-0 ev2 chat 2\nchannel:a 5-0 channel:b 7-1\n{}";
        let Some(Message { event, positions }) = parse(&ch("channel:a"), payload).and_then(only) else {
            panic!("well-formed")
        };
        assert_eq!(positions, vec![(ch("channel:a"), sid("5-0")), (ch("channel:b"), sid("7-1"))]);
        assert_eq!(event.copies.len(), 2);
        assert_eq!(event.copy_on("channel:b").map(|c| c.position), Some(sid("7-1")));
    }

    /// The one event of a single message.
    fn only(mut events: Vec<Message>) -> Option<Message> {
        (events.len() == 1).then(|| events.pop()).flatten()
    }

    #[test]
    fn a_batch_message_is_its_events_in_order_each_at_its_position() {
        let general = ch("channel:general");
        let payload = "batch 9-0 3\n9-0 e1 chat 1 2\n{}9-1 e2 note 1 12\n{\"t\":\"a\\nb\"}10-0 e3 chat 1 7\n{\"n\":1}";
        let Some(events) = parse(&general, payload.as_bytes()) else { panic!("a well-formed batch") };
        let seen: Vec<_> = events.iter().map(|m| (&*m.event.id, &*m.event.event_type, m.positions.clone())).collect();
        assert_eq!(
            seen,
            [
                ("e1", "chat", vec![(general.clone(), sid("9-0"))]),
                ("e2", "note", vec![(general.clone(), sid("9-1"))]),
                ("e3", "chat", vec![(general.clone(), sid("10-0"))]),
            ]
        );
        let frame = events[1].event.copy_on("channel:general").map(|c| c.frame.json().to_vec());
        assert_eq!(frame, Some(json_for("e2", "channel:general", r#"{"t":"a\nb"}"#).to_vec()));
    }

    #[test]
    fn a_malformed_batch_message_is_refused_whole() {
        let general = ch("channel:general");
        for payload in [
            &b"batch 1-0 2\n1-0 e1 chat 1 2\n{}"[..],
            b"batch 1-0 1\n1-0 e1 chat 1 3\n{}",
            b"batch 1-0 1\n1-0 e1 chat 1 2\n{}extra",
            b"batch 1-0 1\n1-0 e1 chat 1\n{}",
            b"batch 1-0 1\nnope e1 chat 1 2\n{}",
            b"batch 1-0 x\n1-0 e1 chat 1 2\n{}",
            b"batch 1-0 1\n1-0 e1 chat 1 1\n\xc3\xa9",
        ] {
            assert!(parse(&general, payload).is_none(), "{:?}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn a_malformed_message_is_refused() {
        let general = ch("channel:general");
        for payload in [
            &b"1-0 ev chat 1"[..],
            b"1-0 ev chat 1\n",
            b"not-an-id ev chat 1\n\n{}",
            b"1-0 ev chat many\n\n{}",
            b"1-0 ev chat\n\n{}",
            b"1-0 ev chat 2\nchannel:a nope\n{}",
            b"\xff\xfe",
        ] {
            assert!(parse(&general, payload).is_none(), "{:?}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn a_copy_of_the_last_message_is_a_repeat_and_a_new_one_is_not() {
        let mut last = LastMessage::default();
        assert!(!last.repeats("realtime:channel:{a}", b"1-0 ev chat 1\n\n{}"));
        assert!(last.repeats("realtime:channel:{a}", b"1-0 ev chat 1\n\n{}"), "the same message through a pattern");
        assert!(!last.repeats("realtime:channel:{b}", b"1-0 ev chat 1\n\n{}"), "another channel");
        assert!(!last.repeats("realtime:channel:{b}", b"1-1 ev3 chat 1\n\n{}"), "another message");
        assert!(!last.repeats("realtime:channel:{b}", b"batch 2-0 2\n2-0 e4 chat 1 2\n{}2-1 e5 chat 1 2\n{}"));
        assert!(
            !last.repeats("realtime:channel:{b}", b"batch 3-0 2\n3-0 e6 chat 1 2\n{}3-1 e7 chat 1 2\n{}"),
            "another batch of as many events"
        );
    }
}
