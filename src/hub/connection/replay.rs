//! What a connection writes from history before it goes on with its queue: the events a new
//! connection missed (a resume, `last=`), merged across its channels, and those of a live
//! join. They are kept as the events to write (pointers to events shared with history and
//! every other subscriber) and written a piece a poll, about [`PIECE`] bytes, as the
//! transport's writer asks for more. A client that opens connections and never reads them
//! holds no copy of what they replay, nor an id line for each of its events: on a
//! connection of 32 channels that id alone was some 700 bytes an event.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::emit::{Emit, event_id};
use crate::channel::ChannelName;
use crate::cursor::{Cursor, Position};
use crate::engine::{AiSnapshot, merge};
use crate::event::{Published, fields_match};

/// Bytes of events written in one poll, about: the event that crosses it is the last.
pub(super) const PIECE: usize = 64 * 1024;

/// Events taken in one poll at most, written or passed over (a filter that refuses most
/// of a long replay still lets the poll end soon).
pub(super) const MAX_STEPS: usize = 1024;

/// What a connection still has to write from history, before anything queued for it.
pub(crate) enum Replay {
    /// What a new connection missed (see [`Opening`]).
    Opening(Box<Opening>),
    /// A live join's history (see [`Joining`]).
    Joining(Box<Joining>),
}

/// What a new connection missed, merged across its channels ([`merge`]): each event is
/// written with the cursor after it as its id, then the AI-stream snapshots.
pub(crate) struct Opening {
    steps: VecDeque<merge::Step>,
    /// The cursor after what was taken so far (written, or passed over).
    at: Cursor,
    /// Each channel's AI streams the client is behind on: their chunks are passed over, a
    /// snapshot stands for them.
    behind: Vec<Vec<String>>,
    /// Written last, with the cursor after every event as their id.
    snapshots: Vec<AiSnapshot>,
}

/// Where a connection that opens with `missed` stands once it has written all of it, and
/// the ids of the events it takes that are on more channels than they were read from (see
/// [`Opening::new`]).
pub(crate) struct End {
    pub cursor: Cursor,
    pub split: Vec<Arc<str>>,
}

impl Opening {
    /// The events of each channel (`missed[i]`, in channel `i`'s order) merged so that every
    /// channel's events come in that channel's order, and an event on several of the
    /// connection's channels comes once, where it is in order on all of them ([`merge`]).
    /// Each event's id is the cursor after it: a channel's position moves only over events
    /// of that channel that were written (or passed over, see below), so a client resuming
    /// from any of these ids misses nothing and gets nothing twice.
    ///
    /// AI-stream chunks that a snapshot stands for (`behind[i]`, the streams of channel `i`
    /// the client is behind on) and events the filters refuse are passed over: the cursor
    /// moves over them, nothing is written.
    ///
    /// Returns the replay, from `cursor`, and where it ends: the cursor after it, and the
    /// ids of the events taken (written or passed over) that are on more channels than
    /// they were read from: on Redis Cluster, where channels are read one after another,
    /// their copies on the other channels may still come through the queue, one at a time,
    /// and are repeats.
    pub(crate) fn new(
        cursor: Cursor,
        missed: Vec<merge::List>,
        behind: Vec<Vec<String>>,
        snapshots: Vec<AiSnapshot>,
    ) -> (Self, End) {
        let channels = missed.len();
        let steps: VecDeque<merge::Step> = merge::merge(missed).into();
        let mut end = End { cursor: cursor.clone(), split: Vec::new() };
        for step in &steps {
            for t in &step.taken {
                advance(&mut end.cursor, t.list, t.position);
            }
            if let Some(t) = written(step)
                && channels > 1
                && usize::from(t.event.fanout) > step.taken.len()
            {
                end.split.push(Arc::clone(&t.event.id));
            }
        }
        (Self { steps, at: cursor, behind, snapshots }, end)
    }

