//! Stream positions and the SSE `id` that carries a connection's place in all its channels.
//!
//! Each channel is an ordered log. A [`Position`] is a place in one channel's log, shaped
//! like a Redis Stream id (`<milliseconds>-<sequence>`) so that the in-memory engine and the
//! Redis engine agree on what an id means. A connection may follow several channels, so the
//! SSE `id:` it receives must say where it is in *each* of them: that is a [`Cursor`],
//! encoded as `tag:pos,tag:pos,...`, one entry per channel of the connection in the order of
//! subscription. The tag is a 3-character hash of the channel name; it lets a reconnecting
//! client with a different channel list resume exactly the channels it had, and start the
//! others fresh, instead of silently applying one channel's position to another.
//!
//! A connection that follows a single channel gets an id that depends only on the event
//! (`tag:pos`), so that id is part of the event's shared frame; only multi-channel
//! connections write their own `id:` line.

use smallvec::SmallVec;

use crate::channel::ChannelName;

/// A place in one channel's log. Ordered like Redis Stream ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The last position there is: nothing comes after it (a client may still name it).
    pub const MAX: Self = Self::new(u64::MAX, u64::MAX);

    /// The largest sequence an event gets within one millisecond of a channel: a Centrifugo
    /// offset is milliseconds × 1000 + the sequence (`src/http/centrifugo/protocol.rs`), so
    /// with more, offsets would repeat and an SDK recovering from one of them would get the
    /// rest of that millisecond again. The Redis publish scripts keep to it as well
    /// (`publish_prelude.lua`, `fill_millisecond`).
    pub const MAX_SEQ: u64 = 999;

    /// The next position after `self` at wall-clock `now_ms`, never going backwards
    /// (the rule Redis applies to `XADD *`), and never past [`Self::MAX_SEQ`] within a
    /// millisecond: the one after that is the next millisecond's first.
    pub fn next_at(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self { ms: now_ms, seq: 0 }
        } else if self.seq >= Self::MAX_SEQ && self.ms < u64::MAX {
            Self { ms: self.ms + 1, seq: 0 }
        } else {
            Self { ms: self.ms, seq: self.seq.saturating_add(1) }
        }
    }

    /// The position just before `self`: a read after it starts with `self`.
    pub fn prev(self) -> Self {
        match (self.ms, self.seq) {
            (ms, seq) if seq > 0 => Self { ms, seq: seq - 1 },
            (0, _) => self,
            (ms, _) => Self { ms: ms - 1, seq: u64::MAX },
        }
    }

    /// Compact form used inside SSE ids: base-36 milliseconds, `-seq` when `seq > 0`.
    pub fn write_compact(self, out: &mut String) {
        push_base36(out, self.ms);
        if self.seq > 0 {
            out.push('-');
            push_base36(out, self.seq);
        }
    }

    pub fn parse_compact(s: &str) -> Option<Self> {
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, Some(seq)),
            None => (s, None),
        };
        let ms = parse_base36(ms)?;
        let seq = match seq {
            Some(seq) => parse_base36(seq)?,
            None => 0,
        };
        Some(Self { ms, seq })
    }

    /// The Redis Stream id form, `ms-seq`.
    pub fn to_stream_id(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    pub fn parse_stream_id(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn push_base36(out: &mut String, n: u64) {
    let (buf, i) = base36(n);
    for &b in &buf[i..] {
        out.push(b as char);
    }
}

/// The two base-36 digits of every number below 36², in order: a number is written two
/// digits per division (a position's milliseconds, eight digits, in four rather than eight).
const PAIRS: [u8; 2 * 36 * 36] = {
    let mut table = [0; 2 * 36 * 36];
    let mut n = 0;
    while n < 36 * 36 {
        table[2 * n] = DIGITS[n / 36];
        table[2 * n + 1] = DIGITS[n % 36];
        n += 1;
    }
    table
};

/// `n` in base 36: the digits are `buf[i..]` of the returned `(buf, i)`.
fn base36(mut n: u64) -> ([u8; 13], usize) {
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    // At most six pairs: 36¹² is below `u64::MAX`, 36¹³ above it.
    while n >= 36 * 36 {
        let pair = (n % (36 * 36)) as usize;
        n /= 36 * 36;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[2 * pair..2 * pair + 2]);
    }
    let n = n as usize;
    if n >= 36 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[2 * n..2 * n + 2]);
    } else {
        i -= 1;
        buf[i] = DIGITS[n];
    }
    (buf, i)
}

