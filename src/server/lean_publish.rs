//! The lean HTTP/1.1 path for publishes on plain TCP: `POST /api/channels/{channel}/events`
//! and `POST /api/publish`, one after another on a keep-alive connection.
//!
//! A backend that sends one event per request spends most of Herald's user-space time per
//! event in the HTTP machinery around the publish (hyper's dispatcher, axum's routing, the
//! tower layers, collecting the body: docs/benchmarks.md, "Round two"). A connection whose
//! first request is a publish to Herald's own routes is served here instead: each request
//! head is read in one pass when it has the plain form backends send ([`plain_head`]), else
//! by `httparse` ([`parsed_head`]), its `Content-Length` body is read into the connection's
//! buffer, and the request goes to the same functions as the axum handlers'
//! ([`publish::outcome`]: cookie and origin checks, credentials, channel policies, rate
//! limits, JSON, hooks, refusal counters), under the same request id and span. Those read
//! the head where it was scanned ([`LeanHead`], a [`RequestHead`]): no header map, header
//! name or value, or URI is built for a publish, and a new request id is made in place. The
//! answer is written as hyper writes it ([`super::h1::encode_head`]).
//!
//! Pipelined requests already in the buffer are served together ([`serve_together`]): each
//! is checked alone, in order ([`publish::stage`]), then the events of the accepted ones go to
//! the engine in one call, in order ([`publish::commit_together`]), and the answers are
//! written in order in one write. On Redis that is one transaction, whose pub/sub messages
//! reach the nodes together, so a subscriber's write carries several events, as in memory.
//! Only where the engine takes a batch all or nothing and no publish hook is set
//! ([`Herald::merges_publishes`]); a request whose events carry idempotency keys gets an
//! engine call of its own, in its place.
//!
//! Only the plain cases are served here; everything else goes to hyper with the bytes already
//! read, for the rest of the connection: another route or method, HTTP/1.0, a body that is
//! chunked, announced with `Expect`, absent, or over `max_body_bytes`, an `Upgrade`, a
//! request with an `Origin` when CORS is on (the CORS layer answers it), a head that is too
//! big or does not parse (hyper answers 431 or 400), a path with `%` escapes. Pipelined
//! requests are answered in order. The limits of the hyper path hold: each request head is
//! due within the keep-alive deadline, a body within `body_read_timeout` (else `408` and the
//! connection closes), and a shutdown closes the connection between requests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::http::{HeaderName, Method, Version};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use super::h1::{Framing, Said, encode_head, put_head_end, starts};
use crate::auth::{ApiKey, constant_time_eq};
use crate::engine::EngineError;
use crate::herald::Herald;
use crate::http::ApiError;
use crate::http::Refusal;
use crate::http::auth::PeerAddr;
use crate::http::head::{Headers, RequestHead, text};
use crate::http::observe::{LeanRequestId, answer_with_id, count_publish_refusal, request_span};
use crate::http::publish::{self, BodySource, Route};

/// The start of every lean publish request.
pub(super) const PUBLISH_PREFIX: &[u8] = b"POST /api/";

/// The largest request head read here; a bigger one is left to hyper.
const MAX_HEAD: usize = 8 * 1024;

/// Most headers in a lean request head; more is left to hyper.
const MAX_HEADERS: usize = 32;

/// Room kept free in the connection's buffer before each read: a few dozen pipelined
/// publishes, which are then served together ([`serve_together`]).
const READ_ROOM: usize = 8 * 1024;

/// Most pipelined requests served together.
const MAX_TOGETHER: usize = 32;

/// A publish request head that the lean path serves, as found in the connection's buffer.
pub(super) struct Scanned {
    /// Bytes of the head.
    len: usize,
    route: Route,
    /// The request path's place in the head (the target without its query).
    path: (usize, usize),
    fields: Fields,
    /// The first of each header the checks look up ([`Known`]), found in the scan: its
    /// place in `fields`, or [`Scanned::NONE`]. (Indices, not places: the box is filled
    /// in place of a copy the size of the scan.)
    known: [u8; Known::COUNT],
    body_len: usize,
    keep_alive: bool,
}

/// Each header's name and value, as places in the head.
type Fields = smallvec::SmallVec<[((usize, usize), (usize, usize)); 8]>;

/// The headers that the publish checks look up by name (credentials, the cookie and origin
/// check, `Idempotency-Key`, the request id): their first values are noted as the head is
/// scanned, so that a lookup does not compare every header's name again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    ApiKey,
    Authorization,
    IdempotencyKey,
    RequestId,
    ContentType,
    Host,
    Origin,
}

impl Known {
    const COUNT: usize = 7;

    /// The known header named `name`, as the scan names it ([`Field::of`]). A `HeaderName` is
    /// in lower case: compared as it is, by length first (the checks look up three names per
    /// publish).
    fn of(name: &HeaderName) -> Option<Self> {
        match name.as_str().as_bytes() {
            b"host" => Some(Self::Host),
            b"origin" => Some(Self::Origin),
            b"x-api-key" => Some(Self::ApiKey),
            b"content-type" => Some(Self::ContentType),
            b"x-request-id" => Some(Self::RequestId),
            b"authorization" => Some(Self::Authorization),
            b"idempotency-key" => Some(Self::IdempotencyKey),
            _ => None,
        }
    }
}

/// What a header's name makes of it in a lean head.
enum Field {
    ContentLength,
    Connection,
    /// Left to hyper: `Transfer-Encoding`, `Upgrade`, `Expect`, or `Origin` when CORS is on
    /// (the CORS layer answers it).
    NotLean,
    Known(Known),
    Other,
}

impl Field {
    /// Header name `name`, in any case, with CORS on or not.
    fn of(name: &[u8], cors: bool) -> Self {
        let is = |known: &str| lower_eq(name, known.as_bytes());
        match name.len() {
            4 if is("host") => Self::Known(Known::Host),
            6 if is("origin") => {
                if cors {
                    Self::NotLean
                } else {
                    Self::Known(Known::Origin)
                }
            }
            6 if is("expect") => Self::NotLean,
            7 if is("upgrade") => Self::NotLean,
            9 if is("x-api-key") => Self::Known(Known::ApiKey),
            10 if is("connection") => Self::Connection,
            12 if is("content-type") => Self::Known(Known::ContentType),
            12 if is("x-request-id") => Self::Known(Known::RequestId),
            13 if is("authorization") => Self::Known(Known::Authorization),
            14 if is("content-length") => Self::ContentLength,
            15 if is("idempotency-key") => Self::Known(Known::IdempotencyKey),
            17 if is("transfer-encoding") => Self::NotLean,
            _ => Self::Other,
        }
    }
}

/// Whether header name `name` (a token) is `known` (lower-case letters and `-`) in any case.
/// A token's byte with bit 0x20 set (lower case, for a letter) is a letter of `known` only
/// if it is that letter in either case, and `-` only if it is `-`.
fn lower_eq(name: &[u8], known: &[u8]) -> bool {
    name.len() == known.len() && name.iter().zip(known).fold(0, |diff, (&b, &k)| diff | ((b | 0x20) ^ k)) == 0
}

/// A lean head's headers as they are read, one after another, into the box the scanned head
/// is kept in (not moved into it at the end: it is a few hundred bytes).
struct HeadFields {
    max_body: usize,
    cors: bool,
    body_len: Option<usize>,
    scanned: Box<Scanned>,
}

impl HeadFields {
    fn new(herald: &Herald) -> Self {
        let cfg = herald.config();
        let scanned = Box::new(Scanned {
            len: 0,
            route: Route::Publish,
            path: (0, 0),
            fields: Fields::new(),
            known: [Scanned::NONE; Known::COUNT],
            body_len: 0,
            keep_alive: true,
        });
        Self { max_body: cfg.max_body_bytes, cors: !cfg.cors_origins.is_empty(), body_len: None, scanned }
    }