    /// Whether there is nothing to write (most connections: no resume, no `last=`).
    pub(crate) fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.snapshots.is_empty()
    }

    /// Writes the next piece; true once everything is written.
    pub(super) fn write_piece(
        &mut self,
        out: &mut impl Emit,
        channels: &[ChannelName],
        filters: &[(String, String)],
        id: &mut String,
    ) -> bool {
        let (mut bytes, mut steps) = (0, 0);
        while bytes < PIECE && steps < MAX_STEPS {
            let Some(step) = self.steps.pop_front() else { break };
            steps += 1;
            for t in &step.taken {
                advance(&mut self.at, t.list, t.position);
            }
            // Taken in head order; write the copy of the connection's first channel among them.
            let Some(t) = written(&step) else { continue };
            let ev = &t.event;
            let snapshotted = ev.ai_stream_id().is_some_and(|sid| {
                step.taken.iter().any(|t| self.behind.get(t.list).is_some_and(|b| b.iter().any(|s| s == sid)))
            });
            let Some(copy) = channels.get(t.list).and_then(|ch| ev.copy_on(ch.as_str())) else { continue };
            if snapshotted || (!filters.is_empty() && !ev.matches_on(copy, filters)) {
                continue;
            }
            let id = event_id(channels, &self.at, id);
            bytes += copy.frame.wire_len() + id.map_or(0, str::len);
            out.event(&ev.event_type, copy, id);
        }
        if !self.steps.is_empty() {
            return false;
        }
        if !self.snapshots.is_empty() {
            let id = self.at.encode(channels);
            write_snapshots(out, &id, std::mem::take(&mut self.snapshots), filters);
        }
        true
    }
}

/// The occurrence of a step's event that is written, if the step writes one: the copy of
/// the connection's first channel among those taken.
fn written(step: &merge::Step) -> Option<&merge::Taken> {
    step.taken.iter().filter(|_| step.first).min_by_key(|t| t.list)
}

/// Moves channel `list`'s position in `cursor` on to `position`, never back.
fn advance(cursor: &mut Cursor, list: usize, position: Position) {
    if let Some(at) = cursor.positions.get_mut(list)
        && position > *at
    {
        *at = position;
    }
}

/// Writes AI-stream snapshots (each an `ai_chat_chunk` marked `snapshot`) that pass the
/// connection's filters.
fn write_snapshots(out: &mut impl Emit, id: &str, snapshots: Vec<AiSnapshot>, filters: &[(String, String)]) {
    for snap in snapshots {
        if !filters.is_empty() {
            let fields = serde_json::from_str(&snap.json).unwrap_or_default();
            if !fields_match(&fields, filters) {
                continue;
            }
        }
        out.notice(crate::event::AI_CHUNK_TYPE, id, snap.json.as_bytes());
    }
}

/// A live join's history (see `JoinStart::At`): the channel's events after where the join
/// starts, each with whether to write it, then the events to write after them (AI-stream
/// snapshots).
pub(crate) struct Joining {
    /// The index of the joined channel among the connection's.
    pub(super) channel: usize,
    pub(super) events: std::vec::IntoIter<(Arc<Published>, bool)>,
    pub(super) lead: Vec<(Arc<str>, Bytes)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Copy;
    use crate::transport::messages::MessageOut;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cursor(ms: &[u64]) -> Cursor {
        Cursor { positions: ms.iter().map(|&m| Position::new(m, 0)).collect() }
    }

    /// Writes all of `opening`, piece by piece; how many pieces it took.
    fn write_all(
        mut opening: Opening,
        out: &mut MessageOut,
        channels: &[ChannelName],
        filters: &[(String, String)],
    ) -> (usize, Cursor) {
        let (mut pieces, mut id) = (1, String::new());
        while !opening.write_piece(out, channels, filters, &mut id) {
            pieces += 1;
        }
        (pieces, opening.at)
    }

    fn ids(out: &MessageOut) -> Vec<String> {
        out.queue.iter().filter_map(|m| m.message()).map(|m| m.id.clone()).collect()
    }

    #[test]
    fn a_replayed_events_id_moves_each_channel_only_over_what_was_written_on_it() {
        let channels = [ch("channel:a"), ch("channel:b")];
        let (a, b) = (&channels[0], &channels[1]);
        // Crossed writes (a cluster): `x` before `y` on a, `y` before `x` on b.
        let (x, y) = (Published::at("x", &[(a, 10), (b, 21)]), Published::at("y", &[(a, 11), (b, 20)]));
        let z = Published::at("z", &[(b, 22)]);
        let mut missed = vec![merge::List::new(), merge::List::new()];
        missed[0].extend([(Position::new(10, 0), Arc::clone(&x)), (Position::new(11, 0), Arc::clone(&y))]);
        missed[1].extend([(Position::new(20, 0), y), (Position::new(21, 0), x), (Position::new(22, 0), z)]);
        let mut out = MessageOut::default();
        let start = cursor(&[1, 1]);
        let (opening, end) = Opening::new(start, missed, vec![Vec::new(), Vec::new()], Vec::new());
        // `x` was taken from a alone when it was written: its copy on b may still come live.
        assert_eq!(end.split, [Arc::from("x")]);
        let (_, at) = write_all(opening, &mut out, &channels, &[]);
        let ids = ids(&out);
        let expected = [
            // `x` is written first, but b's position stays before `y`, still unwritten there.
            cursor(&[10, 1]),
            cursor(&[11, 20]),
            // `z` comes after `x`'s copy on b was passed over.
            cursor(&[11, 22]),
        ];
        assert_eq!(ids, expected.iter().map(|c| c.encode(&channels)).collect::<Vec<_>>());
        assert_eq!(end.cursor, cursor(&[11, 22]), "the live part starts after everything replayed");
        assert_eq!(at, end.cursor, "where the replay ends");
    }

