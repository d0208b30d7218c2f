//! SSE wire format: frames, comments and `retry:` hints.
//!
//! Everything Herald writes on an event stream is produced here, and nothing a publisher
//! controls can break the framing: data is split on every CR, LF and CRLF into separate
//! `data:` lines (a JSON serializer never emits raw newlines, but the rule holds for any
//! bytes), and event names and ids are checked to be single-line before they get here.
//!
//! A [`Frame`] is built once per event and channel and shared by every subscriber. Its bytes
//! are laid out `[event: <type>\n][id: <id>\n]data: ...\n\n`, so that a subscriber who wants
//! unnamed events takes a slice from the `id:` line, one who wants named events takes all
//! of it, and a multi-channel connection that writes its own `id:` line takes the parts
//! around it: no copy and no allocation per subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// One event, framed once, shared by all its subscribers.
#[derive(Clone, Debug)]
pub struct Frame {
    bytes: Bytes,
    /// Where the `id:` and `data:` lines start: after the type and after the id, in 32 bits
    /// (8 bytes of every event kept, which holds its frame; see `Published`).
    id_at: u32,
    data_at: u32,
}

thread_local! {
    /// The buffer a frame is written in before it is copied into its own allocation: the
    /// same few lines for every frame a thread makes, in cache, where a buffer of its own
    /// is written while it grows and again as it is finished.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The most room [`SCRATCH`] keeps between frames (a larger one is let go).
const SCRATCH_KEEP: usize = 16 * 1024;

/// Runs `write` on the thread's scratch buffer, emptied (a new buffer if the thread has
/// none to lend: it is lent out already, or the thread is ending).
fn with_scratch<R>(write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    buf.clear();
    let out = write(&mut buf);
    if buf.capacity() <= SCRATCH_KEEP {
        let _ = SCRATCH.try_with(|s| s.set(buf));
    }
    out
}

/// A frame's bytes and their reference count in one allocation of the size class they
/// fill (see [`frame_bytes`]).
struct Inline<const N: usize> {
    bytes: [u8; N],
    len: u16,
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&self.bytes)
    }
}

/// `bytes` held in a `Bytes` of an allocation of its own: `Bytes::from_owner`'s count (8
/// bytes) and an [`Inline`] of `N` bytes and its length (2) make `N + 10`, one of
/// jemalloc's size classes. A `Bytes` made of a `Vec` takes a second allocation for its
/// count once it is shared (every frame is), and the `Vec` is given room for the longest
/// frame its parts could make: two allocations and more lines written per frame.
fn inline<const N: usize>(bytes: &[u8]) -> Bytes {
    let mut inline = Inline { bytes: [0; N], len: 0 };
    if let (Some(to), Ok(len)) = (inline.bytes.get_mut(..bytes.len()), u16::try_from(bytes.len())) {
        to.copy_from_slice(bytes);
        inline.len = len;
        return Bytes::from_owner(inline);
    }
    Bytes::copy_from_slice(bytes)
}

/// A frame's bytes, shared: of the size class they fill, with their count (see
/// [`inline`]), up to 1 KiB; a copy of their own beyond.
fn frame_bytes(bytes: &[u8]) -> Bytes {
    // The arms: `N + 10` is each of jemalloc's size classes from 64 bytes to 1 KiB.
    match bytes.len() {
        0..=54 => inline::<54>(bytes),
        55..=70 => inline::<70>(bytes),
        71..=86 => inline::<86>(bytes),
        87..=102 => inline::<102>(bytes),
        103..=118 => inline::<118>(bytes),
        119..=150 => inline::<150>(bytes),
        151..=182 => inline::<182>(bytes),
        183..=214 => inline::<214>(bytes),
        215..=246 => inline::<246>(bytes),
        247..=310 => inline::<310>(bytes),
        311..=374 => inline::<374>(bytes),
        375..=438 => inline::<438>(bytes),
        439..=502 => inline::<502>(bytes),
        503..=630 => inline::<630>(bytes),
        631..=758 => inline::<758>(bytes),
        759..=886 => inline::<886>(bytes),
        887..=1014 => inline::<1014>(bytes),
        _ => Bytes::copy_from_slice(bytes),
    }
}

impl Frame {
    /// Frames `data` as an event of type `event_type` with the given SSE id.
    pub fn new(event_type: &str, id: &str, data: &[u8]) -> Self {
        Self::of_parts(event_type.as_bytes(), id.as_bytes(), data)
    }

    fn of_parts(event_type: &[u8], id: &[u8], data: &[u8]) -> Self {
        with_scratch(|buf| {
            buf.reserve(event_type.len() + id.len() + data.len() + 24);
            buf.put_slice(b"event: ");
            put_single_line(buf, event_type);
            buf.put_u8(b'\n');
            let id_at = buf.len();
            buf.put_slice(b"id: ");
            put_single_line(buf, id);
            buf.put_u8(b'\n');
            let data_at = buf.len();
            put_data(buf, data);
            buf.put_u8(b'\n');
            Self::at(frame_bytes(buf), id_at, data_at)
        })
    }

