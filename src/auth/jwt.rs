//! JWT verification: HS256 with a shared secret, RS256/ES256 with public keys from PEM files
//! or a JWKS URL.
//!
//! Each key is bound to its algorithm family, and a token is only ever checked with keys of
//! the family its header names: an RSA public key is never used as an HMAC secret
//! (algorithm confusion), and `alg: none` is not an algorithm here at all. JWKS keys are
//! cached and refetched when they are older than `jwks_refresh` or a token names an
//! unknown `kid` (at most once per `jwks_refetch_gap`, so forged `kid`s cannot make Herald
//! hammer the key server). A fetch under way holds up only the tokens that need what it
//! brings: one whose key is cached is verified at once, however slow the key server is.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::{AuthError, TokenProblem, UserIdentity};
use crate::config::{AuthConfig, ConfigError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

#[derive(Clone)]
struct Key {
    family: Family,
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys last fetched, and when.
#[derive(Default)]
struct Fetched {
    keys: Vec<Key>,
    at: Option<Instant>,
}

struct Jwks {
    url: String,
    refresh: Duration,
    refetch_gap: Duration,
    /// Read by every token; written once a fetch brought keys.
    fetched: RwLock<Fetched>,
    /// Held through a fetch, with when the last one started: one fetch at a time, and a
    /// token that needs its keys waits for it here.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// What the cached keys say for a token of `kid`: whether they are due a refresh, and
    /// whether they lack that `kid`.
    fn wants(&self, kid: Option<&str>) -> (bool, bool) {
        let f = self.fetched.read().unwrap_or_else(PoisonError::into_inner);
        let stale = f.at.is_none_or(|t| t.elapsed() >= self.refresh);
        let unknown_kid = kid.is_some_and(|kid| !f.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        (stale, unknown_kid)
    }
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    hs: Option<DecodingKey>,
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

/// Herald's claims and a caller's own, from one payload.
#[derive(Deserialize)]
struct WithExtra<T> {
    #[serde(flatten)]
    claims: Claims,
    #[serde(flatten)]
    extra: T,
}

/// No claims beyond Herald's.
#[derive(Deserialize)]
struct NoExtra {}

#[derive(Deserialize)]
struct Claims {
    /// Optional here so that a token without it is told so, not given a parser's words.
    sub: Option<String>,
    /// Required (see `set_required_spec_claims`); optional here, as `sub` is, because the
    /// claims are deserialized before they are validated: a token without it is told so.
    exp: Option<u64>,
    name: Option<String>,
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

impl Verifier {
    /// `None` when no way to verify tokens is configured.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        let mut keys = Vec::new();
        for path in &cfg.jwt_public_keys {
            let pem = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                Key { family: Family::Rsa, kid: None, key: k }
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                Key { family: Family::Ec, kid: None, key: k }
            } else {
                return Err(ConfigError::Invalid(format!(
                    "{} is not an RSA or EC public key in PEM form",
                    path.display()
                )));
            };
            keys.push(key);
        }
        if let Some(url) = &cfg.jwks_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!("auth.jwks_url must be an http(s) URL, not `{url}`")));
        }
        let hs = cfg.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes()));
        if hs.is_none() && keys.is_empty() && cfg.jwks_url.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            hs,
            keys,
            jwks: cfg.jwks_url.as_ref().map(|url| Jwks {
                url: url.clone(),
                refresh: cfg.jwks_refresh,
                refetch_gap: cfg.jwks_refetch_gap,
                fetched: RwLock::new(Fetched::default()),
                fetching: tokio::sync::Mutex::new(None),
            }),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway.as_secs(),
        }))
    }

    pub async fn verify(&self, token: &str) -> Result<UserIdentity, AuthError> {
        self.verify_with::<NoExtra>(token).await.map(|(user, NoExtra {})| user)
    }

    /// Verifies `token` as [`Verifier::verify`] does, and reads the claims of `T` (claims
    /// other than Herald's own, such as a Centrifugo token's) from the same payload.
    pub async fn verify_with<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<(UserIdentity, T), AuthError> {
        let header = decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "token header refused");
            AuthError::InvalidToken(header_problem(token))
        })?;
        let family = match header.alg {
            Algorithm::HS256 => None,
            Algorithm::RS256 => Some(Family::Rsa),
            Algorithm::ES256 => Some(Family::Ec),
            other => {
                tracing::debug!(alg = ?other, "token algorithm refused");
                return Err(AuthError::InvalidToken(TokenProblem::Algorithm));
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let candidates: Vec<DecodingKey> = match family {
            None => self.hs.iter().cloned().collect(),
            Some(family) => self.keys_for(family, header.kid.as_deref()).await?,
        };
        if candidates.is_empty() {
            tracing::debug!(alg = ?header.alg, "no key for the token's algorithm");
            return Err(AuthError::InvalidToken(TokenProblem::Algorithm));
        }
        let mut last = TokenProblem::Signature;
        for key in &candidates {
            match decode::<WithExtra<T>>(token, key, &validation) {
                Ok(data) => return Ok((identity(data.claims.claims)?, data.claims.extra)),
                Err(e) => {
                    // The library's words (parser positions, variant lists) go to the log;
                    // the client gets Herald's own sentence for the case.
                    tracing::debug!(error = %e, "token refused");
                    use jsonwebtoken::errors::ErrorKind;
                    let problem = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        // Another candidate key may verify it.
                        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => {
                            last = TokenProblem::Signature;
                            continue;
                        }
                        ErrorKind::ImmatureSignature => TokenProblem::NotYetValid,
                        ErrorKind::InvalidIssuer => TokenProblem::Issuer,
                        ErrorKind::InvalidAudience => TokenProblem::Audience,
                        ErrorKind::MissingRequiredClaim(c) => TokenProblem::missing(c),
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenProblem::Algorithm,
                        ErrorKind::Json(_) => TokenProblem::Claims,
                        _ => TokenProblem::Malformed,
                    };
                    return Err(AuthError::InvalidToken(problem));
                }
            }
        }
        Err(AuthError::InvalidToken(last))
    }

    async fn keys_for(&self, family: Family, kid: Option<&str>) -> Result<Vec<DecodingKey>, AuthError> {
        let pick = |keys: &[Key]| -> Vec<DecodingKey> {
            keys.iter()
                .filter(|k| k.family == family && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
                .map(|k| k.key.clone())
                .collect()
        };
        let mut found = pick(&self.keys);
        let Some(jwks) = &self.jwks else {
            return Ok(found);
        };
        let cached = || pick(&jwks.fetched.read().unwrap_or_else(PoisonError::into_inner).keys);
        let (stale, unknown_kid) = jwks.wants(kid);
        // Refetch when the keys are old or a token names one we lack, but never more often
        // than the refetch gap: a key server that is down must not stall every token. A
        // token whose key is cached does not wait for a fetch (a forged `kid`'s, say) under
        // way, nor for a refresh another token started.
        let fetching = match (stale, unknown_kid) {
            (false, false) => None,
            (true, false) if !cached().is_empty() => jwks.fetching.try_lock().ok(),
            _ => Some(jwks.fetching.lock().await),
        };
        if let Some(mut last_attempt) = fetching {
            // What a fetch this one waited for brought may be enough.
            let (stale, unknown_kid) = jwks.wants(kid);
            let may_refetch = last_attempt.is_none_or(|t| t.elapsed() >= jwks.refetch_gap);
            if (stale || unknown_kid) && may_refetch {
                *last_attempt = Some(Instant::now());
                match fetch_jwks(&jwks.url).await {
                    Ok(keys) => {
                        tracing::debug!(keys = keys.len(), url = %jwks.url, "fetched JWKS");
                        let mut f = jwks.fetched.write().unwrap_or_else(PoisonError::into_inner);
                        *f = Fetched { keys, at: Some(Instant::now()) };
                    }
                    Err(e)
                        if jwks.fetched.read().unwrap_or_else(PoisonError::into_inner).keys.is_empty()
                            && found.is_empty() =>
                    {
                        tracing::warn!(url = %jwks.url, error = %e, "cannot fetch JWKS");
                        return Err(AuthError::KeysUnavailable(e));
                    }
                    Err(e) => {
                        tracing::warn!(url = %jwks.url, error = %e, "cannot refresh JWKS; using the cached keys")
                    }
                }
            }
        }
        found.extend(cached());
        Ok(found)
    }
}