    /// Takes a header whose name and value are at `name` and `value` in `head`; `None` if it
    /// makes the request one for hyper. Inlined into the scans' loops: it runs for every header.
    #[inline(always)]
    fn add(&mut self, head: &[u8], name: (usize, usize), value: (usize, usize)) -> Option<()> {
        let bytes = &head[value.0..value.1];
        match Field::of(&head[name.0..name.1], self.cors) {
            Field::ContentLength => {
                // One plain decimal length, within the limit; anything else is hyper's to judge.
                let digits = bytes.iter().try_fold(0usize, |n, &b| {
                    let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
                    n.checked_mul(10)?.checked_add(usize::from(digit))
                });
                let n = match digits {
                    Some(n) if self.body_len.is_none() && !bytes.is_empty() => n,
                    _ => return None,
                };
                if n > self.max_body {
                    return None;
                }
                self.body_len = Some(n);
            }
            Field::Connection => {
                // HTTP/1.1's rule (hyper's): reused unless the client says `close`.
                let close = std::str::from_utf8(bytes)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
                self.scanned.keep_alive &= !close;
            }
            Field::NotLean => return None,
            Field::Known(known) => {
                let at = u8::try_from(self.scanned.fields.len()).ok().filter(|at| *at != Scanned::NONE)?;
                let first = &mut self.scanned.known[known as usize];
                if *first == Scanned::NONE {
                    *first = at;
                }
            }
            Field::Other => {}
        }
        self.scanned.fields.push((name, value));
        Some(())
    }

    /// The scanned head of `len` bytes; `None` without a `Content-Length`.
    fn done(self, len: usize, route: Route, path: (usize, usize)) -> Option<Box<Scanned>> {
        let mut scanned = self.scanned;
        scanned.body_len = self.body_len?;
        (scanned.len, scanned.route, scanned.path) = (len, route, path);
        Some(scanned)
    }
}

pub(super) enum Head {
    Partial,
    NotLean,
    Lean(Box<Scanned>),
}

/// Reads the head at the start of `buf` if it is a publish the lean path serves.
///
/// The plain heads that backends send are read by [`plain_head`]; any other is left to
/// httparse ([`parsed_head`]), which takes only names and values that `http` takes too (a
/// name is a token, a value has no control byte but tabs: see the tests), so any header is
/// read here as hyper would read it; a target is checked as `http`'s `Uri` checks it
/// ([`uri_path`]).
pub(super) fn publish_head(buf: &[u8], herald: &Herald) -> Head {
    // As httparse would say, without setting up its headers: asked after every request.
    if buf.is_empty() {
        return Head::Partial;
    }
    match plain_head(buf, herald) {
        Some(head) => Head::Lean(head),
        None => parsed_head(buf, herald),
    }
}

/// Bytes of a target that [`plain_head`] reads: those of a path (RFC 3986's `pchar` and `/`)
/// without `%`, which httparse and `Uri` take as they are, and which make no query.
static PLAIN_TARGET: [bool; 256] = crate::ascii::alphanumeric_and(b"-._~!$&'()*+,;=:@/");

/// Bytes of a header name: a token (httparse's and `http`'s).
static TOKEN: [bool; 256] = crate::ascii::alphanumeric_and(b"!#$%&'*+-.^_`|~");

/// The head at the start of `buf` if it is a complete publish head of the plain form that
/// backends send, read in one pass: `POST`, a target of path bytes ([`PLAIN_TARGET`]) on a
/// publish route, `HTTP/1.1`, at most [`MAX_HEADERS`] headers of visible ASCII, spaces and
/// tabs, each line ending in CRLF, and a `Content-Length`. Any other head, or one that is
/// not all here, is `None`: httparse reads it ([`parsed_head`]). What is read here is what
/// httparse reads (the tests compare them).
fn plain_head(buf: &[u8], herald: &Herald) -> Option<Box<Scanned>> {
    const START: &[u8] = b"POST ";
    const VERSION: &[u8] = b" HTTP/1.1\r\n";
    let rest = buf.strip_prefix(START)?;
    let target_len = find_byte(rest, b' ')?;
    let target = &rest[..target_len];
    // Folded without an early exit: loops the compiler widens.
    if !target.iter().fold(true, |plain, &b| plain & PLAIN_TARGET[usize::from(b)]) {
        return None;
    }
    if !rest[target_len..].starts_with(VERSION) {
        return None;
    }
    // Path bytes make no query: the target is its path.
    let route = route(target, herald)?;
    let path = (START.len(), START.len() + target_len);
    let mut at = path.1 + VERSION.len();
    let mut fields = HeadFields::new(herald);
    let mut count = 0;
    loop {
        let line = &buf[at..];
        if line.starts_with(b"\r\n") {
            return fields.done(at + 2, route, path);
        }
        // A name of token bytes (no CR, LF or colon among them), up to a colon.
        let colon = find_byte(line, b':')?;
        let name = &line[..colon];
        if !name.iter().fold(!name.is_empty(), |ok, &b| ok & TOKEN[usize::from(b)]) {
            return None;
        }
        // A value of visible ASCII, spaces and tabs, up to a CRLF.
        let value = &line[colon + 1..];
        let value_len = plain_value_len(value);
        if value.get(value_len..value_len + 2) != Some(b"\r\n") {
            return None;
        }
        count += 1;
        if count > MAX_HEADERS {
            return None;
        }
        let value = &value[..value_len];
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
        let end = value.iter().rposition(|b| !blank(b)).map_or(start, |last| last + 1);
        let value_at = at + colon + 1;
        fields.add(buf, (at, at + colon), (value_at + start, value_at + end))?;
        at = value_at + value_len + 2;
    }
}

/// A byte of one in each of a word's eight bytes, and of each byte its high bit: the
/// constants of the word-at-a-time scans ([`find_byte`], [`plain_value_len`]).
const ONES: u64 = u64::from_ne_bytes([1; 8]);
const HIGH: u64 = ONES * 0x80;

/// Where the first `byte` of `bytes` is, looked for eight bytes at a time: for the short runs
/// of a head (its target, a header's name), shorter than what `memchr` sets up for.
fn find_byte(bytes: &[u8], byte: u8) -> Option<usize> {
    let (words, _) = bytes.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        // A byte of `x` is zero where `byte` is: the first (lowest) one borrows into its
        // high bit; a borrow marks only bytes above it.
        let x = u64::from_le_bytes(*word) ^ (ONES * u64::from(byte));
        let zero = x.wrapping_sub(ONES) & !x & HIGH;
        if zero != 0 {
            return Some(i * 8 + zero.trailing_zeros() as usize / 8);
        }
    }
    let at = words.len() * 8;
    bytes[at..].iter().position(|&b| b == byte).map(|i| at + i)
}

/// How many bytes at the start of `bytes` are visible ASCII, spaces or tabs: what a header
/// value of a plain head is made of (`HeaderValue::to_str`'s bytes).
fn plain_value_len(bytes: &[u8]) -> usize {
    let (words, _) = bytes.as_chunks::<8>();
    // Eight bytes at a time while each is a space or visible ASCII: one below 0x20 (a tab,
    // the CR that ends the line) borrows into its high bit, one from 0x7f up has it or
    // carries into it. (A borrow or carry may mark a byte next to it too: this word is
    // then read byte by byte.)
    let plain = words
        .iter()
        .take_while(|word| {
            let x = u64::from_ne_bytes(**word);
            (x.wrapping_sub(ONES * 0x20) & !x | x.wrapping_add(ONES) | x) & HIGH == 0
        })
        .count()
        * 8;
    let rest = &bytes[plain..];
    plain + rest.iter().position(|&b| !((b' '..=b'~').contains(&b) || b == b'\t')).unwrap_or(rest.len())
}