fn parse_base36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// The 3-character tag of a channel name (FNV-1a, base 36).
pub fn channel_tag(channel: &str) -> [u8; 3] {
    let mut h: u32 = 0x811c_9dc5;
    for b in channel.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut n = h % (36 * 36 * 36);
    let mut tag = [0u8; 3];
    for slot in tag.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    tag
}

/// Writes one cursor entry, `tag:pos`.
pub fn write_entry(out: &mut String, channel: &str, pos: Position) {
    for b in channel_tag(channel) {
        out.push(b as char);
    }
    out.push(':');
    pos.write_compact(out);
}

/// [`write_entry`] into a byte buffer (a frame being built), with no `String` on the way.
pub fn write_entry_bytes(out: &mut Vec<u8>, channel: &str, pos: Position) {
    out.extend_from_slice(&channel_tag(channel));
    out.push(b':');
    let (ms, i) = base36(pos.ms);
    out.extend_from_slice(&ms[i..]);
    if pos.seq > 0 {
        out.push(b'-');
        let (seq, i) = base36(pos.seq);
        out.extend_from_slice(&seq[i..]);
    }
}

/// A connection's position in each of its channels, in subscription order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Inline for a connection of one channel, the usual case: no allocation of its own, so
    /// no memory line of its own for each event to read. Crate-private, so that the
    /// container's type is not part of Herald's API.
    pub(crate) positions: SmallVec<[Position; 1]>,
}

impl Cursor {
    /// A cursor at the start of each of `channels` channels.
    pub(crate) fn at_start(channels: usize) -> Self {
        Self { positions: smallvec::smallvec![Position::default(); channels] }
    }

    /// Encodes the cursor as an SSE id for the given channel list.
    pub fn encode(&self, channels: &[ChannelName]) -> String {
        let mut out = String::with_capacity(channels.len() * 16);
        self.encode_into(channels, &mut out);
        out
    }

    /// Appends the SSE id to `out` (a connection reuses one buffer for every event).
    pub fn encode_into(&self, channels: &[ChannelName], out: &mut String) {
        for (i, (ch, pos)) in channels.iter().zip(&self.positions).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_entry(out, ch.as_str(), *pos);
        }
    }
}

/// What a client's `Last-Event-ID` says about one channel of its new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The id names this channel: resume after this position.
    From(Position),
    /// The id does not mention this channel: it is a new subscription, start at the head.
    Fresh,
    /// The id is malformed or ambiguous for this channel: the client must refetch state.
    Unknown,
}

/// A parsed `Last-Event-ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEventId {
    entries: Vec<([u8; 3], Position)>,
}

impl LastEventId {
    /// Parses an SSE id written by [`Cursor::encode`]. `None` if it is not one of ours.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 4096 {
            return None;
        }
        let mut entries = Vec::new();
        for entry in raw.split(',') {
            let (tag, pos) = entry.split_once(':')?;
            let tag: [u8; 3] = tag.as_bytes().try_into().ok()?;
            if !tag.iter().all(|b| DIGITS.contains(b)) {
                return None;
            }
            entries.push((tag, Position::parse_compact(pos)?));
        }
        Some(Self { entries })
    }

    /// Where the channel at `index` of the new connection resumes. A tag that appears
    /// once is matched wherever it stands; a tag that appears more than once (a hash
    /// collision) is accepted only at the same index.
    pub fn resume_for(&self, index: usize, channel: &str) -> Resume {
        let tag = channel_tag(channel);
        let mut found = self.entries.iter().filter(|(t, _)| *t == tag);
        match (found.next(), found.next()) {
            (None, _) => Resume::Fresh,
            (Some((_, pos)), None) => Resume::From(*pos),
            (Some(_), Some(_)) => match self.entries.get(index) {
                Some((t, pos)) if *t == tag => Resume::From(*pos),
                _ => Resume::Unknown,
            },
        }
    }
}

/// Writes the compact id of a single-channel connection into `out` (used for shared frames).
pub fn single_entry(channel: &str, pos: Position) -> String {
    let mut out = String::with_capacity(16);
    write_entry(&mut out, channel, pos);
    out
}

