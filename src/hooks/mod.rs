//! The application's backend hooks (`docs/backend.md`): Herald asks a URL of the application
//! before it opens a stream (connect), follows a channel (subscribe) or publishes a user's
//! event (publish), and the application allows, denies, names the user, adds channels or
//! replaces the payload; and a Centrifugo client's `rpc` is answered by the application
//! (the RPC hook, [`Hooks::rpc`], Centrifugo's RPC proxy).
//!
//! This module owns the asking: the request's JSON is built by the caller (the HTTP edge,
//! which knows the client), and what comes back is an [`Allowed`] or a [`HookError`]. It
//! bounds the requests in flight (a semaphore) and their time (`hooks.timeout`, the wait for
//! a slot included), remembers answers for `hooks.cache_ttl`, applies `fail_open`, and counts
//! every outcome. It never adds Herald's own credentials to a request: what reaches the hook
//! is the JSON given and the client's headers and cookies that `hooks.headers` and
//! `hooks.cookies` name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::channel::ChannelName;
use crate::config::{Config, ConfigError, HooksConfig};
use crate::http::head::{Headers, text};
use crate::metrics::hooks::Metrics;
use crate::outbound::client::Client;

/// Most answers remembered; the cache is emptied when it is full.
const MAX_CACHED: usize = 10_000;

/// The longest request remembered (its hook, URL, body and passed headers): a publish's body
/// holds its payload, and 10,000 of those, each unique, would hold a gigabyte.
const MAX_CACHED_REQUEST: usize = 4 * 1024;

/// Which hook is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Subscribe,
    Publish,
    /// A Centrifugo client's `rpc`, answered by the application ([`Hooks::rpc`]).
    Rpc,
}

impl Hook {
    /// Its index in [`crate::metrics::hooks::HOOKS`].
    const fn index(self) -> usize {
        self as usize
    }

    pub const fn label(self) -> &'static str {
        crate::metrics::hooks::HOOKS[self.index()]
    }
}

/// A user the hook names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HookUser {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The hook's yes, with what it adds (`result` in its answer).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Allowed {
    /// Who the client is (connect, publish).
    pub user: Option<HookUser>,
    /// More channels for the stream to follow (connect).
    pub channels: Vec<String>,
    /// The payload to publish instead of the client's (publish); what a Centrifugo client's
    /// `connect` reply carries as its `data` (connect).
    pub data: Option<Map<String, Value>>,
    /// What a Centrifugo client's connection says of it in presence, join and leave
    /// (connect), as a connection token's `info` claim does.
    pub info: Option<Value>,
}

/// Why a hook did not allow a request.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum HookError {
    /// The application said no; `status` is 4xx, `code` snake_case (or `None`: it gave
    /// none Herald can pass on).
    #[error("{message}")]
    Denied { status: StatusCode, code: Option<String>, message: String },
    /// No usable answer in time.
    #[error("the {hook} hook is unavailable: {why}")]
    Unavailable { hook: &'static str, why: String },
}

/// An answer remembered for `cache_ttl`, and when it came.
type Cached = (Instant, Result<Allowed, HookError>);

/// The hooks of one node.
pub struct Hooks {
    cfg: HooksConfig,
    /// `namespace -> (subscribe URL, publish URL)` where a namespace overrides them (`""`: off).
    per_namespace: HashMap<String, (Option<String>, Option<String>)>,
    permits: Semaphore,
    cache: Mutex<HashMap<String, Cached>>,
    /// How hooks are reached: connections kept alive, `https://` verified.
    client: Client,
}

