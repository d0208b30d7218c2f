//! HTTP/1.1 bytes the lean paths share: a request's first bytes checked against a route's
//! prefix while they arrive, and response heads written byte for byte as hyper writes them
//! (the status line, the response's headers, `content-length` or chunked framing,
//! `connection`, `date`), for the streams of [`super::lean`] and the publish answers of
//! [`super::lean_publish`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, Version, header};
use bytes::{BufMut, Bytes, BytesMut};

/// Whether what was read so far agrees with `prefix`.
pub(super) fn starts(buf: &[u8], prefix: &[u8]) -> bool {
    let known = buf.len().min(prefix.len());
    buf[..known] == prefix[..known]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1).
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0).
    Close,
}

/// The response head as hyper writes it: the status line, the response's headers in order,
/// `connection` when keep-alive differs from the version's default, the framing, `date`.
pub(super) fn encode_head(
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    keep_alive: bool,
    framing: Framing,
) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.put_slice(b"\r\n");
    let mut wrote_length = false;
    for (name, value) in headers {
        // axum sets `content-length` for a body of known size; hyper writes it where it is.
        if name == header::CONTENT_LENGTH {
            if wrote_length || !matches!(framing, Framing::Length(_)) {
                continue;
            }
            wrote_length = true;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let said = Said { length: wrote_length, connection: headers.contains_key(header::CONNECTION) };
    put_head_end(&mut out, version, keep_alive, said, framing);
    out.freeze()
}

/// Which of the headers [`put_head_end`] writes the response's own headers had already.
#[derive(Clone, Copy, Default)]
pub(super) struct Said {
    pub length: bool,
    pub connection: bool,
}

/// The end of a response head, after the response's own headers, as hyper writes it: the
/// `content-length` of a body of known length, `connection` when keep-alive differs from the
/// version's default (each unless the response's own headers had it), the chunked framing,
/// `date`, and the blank line.
pub(super) fn put_head_end(out: &mut BytesMut, version: Version, keep_alive: bool, said: Said, framing: Framing) {
    // Put together on the stack and appended at once: one copy into `out`, not one a piece.
    let mut end = HeadEnd::default();
    // Where axum's routing would have put it: after the response's own headers (a lean
    // publish's answer is not routed).
    if let Framing::Length(n) = framing
        && !said.length
    {
        end.put(b"content-length: ");
        let (digits, at) = decimal(n);
        end.put(&digits[at..]);
        end.put(b"\r\n");
    }
    // As hyper does, even for a close-delimited HTTP/1.0 body (the connection closes after it),
    // unless the response says it itself.
    if !said.connection {
        match (version, keep_alive) {
            (Version::HTTP_10, true) => end.put(b"connection: keep-alive\r\n"),
            (Version::HTTP_11, false) => end.put(b"connection: close\r\n"),
            _ => {}
        }
    }
    match framing {
        Framing::Length(_) => {}
        Framing::Chunked => end.put(b"transfer-encoding: chunked\r\n"),
        Framing::Close => {}
    }
    end.put(b"date: ");
    with_date(|date| end.put(date));
    end.put(b"\r\n\r\n");
    out.put_slice(&end.bytes[..end.len]);
}

/// The end of a head as [`put_head_end`] puts it together: at most 16 + 20 + 2 bytes of
/// length, 24 of `connection`, 28 of framing, 6 + 29 + 4 of `date` (129).
struct HeadEnd {
    bytes: [u8; 160],
    len: usize,
}

impl Default for HeadEnd {
    fn default() -> Self {
        Self { bytes: [0; 160], len: 0 }
    }
}

impl HeadEnd {
    fn put(&mut self, piece: &[u8]) {
        let end = self.len + piece.len();
        if let Some(room) = self.bytes.get_mut(self.len..end) {
            room.copy_from_slice(piece);
            self.len = end;
        }
        debug_assert_eq!(self.len, end, "a head's end fits in HeadEnd");
    }
}

/// `n` in decimal, without `fmt`'s machinery (a few hundred instructions per answer): the
/// digits are `digits[at..]`.
fn decimal(mut n: u64) -> ([u8; 20], usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (digits, i)
}

thread_local! {
    /// The `date` of this second (from its start to the next), formatted once per second
    /// per thread, as hyper does.
    static DATE: std::cell::RefCell<(SystemTime, SystemTime, String)> =
        const { std::cell::RefCell::new((UNIX_EPOCH, UNIX_EPOCH, String::new())) };
}

/// Calls `f` with the current `date` header value.
fn with_date(f: impl FnOnce(&[u8])) {
    let now = crate::clock::wall();
    DATE.with_borrow_mut(|(from, until, text)| {
        // Two comparisons, not the seconds since the epoch worked out for every answer.
        if !(*from <= now && now < *until) {
            let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            *from = UNIX_EPOCH + Duration::from_secs(second);
            *until = from.checked_add(Duration::from_secs(1)).unwrap_or(*from);
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 100, 12_345, u64::MAX] {
            let (digits, at) = decimal(n);
            assert_eq!(&digits[at..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn prefixes_agree_with_what_has_arrived_so_far() {
        assert!(starts(b"", b"POST /api/"));
        assert!(starts(b"POST /a", b"POST /api/"));
        assert!(starts(b"POST /api/channels", b"POST /api/"));
        assert!(!starts(b"GET ", b"POST /api/"));
    }
}
