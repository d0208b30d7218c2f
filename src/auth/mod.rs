//! Authentication: who is asking, from verified credentials only.
//!
//! A request's [`Principal`] is an API key (a backend), a user (from a verified JWT, by
//! header, cookie or single-use ticket) or anonymous. Nothing a client sends in a body or a
//! query can set an identity. What each principal may do is decided by
//! [`crate::policy::Policies`]; this module only establishes who it is.
//!
//! Dev identities: in dev mode (no way to authenticate configured) the authenticator also
//! holds a random per-process HS256 secret, so that [`Authenticator::dev_token`] can mint
//! tokens for the demo page and local tools (`POST /api/dev/token` of `herald serve`). The
//! tokens make a request a user, nothing more: dev mode stays on for the channel policies,
//! which come from the configuration alone.

pub mod jwt;

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::event::Publisher;

/// A user established by a verified token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentity {
    /// The token's `sub`.
    pub id: Arc<str>,
    /// The token's `name`, a display name.
    pub name: Option<Arc<str>>,
    /// Channel patterns the token limits subscriptions to (`subscribe` claim), if any.
    pub subscribe: Option<Vec<String>>,
    /// Channel patterns the token limits publishing to (`publish` claim), if any.
    pub publish: Option<Vec<String>>,
    /// The token's `exp`, in seconds since the Unix epoch: a stream opened as this user ends
    /// then (plus `auth.leeway`). A ticket carries it from the token it was issued for.
    /// `None` for an identity the application made itself: its streams do not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl UserIdentity {
    /// When a session of this identity ends: its `exp` plus `leeway`, in milliseconds since
    /// the Unix epoch. `None` if it does not end.
    pub fn session_deadline_ms(&self, leeway: std::time::Duration) -> Option<u64> {
        let exp = self.expires_at?;
        Some(exp.saturating_add(leeway.as_secs()).saturating_mul(1000))
    }
}

/// Milliseconds since the Unix epoch, by the system clock (the clock `exp` is read against).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A publisher key, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    /// Channel patterns the key reaches: those of its config with the `publish` scope, none
    /// without it (so that no check by pattern lets a stats-only key through).
    pub channels: Vec<String>,
    /// The `admin` scope: the key may read the admin view's channels (`admin:`).
    pub admin: bool,
    /// `key:<name>`, the key its publish rate limit is kept under: made once, not for every
    /// publish.
    rate_key: Arc<str>,
}

impl ApiKey {
    /// A key with the `publish` scope over `channels`, and no other.
    pub fn publisher(name: impl Into<String>, channels: Vec<String>) -> Self {
        let name = name.into();
        Self { rate_key: Self::rate_key_of(&name), name, channels, admin: false }
    }

    fn from_config(cfg: &crate::config::ApiKeyConfig) -> Self {
        use crate::config::Scope;
        let publish = cfg.scopes.contains(&Scope::Publish);
        Self {
            name: cfg.name.clone(),
            channels: if publish { cfg.channels.clone() } else { Vec::new() },
            admin: cfg.scopes.contains(&Scope::Admin),
            rate_key: Self::rate_key_of(&cfg.name),
        }
    }

    fn rate_key_of(name: &str) -> Arc<str> {
        Arc::from(["key:", name].concat())
    }

    /// The key this key's publish rate limit is kept under: `key:<name>`.
    pub fn rate_key(&self) -> &Arc<str> {
        &self.rate_key
    }

    /// Whether the key has the `publish` scope: what backends do besides reading stats
    /// (live joins and leaves, disconnects).
    pub fn has_publish_scope(&self) -> bool {
        !self.channels.is_empty()
    }
}

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User(Arc<UserIdentity>),
    ApiKey(Arc<ApiKey>),
}

impl Principal {
    pub fn user_id(&self) -> Option<&Arc<str>> {
        match self {
            Self::User(u) => Some(&u.id),
            _ => None,
        }
    }

    /// The identity fields an event published by this principal carries.
    pub fn publisher(&self) -> Publisher {
        match self {
            Self::User(u) => {
                Publisher { user_id: Some(u.id.to_string()), user_name: u.name.as_ref().map(|n| n.to_string()) }
            }
            _ => Publisher::default(),
        }
    }

    /// For logs: a user id, an API key's name, or `anonymous`. Never a credential.
    pub fn describe(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::User(u) => format!("user:{}", u.id),
            Self::ApiKey(k) => format!("api_key:{}", k.name),
        }
    }
}

/// A credential was presented and refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidToken(TokenProblem),
    #[error("the token has expired")]
    Expired,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the ticket is unknown, expired or already used")]
    InvalidTicket,
    #[error("cannot fetch the keys to verify the token: {0}")]
    KeysUnavailable(String),
}

/// What is wrong with a refused token, in Herald's own stable words (the messages of
/// `invalid_token` in `docs/http-api.md`). The verifier's detail goes to the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted here")]
    Algorithm,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token's issuer (`iss`) is not the one configured")]
    Issuer,
    #[error("the token's audience (`aud`) is not the one configured")]
    Audience,
    #[error("the token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's claims are malformed")]
    Claims,
    #[error("the token's `sub` must be 1 to 128 ASCII letters, digits or `_ - . @ = +`")]
    Subject,
    #[error("this server does not accept tokens")]
    NotAccepted,
}

