//! Who is asking: the request's credentials turned into a [`Principal`].
//!
//! Looked for in this order: an API key (`X-Api-Key`, or `Authorization: apikey <key>`), a
//! bearer token (`Authorization: Bearer <jwt>`), a ticket (`?ticket=`, streams only), the
//! token cookie. A credential that is present but wrong is refused with `401`; it never
//! falls back to anonymous. Credentials are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderName, Method, header};

use super::error::ApiError;
use super::head::{Headers, RequestHead, text};
use super::refusal::Refusal;
use crate::auth::{AuthError, Principal, unix_ms};
use crate::herald::Herald;

/// A name, not a `&str`: a lookup by `&str` parses the name again every time.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The peer's address, set by Herald's server on every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Establishes the principal of a request.
///
/// A token's and a ticket's verification are boxed futures: they may fetch keys or ask the
/// engine, and unboxed they would make this future (and every publish's, which holds it)
/// large, to be moved at each `.await` even for an API key, which most publishes carry.
pub async fn principal(herald: &Herald, headers: &impl Headers, ticket: Option<&str>) -> Result<Principal, ApiError> {
    let auth = herald.auth();
    if let Some(key) = headers.header(&X_API_KEY) {
        if let Some(known) = headers.verified_api_key() {
            return Ok(Principal::ApiKey(known));
        }
        let key = text(key).ok_or(AuthError::InvalidApiKey)?;
        return Ok(Principal::ApiKey(auth.verify_api_key(key)?));
    }
    if let Some(value) = headers.header(&header::AUTHORIZATION) {
        let value = text(value).ok_or_else(|| unauthorized("malformed Authorization header"))?;
        let (scheme, credential) =
            value.trim().split_once(' ').ok_or_else(|| unauthorized("malformed Authorization header"))?;
        let credential = credential.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Ok(Principal::User(Arc::new(Box::pin(auth.verify_token(credential)).await?))),
            "apikey" => Ok(Principal::ApiKey(auth.verify_api_key(credential)?)),
            _ => Err(unauthorized("the Authorization scheme must be Bearer or apikey")),
        };
    }
    if let Some(ticket) = ticket {
        return match Box::pin(herald.redeem_ticket(ticket)).await? {
            // A ticket lives `ticket_ttl`, but stands for its token no longer than the token.
            Some(user) if user.session_deadline_ms(herald.config().auth.leeway).is_some_and(|at| at <= unix_ms()) => {
                Err(AuthError::Expired.into())
            }
            Some(user) => Ok(Principal::User(Arc::new(user))),
            None => Err(AuthError::InvalidTicket.into()),
        };
    }
    if let Some(token) = cookie(headers, &auth.cookie_name) {
        return Ok(Principal::User(Arc::new(Box::pin(auth.verify_token(&token)).await?)));
    }
    Ok(Principal::Anonymous)
}

/// Guards a request that changes state and is authenticated by a cookie alone (Herald's, or
/// one of `hooks.cookies`, from which the backend hooks name the user), which a
/// browser attaches to cross-site requests too: its `Origin`, when the browser sends one,
/// must be Herald's own or one of `cors_origins` (`403 origin_not_allowed`), and a request
/// with a body must be `application/json` (`415 json_required`), which a cross-site form
/// cannot send without a CORS preflight. Bearer tokens and API keys are not sent by
/// browsers on their own, so requests carrying one pass.
pub fn check_cookie_request(herald: &Herald, head: &impl RequestHead) -> Result<(), ApiError> {
    let explicit = head.header(&X_API_KEY).is_some() || head.header(&header::AUTHORIZATION).is_some();
    // The application's session cookies passed to the backend hooks are credentials too: the
    // hooks name the user from them. (Not looked for when a credential is explicit.)
    let ambient = || {
        cookie(head, &herald.auth().cookie_name).is_some()
            || herald.config().hooks.cookies.iter().any(|name| cookie(head, name).is_some())
    };
    if explicit || !ambient() {
        return Ok(());
    }
    if let Some(origin) = head.header(&header::ORIGIN)
        && !origin_allowed(herald, head, origin)
    {
        tracing::info!(origin = ?Shown(origin), method = %head.method(), path = head.path(), "cookie request from a foreign origin");
        return Err(ApiError::refuse(
            Refusal::OriginNotAllowed,
            "a request authenticated by cookie must come from Herald's own origin or one of `cors_origins`",
        ));
    }
    // A DELETE (or PUT) cannot be sent cross-site without a preflight at all.
    if head.method() != Method::POST {
        return Ok(());
    }
    let json = head
        .header(&header::CONTENT_TYPE)
        .and_then(text)
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if json {
        Ok(())
    } else {
        Err(ApiError::refuse(
            Refusal::JsonRequired,
            "a request authenticated by cookie must have Content-Type: application/json",
        ))
    }
}

