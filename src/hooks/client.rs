//! One hook request on the wire: a JSON `POST` over HTTP/1.1 on a fresh connection, plain or
//! TLS (`https://`, verified against the public roots and `hooks.tls_ca`), and the answer's
//! status and body (at most [`MAX_ANSWER`] bytes).

use std::sync::Arc;

use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer read from a hook.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Posts `body` to `url` with the `passed` headers; the caller bounds the time.
pub async fn post(
    url: &Uri,
    body: Bytes,
    passed: &[(HeaderName, HeaderValue)],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(StatusCode, Bytes), String> {
    let authority = url.authority().ok_or("the hook URL has no host")?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let https = url.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::post(path)
        .header(HOST, authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    for (name, value) in passed {
        req.headers_mut().append(name.clone(), value.clone());
    }
    if !https {
        return exchange(TokioIo::new(tcp), req).await;
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| format!("TLS name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    exchange(TokioIo::new(tls), req).await
}

/// Sends `req` on the connection `io` and reads the answer.
async fn exchange<T>(io: T, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| format!("handshake: {e}"))?;
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    // The connection is driven here, not on a task of its own, so that a request given up
    // (the caller's timeout) closes its socket.
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        _ = conn => exchange.await,
    }
}