    /// Frames an event whose id and JSON are written by the caller straight into the frame's
    /// buffer (`capacity` bytes reserved for both), rather than each built apart and copied
    /// in. The framing rules hold as in [`Frame::new`]: a type, an id or data written with a
    /// CR or LF in it is rewritten the way `new` writes it.
    pub fn build(
        event_type: &str,
        capacity: usize,
        id: impl FnOnce(&mut Vec<u8>),
        data: impl FnOnce(&mut Vec<u8>),
    ) -> Self {
        const TYPE_AT: usize = b"event: ".len();
        with_scratch(|buf| {
            buf.reserve(event_type.len() + capacity + 24);
            buf.extend_from_slice(b"event: ");
            buf.extend_from_slice(event_type.as_bytes());
            // The line ends of the type and the id are written once the three parts are
            // checked together, in one scan: a space stands in for each until then.
            let type_end = buf.len();
            buf.push(b' ');
            let id_at = buf.len();
            buf.extend_from_slice(b"id: ");
            let id_start = buf.len();
            id(buf);
            let id_end = buf.len();
            buf.push(b' ');
            let data_at = buf.len();
            buf.extend_from_slice(b"data: ");
            let data_start = buf.len();
            data(buf);
            if memchr::memchr2(b'\n', b'\r', &buf[TYPE_AT..]).is_none() {
                buf[type_end] = b'\n';
                buf[id_end] = b'\n';
                buf.extend_from_slice(b"\n\n");
                return Self::at(frame_bytes(buf), id_at, data_at);
            }
            // A line end in the type, the id or the data: framed the way `new` frames them.
            Self::of_parts(&buf[TYPE_AT..type_end], &buf[id_start..id_end], &buf[data_start..])
        })
    }

    /// A frame of `bytes` whose `id:` and `data:` lines start at `id_at` and `data_at`: the
    /// ends of a type and an id, never near 4 GiB.
    fn at(bytes: Bytes, id_at: usize, data_at: usize) -> Self {
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self { bytes, id_at: at(id_at), data_at: at(data_at) }
    }

    fn id_at(&self) -> usize {
        self.id_at as usize
    }

    fn data_at(&self) -> usize {
        self.data_at as usize
    }

    /// The frame for a subscriber of one channel: `id:` and `data:`, optionally `event:`.
    pub fn with_id(&self, named: bool) -> Bytes {
        if named { self.bytes.clone() } else { self.bytes.slice(self.id_at()..) }
    }

    /// Writes the frame without its `id:` line, after the caller's own `id:` line.
    pub fn put_with_own_id(&self, out: &mut BytesMut, id: &str, named: bool) {
        if named {
            out.put_slice(&self.bytes[..self.id_at()]);
        }
        out.put_slice(b"id: ");
        put_single_line(out, id.as_bytes());
        out.put_u8(b'\n');
        out.put_slice(&self.bytes[self.data_at()..]);
    }

    /// The frame's length in bytes, with its `event:` line.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The event's JSON, as framed (Herald frames its single-line JSON on one `data:` line).
    pub fn json(&self) -> &[u8] {
        let data = &self.bytes[self.data_at()..];
        data.strip_prefix(b"data: ").and_then(|d| d.strip_suffix(b"\n\n")).unwrap_or(data)
    }

    /// [`Frame::json`] as a slice of the shared buffer (no copy).
    pub fn json_bytes(&self) -> Bytes {
        let json = self.json();
        if json.len() + 8 == self.bytes.len() - self.data_at() {
            let start = self.data_at() + 6;
            self.bytes.slice(start..start + json.len())
        } else {
            Bytes::copy_from_slice(json)
        }
    }

    /// The frame's own SSE id (the single-channel id of its event).
    pub fn id(&self) -> &str {
        let line = &self.bytes[self.id_at()..self.data_at()];
        let id = line.strip_prefix(b"id: ").and_then(|l| l.strip_suffix(b"\n")).unwrap_or_default();
        std::str::from_utf8(id).unwrap_or_default()
    }
}

