//! What the request checks read of a request head (credentials, cookie and origin checks,
//! the headers passed to hooks, `Idempotency-Key`): its method, path and headers, whether
//! they come from axum's `Parts` or from the head the lean HTTP/1.1 publish path scanned in
//! the connection's buffer (`server::lean_publish`), which then builds no header map, header
//! names, header values or URI for a publish.
//!
//! Both give the checks the same bytes: a value is read as text by [`text`], the rule of
//! `HeaderValue::to_str`, so that a check passes or refuses alike on either path.

use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::auth::ApiKey;

/// The header that makes a single publish safe to retry.
/// A name, not a `&str`: a lookup by `&str` parses the name again every time.
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A request's headers, looked up by name. `Sync`: the checks hold values across awaits.
pub trait Headers: Sync {
    /// The first value of header `name`.
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;

    /// The first value of `Idempotency-Key`, which every publish looks for: a head that noted
    /// it as it was read gives it without comparing names (`server::lean_publish`).
    fn idempotency_key(&self) -> Option<&[u8]> {
        self.header(&IDEMPOTENCY_KEY)
    }

    /// Every value of header `name`, in order.
    fn header_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;

    /// Every value of header `name` as a `HeaderValue` of its own (for a hook's request).
    fn owned_values(&self, name: &HeaderName) -> Vec<HeaderValue> {
        self.header_values(name).filter_map(|v| HeaderValue::from_bytes(v).ok()).collect()
    }

    /// The API key that this request's `x-api-key` is known to be already, without
    /// verifying it again: the lean publish path's, for a connection that presents the key
    /// it presented before (`server::lean_publish`). `None`: verify it.
    fn verified_api_key(&self) -> Option<Arc<ApiKey>> {
        None
    }
}

/// A request head: its headers, method and path.
pub trait RequestHead: Headers {
    fn method(&self) -> &Method;

    /// The path, without the query (as `Uri::path`).
    fn path(&self) -> &str;

    /// The authority of an absolute request target.
    fn authority(&self) -> Option<&str>;
}

/// A header value as text: `HeaderValue::to_str`'s rule (visible ASCII and tabs only).
pub fn text(value: &[u8]) -> Option<&str> {
    // No early return, so that the loop vectorizes (as `http`'s does).
    let mut bad = false;
    for &b in value {
        bad |= !((32..127).contains(&b) || b == b'\t');
    }
    if bad { None } else { std::str::from_utf8(value).ok() }
}

impl Headers for HeaderMap {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn header_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).into_iter().map(HeaderValue::as_bytes)
    }

    fn owned_values(&self, name: &HeaderName) -> Vec<HeaderValue> {
        self.get_all(name).into_iter().cloned().collect()
    }
}

impl Headers for Parts {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.header(name)
    }

    fn header_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers.header_values(name)
    }

    fn owned_values(&self, name: &HeaderName) -> Vec<HeaderValue> {
        self.headers.owned_values(name)
    }
}

impl RequestHead for Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn authority(&self) -> Option<&str> {
        self.uri.authority().map(|a| a.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_text_exactly_when_http_reads_it_as_text() {
        for b in 0..=255u8 {
            let bytes = [b'a', b, b'z'];
            let http = HeaderValue::from_bytes(&bytes).ok();
            let http = http.as_ref().and_then(|v| v.to_str().ok());
            assert_eq!(text(&bytes), http, "byte {b:#x}");
        }
        assert_eq!(text(b""), Some(""));
    }
}