/// Formats a short debug view of a position (`ms-seq`).
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_compact(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn an_entry_written_as_bytes_is_the_entry_written_as_a_string() {
        for pos in [
            Position::new(0, 0),
            Position::new(1_764_800_000_123, 0),
            Position::new(35, 36),
            Position::new(u64::MAX, u64::MAX),
        ] {
            let mut bytes = Vec::new();
            write_entry_bytes(&mut bytes, "user:42", pos);
            assert_eq!(String::from_utf8(bytes).ok(), Some(single_entry("user:42", pos)));
        }
    }

    #[test]
    fn a_number_is_written_in_base_36_as_digit_by_digit() {
        let by_digit = |mut n: u64| {
            let mut digits = Vec::new();
            loop {
                digits.insert(0, DIGITS[(n % 36) as usize]);
                n /= 36;
                if n == 0 {
                    break digits;
                }
            }
        };
        let mut numbers = vec![0, 1, 35, 36, 37, 1_295, 1_296, 1_297, 46_655, 46_656, 1_764_863_051_123, u64::MAX];
        numbers.extend((0..13).flat_map(|k| {
            let p = 36u64.saturating_pow(k);
            [p.saturating_sub(1), p, p.saturating_add(1)]
        }));
        let mut n = 1u64;
        while let Some(next) = n.checked_mul(7).and_then(|n| n.checked_add(3)) {
            numbers.push(n);
            n = next;
        }
        for n in numbers {
            let (buf, i) = base36(n);
            assert_eq!(&buf[i..], &by_digit(n)[..], "{n}");
        }
    }

    #[test]
    fn positions_never_go_backwards() {
        let p = Position::new(1000, 0);
        assert_eq!(p.next_at(1001), Position::new(1001, 0));
        assert_eq!(p.next_at(1000), Position::new(1000, 1));
        assert_eq!(p.next_at(999), Position::new(1000, 1), "a clock step back keeps order");
    }

    #[test]
    fn a_millisecond_holds_at_most_1000_positions_then_the_next_one_starts() {
        let mut p = Position::new(1000, 0);
        for seq in 1..=Position::MAX_SEQ {
            p = p.next_at(1000);
            assert_eq!(p, Position::new(1000, seq));
        }
        assert_eq!(p.next_at(1000), Position::new(1001, 0), "the 1001st of a millisecond");
        assert_eq!(p.next_at(999), Position::new(1001, 0), "and after a clock step back");
        assert_eq!(p.next_at(1005), Position::new(1005, 0), "a later clock still wins");
        assert_eq!(Position::new(1001, 0).prev(), Position::new(1000, u64::MAX));
    }

    #[test]
    fn compact_and_stream_forms_round_trip() {
        for p in [Position::new(0, 0), Position::new(1_700_000_000_123, 0), Position::new(u64::MAX, 42)] {
            let mut s = String::new();
            p.write_compact(&mut s);
            assert_eq!(Position::parse_compact(&s), Some(p), "{s}");
            assert_eq!(Position::parse_stream_id(&p.to_stream_id()), Some(p));
        }
        assert_eq!(Position::parse_compact("ZZ"), None);
        assert_eq!(Position::parse_compact(""), None);
        assert_eq!(Position::parse_compact("zzzzzzzzzzzzzz"), None, "overflow is refused");
    }

    #[test]
    fn cursor_id_resumes_each_channel_even_when_the_list_changes() {
        let old = [ch("channel:a"), ch("user:1"), ch("system")];
        let cursor =
            Cursor { positions: smallvec::smallvec![Position::new(10, 0), Position::new(20, 3), Position::new(30, 0)] };
        let id = LastEventId::parse(&cursor.encode(&old)).unwrap_or_else(|| panic!("parse"));
        // Same channels in another order, plus one new channel.
        assert_eq!(id.resume_for(0, "system"), Resume::From(Position::new(30, 0)));
        assert_eq!(id.resume_for(1, "channel:a"), Resume::From(Position::new(10, 0)));
        assert_eq!(id.resume_for(2, "user:1"), Resume::From(Position::new(20, 3)));
        assert_eq!(id.resume_for(3, "channel:new"), Resume::Fresh);
    }

    #[test]
    fn foreign_or_garbled_ids_are_refused() {
        for bad in ["", "123", "abc:", "ab:1", "a b:1", "abc:1,", "abc:1,xyz", "ABC:1"] {
            assert_eq!(LastEventId::parse(bad), None, "{bad:?}");
        }
    }
}