    #[test]
    fn filtered_events_are_passed_over_so_the_cursor_covers_them() {
        let channels = [ch("channel:a"), ch("channel:b")];
        let both = Published::at("both", &[(&channels[0], 5), (&channels[1], 7)]);
        let mut missed = vec![merge::List::new(), merge::List::new()];
        missed[0].push_back((Position::new(5, 0), Arc::clone(&both)));
        missed[1].push_back((Position::new(7, 0), both));
        let mut out = MessageOut::default();
        let start = cursor(&[1, 1]);
        let filters = [("kind".to_owned(), "none".to_owned())];
        let (opening, end) = Opening::new(start, missed, vec![Vec::new(), Vec::new()], Vec::new());
        let (_, at) = write_all(opening, &mut out, &channels, &filters);
        assert!(out.queue.is_empty());
        assert_eq!((at, end.cursor), (cursor(&[5, 7]), cursor(&[5, 7])));
    }

    #[test]
    fn a_long_replay_is_written_a_piece_a_poll_with_the_same_ids_as_written_whole() {
        // 3 channels of 60 events of 6 KB, interleaved: 1 MB to write, in pieces of about
        // `PIECE` bytes; each event's id is the cursor after it, whatever piece it is in.
        let channels = [ch("channel:a"), ch("channel:b"), ch("channel:c")];
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(6000));
        let mut missed = vec![merge::List::new(), merge::List::new(), merge::List::new()];
        let mut all = Vec::new();
        for n in 0..180u64 {
            let (list, ms) = ((n % 3) as usize, 10 + n);
            let copy = Copy::new(channels[list].clone(), Position::new(ms, 0), "t", json.as_bytes());
            let ev = Arc::new(Published::new(Arc::from(format!("e{n}")), Arc::from("t"), vec![copy], 1));
            missed[list].push_back((Position::new(ms, 0), ev));
            all.push((list, ms));
        }
        let (mut opening, end) = Opening::new(cursor(&[1, 1, 1]), missed, vec![Vec::new(); 3], Vec::new());
        let mut out = MessageOut::default();
        let (mut id, mut pieces) = (String::new(), Vec::new());
        loop {
            let done = opening.write_piece(&mut out, &channels, &[], &mut id);
            pieces.push(out.queue.len() - pieces.iter().sum::<usize>());
            if done {
                break;
            }
        }
        // 64 KiB is 11 events of 6 KB: the 11th crosses it and is the piece's last.
        assert_eq!(pieces.iter().sum::<usize>(), 180);
        assert!(pieces[..pieces.len() - 1].iter().all(|&n| n == 11), "{pieces:?}");
        let mut at = cursor(&[1, 1, 1]);
        let expected: Vec<String> = all
            .iter()
            .map(|&(list, ms)| {
                at.positions[list] = Position::new(ms, 0);
                at.encode(&channels)
            })
            .collect();
        assert_eq!(ids(&out), expected);
        assert_eq!(at, end.cursor);
    }

    #[test]
    fn a_replay_its_filters_refuse_takes_a_bounded_number_of_events_a_poll() {
        let channels = [ch("channel:a")];
        let mut missed = vec![merge::List::new()];
        for ms in 1..=3000 {
            missed[0].push_back((Position::new(ms, 0), Published::at(&format!("e{ms}"), &[(&channels[0], ms)])));
        }
        let (mut opening, _) = Opening::new(cursor(&[0]), missed, vec![Vec::new()], Vec::new());
        let filters = [("kind".to_owned(), "none".to_owned())];
        let (mut out, mut id) = (MessageOut::default(), String::new());
        assert!(!opening.write_piece(&mut out, &channels, &filters, &mut id), "a poll passes over 1,024 at most");
        assert_eq!(opening.at, cursor(&[1024]));
        let (pieces, at) = write_all(opening, &mut out, &channels, &filters);
        assert_eq!((pieces, at, out.queue.len()), (2, cursor(&[3000]), 0));
    }
}
