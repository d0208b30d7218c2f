//! Where a request goes: an `http://IP:port/path?query` URL on loopback, split into the
//! socket address, the `Host` header and the request target.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as written in the URL, for the `Host` header (HTTP/1.1) or `:authority`.
    pub authority: String,
    /// Path and query, like `/api/events?channel=channel:x`.
    pub path: String,
}

impl Target {
    /// Parses `http://IP:port/path`. `localhost` means 127.0.0.1. Only loopback addresses
    /// are accepted: the bench never sends load to another machine.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = authority.rsplit_once(':').with_context(|| format!("{url}: the URL needs a port"))?;
        let port: u16 = port.parse().with_context(|| format!("{url}: bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse().with_context(|| format!("{url}: the host must be an IP address or localhost"))?
        };
        if !ip.is_loopback() {
            bail!("{url}: only loopback addresses are allowed");
        }
        Ok(Self { addr: SocketAddr::new(ip, port), authority: authority.to_owned(), path: path.to_owned() })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_url_splits_into_address_authority_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/api/events?channel=channel:x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/api/events?channel=channel:x"));
        assert_eq!(Target::parse("http://localhost:1").map(|t| t.path).ok().as_deref(), Some("/"));
    }

    #[test]
    fn other_hosts_and_schemes_are_refused() {
        for url in ["http://10.0.0.1:80/", "https://127.0.0.1:443/", "http://example.com:80/", "http://127.0.0.1/"] {
            assert!(Target::parse(url).is_err(), "{url}");
        }
    }
}
