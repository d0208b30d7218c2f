//! Sockets and the HTTP/1.1 publisher: connections from several loopback source addresses
//! (each source address has its own ~28k ephemeral ports), and a keep-alive client that
//! sends one request at a time and reads the whole response.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::sse::{Dechunker, parse_head};
use crate::target::Target;

/// Microseconds since the Unix epoch: comparable across the bench's processes.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Source address number `n` (0-based) of `count`: 127.0.0.1 ..= 127.0.0.<count>.
pub fn source_ip(n: u64, count: u32) -> Ipv4Addr {
    let k = (n % u64::from(count.max(1))) as u8;
    Ipv4Addr::new(127, 0, 0, 1 + k)
}

/// Connects to `dst`, from `src` when `dst` is IPv4 (all of 127.0.0.0/8 is loopback).
pub async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match dst.ip() {
        IpAddr::V4(_) => {
            let s = TcpSocket::new_v4()?;
            // Lets the port of a connection of an earlier run in TIME_WAIT be bound again;
            // the kernel still refuses a 4-tuple in use.
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
            s
        }
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Longest response head kept.
const MAX_HEAD: usize = 16 * 1024;

/// A keep-alive HTTP/1.1 client for publishing. Requests may be pipelined: several written
/// before their responses are read, which the server answers in order.
pub struct Publisher {
    target: Target,
    src: Ipv4Addr,
    stream: Option<TcpStream>,
    /// Bytes read but not yet used: the start of the next response.
    rbuf: Vec<u8>,
    request: Vec<u8>,
    timeout: Duration,
    in_flight: usize,
}

impl Publisher {
    pub fn new(target: Target, src: Ipv4Addr, timeout: Duration) -> Self {
        Self {
            target,
            src,
            stream: None,
            rbuf: Vec::with_capacity(4096),
            request: Vec::with_capacity(1024),
            timeout,
            in_flight: 0,
        }
    }

    /// Requests written whose responses are not read yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sends one request and reads its response: the status, and the body when the status
    /// is not 2xx.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> anyhow::Result<(u16, Option<String>)> {
        self.write(method, path, headers, body).await?;
        self.read().await
    }

    /// Writes `method path` with `body` and the extra `headers` (`name: value`), without
    /// waiting for the response.
    pub async fn write(&mut self, method: &str, path: &str, headers: &[String], body: &[u8]) -> anyhow::Result<()> {
        self.request.clear();
        let r = &mut self.request;
        r.extend_from_slice(method.as_bytes());
        r.push(b' ');
        r.extend_from_slice(path.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        r.extend_from_slice(self.target.authority.as_bytes());
        r.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        r.extend_from_slice(body.len().to_string().as_bytes());
        r.extend_from_slice(b"\r\n");
        for h in headers {
            r.extend_from_slice(h.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
        if self.stream.is_none() {
            if self.in_flight > 0 {
                bail!("the connection closed with {} responses outstanding", self.in_flight);
            }
            let s = tokio::time::timeout(self.timeout, connect_from(self.src, self.target.addr))
                .await
                .map_err(|_| anyhow::anyhow!("connect to {}: timed out", self.target.addr))?
                .with_context(|| format!("connect to {}", self.target.addr))?;
            self.stream = Some(s);
            self.rbuf.clear();
        }
        let Some(stream) = self.stream.as_mut() else { bail!("no connection") };
        let written = tokio::time::timeout(self.timeout, stream.write_all(&self.request)).await;
        match written {
            Ok(Ok(())) => {
                self.in_flight += 1;
                Ok(())
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e).context("write request")
            }
            Err(_) => {
                self.stream = None;
                bail!("{method} {}: request not accepted within {:?}", self.target.url(), self.timeout)
            }
        }
    }

    /// Reads the oldest outstanding response.
    pub async fn read(&mut self) -> anyhow::Result<(u16, Option<String>)> {
        if self.in_flight == 0 {
            bail!("no request outstanding");
        }
        let Some(stream) = self.stream.as_mut() else { bail!("no connection") };
        let read = tokio::time::timeout(self.timeout, read_response(stream, &mut self.rbuf)).await;
        match read {
            Ok(Ok((status, body, close))) => {
                self.in_flight -= 1;
                if close {
                    self.stream = None;
                }
                let body = (!(200..300).contains(&status)).then(|| String::from_utf8_lossy(&body).into_owned());
                Ok((status, body))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                bail!("{}: no response within {:?}", self.target.url(), self.timeout)
            }
        }
    }
}

/// Reads one whole response from `rbuf` and the stream: status, body, and whether the
/// server will close. What follows it in `rbuf` is kept for the next response.
async fn read_response(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    let head = loop {
        if let Some(head) = parse_head(rbuf).map_err(anyhow::Error::msg)? {
            break head;
        }
        if rbuf.len() > MAX_HEAD {
            bail!("response head too long");
        }
        read_more(stream, rbuf).await?;
    };
    rbuf.drain(..head.len);
    let mut body = Vec::new();
    if head.chunked {
        let mut d = Dechunker::default();
        loop {
            let used = d.feed(rbuf, &mut body).map_err(|e| anyhow::anyhow!("{e}"))?;
            rbuf.drain(..used);
            if d.is_done() {
                break;
            }
            read_more(stream, rbuf).await?;
        }
    } else if let Some(len) = head.content_length {
        while rbuf.len() < len {
            read_more(stream, rbuf).await?;
        }
        body.extend(rbuf.drain(..len));
    } else if head.status != 204 && head.status != 304 {
        // No length: the body runs to the end of the connection.
        body.append(rbuf);
        stream.read_to_end(&mut body).await?;
        return Ok((head.status, body, true));
    }
    Ok((head.status, body, head.close))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.reserve(4096);
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_cycle_through_the_loopback_range() {
        let ips: Vec<_> = (0..5).map(|n| source_ip(n, 3)).collect();
        assert_eq!(ips.iter().map(|ip| ip.octets()[3]).collect::<Vec<_>>(), [1, 2, 3, 1, 2]);
        assert_eq!(source_ip(9, 0), Ipv4Addr::new(127, 0, 0, 1));
    }
}