impl Hooks {
    /// The hooks `cfg` configures; fails only on an unreadable `hooks.tls_ca`.
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let per_namespace = cfg
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.subscribe_hook.is_some() || ns.publish_hook.is_some())
            .map(|(name, ns)| (name.clone(), (ns.subscribe_hook.clone(), ns.publish_hook.clone())))
            .collect();
        let tls = crate::outbound::tls_client(cfg.hooks.tls_ca.as_deref())
            .map_err(|e| ConfigError::Invalid(format!("hooks.tls_ca: {e}")))?;
        Ok(Self {
            cfg: cfg.hooks.clone(),
            per_namespace,
            permits: Semaphore::new(cfg.hooks.max_concurrency),
            cache: Mutex::new(HashMap::new()),
            client: Client::new(tls),
        })
    }

    /// The URL of `hook` for `channel` (its namespace's own, else the node's), if one is set.
    pub fn url(&self, hook: Hook, channel: Option<&ChannelName>) -> Option<&str> {
        let own = channel.and_then(|ch| self.per_namespace.get(ch.namespace())).and_then(|(sub, publ)| match hook {
            Hook::Subscribe => sub.as_deref(),
            Hook::Publish => publ.as_deref(),
            Hook::Connect | Hook::Rpc => None,
        });
        let url = own.or(match hook {
            Hook::Connect => self.cfg.connect_url.as_deref(),
            Hook::Subscribe => self.cfg.subscribe_url.as_deref(),
            Hook::Publish => self.cfg.publish_url.as_deref(),
            Hook::Rpc => self.cfg.rpc_url.as_deref(),
        });
        url.filter(|u| !u.is_empty())
    }

    /// Whether `hook` is set for the node or for any namespace.
    pub fn any(&self, hook: Hook) -> bool {
        let set = |url: Option<&String>| url.is_some_and(|u| !u.is_empty());
        let node = match hook {
            Hook::Connect => self.cfg.connect_url.as_ref(),
            Hook::Subscribe => self.cfg.subscribe_url.as_ref(),
            Hook::Publish => self.cfg.publish_url.as_ref(),
            Hook::Rpc => self.cfg.rpc_url.as_ref(),
        };
        set(node)
            || self.per_namespace.values().any(|(sub, publ)| match hook {
                Hook::Subscribe => set(sub.as_ref()),
                Hook::Publish => set(publ.as_ref()),
                Hook::Connect | Hook::Rpc => false,
            })
    }

    /// The client's headers and cookies that the configuration passes on to hooks.
    pub fn passed(&self, headers: &impl Headers) -> Vec<(HeaderName, HeaderValue)> {
        let mut passed = Vec::new();
        // Every publish and stream request asks; a node that passes nothing reads nothing.
        if self.cfg.headers.is_empty() && self.cfg.cookies.is_empty() {
            return passed;
        }
        for name in &self.cfg.headers {
            // A name that is not one has no values.
            let Ok(name) = HeaderName::try_from(name.as_str()) else { continue };
            for value in headers.owned_values(&name) {
                passed.push((name.clone(), value));
            }
        }
        let cookies: Vec<&str> = headers
            .header_values(&header::COOKIE)
            .filter_map(text)
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|pair| pair.split_once('=').is_some_and(|(name, _)| self.cfg.cookies.iter().any(|c| c == name)))
            .collect();
        if let Ok(value) = HeaderValue::try_from(cookies.join("; "))
            && !cookies.is_empty()
        {
            passed.push((header::COOKIE, value));
        }
        passed
    }

    /// Asks `hook` at `url` with `request`: its answer, a cached one, or (with `fail_open`)
    /// a plain yes when it gives none.
    pub async fn ask(
        &self,
        metrics: &Metrics,
        hook: Hook,
        url: &str,
        request: &Value,
        passed: &[(HeaderName, HeaderValue)],
    ) -> Result<Allowed, HookError> {
        let body = request.to_string();
        let key = self.cache_key(hook, url, &body, passed);
        if let Some(answer) = key.as_deref().and_then(|k| self.cached(k)) {
            metrics.count(hook.index(), 3);
            return answer;
        }
        let started = Instant::now();
        let answer =
            self.send(hook, url, body, passed).await.and_then(|(status, body)| read_answer(hook, status, &body));
        metrics.waited(hook.index(), started.elapsed());
        match &answer {
            Ok(_) => metrics.count(hook.index(), 0),
            Err(HookError::Denied { code, message, .. }) => {
                metrics.count(hook.index(), 1);
                tracing::info!(hook = hook.label(), code = code.as_deref().unwrap_or("-"), message, "hook denied");
            }
            Err(e @ HookError::Unavailable { .. }) => {
                metrics.count(hook.index(), 2);
                tracing::warn!(hook = hook.label(), url, fail_open = self.cfg.fail_open, "{e}");
                return if self.cfg.fail_open { Ok(Allowed::default()) } else { answer };
            }
        }
        if let Some(key) = key {
            self.remember(key, &answer);
        }
        answer
    }

    /// Posts `body` to `url` in one of the slots, within `timeout` (the wait for the slot
    /// included): the status and body of the answer.
    async fn send(
        &self,
        hook: Hook,
        url: &str,
        body: String,
        passed: &[(HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, Bytes), HookError> {
        let exchange = async {
            let uri: Uri = url.parse().map_err(|_| unavailable(hook, "the URL is not valid".to_owned()))?;
            let _permit = self.permits.acquire().await.map_err(|_| unavailable(hook, "closed".to_owned()))?;
            self.client.post(&uri, Bytes::from(body), passed).await.map_err(|why| unavailable(hook, why))
        };
        tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(unavailable(hook, format!("no answer within {:?}", self.cfg.timeout))))
    }

    /// Asks the RPC hook at `url` to answer a Centrifugo client's `rpc` (`request`, the
    /// shape of Centrifugo's RPC proxy): the `data` of its `{"result": {"data": ...}}`, or
    /// the error it gave. An RPC is not a yes or no: its answers are never cached, and one
    /// that does not come is a failure even with `fail_open`.
    pub async fn rpc(
        &self,
        metrics: &Metrics,
        url: &str,
        request: &Value,
        passed: &[(HeaderName, HeaderValue)],
    ) -> Result<Value, RpcError> {
        let hook = Hook::Rpc;
        let started = Instant::now();
        let answer = (self.send(hook, url, request.to_string(), passed).await)
            .map_err(|e| RpcError::Unavailable(e.to_string()))
            .and_then(|(status, body)| read_rpc_answer(status, &body));
        metrics.waited(hook.index(), started.elapsed());
        match &answer {
            Ok(_) => metrics.count(hook.index(), 0),
            Err(RpcError::Refused { code, message }) => {
                metrics.count(hook.index(), 1);
                tracing::info!(hook = hook.label(), code, message, "hook denied");
            }
            Err(RpcError::Unavailable(why)) => {
                metrics.count(hook.index(), 2);
                tracing::warn!(hook = hook.label(), url, "the rpc hook is unavailable: {why}");
            }
        }
        answer
    }

    /// The cache key of a request, if answers are cached and the request is not too long
    /// to remember.
    fn cache_key(&self, hook: Hook, url: &str, body: &str, passed: &[(HeaderName, HeaderValue)]) -> Option<String> {
        if self.cfg.cache_ttl.is_zero() {
            return None;
        }
        let mut key = format!("{}\n{url}\n{body}", hook.label());
        for (name, value) in passed {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        (key.len() <= MAX_CACHED_REQUEST).then_some(key)
    }

    fn cached(&self, key: &str) -> Option<Result<Allowed, HookError>> {
        let cache = self.cache.lock().ok()?;
        let (at, answer) = cache.get(key)?;
        (at.elapsed() < self.cfg.cache_ttl).then(|| answer.clone())
    }

    fn remember(&self, key: String, answer: &Result<Allowed, HookError>) {
        let Ok(mut cache) = self.cache.lock() else { return };
        if cache.len() >= MAX_CACHED {
            let ttl = self.cfg.cache_ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), answer.clone()));
    }

    /// How long the client should wait before trying again after a hook failure.
    pub fn retry_after(&self) -> Duration {
        self.cfg.timeout.max(Duration::from_secs(1))
    }
}