fn valid_sub(sub: &str) -> Result<(), AuthError> {
    if sub.is_empty() || sub.len() > 128 || !sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@=+".contains(&b)) {
        return Err(AuthError::InvalidToken(TokenProblem::Subject));
    }
    Ok(())
}

/// Signs a dev-mode token (HS256) with the process's dev secret.
pub(super) fn sign_dev_token(
    secret: &str,
    user_id: &str,
    user_name: Option<&str>,
    ttl: Duration,
) -> Result<String, AuthError> {
    valid_sub(user_id)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = serde_json::json!({"sub": user_id, "iat": now, "exp": now + ttl.as_secs(), "dev": true});
    if let Some(name) = user_name {
        claims["name"] = name.chars().take(128).collect::<String>().into();
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).map_err(|e| {
        tracing::warn!(error = %e, "cannot sign a dev token");
        AuthError::InvalidToken(TokenProblem::Malformed)
    })
}

/// Why a token's header could not be read: an algorithm Herald does not know (`none`,
/// `HS512`, ...) or not a JWT at all.
fn header_problem(token: &str) -> TokenProblem {
    use base64::Engine as _;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    match alg {
        Some(header) if header.get("alg").is_some_and(serde_json::Value::is_string) => TokenProblem::Algorithm,
        _ => TokenProblem::Malformed,
    }
}

fn identity(c: Claims) -> Result<UserIdentity, AuthError> {
    let sub = c.sub.ok_or(AuthError::InvalidToken(TokenProblem::MissingClaim("sub")))?;
    valid_sub(&sub)?;
    Ok(UserIdentity {
        id: Arc::from(sub),
        name: c.name.map(|n| Arc::from(n.chars().take(128).collect::<String>())),
        subscribe: c.subscribe,
        publish: c.publish,
        expires_at: c.exp,
    })
}

/// Fetches a JWKS document and keeps its RSA and P-256 keys.
async fn fetch_jwks(url: &str) -> Result<Vec<Key>, String> {
    let body =
        tokio::time::timeout(Duration::from_secs(5), http_get(url)).await.map_err(|_| "timed out".to_owned())??;
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Family::Ec,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let kid = jwk.common.key_id.clone();
        if kid.as_ref().is_some_and(|k| !seen.insert(k.clone())) {
            continue;
        }
        keys.push(Key { family, kid, key });
    }
    Ok(keys)
}

/// A minimal HTTP/1.1 GET over TCP or TLS (webpki roots), for the JWKS document.
async fn http_get(url: &str) -> Result<Bytes, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let config = crate::outbound::tls_client(None)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), 1024 * 1024).collect().await.map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}

async fn send<T>(io: T, req: hyper::Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