/// [`publish_head`] by httparse, for any head [`plain_head`] does not read.
fn parsed_head(buf: &[u8], herald: &Herald) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::NotLean,
    };
    let (Some("POST"), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Head::NotLean;
    };
    let Some(route) = route(without_query(target.as_bytes()), herald) else { return Head::NotLean };
    // A target `http` refuses: hyper answers it.
    let Some(path) = uri_path(target) else { return Head::NotLean };
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + part.len())
    };
    let mut fields = HeadFields::new(herald);
    for h in req.headers.iter() {
        if fields.add(buf, at(h.name.as_bytes()), at(h.value)).is_none() {
            return Head::NotLean;
        }
    }
    let (start, _) = at(target.as_bytes());
    match fields.done(len, route, (start, start + path.len())) {
        Some(head) => Head::Lean(head),
        None => Head::NotLean,
    }
}

/// The path of a request target as `http`'s `Uri` reads it (up to a `?` or `#`), or `None`
/// where `Uri` refuses the target. Only for an origin-form target of a publish route, which
/// httparse has read (visible ASCII, or UTF-8 beyond it).
fn uri_path(target: &str) -> Option<&str> {
    // `Uri`'s limit; a lean head is far smaller.
    const MAX_URI: usize = u16::MAX as usize - 1;
    let bytes = target.as_bytes();
    if bytes.len() > MAX_URI {
        return None;
    }
    let mut path_end = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'#' => return Some(&target[..path_end.unwrap_or(i)]),
            b'?' if path_end.is_none() => path_end = Some(i),
            // Before a `#`: `<` and `>` are refused anywhere, `` ` `` in the path, `"` in the query.
            b'<' | b'>' => return None,
            b'`' if path_end.is_none() => return None,
            b'"' if path_end.is_some() => return None,
            _ => {}
        }
    }
    Some(&target[..path_end.unwrap_or(bytes.len())])
}

impl Scanned {
    /// No header's place in `known`.
    const NONE: u8 = u8::MAX;

    /// The place of the first value of header `known`.
    fn known(&self, known: Known) -> Option<(usize, usize)> {
        self.fields.get(usize::from(self.known[known as usize])).map(|&(_, value)| value)
    }

    /// The request it heads, once its bytes (`head`) are out of the buffer: the head (which
    /// keeps the scan in its box, so that a move of it through the publish's futures is
    /// small), its route, its body's length, and whether the connection stays open.
    fn request(
        mut self: Box<Self>,
        head: Bytes,
        keys: &mut KnownKey,
        herald: &Herald,
    ) -> (LeanHead, Route, usize, bool) {
        // Taken out; the box keeps a placeholder that nothing reads.
        let route = std::mem::replace(&mut self.route, Route::Publish);
        let (body_len, keep_alive) = (self.body_len, self.keep_alive);
        // The client's id if it sent a sane one, else a new one: as on hyper's path, the
        // request then carries that id alone.
        let given = self.known(Known::RequestId).map(|(s, e)| head.slice(s..e));
        let id = LeanRequestId::of(given);
        let api_key = self.known(Known::ApiKey).and_then(|(s, e)| keys.of(&head[s..e], herald));
        (LeanHead { head, scanned: self, id, api_key }, route, body_len, keep_alive)
    }
}

/// The API key a connection presented last, as presented and as verified: a backend sends
/// the same key with every publish, which is then not hashed again for each one. Another
/// key is verified as before (and kept instead). A request compares the bytes it presents
/// only with those its own connection presented, in constant time.
#[derive(Default)]
struct KnownKey(Option<(Box<[u8]>, Arc<ApiKey>)>);

impl KnownKey {
    /// The key `presented` is, if it is one.
    fn of(&mut self, presented: &[u8], herald: &Herald) -> Option<Arc<ApiKey>> {
        if let Some((known, key)) = &self.0
            && constant_time_eq(known, presented)
        {
            return Some(Arc::clone(key));
        }
        let key = herald.auth().verify_api_key(text(presented)?).ok()?;
        self.0 = Some((presented.into(), Arc::clone(&key)));
        Some(key)
    }
}

/// A lean publish's head, read where it was scanned: what the publish checks see of it.
struct LeanHead {
    head: Bytes,
    scanned: Box<Scanned>,
    /// The request's id, which its `x-request-id` reads as.
    id: LeanRequestId,
    /// The API key its `x-api-key` is, if it is one ([`KnownKey`]).
    api_key: Option<Arc<ApiKey>>,
}

/// A lean request's path, read out of its head only when it is formatted (a request's span
/// that is recorded).
struct PathOf<'a>(&'a LeanHead);

impl std::fmt::Display for PathOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.path())
    }
}

/// The places of header `name`'s values in `head`, in order.
fn places<'a>(head: &'a [u8], fields: &'a Fields, name: &'a HeaderName) -> impl Iterator<Item = (usize, usize)> {
    let name = name.as_str().as_bytes();
    // `name` is in lower case, as clients mostly send it: compared as it is first.
    let named = move |n: &[u8]| n == name || n.eq_ignore_ascii_case(name);
    fields.iter().filter(move |(n, _)| named(&head[n.0..n.1])).map(|&(_, v)| v)
}

impl Headers for LeanHead {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        match Known::of(name) {
            Some(Known::RequestId) => Some(self.id.as_bytes()),
            Some(known) => self.scanned.known(known).map(|(s, e)| &self.head[s..e]),
            None => places(&self.head, &self.scanned.fields, name).next().map(|(s, e)| &self.head[s..e]),
        }
    }

    fn idempotency_key(&self) -> Option<&[u8]> {
        self.scanned.known(Known::IdempotencyKey).map(|(s, e)| &self.head[s..e])
    }

    fn verified_api_key(&self) -> Option<Arc<ApiKey>> {
        self.api_key.clone()
    }

    fn header_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let id = (name == LeanRequestId::name()).then(|| self.id.as_bytes());
        let values =
            places(&self.head, &self.scanned.fields, name).filter(move |_| id.is_none()).map(|(s, e)| &self.head[s..e]);
        id.into_iter().chain(values)
    }
}

/// The one method the lean path serves.
static POST: Method = Method::POST;

impl RequestHead for LeanHead {
    fn method(&self) -> &Method {
        &POST
    }

    fn path(&self) -> &str {
        let (start, end) = self.scanned.path;
        std::str::from_utf8(&self.head[start..end]).unwrap_or("/")
    }

    /// A lean target is a path: no authority.
    fn authority(&self) -> Option<&str> {
        None
    }
}

/// A request target without its query, as axum routes it.
fn without_query(target: &[u8]) -> &[u8] {
    memchr::memchr(b'?', target).map_or(target, |query| &target[..query])
}

/// The publish route of a request path (a target [`without_query`]), as axum would route it;
/// a channel segment is taken as it is (one with `%` escapes is left to axum, which decodes
/// it), and parsed here, as the publish would parse it first thing.
fn route(path: &[u8], herald: &Herald) -> Option<Route> {
    if path == b"/api/publish" {
        return Some(Route::Publish);
    }
    let channel = path.strip_prefix(b"/api/channels/")?.strip_suffix(b"/events")?;
    // Looked for a word at a time: a channel is shorter than a widened loop's first step.
    if channel.is_empty() || find_byte(channel, b'/').is_some() || find_byte(channel, b'%').is_some() {
        return None;
    }
    // Cut from the target at ASCII bytes: text as the target is.
    Some(Route::Parsed(herald.parse_channel(std::str::from_utf8(channel).ok()?).map_err(ApiError::from)))
}

