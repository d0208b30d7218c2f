//! The pub/sub message format, as the publish script (`scripts/publish.lua`) writes it and
//! every node reads it.
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

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::event::{Copy, Published, json_for};

/// A message read: the event, and its position in each channel it names.
pub(super) struct Message {
    pub(super) event: Arc<Published>,
    pub(super) positions: Vec<(ChannelName, Position)>,
}

/// Reads a message that arrived on `channel`'s pub/sub channel; `None` if it is malformed.
pub(super) fn parse(channel: &ChannelName, payload: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(payload).ok()?;
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
        let msg = parse(&general, b"1700000000000-3 ev1 chat 1\n\n{\"text\":\"hi\"}");
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
        let Some(Message { event, positions }) = parse(&ch("channel:a"), payload) else { panic!("well-formed") };
        assert_eq!(positions, vec![(ch("channel:a"), sid("5-0")), (ch("channel:b"), sid("7-1"))]);
        assert_eq!(event.copies.len(), 2);
        assert_eq!(event.copy_on("channel:b").map(|c| c.position), Some(sid("7-1")));
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
    }
}
