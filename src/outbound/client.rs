//! Herald's outgoing JSON `POST`s (backend hooks, lifecycle webhooks) over HTTP/1.1, plain or
//! TLS (`https://`, verified against the public roots and a configured CA), on connections kept
//! alive and reused: a [`Client`] holds, per host, the idle connections its requests left, so a
//! busy hook or webhook URL costs one TCP (and TLS) handshake, not one a request.
//!
//! A connection is reused only after a complete exchange. One whose request was given up (the
//! caller's timeout dropped it) is dropped with it, and hyper closes its socket. A request on
//! a reused connection that the server closed meanwhile, which got no answer at all, is sent
//! once more on a new connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer read.
pub const MAX_ANSWER: usize = 64 * 1024;

/// How long an idle connection is kept for reuse (servers commonly close theirs after 60 s or
/// more; one closed meanwhile is noticed before it is used).
const IDLE: Duration = Duration::from_secs(30);

/// Idle connections kept per host.
const MAX_IDLE_PER_HOST: usize = 32;

type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client with a keep-alive pool.
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    /// `scheme://authority` -> idle connections, the most recently used last.
    idle: Mutex<HashMap<String, Vec<(Sender, Instant)>>>,
}

impl Client {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self { tls, idle: Mutex::new(HashMap::new()) }
    }

    /// Posts `body` to `url` with `headers`; the caller bounds the time.
    pub async fn post(
        &self,
        url: &Uri,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, Bytes), String> {
        let authority = url.authority().ok_or("the URL has no host")?;
        let https = url.scheme_str() == Some("https");
        let key = format!("{}://{authority}", if https { "https" } else { "http" });
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::post(path)
            .header(HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        for (name, value) in headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        let (sender, resp) = match self.take_idle(&key).await {
            Some(mut sender) => match sender.send_request(clone(&req)).await {
                Ok(resp) => (sender, resp),
                // The server closed the idle connection as the request went out: once more on
                // a new one (a request that got no answer at all).
                Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                    let mut sender = self.connect(url, https).await?;
                    let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
                    (sender, resp)
                }
                Err(e) => return Err(format!("request failed: {e}")),
            },
            None => {
                let mut sender = self.connect(url, https).await?;
                let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
                (sender, resp)
            }
        };
        let status = resp.status();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        self.put_idle(key, sender);
        Ok((status, answer))
    }

    /// An idle connection to `key` still open and ready, if there is one.
    async fn take_idle(&self, key: &str) -> Option<Sender> {
        loop {
            let mut sender = {
                let mut idle = self.idle.lock().ok()?;
                let list = idle.get_mut(key)?;
                list.retain(|(s, since)| since.elapsed() < IDLE && !s.is_closed());
                list.pop()?.0
            };
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_idle(&self, key: String, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((sender, Instant::now()));
        }
    }

    /// A new connection to `url`'s host; its driver runs on a task of its own until the
    /// connection closes or every handle to it is dropped.
    async fn connect(&self, url: &Uri, https: bool) -> Result<Sender, String> {
        let authority = url.authority().ok_or("the URL has no host")?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return handshake(TokioIo::new(tcp)).await;
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| format!("TLS name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        handshake(TokioIo::new(tls)).await
    }

    /// Connections kept idle now, across hosts.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.values().map(Vec::len).sum()).unwrap_or_default()
    }
}

/// A copy of `req` (its body is shared bytes).
fn clone(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

async fn handshake<T>(io: T) -> Result<Sender, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "an outgoing connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Posts `n` requests to `addr` with one client, each answered 200; the client.
    async fn post_n(addr: std::net::SocketAddr, n: usize) -> Client {
        let client = Client::new(crate::outbound::tls_client(None).unwrap_or_else(|e| panic!("{e}")));
        let url: Uri = format!("http://{addr}/").parse().unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..n {
            let (status, _) = client.post(&url, Bytes::from_static(b"{}"), &[]).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, StatusCode::OK);
        }
        client
    }

    #[tokio::test]
    async fn requests_to_one_host_reuse_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let app = axum::Router::new().route("/", axum::routing::post(|| async { "{}" }));
        tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
            let _ = axum::serve(listener, app).await;
        });
        let client = post_n(addr, 5).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests, one connection");
        assert_eq!(client.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_not_failed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server that answers the first request of a connection, and closes it when the
        // next one arrives (as a server whose idle timeout struck just then).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
                    let _ = tcp.read(&mut buf).await;
                });
            }
        });
        post_n(addr, 3).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "the second and third went again on new connections");
    }
}