/// What a lean publish connection's owner does next.
pub(super) enum Handoff {
    /// The connection is done.
    Closed,
    /// Its next request is not one for this path: hyper serves the rest, starting with
    /// these bytes.
    Hyper(BytesMut),
}

/// What the lean publish path needs of its server.
pub(super) struct Publishing<'a> {
    pub herald: &'a Herald,
    pub peer: SocketAddr,
    /// How long a keep-alive connection may wait for its next request head.
    pub next_request: Duration,
    pub body_timeout: Duration,
}

/// Serves the publishes at the start of `buf` and those that follow on the connection, until
/// it closes or a request comes that this path does not serve. `deadline` is when the first
/// head is due; a shutdown (`watcher`) closes the connection between requests.
pub(super) async fn serve_publishes(
    tcp: &mut TcpStream,
    mut buf: BytesMut,
    ctx: &Publishing<'_>,
    watcher: &mut tokio::sync::watch::Receiver<()>,
    deadline: Instant,
) -> io::Result<Handoff> {
    // Fixed for the node's life (its engine and hooks): asked once per connection.
    let merges = ctx.herald.merges_publishes();
    let mut deadline = Deadline::new(deadline);
    // The answers, written from one buffer that the connection keeps (not one per answer).
    let mut out = BytesMut::new();
    let mut keys = KnownKey::default();
    let mut shutdown = Shutdown { probe: watcher.clone(), armed: Armed::default() };
    // One wait for the shutdown for the connection's life, not one per request: a new wait
    // joins the watch's list of waiters and a dropped one leaves it, under its lock, each
    // time (about 330 instructions and five locked ones of a publish).
    let mut changed = std::pin::pin!(watcher.changed());
    loop {
        let head = match publish_head(&buf, ctx.herald) {
            Head::Lean(head) => head,
            Head::NotLean => return Ok(Handoff::Hyper(buf)),
            // Another route's request coming in pieces: hyper reads the rest.
            Head::Partial if !buf.is_empty() && !starts(&buf, PUBLISH_PREFIX) => {
                return Ok(Handoff::Hyper(buf));
            }
            Head::Partial if buf.len() >= MAX_HEAD => return Ok(Handoff::Hyper(buf)),
            Head::Partial => {
                if buf.is_empty() && shutdown.probe.has_changed().unwrap_or(true) {
                    return Ok(Handoff::Closed);
                }
                buf.reserve(READ_ROOM);
                let idle = buf.is_empty();
                let read = tokio::select! {
                    biased;
                    read = tcp.read_buf(&mut buf) => read,
                    () = std::future::poll_fn(|cx| deadline.poll_passed(cx)) => return Ok(Handoff::Closed),
                    () = std::future::poll_fn(|cx| shutdown.poll_started(cx, changed.as_mut())), if idle => {
                        return Ok(Handoff::Closed);
                    }
                };
                match read {
                    Ok(0) | Err(_) => return Ok(Handoff::Closed),
                    Ok(_) => continue,
                }
            }
        };
        let head = if merges {
            match take_buffered(&mut buf, head, ctx.herald, &mut keys) {
                Ok(taken) => {
                    if !serve_together(tcp, taken, ctx, &mut out).await? {
                        let _ = tcp.shutdown().await;
                        return Ok(Handoff::Closed);
                    }
                    deadline.set(Instant::from_std(crate::clock::mono()) + ctx.next_request);
                    continue;
                }
                Err(head) => head,
            }
        } else {
            head
        };
        let bytes = buf.split_to(head.len).freeze();
        let (request, route, body_len, keep_alive) = head.request(bytes, &mut keys, ctx.herald);
        let span = request_span(Some(&request.id), request.method(), PathOf(&request));
        let id = request.id.clone();
        let mut body = BodyState::Unread;
        let source = LeanBody {
            tcp: &mut *tcp,
            buf: &mut buf,
            len: body_len,
            deadline: Instant::from_std(crate::clock::mono()) + ctx.body_timeout,
            state: &mut body,
        };
        let peer = Some(PeerAddr(ctx.peer));
        // Under a span only if it is recorded: one that is not does nothing when entered, and
        // wrapping the publish's future in it moves the whole future once more.
        let outcome = if span.is_disabled() {
            // `publish::outcome`, written out: its future is not made and moved into this one.
            match publish::stage(ctx.herald, route, peer, request, source).await {
                Ok(staged) => publish::commit(ctx.herald, staged).await,
                Err(e) => Err(e),
            }
        } else {
            publish::outcome(ctx.herald, route, peer, request, source).instrument(span).await
        };
        let mut resp = Answer::new(ctx.herald, outcome, id);
        let keep_alive = match body {
            BodyState::Read => keep_alive,
            // Answered without reading the body (a refusal): skipped if it is all here,
            // else the connection is not reused.
            BodyState::Unread if buf.len() >= body_len => {
                buf.advance(body_len);
                keep_alive
            }
            BodyState::Unread => false,
            BodyState::TimedOut => {
                tracing::debug!(peer = %ctx.peer, "request body not received in time");
                // As on hyper's path, where this answer replaces the router's.
                resp = Answer::Refused(super::body_timeout());
                false
            }
            BodyState::Gone => return Ok(Handoff::Closed),
        };
        if let Some(refused) = resp.encode_accepted(&mut out, keep_alive) {
            encode_response(&mut out, refused, keep_alive).await?;
        }
        write_out(tcp, &mut out).await?;
        if !keep_alive {
            let _ = tcp.shutdown().await;
            return Ok(Handoff::Closed);
        }
        deadline.set(Instant::from_std(crate::clock::mono()) + ctx.next_request);
    }
}

/// The waker a wait (a timer, a watch) was last left pending with. Such a wait holds the
/// waker until it fires, and polling it again registers the waker anew (tokio's timer: about
/// 150 instructions and four locked ones; a watch's wait: its lock), so a connection does not
/// poll it at each of its waits while it holds this task's waker and has not fired.
#[derive(Default)]
struct Armed(Option<std::task::Waker>);

impl Armed {
    /// Whether the wait holds `cx`'s waker (and so need not be polled unless it fired).
    fn holds(&self, cx: &std::task::Context<'_>) -> bool {
        self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Polls the wait; if it stays pending, it holds the waker from now on, unless tokio's
    /// budget was spent (a wait polled without budget is pending without holding the waker).
    fn poll<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        wait: impl FnOnce(&mut std::task::Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.0 = None;
        let budget = tokio::task::coop::has_budget_remaining();
        let polled = wait(cx);
        if polled.is_pending() && budget {
            self.0 = Some(cx.waker().clone());
        }
        polled
    }
}

/// When a keep-alive connection's next request head is due. It moves forward with every
/// request, and tokio's timer is not set and cleared for each one (a timeout per read cost
/// about 600 instructions of a publish's 26,000): the timer is set once, and when it fires
/// before the deadline, which has moved on since, it is set again to the deadline. Nor is
/// the timer polled at each wait once it holds the connection's waker ([`Armed`]).
struct Deadline {
    at: Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Armed,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        Self { at, timer: Box::pin(tokio::time::sleep_until(at)), armed: Armed::default() }
    }

    /// Moves the deadline; the timer only when it would fire too late.
    fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
            self.armed = Armed::default();
        }
    }

    /// Ready once the deadline has passed.
    fn poll_passed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.armed.holds(cx) && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            let timer = &mut self.timer;
            std::task::ready!(self.armed.poll(cx, |cx| timer.as_mut().poll(cx)));
            // A fresh reading, not the turn's (`crate::clock`): another worker may have moved
            // the timer past this poll's reading, and a reset to a passed deadline fires at
            // once, so the turn's reading could go round this loop for ever.
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(self.at);
        }
    }
}