impl TokenProblem {
    /// A claim the verifier found missing; only the claims Herald requires are named.
    pub(crate) fn missing(claim: &str) -> Self {
        match claim {
            "exp" => Self::MissingClaim("exp"),
            "sub" => Self::MissingClaim("sub"),
            "iss" => Self::MissingClaim("iss"),
            "aud" => Self::MissingClaim("aud"),
            _ => Self::Claims,
        }
    }
}

/// Verifies credentials against the configuration.
pub struct Authenticator {
    jwt: Option<jwt::Verifier>,
    api_keys: ApiKeys,
    pub cookie_name: String,
    /// Dev mode only: the secret of dev tokens, random per process and never shown.
    dev_secret: Option<String>,
}

/// How long a dev token is valid.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Authenticator {
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let dev_secret = if cfg.auth_configured() { None } else { new_ticket().ok() };
        let jwt = match &dev_secret {
            Some(secret) => {
                // Dev tokens carry no `iss`/`aud`, so none is required of them.
                let dev = crate::config::AuthConfig {
                    jwt_secret: Some(secret.clone()),
                    issuer: None,
                    audience: None,
                    ..cfg.auth.clone()
                };
                jwt::Verifier::from_config(&dev)?
            }
            None => jwt::Verifier::from_config(&cfg.auth)?,
        };
        let api_keys = ApiKeys::new(cfg.api_keys.iter().map(|k| (k.key.as_str(), Arc::new(ApiKey::from_config(k)))));
        Ok(Self { jwt, api_keys, cookie_name: cfg.auth.cookie_name.clone(), dev_secret })
    }

    /// Dev mode only: a token for `user_id` that this process accepts (HS256, valid 24 h).
    /// `None` when authentication is configured. The id follows the rules of `sub`.
    pub fn dev_token(&self, user_id: &str, user_name: Option<&str>) -> Option<Result<String, AuthError>> {
        let secret = self.dev_secret.as_ref()?;
        Some(jwt::sign_dev_token(secret, user_id, user_name, DEV_TOKEN_TTL))
    }

    /// Verifies a JWT and returns the user it names.
    pub async fn verify_token(&self, token: &str) -> Result<UserIdentity, AuthError> {
        match &self.jwt {
            Some(v) => v.verify(token).await,
            None => Err(AuthError::InvalidToken(TokenProblem::NotAccepted)),
        }
    }

    /// Verifies a token as [`Authenticator::verify_token`] does, and reads the claims of `T`
    /// from it too.
    pub async fn verify_token_with<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<(UserIdentity, T), AuthError> {
        match &self.jwt {
            Some(v) => v.verify_with(token).await,
            None => Err(AuthError::InvalidToken(TokenProblem::NotAccepted)),
        }
    }

    /// Finds the API key presented, in a time that says nothing of the keys (see [`ApiKeys`]).
    pub fn verify_api_key(&self, presented: &str) -> Result<Arc<ApiKey>, AuthError> {
        self.api_keys.find(presented).ok_or(AuthError::InvalidApiKey)
    }
}

/// The configured API keys, found by a keyed hash of the key presented: SipHash-1-3 under a
/// key random per process (std's `RandomState`), about a tenth of a SHA-256's work, which
/// every publish over HTTP pays. Timing says nothing of the keys: the hash takes a time that
/// depends only on the length presented; whether it equals a key's hash says nothing to a
/// client that cannot compute it (it does not know the hash key); and the one key whose hash
/// matches is then compared with the presented bytes in constant time, so that a 64-bit
/// collision is no way in.
struct ApiKeys {
    hasher: RandomState,
    keys: Vec<(u64, Box<[u8]>, Arc<ApiKey>)>,
}

impl ApiKeys {
    fn new<'a>(keys: impl Iterator<Item = (&'a str, Arc<ApiKey>)>) -> Self {
        let hasher = RandomState::new();
        let keys = keys.map(|(key, api)| (hasher.hash_one(key.as_bytes()), Box::from(key.as_bytes()), api)).collect();
        Self { hasher, keys }
    }

    fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let hash = self.hasher.hash_one(presented.as_bytes());
        self.keys
            .iter()
            .find(|(h, key, _)| *h == hash && constant_time_eq(key, presented.as_bytes()))
            .map(|(_, _, api)| Arc::clone(api))
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A new unguessable ticket: 32 bytes from the system's secure random source.
pub fn new_ticket() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_is_found_only_by_its_exact_bytes() {
        let named = |name: &str| Arc::new(ApiKey::publisher(name, vec!["*".into()]));
        let keys =
            ApiKeys::new([("key-one-0123456789", named("one")), ("key-two-0123456789", named("two"))].into_iter());
        let found = |presented: &str| keys.find(presented).map(|k| k.name.clone());
        assert_eq!(found("key-one-0123456789").as_deref(), Some("one"));
        assert_eq!(found("key-two-0123456789").as_deref(), Some("two"));
        for wrong in ["", "key-one-012345678", "key-one-01234567890", "Key-one-0123456789", "key-one-0123456788"] {
            assert_eq!(found(wrong), None, "{wrong:?}");
        }
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"ab", b"abc")
        );
    }
}
