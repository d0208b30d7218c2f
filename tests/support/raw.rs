//! Raw HTTP/1.1 over a plain socket and a small SSE parser, for tests that hold many streams
//! (hyper and `eventsource-stream` cost more per stream than a test with a thousand needs).
//!
//! The parser follows the HTML standard's event-stream rules that a reconnecting client
//! relies on: `id:` sets the last event id even on an event without data, `retry:` sets the
//! reconnection delay, comments are skipped, and `data:` lines join with newlines.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The status and body framing of a response.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    framing: Framing,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Chunked,
    Length(usize),
    /// Until the server closes the connection.
    Close,
}

/// One HTTP/1.1 connection; requests on it are answered one after another (keep-alive).
pub struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self { io: BufReader::with_capacity(4096, tcp) })
    }

    /// Writes a request: `head` is the request line and headers, without the blank line.
    pub async fn send(&mut self, head: &str, body: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(head.len() + body.len() + 48);
        out.extend_from_slice(head.as_bytes());
        if !body.is_empty() {
            out.extend_from_slice(format!("\r\ncontent-length: {}", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        self.io.get_mut().write_all(&out).await
    }

    /// Reads a response's status line and headers.
    pub async fn head(&mut self) -> io::Result<Head> {
        let mut line = String::new();
        self.line(&mut line).await?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("status line {line:?}")))?;
        let mut framing = Framing::Close;
        loop {
            self.line(&mut line).await?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else { return Err(invalid(format!("header {line:?}"))) };
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else if name.eq_ignore_ascii_case("content-length") {
                framing = Framing::Length(value.parse().map_err(|_| invalid(format!("length {value:?}")))?);
            }
        }
        Ok(Head { status, framing })
    }

    /// The next piece of the body of the response `head`, or `None` at its end.
    pub async fn body_part(&mut self, head: &mut Head) -> io::Result<Option<Vec<u8>>> {
        match head.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(n) => {
                let mut buf = vec![0; n];
                self.io.read_exact(&mut buf).await?;
                head.framing = Framing::Length(0);
                Ok(Some(buf))
            }
            Framing::Chunked => {
                let mut line = String::new();
                self.line(&mut line).await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("chunk size {line:?}")))?;
                if size == 0 {
                    self.line(&mut line).await?;
                    head.framing = Framing::Length(0);
                    return Ok(None);
                }
                let mut buf = vec![0; size];
                self.io.read_exact(&mut buf).await?;
                self.line(&mut line).await?;
                Ok(Some(buf))
            }
            Framing::Close => {
                let mut buf = vec![0; 4096];
                let n = self.io.read(&mut buf).await?;
                buf.truncate(n);
                Ok((n > 0).then_some(buf))
            }
        }
    }

    /// Reads the whole body of the response `head`.
    pub async fn body(&mut self, head: &mut Head) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(part) = self.body_part(head).await? {
            all.extend_from_slice(&part);
        }
        Ok(all)
    }

    /// One line without its CRLF; EOF is an error (a response never ends mid-head).
    async fn line(&mut self, line: &mut String) -> io::Result<()> {
        line.clear();
        if self.io.read_line(line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let end = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(end);
        Ok(())
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One dispatched SSE event.
#[derive(Debug)]
pub struct Message {
    /// `message` when the event has no `event:` field.
    pub event: String,
    pub data: String,
    /// The last event id at dispatch, as `MessageEvent.lastEventId` has it.
    pub id: String,
}

/// An incremental SSE parser: feed it the body as it comes.
#[derive(Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    event: String,
    id_buffer: String,
    /// What a browser sends back as `Last-Event-ID` on its next connection.
    pub last_event_id: String,
    /// The latest `retry:` value: the delay before reconnecting.
    pub retry: Option<Duration>,
}

impl SseParser {
    /// Parses `bytes`, appending each dispatched event to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Message>) {
        while let Some(i) = memchr::memchr(b'\n', bytes) {
            self.line.extend_from_slice(&bytes[..i]);
            bytes = &bytes[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.field(&line, out);
            line.clear();
            self.line = line;
        }
        self.line.extend_from_slice(bytes);
    }

    fn field(&mut self, line: &[u8], out: &mut Vec<Message>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match name {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Message>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = if event.is_empty() { "message".to_owned() } else { event };
        out.push(Message { event, data, id: self.last_event_id.clone() });
    }
}