fn unavailable(hook: Hook, why: String) -> HookError {
    HookError::Unavailable { hook: hook.label(), why }
}

/// A hook's answer: `{"result": {...}}` (or `{}`) allows, `{"error": {"code", "message",
/// "status"}}` denies; anything else, or a status other than 2xx without an `error`, is a
/// failure.
fn read_answer(hook: Hook, status: StatusCode, body: &[u8]) -> Result<Allowed, HookError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        result: Option<Allowed>,
        #[serde(default)]
        error: Option<Denial>,
    }
    #[derive(Deserialize)]
    struct Denial {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        status: Option<u16>,
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let answer: Result<Answer, _> = serde_json::from_slice(body);
    match answer {
        Ok(Answer { error: Some(d), .. }) => {
            let status = d
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .or(Some(status))
                .filter(StatusCode::is_client_error)
                .unwrap_or(StatusCode::FORBIDDEN);
            let code = d.code.filter(|c| is_code(c));
            let message: String = d.message.unwrap_or_default().chars().take(256).collect();
            let message = if message.is_empty() { "refused by the application".to_owned() } else { message };
            Err(HookError::Denied { status, code, message })
        }
        Ok(Answer { result, .. }) if status.is_success() => Ok(result.unwrap_or_default()),
        Ok(_) => Err(unavailable(hook, format!("it answered {status}"))),
        Err(e) => Err(unavailable(hook, format!("its answer is not the JSON expected ({status}): {e}"))),
    }
}

