//! Reading an SSE stream with as little work as possible: HTTP/1.1 chunked decoding, frame
//! boundaries (`\n\n`), and the two numbers the bench puts in each event's payload,
//! `"seq":` and `"ts":`. Nothing else of a frame is parsed; frames without `"seq":`
//! (comments, `retry:`, a server's own events) are only checked for the ready marker.

use memchr::memmem::Finder;

/// Decodes `Transfer-Encoding: chunked`, appending the payload bytes to an output buffer.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hexadecimal size; `ext` once a `;` extension started.
    #[default]
    SizeStart,
    Size {
        size: usize,
        ext: bool,
    },
    SizeLf {
        size: usize,
    },
    Data(usize),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, up to an empty line.
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
    /// The last chunk and its trailers were read: the body is over.
    Done,
}

/// The stream is not valid chunked encoding.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad chunked encoding: {}", self.0)
    }
}

impl Dechunker {
    /// Decodes `input` into `out`; returns how many bytes of `input` belong to this body
    /// (all of them, unless the body ends inside `input`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut rest = input;
        while let Some(&b) = rest.first() {
            match self.state {
                Data(n) => {
                    let take = n.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    self.state = if take == n { DataCr } else { Data(n - take) };
                    continue;
                }
                Done => break,
                SizeStart | Size { .. } => {
                    let (size, ext) = match self.state {
                        Size { size, ext } => (size, ext),
                        _ => (0, false),
                    };
                    self.state = match b {
                        b'\r' if self.state != SizeStart => SizeLf { size },
                        b'\n' if self.state != SizeStart => Self::after_size(size),
                        b';' => Size { size, ext: true },
                        _ if ext => Size { size, ext },
                        _ => {
                            let digit = (b as char).to_digit(16).ok_or(ChunkError("chunk size is not hexadecimal"))?;
                            let size = size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(digit as usize))
                                .ok_or(ChunkError("chunk size overflows"))?;
                            Size { size, ext }
                        }
                    };
                }
                SizeLf { size } => {
                    if b != b'\n' {
                        return Err(ChunkError("no LF after the chunk size"));
                    }
                    self.state = Self::after_size(size);
                }
                DataCr => {
                    self.state = match b {
                        b'\r' => DataLf,
                        b'\n' => SizeStart,
                        _ => return Err(ChunkError("no CRLF after chunk data")),
                    };
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("no LF after chunk data"));
                    }
                    self.state = SizeStart;
                }
                TrailerStart => {
                    self.state = match b {
                        b'\r' => TrailerEndLf,
                        b'\n' => Done,
                        _ => TrailerLine,
                    };
                }
                TrailerLine => {
                    if b == b'\n' {
                        self.state = TrailerStart;
                    }
                }
                TrailerEndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("no LF after the trailers"));
                    }
                    self.state = Done;
                }
            }
            rest = &rest[1..];
        }
        Ok(input.len() - rest.len())
    }

    fn after_size(size: usize) -> ChunkState {
        if size == 0 { ChunkState::TrailerStart } else { ChunkState::Data(size) }
    }

    /// Whether the last chunk has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// What the bench reads from one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    pub seq: u64,
    /// The publisher's send time, microseconds since the Unix epoch, if the payload has one.
    pub ts: Option<u64>,
}

/// Finds frames and the numbers in them. One per process, shared by every stream.
pub struct Scanner {
    frame_end: Finder<'static>,
    seq: Finder<'static>,
    ts: Finder<'static>,
    ready: Option<Finder<'static>>,
}

impl Scanner {
    /// `ready`: a stream counts as established once a frame containing it arrives (for
    /// Herald, its `connected` event); empty means the first frame of any kind.
    pub fn new(ready: &str) -> Self {
        Self {
            frame_end: Finder::new(b"\n\n").into_owned(),
            seq: Finder::new(b"\"seq\":").into_owned(),
            ts: Finder::new(b"\"ts\":").into_owned(),
            ready: (!ready.is_empty()).then(|| Finder::new(ready.as_bytes()).into_owned()),
        }
    }