/// The node's shutdown as a publish connection waits for it between requests, through one
/// wait on the watch kept for the connection's life, not polled at each wait once it holds
/// the connection's waker and the watch has not changed ([`Armed`]).
struct Shutdown {
    /// A copy of the connection's receiver, asked whether the watch changed (one load).
    probe: tokio::sync::watch::Receiver<()>,
    armed: Armed,
}

impl Shutdown {
    /// Ready once the shutdown has started (or the watch's sender is gone). `changed` is the
    /// connection's wait, never polled again once ready: the connection closes then.
    fn poll_started<F: std::future::Future>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        changed: std::pin::Pin<&mut F>,
    ) -> Poll<()> {
        if self.armed.holds(cx) && !self.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.armed.poll(cx, |cx| changed.poll(cx)).map(|_| ())
    }
}

/// A complete publish request taken out of the connection's buffer.
struct Taken {
    route: Route,
    request: LeanHead,
    body: Bytes,
    keep_alive: bool,
}

/// The complete publish requests at the start of `buf` (`first` is the head there), taken
/// out of it if there are at least two (else `first` is given back): up to
/// [`MAX_TOGETHER`], up to one that closes the connection, up to one that is incomplete or
/// not for this path.
fn take_buffered(
    buf: &mut BytesMut,
    first: Box<Scanned>,
    herald: &Herald,
    keys: &mut KnownKey,
) -> Result<Vec<Taken>, Box<Scanned>> {
    let whole = |s: &Scanned| s.len + s.body_len;
    if buf.len() < whole(&first) {
        return Err(first);
    }
    let mut at = whole(&first);
    let mut more = Vec::new();
    let mut keep_alive = first.keep_alive;
    while keep_alive && more.len() + 1 < MAX_TOGETHER {
        let Head::Lean(next) = publish_head(&buf[at..], herald) else { break };
        if buf.len() - at < whole(&next) {
            break;
        }
        at += whole(&next);
        keep_alive = next.keep_alive;
        more.push(next);
    }
    if more.is_empty() {
        return Err(first);
    }
    let mut taken = Vec::with_capacity(more.len() + 1);
    for scanned in std::iter::once(first).chain(more) {
        let head = buf.split_to(scanned.len).freeze();
        let (request, route, body_len, keep_alive) = scanned.request(head, keys, herald);
        taken.push(Taken { route, request, body: buf.split_to(body_len).freeze(), keep_alive });
    }
    Ok(taken)
}

/// Serves pipelined requests together: each is checked in turn as if alone (its own
/// credentials, policies, rate limit, JSON; a refusal is its own answer), then the events of
/// the accepted ones go to the engine in one call, in order (on Redis one transaction, whose
/// pub/sub messages reach the nodes together, so that a subscriber's write carries several
/// events), and each request is answered in order, in one write. A request whose events
/// carry idempotency keys has an engine call of its own, in its place. Whether the
/// connection stays open.
async fn serve_together(
    tcp: &TcpStream,
    taken: Vec<Taken>,
    ctx: &Publishing<'_>,
    out: &mut BytesMut,
) -> io::Result<bool> {
    let herald = ctx.herald;
    let peer = Some(PeerAddr(ctx.peer));
    let keep_alive = taken.last().is_none_or(|t| t.keep_alive);
    let mut ids = Vec::with_capacity(taken.len());
    let mut staged = Vec::with_capacity(taken.len());
    for Taken { route, request, body, .. } in taken {
        let span = request_span(Some(&request.id), request.method(), PathOf(&request));
        ids.push(request.id.clone());
        // As in `serve_publishes`: under the span only if it is recorded.
        staged.push(if span.is_disabled() {
            publish::stage(herald, route, peer, request, Buffered(body)).await
        } else {
            publish::stage(herald, route, peer, request, Buffered(body)).instrument(span).await
        });
    }
    let answers = commit_in_order(herald, staged).await;
    let last = answers.len().saturating_sub(1);
    for (i, (answer, id)) in answers.into_iter().zip(ids).enumerate() {
        Answer::new(herald, answer, id).encode(out, i < last || keep_alive).await?;
    }
    write_out(tcp, out).await?;
    Ok(keep_alive)
}

/// The staged requests' events handed to the engine in order: the accepted ones together,
/// at most `max_batch` events a call, one with idempotency keys alone; each request's answer.
async fn commit_in_order(
    herald: &Herald,
    staged: Vec<Result<publish::Staged, ApiError>>,
) -> Vec<Result<publish::Published, ApiError>> {
    let mut answers: Vec<Option<Result<publish::Published, ApiError>>> = staged.iter().map(|_| None).collect();
    let limit = herald.config().max_batch;
    let mut group: Vec<(usize, publish::Staged)> = Vec::new();
    let mut events = 0;
    for (i, staged) in staged.into_iter().enumerate() {
        match staged {
            Err(e) => answers[i] = Some(Err(e)),
            Ok(s) if !s.mergeable() || (events + s.len() > limit && !group.is_empty()) => {
                commit_group(herald, std::mem::take(&mut group), &mut answers).await;
                events = 0;
                if s.mergeable() {
                    events = s.len();
                    group.push((i, s));
                } else {
                    answers[i] = Some(publish::commit(herald, s).await);
                }
            }
            Ok(s) => {
                events += s.len();
                group.push((i, s));
            }
        }
    }
    commit_group(herald, group, &mut answers).await;
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ApiError::from(EngineError::Internal("a publish was not answered".into())))))
        .collect()
}

/// One engine call for a group of staged requests; their answers in their places.
async fn commit_group(
    herald: &Herald,
    group: Vec<(usize, publish::Staged)>,
    answers: &mut [Option<Result<publish::Published, ApiError>>],
) {
    if group.is_empty() {
        return;
    }
    let (places, staged): (Vec<usize>, Vec<publish::Staged>) = group.into_iter().unzip();
    for (i, answer) in places.into_iter().zip(publish::commit_together(herald, staged).await) {
        answers[i] = Some(answer);
    }
}

/// The answer to one publish request, as it will be written.
enum Answer {
    /// Accepted: written straight from the ids, as hyper would write axum's `Json` of them
    /// (no response, header map or body to build and take apart again for every publish).
    Published(publish::Published, LeanRequestId),
    /// Refused (counted already), with its request id: a response like the handlers'.
    Refused(axum::response::Response),
}

impl Answer {
    /// The answer to a request with id `id`, its refusal counted.
    fn new(herald: &Herald, outcome: Result<publish::Published, ApiError>, id: LeanRequestId) -> Self {
        match outcome {
            Ok(published) => Self::Published(published, id),
            Err(e) => {
                let mut resp = count_publish_refusal(herald, e.into_response());
                if let Some(id) = id.to_value() {
                    answer_with_id(&mut resp, id);
                }
                Self::Refused(resp)
            }
        }
    }

    /// Appends the answer, whole, to `out`.
    async fn encode(self, out: &mut BytesMut, keep_alive: bool) -> io::Result<()> {
        match self.encode_accepted(out, keep_alive) {
            None => Ok(()),
            Some(refused) => encode_response(out, refused, keep_alive).await,
        }
    }

