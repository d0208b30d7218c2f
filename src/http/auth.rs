//! Who is asking: the request's credentials turned into a [`Principal`].
//!
//! Looked for in this order: an API key (`X-Api-Key`, or `Authorization: apikey <key>`), a
//! bearer token (`Authorization: Bearer <jwt>`), a ticket (`?ticket=`, streams only), the
//! token cookie. A credential that is present but wrong is refused with `401`; it never
//! falls back to anonymous. Credentials are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::error::ApiError;
use super::refusal::Refusal;
use crate::auth::{AuthError, Principal, unix_ms};
use crate::herald::Herald;

/// A name, not a `&str`: a lookup by `&str` parses the name again every time.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The peer's address, set by Herald's server on every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Establishes the principal of a request.
pub async fn principal(herald: &Herald, headers: &HeaderMap, ticket: Option<&str>) -> Result<Principal, ApiError> {
    let auth = herald.auth();
    if let Some(key) = headers.get(&X_API_KEY) {
        let key = key.to_str().map_err(|_| AuthError::InvalidApiKey)?;
        return Ok(Principal::ApiKey(auth.verify_api_key(key)?));
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| unauthorized("malformed Authorization header"))?;
        let (scheme, credential) =
            value.trim().split_once(' ').ok_or_else(|| unauthorized("malformed Authorization header"))?;
        let credential = credential.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Ok(Principal::User(Arc::new(auth.verify_token(credential).await?))),
            "apikey" => Ok(Principal::ApiKey(auth.verify_api_key(credential)?)),
            _ => Err(unauthorized("the Authorization scheme must be Bearer or apikey")),
        };
    }
    if let Some(ticket) = ticket {
        return match herald.redeem_ticket(ticket).await? {
            // A ticket lives `ticket_ttl`, but stands for its token no longer than the token.
            Some(user) if user.session_deadline_ms(herald.config().auth.leeway).is_some_and(|at| at <= unix_ms()) => {
                Err(AuthError::Expired.into())
            }
            Some(user) => Ok(Principal::User(Arc::new(user))),
            None => Err(AuthError::InvalidTicket.into()),
        };
    }
    if let Some(token) = cookie(headers, &auth.cookie_name) {
        return Ok(Principal::User(Arc::new(auth.verify_token(&token).await?)));
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
pub fn check_cookie_request(herald: &Herald, parts: &Parts) -> Result<(), ApiError> {
    let headers = &parts.headers;
    let explicit = headers.contains_key(&X_API_KEY) || headers.contains_key(header::AUTHORIZATION);
    // The application's session cookies passed to the backend hooks are credentials too: the
    // hooks name the user from them.
    let ambient = cookie(headers, &herald.auth().cookie_name).is_some()
        || herald.config().hooks.cookies.iter().any(|name| cookie(headers, name).is_some());
    if explicit || !ambient {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin_allowed(herald, parts, origin)
    {
        tracing::info!(origin = ?origin, method = %parts.method, path = parts.uri.path(), "cookie request from a foreign origin");
        return Err(ApiError::refuse(
            Refusal::OriginNotAllowed,
            "a request authenticated by cookie must come from Herald's own origin or one of `cors_origins`",
        ));
    }
    // A DELETE (or PUT) cannot be sent cross-site without a preflight at all.
    if parts.method != Method::POST {
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
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
fn origin_allowed(herald: &Herald, parts: &Parts, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    if herald.config().cors_origins.iter().any(|o| o != "*" && o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    // Same origin: the part after the scheme is the host the request was sent to.
    let host =
        parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(parts.uri.authority().map(|a| a.as_str()));
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, authority), (Some(host), Some(authority)) if host.eq_ignore_ascii_case(authority))
}

/// The key a publisher's rate limit is kept under.
pub fn rate_key(who: &Principal, peer: Option<PeerAddr>) -> String {
    rate_key_of(who, peer.map(|PeerAddr(addr)| addr.ip()))
}

/// [`rate_key`] by the client's address alone (the port plays no part).
pub(crate) fn rate_key_of(who: &Principal, ip: Option<std::net::IpAddr>) -> String {
    // Concatenated, not `format!`ted: this runs on every publish.
    match who {
        Principal::Anonymous => match ip {
            Some(ip) => format!("anon:{ip}"),
            None => "anon".to_owned(),
        },
        Principal::User(u) => ["user:", &u.id].concat(),
        Principal::ApiKey(k) => ["key:", &k.name].concat(),
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::refuse(Refusal::Unauthorized, message)
}