/// Whether `origin` is the origin of the request's own host, or listed in `cors_origins`
/// (`*` does not count: it never admits credentials).
fn origin_allowed(herald: &Herald, head: &impl RequestHead, origin: &[u8]) -> bool {
    let Some(origin) = text(origin) else { return false };
    if herald.config().cors_origins.iter().any(|o| o != "*" && o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    // Same origin: the part after the scheme is the host the request was sent to.
    let host = head.header(&header::HOST).and_then(text).or(head.authority());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, authority), (Some(host), Some(authority)) if host.eq_ignore_ascii_case(authority))
}

/// The key a publisher's rate limit is kept under.
pub fn rate_key(who: &Principal, peer: Option<PeerAddr>) -> RateKey {
    rate_key_of(who, peer.map(|PeerAddr(addr)| addr.ip()))
}

/// [`rate_key`] by the client's address alone (the port plays no part).
pub(crate) fn rate_key_of(who: &Principal, ip: Option<std::net::IpAddr>) -> RateKey {
    // Concatenated, not `format!`ted: this runs on every publish.
    match who {
        Principal::Anonymous => RateKey::Owned(match ip {
            Some(ip) => format!("anon:{}", client_block(ip)),
            None => "anon".to_owned(),
        }),
        Principal::User(u) => RateKey::Owned(["user:", &u.id].concat()),
        // An API key's is made with the key: most publishes come with one.
        Principal::ApiKey(k) => RateKey::Shared(Arc::clone(k.rate_key())),
    }
}

/// What names an anonymous caller: an IPv4 address whole, an IPv6 one by its /64 (the
/// network one subscriber is given: a host there picks any of its 2^64 addresses, and keyed
/// by the whole address it would have as many rate limits), an IPv4-mapped IPv6 address as
/// its IPv4 one.
fn client_block(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("{}/64", std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// The key a publisher's rate limit is kept under, read as a `&str`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateKey {
    Shared(Arc<str>),
    Owned(String),
}

impl std::ops::Deref for RateKey {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Shared(key) => key,
            Self::Owned(key) => key,
        }
    }
}

fn cookie(headers: &impl Headers, name: &str) -> Option<String> {
    headers
        .header_values(&header::COOKIE)
        .filter_map(text)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// A header value in a log line as `HeaderValue`'s `Debug` writes it.
struct Shown<'a>(&'a [u8]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match axum::http::HeaderValue::from_bytes(self.0) {
            Ok(value) => value.fmt(f),
            Err(_) => self.0.fmt(f),
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::refuse(Refusal::Unauthorized, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anonymous_caller_is_keyed_by_its_ipv4_address_or_its_ipv6_64() {
        let key = |ip: &str| rate_key_of(&Principal::Anonymous, ip.parse().ok()).to_string();
        assert_eq!(key("203.0.113.7"), "anon:203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        // Any address of one /64 is one caller; the next /64 is another.
        assert_eq!(key("2001:db8:1:2::1"), "anon:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:fffe"), key("2001:db8:1:2::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        // An IPv4 client on a dual-stack socket is its IPv4 address.
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
        assert_eq!(rate_key_of(&Principal::Anonymous, None).to_string(), "anon");
    }
}