    /// Appends an accepted answer to `out`; a refusal is given back, whose body is then
    /// collected ([`encode_response`]). Not a future: most answers are accepted, and the
    /// answer would be moved into one for each.
    fn encode_accepted(self, out: &mut BytesMut, keep_alive: bool) -> Option<axum::response::Response> {
        match self {
            Self::Published(published, id) => {
                encode_published(out, &published, Some(id.as_bytes()), keep_alive);
                None
            }
            Self::Refused(resp) => Some(resp),
        }
    }
}

/// Appends the `200` answer of an accepted publish to `out`: the head hyper writes for
/// axum's `Json` with the request id added (`content-type`, `x-request-id`, then what
/// [`encode_head`] adds), and the JSON of the ids.
fn encode_published(out: &mut BytesMut, published: &publish::Published, id: Option<&[u8]>, keep_alive: bool) {
    // Herald's ids need no escaping: they are written as they are, straight after the head,
    // whose `content-length` is counted from them (a batch's answer carries one per event);
    // anything else goes through serde first.
    // Folded without an early exit: a loop the compiler widens (ids are always plain).
    let plain = |id: &str| id.bytes().fold(true, |plain, b| plain & (b.is_ascii_alphanumeric() | (b == b'-')));
    let direct = match published {
        publish::Published::One { id: Some(id) } if plain(id) => Some(id.len() + r#"{"id":""}"#.len()),
        publish::Published::Batch { ids } if ids.iter().all(|id| plain(id)) => {
            let quoted: usize = ids.iter().map(|id| id.len() + 2).sum();
            Some(r#"{"ids":[]}"#.len() + quoted + ids.len().saturating_sub(1))
        }
        _ => None,
    };
    let mut json = Vec::new();
    if direct.is_none() {
        // Ids and an array of them always serialize, and writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut json, published);
    }
    let len = direct.unwrap_or(json.len());
    out.reserve(len + 192);
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
    if let Some(id) = id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    put_head_end(out, Version::HTTP_11, keep_alive, Said::default(), Framing::Length(len as u64));
    let body_at = out.len();
    match published {
        publish::Published::One { id: Some(id) } if direct.is_some() => {
            out.extend_from_slice(b"{\"id\":\"");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\"}");
        }
        publish::Published::Batch { ids } if direct.is_some() => {
            out.extend_from_slice(b"{\"ids\":[");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",");
                }
                out.extend_from_slice(b"\"");
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b"\"");
            }
            out.extend_from_slice(b"]}");
        }
        _ => out.extend_from_slice(&json),
    }
    debug_assert_eq!(out.len() - body_at, len, "the content-length counted is the body written");
}

/// The most room an answer buffer keeps between answers (a batch's answer may grow it).
const OUT_ROOM: usize = 16 * 1024;

