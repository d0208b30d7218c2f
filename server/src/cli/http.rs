//! A small HTTP/1.1 client for the command line: one connection per request, over TCP or
//! TLS (the public web roots, plus a CA file for a private certificate), and the server's
//! `{"error":{"code","message"}}` answers turned into [`Refusal`]s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an error body read; Herald's are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where Herald is: `http://host:port/prefix` or `https://...`.
pub struct Endpoint {
    url: String,
    host: String,
    port: u16,
    /// `host:port` as written, for the `Host` header.
    authority: String,
    /// The URL's path, without a trailing `/`, put in front of every request path.
    base: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Endpoint {
    /// Parses `url` and, for `https://`, prepares TLS trusting the web roots and `ca_cert`.
    pub fn new(url: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("`{url}` must start with http:// or https://"),
        };
        let authority = uri.authority().ok_or_else(|| anyhow!("`{url}` has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(tls_connector(ca_cert)?) } else { None };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            host,
            port,
            authority: authority.as_str().to_owned(),
            base: uri.path().trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request for `path_and_query` (which starts with `/`) below the base URL.
    pub fn request(&self, method: &str, path_and_query: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::USER_AGENT, concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
    }

    /// Opens a connection and sends `req`; the response body streams while it is read.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        send_on(TokioIo::new(self.connect().await?), req).await
    }

    /// Opens a connection (TCP, and TLS for `https://`) to the server.
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Io>> {
        let what = || format!("cannot connect to {}", self.url);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
            .with_context(what)?
            .with_context(what)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .with_context(|| format!("`{}` is not a valid TLS server name", self.host))?;
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| anyhow!("TLS handshake timed out after {CONNECT_TIMEOUT:?}"))
                    .with_context(what)?
                    .with_context(|| format!("TLS handshake with {} failed", self.url))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// The WebSocket URL of `path_and_query` below the base URL (`ws://` or `wss://`).
    pub fn ws_url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{}{path_and_query}", self.authority, self.base)
    }
}

/// A connection to the server, plain or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn send_on<T>(io: T, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.context("HTTP handshake failed")?;
    tokio::spawn(conn);
    sender.send_request(req).await.context("the request failed")
}

fn tls_connector(ca_cert: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        let what = || format!("cannot read CA certificates from {}", path.display());
        for cert in CertificateDer::pem_file_iter(path).with_context(what)? {
            roots.add(cert.with_context(what)?).with_context(what)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // This client speaks HTTP/1.1 only; say so, or an HTTP/2 server would pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A request the server answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({} {code})", status.as_u16())]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// The `Retry-After` header, in seconds, when the server sent one.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// Reads the error body of `resp` (Herald's JSON error shape, or whatever else came).
    pub async fn read(resp: Response<Incoming>) -> Self {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = match Limited::new(resp.into_body(), MAX_ERROR_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        Self::from_body(status, retry_after, &body)
    }

    /// A refused WebSocket upgrade, read like any other answer.
    pub fn upgrade_refused(resp: &Response<Option<Vec<u8>>>) -> Self {
        let body = resp.body().as_deref().unwrap_or_default();
        Self::from_body(resp.status(), retry_after(resp.headers()), body)
    }

    fn from_body(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j["error"][name].as_str()).map(str::to_owned);
        let code = field("code").unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_lowercase());
        let message = field("message").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() { format!("the server answered {status}") } else { text.chars().take(300).collect() }
        });
        Self { status, code: code.replace(' ', "_"), message, retry_after }
    }
}

/// The `Retry-After` header, in seconds.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