/// Why the RPC hook gave no result.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum RpcError {
    /// The application's error: a Centrifugo client error code (its own from 400 to 1999,
    /// or one of Centrifugo's), and a message.
    #[error("{code} {message}")]
    Refused { code: u32, message: String },
    /// No usable answer in time.
    #[error("the rpc hook is unavailable: {0}")]
    Unavailable(String),
}

/// The RPC hook's answer, as Centrifugo's RPC proxy reads it: `{"result": {"data": ...}}`
/// (`data` any JSON, absent: `null`), or `{"error": {"code", "message"}}` with a numeric
/// code from 100 to 1999 (another code, or none, is `103 permission denied`); anything else,
/// or a status other than 2xx without an `error`, is a failure.
fn read_rpc_answer(status: StatusCode, body: &[u8]) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        result: Option<Map<String, Value>>,
        #[serde(default)]
        error: Option<Map<String, Value>>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| RpcError::Unavailable(format!("its answer is not the JSON expected ({status}): {e}")))?;
    if let Some(error) = answer.error {
        let code = error.get("code").and_then(Value::as_u64).and_then(|c| u32::try_from(c).ok());
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
        let message: String = message.chars().take(256).collect();
        return Err(match code.filter(|c| (100..2000).contains(c)) {
            Some(code) => RpcError::Refused { code, message },
            None if message.is_empty() => RpcError::Refused { code: 103, message: "permission denied".to_owned() },
            None => RpcError::Refused { code: 103, message },
        });
    }
    match answer.result {
        Some(mut result) if status.is_success() => Ok(result.remove("data").unwrap_or(Value::Null)),
        _ => Err(RpcError::Unavailable(format!("it answered {status} without a result"))),
    }
}

