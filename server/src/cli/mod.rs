//! The command-line clients of a running Herald: `herald publish` and `herald subscribe`.
//!
//! They speak Herald's public HTTP API like any other client (HTTP/1.1, `https://` with
//! TLS), or with `--ws` its WebSocket endpoint (`ws.rs`), so they work against a remote node
//! as well as a local one. Nothing here touches
//! the library's internals.

mod http;
pub mod publish;
mod sse;
pub mod subscribe;
mod ws;

use std::path::PathBuf;

use clap::Args;

/// Where Herald is and who is asking: shared by `publish` and `subscribe`.
#[derive(Args)]
pub struct Remote {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key, sent as `X-Api-Key` (used when both it and a token are set, as the server
    /// itself prefers an API key).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A user token (JWT), sent as `Authorization: Bearer`.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of a CA to trust for `https://`, beside the public web roots.
    #[arg(long, env = "HERALD_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl Remote {
    fn endpoint(&self) -> anyhow::Result<http::Endpoint> {
        http::Endpoint::new(&self.url, self.ca_cert.as_deref())
    }

    /// Adds the credential, if any.
    fn authorize(&self, req: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match self.credential() {
            Some((name, value)) => req.header(name, value),
            None => req,
        }
    }

    /// The credential's header, if any.
    fn credential(&self) -> Option<(&'static str, String)> {
        match (&self.api_key, &self.token) {
            (Some(key), _) => Some(("x-api-key", key.clone())),
            (None, Some(token)) => Some(("authorization", format!("Bearer {token}"))),
            (None, None) => None,
        }
    }
}

/// A single-threaded runtime: a command-line client needs no more.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