/// Writes the answers in `out` whole, and empties it for the next ones.
async fn write_out(tcp: &TcpStream, out: &mut BytesMut) -> io::Result<()> {
    let mut at = 0;
    std::future::poll_fn(|cx| {
        while at < out.len() {
            match tcp.try_write(&out[at..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::task::ready!(tcp.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    })
    .await?;
    if out.capacity() > OUT_ROOM {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
    Ok(())
}

/// Appends a complete response with its `Content-Length` to `out`, as hyper writes it.
async fn encode_response(out: &mut BytesMut, resp: axum::response::Response, keep_alive: bool) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    // A publish's answer is one frame; collected without a list of frames.
    let mut data = Bytes::new();
    while let Some(frame) = body.frame().await {
        if let Ok(more) = frame.map_err(|e| io::Error::other(e.to_string()))?.into_data() {
            data = if data.is_empty() { more } else { [data, more].concat().into() };
        }
    }
    let framing = Framing::Length(data.len() as u64);
    out.extend_from_slice(&encode_head(Version::HTTP_11, parts.status, &parts.headers, keep_alive, framing));
    out.extend_from_slice(&data);
    Ok(())
}

/// A body already in the connection's buffer.
struct Buffered(Bytes);

impl<H: Send> BodySource<H> for Buffered {
    async fn read(self, _: &Herald, _: H) -> Result<Bytes, ApiError> {
        Ok(self.0)
    }
}

/// How far a lean request's body was read.
enum BodyState {
    Unread,
    Read,
    /// It did not arrive within `body_read_timeout`.
    TimedOut,
    /// The client closed or the read failed.
    Gone,
}

/// A lean request's body: the next `len` bytes of the connection, read on demand.
struct LeanBody<'a> {
    tcp: &'a mut TcpStream,
    buf: &'a mut BytesMut,
    len: usize,
    deadline: Instant,
    state: &'a mut BodyState,
}

impl<H: Send> BodySource<H> for LeanBody<'_> {
    /// A small future: the body is mostly in the buffer already, and reading the rest (with
    /// its timer) is a boxed future of its own, which would otherwise be moved with every
    /// publish's future. The head is not needed: not kept in the future either.
    fn read(self, _: &Herald, head: H) -> impl Future<Output = Result<Bytes, ApiError>> + Send {
        drop(head);
        async move {
            if self.buf.len() >= self.len {
                *self.state = BodyState::Read;
                return Ok(self.buf.split_to(self.len).freeze());
            }
            Box::pin(self.read_rest()).await
        }
    }
}

impl LeanBody<'_> {
    /// The body, read off the connection until it is all in the buffer.
    async fn read_rest(self) -> Result<Bytes, ApiError> {
        while self.buf.len() < self.len {
            self.buf.reserve(self.len - self.buf.len());
            match tokio::time::timeout_at(self.deadline, self.tcp.read_buf(self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Err(_) => {
                    *self.state = BodyState::TimedOut;
                    return Err(ApiError::refuse(Refusal::InvalidBody, "the request body did not arrive in time"));
                }
                Ok(_) => {
                    *self.state = BodyState::Gone;
                    return Err(ApiError::refuse(Refusal::InvalidBody, "the request body ended early"));
                }
            }
        }
        *self.state = BodyState::Read;
        Ok(self.buf.split_to(self.len).freeze())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn routed(target: &str) -> Option<String> {
        route(without_query(target.as_bytes()), &herald(false)).map(|r| match r {
            Route::Publish => "publish".to_owned(),
            Route::Channel(c) => c.unwrap_or_default(),
            Route::Parsed(c) => c.map(|c| c.as_str().to_owned()).unwrap_or_else(|e| format!("refused: {e:?}")),
        })
    }

    #[tokio::test]
    async fn a_deadline_passes_when_it_is_due_however_often_the_connection_wakes_meanwhile() {
        for (first, moved, wakes) in [(40, 80, 0), (40, 80, 3), (80, 40, 3), (40, 40, 1)] {
            let start = Instant::now();
            let mut deadline = Deadline::new(start + Duration::from_millis(first));
            deadline.set(start + Duration::from_millis(moved));
            // The connection's task, woken every few milliseconds by something else.
            let mut ticks = tokio::time::interval(Duration::from_millis(wakes.max(1)));
            let waited = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    tokio::select! {
                        biased;
                        () = std::future::poll_fn(|cx| deadline.poll_passed(cx)) => return,
                        _ = ticks.tick(), if wakes > 0 => {}
                    }
                }
            })
            .await;
            assert!(waited.is_ok(), "{first} {moved} {wakes}: the deadline never passed");
            assert!(start.elapsed() >= Duration::from_millis(moved), "{first} {moved} {wakes}: early");
        }
    }

    #[test]
    fn an_accepted_answer_is_the_json_serde_writes() {
        let ids = |n: usize| (0..n).map(|i| Arc::from(format!("01KBQ{i:021}"))).collect::<Vec<Arc<str>>>();
        let answers = [
            publish::Published::One { id: Some(Arc::from("01KBQ5X0M9V2N3P4Q5R6S7T8V9")) },
            publish::Published::One { id: None },
            publish::Published::One { id: Some(Arc::from("with \"quotes\"")) },
            publish::Published::Batch { ids: ids(0) },
            publish::Published::Batch { ids: ids(1) },
            publish::Published::Batch { ids: ids(100) },
        ];
        for answer in answers {
            let mut out = BytesMut::new();
            encode_published(&mut out, &answer, None, true);
            let body = out.split_off(out.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4));
            let serde = serde_json::to_vec(&answer).unwrap_or_default();
            assert_eq!(&body[..], &serde[..]);
            let length = format!("content-length: {}\r\n", serde.len());
            assert!(std::str::from_utf8(&out).is_ok_and(|head| head.contains(&length)));
        }
    }

    #[test]
    fn a_target_is_taken_and_its_path_read_exactly_as_the_uri_hyper_builds() {
        let mut targets = vec![
            "/api/publish".to_owned(),
            "/api/publish?a=1&b=2?c".to_owned(),
            "/api/publish#frag<>".to_owned(),
            "/api/publish?q#f\"`".to_owned(),
            "/api/channels/a#b/events".to_owned(),
            "/api/channels/caf\u{e9}/events?x=\u{e9}".to_owned(),
        ];
        for b in (0x21..0x7f_u8).map(char::from) {
            targets.push(format!("/api/channels/a{b}b/events"));
            targets.push(format!("/api/publish?x={b}y"));
            targets.push(format!("/api/publish?x#{b}"));
        }
        for target in &targets {
            let uri = axum::http::Uri::try_from(target.as_str()).ok();
            assert_eq!(uri_path(target), uri.as_ref().map(|u| u.path()), "{target:?}");
        }
    }

    /// A head whose one header is `name: value`, as httparse reads it.
    fn parsed(name: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let head = [b"POST /api/publish HTTP/1.1\r\n", name, b": ", value, b"\r\n\r\n"].concat();
        let mut headers = [httparse::EMPTY_HEADER; 1];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => Some((req.headers[0].name.into(), req.headers[0].value.to_vec())),
            _ => None,
        }
    }

    #[test]
    fn every_header_httparse_reads_is_one_http_takes_so_none_needs_hyper_for_its_bytes() {
        for b in 0..=255u8 {
            let name = [b'x', b, b'y'];
            if let Some((name, _)) = parsed(&name, b"v") {
                assert!(HeaderName::from_bytes(&name).is_ok(), "name byte {b:#x}");
            }
            let value = [b'a', b, b'z'];
            if let Some((_, value)) = parsed(b"x-v", &value) {
                assert!(axum::http::HeaderValue::from_bytes(&value).is_ok(), "value byte {b:#x}");
            }
        }
    }

    fn herald(cors: bool) -> Herald {
        let mut cfg = crate::Config::default();
        if cors {
            cfg.cors_origins = vec!["https://app.example".to_owned()];
        }
        Herald::new(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// What a lean head reads as, in bytes: its length, route, path, headers, the first value
    /// of each known header, body length and keep-alive.
    type Read = (usize, Option<String>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<Option<Vec<u8>>>, usize, bool);

    fn read(head: &[u8], s: &Scanned) -> Read {
        let at = |(start, end): (usize, usize)| head[start..end].to_vec();
        let route = match &s.route {
            Route::Publish => None,
            Route::Channel(c) => c.as_ref().ok().cloned(),
            Route::Parsed(c) => Some(c.as_ref().map_or_else(|e| format!("refused: {e:?}"), |c| c.as_str().to_owned())),
        };
        let fields = s.fields.iter().map(|&(n, v)| (at(n), at(v))).collect();
        let known = s.known.iter().map(|&k| s.fields.get(usize::from(k)).map(|&(_, v)| at(v))).collect();
        (s.len, route, at(s.path), fields, known, s.body_len, s.keep_alive)
    }

    /// Asserts that a head the plain scan reads is read by httparse alike; whether it was read.
    fn same_as_httparse(herald: &Herald, head: &[u8]) -> bool {
        let Some(plain) = plain_head(head, herald) else { return false };
        match parsed_head(head, herald) {
            Head::Lean(parsed) => {
                assert_eq!(read(head, &plain), read(head, &parsed), "{:?}", String::from_utf8_lossy(head))
            }
            _ => panic!("httparse does not take {:?}", String::from_utf8_lossy(head)),
        }
        true
    }

    const PLAIN: &[u8] = b"POST /api/channels/user:b0-1/events HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\
        content-type: application/json\r\ncontent-length: 60\r\nx-api-key: bench-key-0123456789abcdef\r\n\r\n{}";

    #[tokio::test]
    async fn a_plain_head_is_read_by_the_plain_scan_exactly_as_httparse_reads_it() {
        let herald = herald(false);
        assert!(same_as_httparse(&herald, PLAIN));
        let with = |line: &[u8]| [&PLAIN[..PLAIN.len() - 4], line, b"\r\n\r\n{}"].concat();
        let mut heads = vec![
            PLAIN.to_vec(),
            PLAIN.replace_bytes(b"/api/channels/user:b0-1/events", b"/api/publish"),
            with(b"Connection: keep-alive, Close"),
            with(b"CONNECTION: keep-alive"),
            with(b"X-Request-Id: abc"),
            with(b"x-request-id: abc\r\nx-request-id: def"),
            with(b"Idempotency-Key:\t k1 \t"),
            with(b"authorization: Bearer x"),
            with(b"origin: https://a.example"),
            with(b"cookie: a=b\r\ncookie: c=d"),
            with(b"x-empty:"),
            with(b"x-blank:  \t "),
            with(b"content-length: 61"),
            with(b"content-length: +1"),
            with(b"transfer-encoding: chunked"),
            with(b"expect: 100-continue"),
            with(b"upgrade: h2c"),
            with(b"x-obs: a\r\n folded"),
            with(b"x-lf: a\nx-b: c"),
            with(b"x-cr: a\rb"),
            with(b"x name: v"),
            with(b"x-colon:: v"),
            with(b": v"),
            with(&b"x-h: v\r\n".repeat(28)[..28 * 8 - 2]),
            with(&b"x-h: v\r\n".repeat(29)[..29 * 8 - 2]),
            PLAIN.replace_bytes(b"length: 60", b"length: 0060"),
            PLAIN.replace_bytes(b"length: 60", b"LENGTH: 18446744073709551615"),
            PLAIN.replace_bytes(b"length: 60", b"length: 18446744073709551616"),
            PLAIN.replace_bytes(b"length: 60", b"length: 6 0"),
            PLAIN.replace_bytes(b"length: 60", b"length: "),
            PLAIN.replace_bytes(b"HTTP/1.1", b"HTTP/1.0"),
            PLAIN.replace_bytes(b"POST", b"post"),
            PLAIN.replace_bytes(b"content-length: 60\r\n", b""),
            [b"\r\n", PLAIN].concat(),
        ];
        // Every byte in the target, in a name, in a value.
        for b in 0..=255u8 {
            heads.push(PLAIN.replace_bytes(b"user:b0-1", &[b'a', b, b'z']));
            heads.push(with(&[b'x', b, b'y', b':', b' ', b'v']));
            heads.push(with(&[b'x', b':', b' ', b'a', b, b'z']));
            heads.push(with(&[b'x', b':', b, b'z', b]));
            // In a long value, at each place of the words it is read by.
            for i in [0, 3, 7, 8, 12, 15, 16, 17, 23, 24] {
                heads.push(with(&[&b"x-long: "[..], &b"v".repeat(i), &[b], b"w"].concat()));
            }
        }
        // Every head cut short.
        heads.extend((0..PLAIN.len()).map(|n| PLAIN[..n].to_vec()));
        for cors in [false, true] {
            let herald = self::herald(cors);
            for head in &heads {
                same_as_httparse(&herald, head);
            }
        }
        // What backends send is read by the plain scan.
        for head in &heads[..12] {
            assert!(same_as_httparse(&herald, head), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn a_value_s_bytes_are_counted_up_to_the_first_that_is_not_visible_ascii_a_space_or_a_tab() {
        for b in 0..=255u8 {
            let plain = (b' '..=b'~').contains(&b) || b == b'\t';
            for at in 0..26 {
                let mut bytes = [b'v'; 26];
                bytes[at] = b;
                bytes[25] = b'\r';
                let expected = if plain { 25 } else { at };
                assert_eq!(plain_value_len(&bytes), expected, "byte {b:#x} at {at}");
                assert_eq!(plain_value_len(&bytes[..at]), at, "byte {b:#x} at {at}, cut");
            }
        }
    }

    #[test]
    fn a_byte_is_found_where_it_first_is_wherever_it_is_among_others() {
        for b in 0..=255u8 {
            for len in 0..20 {
                for at in 0..len {
                    let mut bytes = vec![b.wrapping_add(1); len];
                    // Bytes that borrow next to it, before and after.
                    for (i, x) in bytes.iter_mut().enumerate().skip(at + 1).step_by(3) {
                        *x = if i % 2 == 0 { b } else { b.wrapping_sub(1) };
                    }
                    bytes[at] = b;
                    assert_eq!(find_byte(&bytes, b), Some(at), "{b:#x} at {at} of {len}");
                }
                assert_eq!(find_byte(&vec![b.wrapping_add(1); len], b), None);
            }
        }
    }

    #[test]
    fn a_header_name_the_checks_look_up_is_known_as_the_scan_knows_it() {
        let scanned = |name: &[u8]| match Field::of(name, false) {
            Field::Known(known) => Some(known),
            _ => None,
        };
        let tokens: Vec<u8> = (0..=255u8).filter(|&b| TOKEN[usize::from(b)]).collect();
        let mut names: Vec<Vec<u8>> = [
            "host",
            "origin",
            "x-api-key",
            "content-type",
            "x-request-id",
            "authorization",
            "idempotency-key",
            "expect",
            "upgrade",
            "connection",
            "content-length",
            "transfer-encoding",
            "cookie",
            "accept",
            "",
        ]
        .iter()
        .map(|n| n.as_bytes().to_vec())
        .collect();
        for known in names.clone() {
            for i in 0..known.len() {
                for &b in &tokens {
                    let mut name = known.clone();
                    name[i] = b;
                    names.push(name);
                }
            }
            names.push([&known[..], b"x"].concat());
        }
        let mut seen = 0;
        for name in names {
            let Ok(name) = HeaderName::from_bytes(&name) else { continue };
            assert_eq!(Known::of(&name), scanned(name.as_str().as_bytes()), "{name}");
            seen += usize::from(Known::of(&name).is_some());
        }
        assert!(seen >= Known::COUNT);
    }

    #[test]
    fn a_header_name_is_known_in_any_case_and_only_then() {
        let tokens: Vec<u8> = (0..=255u8).filter(|&b| TOKEN[usize::from(b)]).collect();
        for known in ["host", "origin", "x-api-key", "content-length", "idempotency-key", "transfer-encoding"] {
            let known = known.as_bytes();
            assert!(lower_eq(&known.to_ascii_uppercase(), known));
            for i in 0..known.len() {
                for &b in &tokens {
                    let mut name = known.to_vec();
                    name[i] = b;
                    assert_eq!(lower_eq(&name, known), name.eq_ignore_ascii_case(known), "{name:?}");
                }
            }
            assert!(!lower_eq(&known[1..], known));
        }
    }

    #[tokio::test]
    async fn a_content_length_is_one_plain_decimal_within_the_limit() {
        let herald = herald(false);
        let length = |value: &[u8]| match parsed_head(&PLAIN.replace_bytes(b"60", value), &herald) {
            Head::Lean(head) => Some(head.body_len),
            _ => None,
        };
        assert_eq!(length(b"0060"), Some(60));
        assert_eq!(length(b"0"), Some(0));
        for refused in [&b""[..], b"+6", b"-6", b"6 0", b"0x6", b"18446744073709551616", b"99999999999"] {
            assert_eq!(length(refused), None, "{refused:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_s_key_is_verified_once_and_any_other_bytes_as_before() {
        let key = |name: &str, key: &str| crate::config::ApiKeyConfig {
            name: name.to_owned(),
            key: key.to_owned(),
            channels: vec!["*".to_owned()],
            scopes: vec![crate::config::Scope::Publish],
        };
        let cfg = crate::Config {
            api_keys: vec![key("one", "key-one-0123456789"), key("two", "key-two-0123456789")],
            ..crate::Config::default()
        };
        let herald = Herald::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut keys = KnownKey::default();
        let mut named = |presented: &[u8]| keys.of(presented, &herald).map(|k| k.name.clone());
        assert_eq!(named(b"key-one-0123456789").as_deref(), Some("one"));
        assert_eq!(named(b"key-one-0123456789").as_deref(), Some("one"));
        for wrong in [&b""[..], b"key-one-012345678", b"key-one-01234567890", b"Key-one-0123456789", b"key-one\x01"] {
            assert_eq!(named(wrong), None, "{wrong:?}");
        }
        assert_eq!(named(b"key-one-0123456789").as_deref(), Some("one"));
        assert_eq!(named(b"key-two-0123456789").as_deref(), Some("two"));
        assert_eq!(named(b"key-one-0123456789").as_deref(), Some("one"));
    }

    /// `replace` for bytes.
    trait ReplaceBytes {
        fn replace_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceBytes for [u8] {
        fn replace_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            match self.windows(from.len()).position(|w| w == from) {
                Some(i) => [&self[..i], to, &self[i + from.len()..]].concat(),
                None => self.to_vec(),
            }
        }
    }

    #[tokio::test]
    async fn a_head_read_by_the_plain_scan_is_read_alike_by_httparse_whatever_its_bytes() {
        let herald = herald(false);
        let bytes = proptest::collection::vec((0..PLAIN.len(), proptest::num::u8::ANY), 1..4);
        let mut runner = proptest::test_runner::TestRunner::default();
        let result = runner.run(&bytes, |changes| {
            let mut head = PLAIN.to_vec();
            for (at, b) in changes {
                head[at] = b;
            }
            same_as_httparse(&herald, &head);
            Ok(())
        });
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn only_the_publish_routes_are_lean_and_escaped_channels_are_left_to_axum() {
        assert_eq!(routed("/api/publish").as_deref(), Some("publish"));
        assert_eq!(routed("/api/publish?x=1").as_deref(), Some("publish"));
        assert_eq!(routed("/api/channels/user:1/events").as_deref(), Some("user:1"));
        assert_eq!(routed("/api/channels/user:1/events?a=b").as_deref(), Some("user:1"));
        assert_eq!(routed("/api/channels//events"), None);
        assert_eq!(routed("/api/channels/a/b/events"), None);
        assert_eq!(routed("/api/channels/a%3Ab/events"), None);
        assert_eq!(routed("/api/channels/a/events/"), None);
        assert_eq!(routed("/api/publishx"), None);
        assert_eq!(routed("/api/channels/a/history"), None);
        // A channel is parsed as the publish parses it: a refusal is the publish's answer.
        let refused = herald(false).parse_channel("nowhere:1").map_err(ApiError::from).err();
        assert!(refused.is_some());
        assert_eq!(routed("/api/channels/nowhere:1/events"), refused.map(|e| format!("refused: {e:?}")));
    }
}