/// Whether the application's `code` can be passed on: 1 to 64 snake_case characters.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[test]
    fn an_answer_allows_denies_or_fails() {
        let ok = read_answer(
            Hook::Connect,
            StatusCode::OK,
            br#"{"result":{"user":{"id":"u1","name":"Ann"},"channels":["channel:x"]}}"#,
        );
        let user = ok.as_ref().ok().and_then(|a| a.user.clone());
        assert_eq!(user, Some(HookUser { id: "u1".into(), name: Some("Ann".into()) }));
        assert_eq!(read_answer(Hook::Connect, StatusCode::OK, b""), Ok(Allowed::default()));
        let denied = read_answer(Hook::Subscribe, StatusCode::OK, br#"{"error":{"code":"not_member","message":"no"}}"#);
        assert_eq!(
            denied,
            Err(HookError::Denied {
                status: StatusCode::FORBIDDEN,
                code: Some("not_member".into()),
                message: "no".into()
            })
        );
        let own = read_answer(Hook::Subscribe, StatusCode::OK, br#"{"error":{"code":"Bad Code","status":402}}"#);
        assert!(
            matches!(own, Err(HookError::Denied { status: StatusCode::PAYMENT_REQUIRED, code: None, .. })),
            "{own:?}"
        );
        let fail = read_answer(Hook::Publish, StatusCode::INTERNAL_SERVER_ERROR, b"oops");
        assert!(matches!(fail, Err(HookError::Unavailable { .. })), "{fail:?}");
        let fail = read_answer(Hook::Publish, StatusCode::BAD_GATEWAY, b"{}");
        assert!(matches!(fail, Err(HookError::Unavailable { .. })), "{fail:?}");
    }

    #[test]
    fn an_rpc_answer_is_its_data_or_a_centrifugo_error_or_a_failure() {
        let read = |status: u16, body: &str| {
            read_rpc_answer(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body.as_bytes())
        };
        assert_eq!(read(200, r#"{"result":{"data":[1,"two"]}}"#), Ok(serde_json::json!([1, "two"])));
        assert_eq!(read(200, r#"{"result":{}}"#), Ok(Value::Null), "no data: null");
        let refused = |code: u32, message: &str| Err(RpcError::Refused { code, message: message.to_owned() });
        assert_eq!(read(200, r#"{"error":{"code":1001,"message":"not for you"}}"#), refused(1001, "not for you"));
        assert_eq!(read(400, r#"{"error":{"code":107,"message":"bad"}}"#), refused(107, "bad"), "any status");
        assert_eq!(read(200, r#"{"error":{"code":5000,"message":"x"}}"#), refused(103, "x"), "a code out of range");
        assert_eq!(read(200, r#"{"error":{"code":"nope"}}"#), refused(103, "permission denied"));
        for (status, body) in [(500, "oops"), (502, r#"{"result":{"data":1}}"#), (200, "{}"), (200, "")] {
            let failed = read(status, body);
            assert!(matches!(failed, Err(RpcError::Unavailable(_))), "{status} {body}: {failed:?}");
        }
    }

    #[tokio::test]
    async fn a_request_that_finds_no_free_slot_within_the_timeout_is_a_failure() {
        let hooks_cfg =
            HooksConfig { max_concurrency: 1, timeout: Duration::from_millis(50), ..HooksConfig::default() };
        let hooks =
            Hooks::from_config(&Config { hooks: hooks_cfg, ..Config::default() }).unwrap_or_else(|e| panic!("{e}"));
        let metrics = Metrics::default();
        // The one slot is taken: the request never goes out.
        let _held = hooks.permits.acquire().await;
        let answer = hooks.ask(&metrics, Hook::Connect, "http://127.0.0.1:9/never", &Value::Null, &[]).await;
        let Err(HookError::Unavailable { why, .. }) = answer else { panic!("{answer:?}") };
        assert!(why.contains("no answer within"), "{why}");
    }

    #[test]
    fn only_the_named_headers_and_cookies_are_passed() {
        let cfg = Config {
            hooks: HooksConfig {
                headers: vec!["x-tenant".into()],
                cookies: vec!["sid".into()],
                ..HooksConfig::default()
            },
            ..Config::default()
        };
        let hooks = Hooks::from_config(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("x-api-key", HeaderValue::from_static("key"));
        h.insert(header::COOKIE, HeaderValue::from_static("herald_token=jwt; sid=abc; other=1"));
        let passed: Vec<(String, String)> = hooks
            .passed(&h)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(passed, [("x-tenant".to_owned(), "t1".to_owned()), ("cookie".to_owned(), "sid=abc".to_owned())]);
    }
}