    pub fn is_ready_frame(&self, frame: &[u8]) -> bool {
        self.ready.as_ref().is_none_or(|f| f.find(frame).is_some())
    }

    pub fn numbers(&self, frame: &[u8]) -> Option<Numbers> {
        let seq = number_after(frame, &self.seq)?;
        Some(Numbers { seq, ts: number_after(frame, &self.ts) })
    }

    /// Calls `each` with every complete frame in `buf[*scanned..]`-onward data, then drops
    /// the consumed bytes from `buf`. `scanned` remembers how far the search got, so a
    /// partial frame is not searched again from its start.
    pub fn frames(&self, buf: &mut Vec<u8>, scanned: &mut usize, mut each: impl FnMut(&[u8])) {
        let mut start = 0;
        let mut from = scanned.saturating_sub(1);
        while let Some(pos) = self.frame_end.find(&buf[from..]) {
            let end = from + pos;
            each(&buf[start..end]);
            start = end + 2;
            from = start;
        }
        if start > 0 {
            buf.drain(..start);
        }
        *scanned = buf.len();
    }
}

fn number_after(frame: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(frame)? + key.needle().len();
    let digits = frame[at..].iter().skip_while(|b| **b == b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// Response head of an HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub close: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

/// Parses a response head if `buf` holds all of it; `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut head = Head { status, chunked: false, content_length: None, close: false, len: end + 4 };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk_in_pieces(wire: &[u8], piece: usize) -> Vec<u8> {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        for part in wire.chunks(piece) {
            d.feed(part, &mut out).unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    #[test]
    fn chunked_bodies_decode_the_same_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            assert_eq!(dechunk_in_pieces(wire, piece), b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let mut d = Dechunker::default();
        let mut next = wire.to_vec();
        next.extend_from_slice(b"HTTP/1.1 200 OK");
        let used = d.feed(&next, &mut Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.is_done());
        assert_eq!(&next[used..], b"HTTP/1.1 200 OK", "a pipelined response after the body is left alone");
        let mut d = Dechunker::default();
        let used =
            d.feed(b"1\r\nx\r\n0\r\nx-trailer: 1\r\n\r\nrest", &mut Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.is_done(), used), (true, 25));
    }

    #[test]
    fn broken_chunked_encoding_is_an_error() {
        let mut d = Dechunker::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = Dechunker::default();
        assert!(d.feed(b"2\r\nabX", &mut Vec::new()).is_err());
    }

    #[test]
    fn frames_split_across_reads_are_found_once_with_their_numbers() {
        let s = Scanner::new("\"connected\"");
        let stream = b"retry: 3000\n\nid: 1\ndata: {\"type\":\"connected\"}\n\nid: 2\ndata: {\"id\":\"x\",\"timestamp\":\"t\",\"seq\":12,\"ts\":345}\n\n: heartbeat\n\ndata: {\"seq\": 13}\n\n";
        for piece in [1, 5, 16, 1000] {
            let (mut buf, mut scanned) = (Vec::new(), 0);
            let mut frames = Vec::new();
            for part in stream.chunks(piece) {
                buf.extend_from_slice(part);
                s.frames(&mut buf, &mut scanned, |f| frames.push(f.to_vec()));
            }
            assert!(buf.is_empty());
            assert_eq!(frames.len(), 5, "piece {piece}");
            assert!(!s.is_ready_frame(&frames[0]) && s.is_ready_frame(&frames[1]));
            let numbers: Vec<_> = frames.iter().filter_map(|f| s.numbers(f)).collect();
            assert_eq!(numbers, [Numbers { seq: 12, ts: Some(345) }, Numbers { seq: 13, ts: None }]);
        }
    }

    #[test]
    fn a_head_gives_status_and_body_framing() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nrest")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("incomplete"));
        assert_eq!(head, Head { status: 200, chunked: true, content_length: None, close: true, len: 66 });
        assert_eq!(parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n"), Ok(None));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }
}