/// Writes `data` as one or more `data:` lines, splitting on CR, LF and CRLF.
pub fn put_data(out: &mut impl BufMut, data: &[u8]) {
    let mut rest = data;
    loop {
        out.put_slice(b"data: ");
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// Writes a value that must stay on one line (event name, id), dropping CR and LF.
fn put_single_line(out: &mut impl BufMut, value: &[u8]) {
    for chunk in value.split(|&b| b == b'\n' || b == b'\r') {
        out.put_slice(chunk);
    }
}

/// A complete event built for one connection only (`connected`, `reset`).
pub fn one_off_event(out: &mut BytesMut, event_type: &str, id: &str, data: &[u8], named: bool) {
    if named {
        out.put_slice(b"event: ");
        put_single_line(out, event_type.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"id: ");
    put_single_line(out, id.as_bytes());
    out.put_u8(b'\n');
    put_data(out, data);
    out.put_u8(b'\n');
}

/// A `retry:` field telling the client how long to wait before reconnecting.
pub fn put_retry(out: &mut BytesMut, millis: u64) {
    out.put_slice(b"retry: ");
    out.put_slice(millis.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

/// The heartbeat: a comment line, ignored by every SSE client.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_in_data_become_separate_data_lines() {
        let mut out = BytesMut::new();
        put_data(&mut out, b"a\nb\r\nc\rd");
        assert_eq!(&out[..], b"data: a\ndata: b\ndata: c\ndata: d\n");
    }

    #[test]
    fn frame_slices_share_one_buffer() {
        let f = Frame::new("chat", "abc:1", br#"{"x":1}"#);
        assert_eq!(&f.with_id(true)[..], b"event: chat\nid: abc:1\ndata: {\"x\":1}\n\n");
        assert_eq!(&f.with_id(false)[..], b"id: abc:1\ndata: {\"x\":1}\n\n");
        let mut own = BytesMut::new();
        f.put_with_own_id(&mut own, "abc:1,def:2", false);
        assert_eq!(&own[..], b"id: abc:1,def:2\ndata: {\"x\":1}\n\n");
        assert_eq!((&f.json_bytes()[..], f.id()), (&b"{\"x\":1}"[..], "abc:1"));
    }

    #[test]
    fn frame_bytes_are_the_bytes_in_one_allocation_of_their_size_class() {
        // `Bytes::from_owner` boxes its count (8 bytes) with the owner.
        let size = |inline: usize| (inline + 8).next_multiple_of(8);
        let held = [
            (size(std::mem::size_of::<Inline<54>>()), 64),
            (size(std::mem::size_of::<Inline<150>>()), 160),
            (size(std::mem::size_of::<Inline<214>>()), 224),
            (size(std::mem::size_of::<Inline<246>>()), 256),
            (size(std::mem::size_of::<Inline<502>>()), 512),
            (size(std::mem::size_of::<Inline<1014>>()), 1024),
        ];
        assert!(held.iter().all(|(size, class)| size == class), "{held:?}");
        let all: Vec<u8> = (0..1100_u32).map(|i| (i % 251) as u8).collect();
        for len in 0..all.len() {
            let bytes = frame_bytes(&all[..len]);
            let shared = bytes.slice(len / 2..);
            drop(bytes);
            assert_eq!(&shared[..], &all[len / 2..len], "{len}");
        }
    }

    #[test]
    fn a_frame_lends_its_thread_no_buffer_it_keeps_past_the_limit() {
        let big = vec![b'x'; SCRATCH_KEEP + 1];
        let f = Frame::new("chat", "1", &big);
        assert_eq!(f.json(), &big[..]);
        let kept = SCRATCH.take();
        assert!(kept.capacity() <= SCRATCH_KEEP, "{}", kept.capacity());
    }

    #[test]
    fn names_and_ids_cannot_inject_lines() {
        let f = Frame::new("a\nevent: evil", "1\n\ndata: x", b"{}");
        assert_eq!(&f.with_id(true)[..], b"event: aevent: evil\nid: 1data: x\ndata: {}\n\n");
    }

    #[test]
    fn a_frame_built_in_place_is_the_frame_new_makes_of_the_same_parts() {
        let parts = [
            ("chat", "abc:1", &br#"{"x":1}"#[..]),
            ("a\nevent: evil", "1\n\ndata: x", b"{}"),
            ("chat", "abc:1", b"line one\r\nline two\rthree\n"),
            ("chat", "abc\r:1", b"{}"),
            ("ty\rpe", "abc\n:1\r\n", b"a\n"),
            ("chat", "", b""),
            ("chat", "abc:1", b"\r"),
            ("ty\npe", "abc:1", b"{}"),
            ("type\r", "abc:1", br#"{"x":1}"#),
            ("", "", b""),
        ];
        for (event_type, id, data) in parts {
            let built =
                Frame::build(event_type, 4, |b| b.extend_from_slice(id.as_bytes()), |b| b.extend_from_slice(data));
            let made = Frame::new(event_type, id, data);
            assert_eq!(built.with_id(true), made.with_id(true));
            assert_eq!(built.with_id(false), made.with_id(false));
            assert_eq!((built.id(), built.json()), (made.id(), made.json()));
        }
    }
}
