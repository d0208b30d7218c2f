//! Configuration: one typed struct, its defaults, loading from TOML, and validation.
//!
//! Sources apply in this order, each overriding the one before: the defaults below (listed
//! in `docs/configuration.md`), a TOML file (`--config`), then `HERALD_*`
//! environment variables and command-line flags (merged by the binary). [`Config::validate`]
//! runs once at start and explains every problem in words.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Herald's configuration. Every field has a default; see `docs/configuration.md`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// This node's id in status and logs (default: random).
    pub node_id: Option<String>,
    /// Interval of heartbeat comments on idle streams (default 30 s).
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// A stream that accepts nothing for this long is closed (default 5 min).
    #[serde(deserialize_with = "duration")]
    pub client_timeout: Duration,
    /// The `retry:` hint sent at the start of each stream.
    #[serde(deserialize_with = "duration")]
    pub retry: Duration,
    /// Events queued per connection before it counts as a slow consumer and is closed.
    pub buffer_size: usize,
    /// Open SSE connections per node; over it, `503` (default 10,000).
    pub max_connections: usize,
    /// Channels one connection may follow.
    pub max_channels_per_connection: usize,
    /// Events kept per channel for resume.
    pub history_size: usize,
    /// How long events are kept for resume.
    #[serde(deserialize_with = "duration")]
    pub history_ttl: Duration,
    /// Largest payload of one event, in bytes (JSON of its payload fields).
    pub max_payload_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch publish.
    pub max_batch: usize,
    /// Most channels one published event may name; over it, `413`.
    pub max_channels_per_publish: usize,
    /// How long an idempotency key (`Idempotency-Key`, a batch item's `idempotencyKey`) is
    /// remembered: a retry under it within this window answers the first publish's id.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// Longest time to finish open requests after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// On drain, clients are told to reconnect after a random delay up to this long.
    #[serde(deserialize_with = "duration")]
    pub drain_reconnect_window: Duration,
    /// Longest time a client may take to send its request headers.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2 with no open
    /// stream) is closed after this long.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Longest time a client may take to send a request body; then `408`.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection (hyper's default is 200).
    pub http2_max_concurrent_streams: u32,
    /// Kernel send buffer of each client TCP connection, in bytes (`SO_SNDBUF`; Linux
    /// doubles it for its bookkeeping). Bounds what a stalled reader holds in the kernel; `0`
    /// leaves the kernel's autotuning, which grows it to `net.ipv4.tcp_wmem`'s maximum.
    pub socket_send_buffer: u32,
    /// Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS); absent means
    /// the in-memory engine (one node).
    pub redis_url: Option<String>,
    /// `redis_url` is a Redis Cluster (seed URLs separated by commas): sharded pub/sub.
    pub redis_cluster: bool,
    /// Send a run of a batch's events on one channel as one pub/sub *batch message* (fewer
    /// messages for Redis to fan out). Nodes of this version always read them; nodes of a
    /// version before them cannot, so turn it on only once every node reads them (default
    /// off: one message per event, which every version reads).
    pub redis_batch_messages: bool,
    /// Redis Sentinels (`host:port`), asked where the primary of `redis_sentinel_master` is,
    /// instead of a fixed `redis_url`; asked again whenever the primary stops answering.
    pub redis_sentinels: Vec<String>,
    /// The name the Sentinels know the primary by (`sentinel monitor <name> ...`).
    pub redis_sentinel_master: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://` with a
    /// private CA).
    pub redis_tls_ca: Option<PathBuf>,
    /// Prefix of every Redis key and pub/sub channel (default `realtime`).
    pub redis_prefix: String,
    /// TLS certificate chain (PEM). With `tls_key`, serves HTTPS with HTTP/2 by ALPN.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Open SSE connections per user; over it, `429` (default 5).
    pub max_connections_per_user: usize,
    /// Events per second a user may publish (token bucket), and the burst above it.
    pub publish_rate: f64,
    pub publish_burst: f64,
    /// Events per second an API key may publish, and the burst above it.
    pub api_key_publish_rate: f64,
    pub api_key_publish_burst: f64,
    /// Longest query string, in bytes; over it, `414`.
    pub max_query_bytes: usize,
    /// Allows binding a non-loopback address with no authentication configured.
    pub allow_anonymous: bool,
    /// Web origins (`https://app.example.com`) whose pages may call Herald from the browser
    /// (CORS), with credentials; `["*"]` lets any origin in, without credentials. Empty:
    /// same-origin only.
    pub cors_origins: Vec<String>,
    /// Serves the live admin view at `/admin` and publishes node stats on `admin:nodes`
    /// (readable with an API key only).
    pub admin: bool,
    /// How often each node publishes its stats for the admin view.
    #[serde(deserialize_with = "duration")]
    pub admin_interval: Duration,
    /// Serves the demo page and its routes (`herald serve` built with the `demo` feature)
    /// even with authentication configured; in dev mode it is served anyway.
    pub demo: bool,
    /// Serves the WebSocket transport at `GET /api/ws` (`docs/websocket.md`), beside SSE.
    pub websocket: bool,
    /// Serves Centrifugo's client protocol (`docs/centrifugo.md`): `centrifugo = true`, or a
    /// `[centrifugo]` table; off (`None`) by default.
    #[serde(deserialize_with = "centrifugo")]
    pub centrifugo: Option<CentrifugoConfig>,
    /// A user whose last connection to a channel closed is announced offline only after
    /// this long without a new one, so that a page reload does not flap.
    #[serde(deserialize_with = "duration")]
    pub presence_grace: Duration,
    /// How long a finished AI token stream is kept for late joiners (an unfinished one is
    /// kept while chunks keep coming, up to `history_ttl` apart).
    #[serde(deserialize_with = "duration")]
    pub ai_stream_retention: Duration,
    /// How clients prove who they are.
    pub auth: AuthConfig,
    /// Publisher keys for backends (`--api-key` adds one with full scope).
    pub api_keys: Vec<ApiKeyConfig>,
    /// Channel policies per namespace; `user`, `channel` and `system` are built in and may be
    /// adjusted here, other namespaces are added here.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The application's backend hooks (`docs/backend.md`).
    pub hooks: HooksConfig,
    /// Lifecycle webhooks to the application's backend (`docs/backend.md`).
    pub webhooks: WebhooksConfig,
}

/// Authentication settings. With none of `jwt_secret`, `jwt_public_keys`, `jwks_url` or
/// an API key, Herald runs in dev mode (see `docs/security.md`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// PEM files of RS256 (RSA) or ES256 (P-256) public keys.
    pub jwt_public_keys: Vec<PathBuf>,
    /// A JWKS URL (http or https), fetched, cached, and refetched on an unknown `kid`.
    pub jwks_url: Option<String>,
    /// How long fetched JWKS keys are trusted before a refetch.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// Shortest time between two JWKS fetches caused by tokens naming an unknown `kid`.
    #[serde(deserialize_with = "duration")]
    pub jwks_refetch_gap: Duration,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// Cookie carrying the JWT for same-site browser apps.
    pub cookie_name: String,
    /// Lifetime of a single-use ticket from `POST /api/tickets`.
    #[serde(deserialize_with = "duration")]
    pub ticket_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_refetch_gap: Duration::from_secs(10),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            cookie_name: "herald_token".to_owned(),
            ticket_ttl: Duration::from_secs(30),
        }
    }
}

/// A publisher key and what it may reach.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and metrics (never the key itself).
    pub name: String,
    pub key: String,
    /// Channel patterns the key may publish to and subscribe to (`*` matches any run of
    /// characters), with the `publish` scope; default: everything.
    #[serde(default = "everything")]
    pub channels: Vec<String>,
    /// What the key may do; default: `publish`.
    #[serde(default = "publish_scope")]
    pub scopes: Vec<Scope>,
}

fn everything() -> Vec<String> {
    vec!["*".to_owned()]
}

fn publish_scope() -> Vec<Scope> {
    vec![Scope::Publish]
}

/// A power an API key may be given.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Publish and subscribe on the channels of `channels`, change live connections, and
    /// everything else a backend does.
    Publish,
    /// Read the admin view's stats (subscribe to `admin:` channels), nothing else.
    Admin,
}

/// Who may do something on a namespace's channels.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone, anonymous clients included.
    Anyone,
    /// Any authenticated user (narrowed by the token's grants, if it has any).
    Authenticated,
    /// Only the user whose id is the channel's name (`user:<id>`).
    Owner,
    /// Only API keys (backends).
    ApiKey,
}

/// Centrifugo's client protocol (`docs/centrifugo.md`), the `[centrifugo]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CentrifugoConfig {
    /// The WebSocket endpoint of Centrifugo's client protocol.
    pub path: String,
    /// The prefix of Centrifugo's server HTTP API (`<prefix>/publish`, ...), for API keys.
    pub api_prefix: String,
    /// An existing Centrifugo-compatible server API (`http://old:8000/api`) that every event
    /// published through this node is forwarded to, during a migration; off when unset.
    pub mirror_url: Option<String>,
    /// The key sent to `mirror_url` (`X-API-Key`).
    pub mirror_api_key: Option<String>,
    /// Events waiting for `mirror_url` at most; past it new ones are dropped and counted.
    pub mirror_queue: usize,
    /// Also serve the unidirectional transports (`uni_sse`, `uni_http_stream`,
    /// `uni_websocket`) beside `path`: `/connection/uni_sse`, ...
    pub uni: bool,
    /// Also serve Centrifugo's bidirectional emulation for the SDKs' `http_stream` and `sse`
    /// transports: `/connection/http_stream` and `/connection/sse` beside `path`, and
    /// `/emulation` for the commands that follow `connect`.
    pub emulation: bool,
}

impl CentrifugoConfig {
    /// Where the unidirectional transports are served (`path`'s folder), when they are on.
    pub fn uni_prefix(&self) -> Option<&str> {
        self.uni.then(|| self.folder())
    }

    /// Where the emulation's streams are served (`path`'s folder), when it is on.
    pub fn emulation_prefix(&self) -> Option<&str> {
        self.emulation.then(|| self.folder())
    }

    fn folder(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(folder, _)| folder)
    }

    /// Every fixed path the Centrifugo endpoints take: `path`, and the unidirectional
    /// transports' and the emulation's where they are on.
    pub fn paths(&self) -> Vec<String> {
        let mut paths = vec![self.path.clone()];
        if let Some(prefix) = self.uni_prefix() {
            paths.extend(["uni_sse", "uni_http_stream", "uni_websocket"].map(|p| format!("{prefix}/{p}")));
        }
        if let Some(prefix) = self.emulation_prefix() {
            paths.extend(["http_stream", "sse"].map(|p| format!("{prefix}/{p}")));
            paths.push(EMULATION_PATH.to_owned());
        }
        paths
    }
}

/// Where the emulation's commands come (`POST`), as Centrifugo serves it.
pub const EMULATION_PATH: &str = "/emulation";

/// Herald's own paths outside `/api/`, which no Centrifugo endpoint may take.
const OWN_PATHS: [&str; 4] = ["/metrics", "/admin", "/healthz", "/readyz"];

impl Default for CentrifugoConfig {
    fn default() -> Self {
        Self {
            path: "/connection/websocket".to_owned(),
            api_prefix: "/centrifugo/api".to_owned(),
            mirror_url: None,
            mirror_api_key: None,
            mirror_queue: 10_000,
            uni: false,
            emulation: false,
        }
    }
}

/// `centrifugo = true` (the defaults), `false` (off), or a `[centrifugo]` table.
fn centrifugo<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CentrifugoConfig>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        On(bool),
        Table(CentrifugoConfig),
    }
    Ok(match Form::deserialize(d)? {
        Form::On(true) => Some(CentrifugoConfig::default()),
        Form::On(false) => None,
        Form::Table(t) => Some(t),
    })
}

/// Most of a channel's last events a stream may ask for before its live ones (`?last=`,
/// `deliver_last`): they are written when the stream opens, outside its bounded queue.
pub const MAX_LAST: usize = 100;

/// The longest retention (`history_ttl`, `ai_stream_retention`): 100 years as `100y` says it
/// (365.25 days a year), which keeps everything. A longer one buys nothing, and past about
/// 285,000 years its milliseconds are no longer exact in the Redis scripts' numbers, past
/// 292 million years no expiry Redis takes.
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 31_557_600);

/// Settings of one namespace; what is left out keeps the built-in or global default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    pub subscribe: Option<Access>,
    pub publish: Option<Access>,
    pub history_size: Option<usize>,
    #[serde(deserialize_with = "opt_duration")]
    pub history_ttl: Option<Duration>,
    pub presence: Option<bool>,
    /// How many of a channel's last events a new stream gets before the live ones, unless it
    /// asks otherwise (`?last=`): `1` makes a channel "current state, then updates".
    pub deliver_last: Option<usize>,
    /// Publish `join`/`leave` events when a connection enters or leaves a channel.
    pub join_leave: Option<bool>,
    /// How long a finished AI token stream is kept for late joiners.
    #[serde(deserialize_with = "opt_duration")]
    pub ai_stream_retention: Option<Duration>,
    pub max_payload_bytes: Option<usize>,
    /// The subscribe hook for this namespace's channels, instead of `hooks.subscribe_url`;
    /// `""` turns it off here.
    pub subscribe_hook: Option<String>,
    /// The publish hook for this namespace's channels, instead of `hooks.publish_url`; `""`
    /// turns it off here.
    pub publish_hook: Option<String>,
    /// Send an `event.published` webhook for every event published on this namespace's
    /// channels (with `event.published` in `webhooks.events`).
    pub publish_webhook: Option<bool>,
    /// What a stream of this namespace's channels gets when its queue is full.
    pub slow_consumer: Option<SlowConsumer>,
}

/// What happens to a stream whose queue (`buffer_size` events) is full when one more event
/// comes: the policy for slow consumers, per namespace.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// The stream is closed and its queue freed; the client resumes from history.
    #[default]
    Disconnect,
    /// The stream stays open: the oldest queued event is dropped, and the client is told
    /// which ones it missed with a `gap` event.
    DropOldest,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: None,
            heartbeat_interval: Duration::from_secs(30),
            client_timeout: Duration::from_secs(300),
            retry: Duration::from_secs(3),
            buffer_size: 256,
            max_connections: 10_000,
            max_channels_per_connection: 32,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            max_payload_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
            max_channels_per_publish: 100,
            idempotency_window: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(10),
            drain_reconnect_window: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            http2_max_concurrent_streams: 1000,
            socket_send_buffer: 128 * 1024,
            redis_url: None,
            redis_prefix: "realtime".to_owned(),
            redis_tls_ca: None,
            redis_cluster: false,
            redis_batch_messages: false,
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            tls_cert: None,
            tls_key: None,
            max_connections_per_user: 5,
            publish_rate: 20.0,
            publish_burst: 40.0,
            api_key_publish_rate: 1000.0,
            api_key_publish_burst: 2000.0,
            max_query_bytes: 8 * 1024,
            allow_anonymous: false,
            cors_origins: Vec::new(),
            admin: false,
            admin_interval: Duration::from_secs(2),
            demo: false,
            websocket: false,
            centrifugo: None,
            presence_grace: Duration::from_secs(5),
            ai_stream_retention: Duration::from_secs(300),
            auth: AuthConfig::default(),
            api_keys: Vec::new(),
            namespaces: BTreeMap::new(),
            hooks: HooksConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

/// The application's backend hooks (`docs/backend.md`): URLs Herald asks before it opens a
/// stream, follows a channel or publishes a client's event, and that answers a Centrifugo
/// client's `rpc`. All off by default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Asked when a stream opens (`GET /api/events`, `GET /api/ws`).
    pub connect_url: Option<String>,
    /// Asked for each channel a stream follows.
    pub subscribe_url: Option<String>,
    /// Asked before a user's (not an API key's) event is published.
    pub publish_url: Option<String>,
    /// Answers a Centrifugo client's `rpc` (Centrifugo's RPC proxy).
    pub rpc_url: Option<String>,
    /// Longest wait for a hook's answer, a free slot included (default 2 s).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Hook requests in flight at once, per node (default 64).
    pub max_concurrency: usize,
    /// Let a request through when its hook does not answer (default: refuse it).
    pub fail_open: bool,
    /// How long an answer is reused for an identical hook request (default 0: never).
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Headers of the client's request passed on to the hook (`Authorization` only if named).
    pub headers: Vec<String>,
    /// Cookies of the client's request passed on to the hook, by name.
    pub cookies: Vec<String>,
    /// PEM file of a CA that `https://` hooks' certificates may chain to, besides the public
    /// roots (a private CA).
    pub tls_ca: Option<PathBuf>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            rpc_url: None,
            timeout: Duration::from_secs(2),
            max_concurrency: 64,
            fail_open: false,
            cache_ttl: Duration::ZERO,
            headers: Vec::new(),
            cookies: Vec::new(),
            tls_ca: None,
        }
    }
}

impl HooksConfig {
    /// Every problem with the hooks' settings, in words.
    fn problems(&self, namespaces: &BTreeMap<String, NamespaceConfig>) -> Vec<String> {
        let mut problems = Vec::new();
        let urls = [&self.connect_url, &self.subscribe_url, &self.publish_url, &self.rpc_url].into_iter().flatten();
        let per_ns = namespaces.values().flat_map(|ns| [&ns.subscribe_hook, &ns.publish_hook]).flatten();
        for url in urls.chain(per_ns.filter(|u| !u.is_empty())) {
            if !is_hook_url(url) {
                problems
                    .push(format!("hooks: {url:?} is not an http:// or https:// URL with a host and no credentials"));
            }
        }
        if self.timeout.is_zero() {
            problems.push("hooks.timeout must be greater than zero".to_owned());
        }
        if self.max_concurrency == 0 {
            problems.push("hooks.max_concurrency must be at least 1".to_owned());
        }
        for name in &self.headers {
            if axum::http::HeaderName::try_from(name.as_str()).is_err() || name.eq_ignore_ascii_case("cookie") {
                problems
                    .push(format!("hooks.headers: {name:?} is not a header name (pass cookies with hooks.cookies)"));
            }
            // An API key is Herald's secret even when a client sends it.
            if name.eq_ignore_ascii_case("x-api-key") {
                problems.push("hooks.headers: X-Api-Key carries Herald's API keys and is never passed on".to_owned());
            }
        }
        problems
    }
}

/// What a lifecycle webhook reports (`webhooks.events`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// A connection (SSE stream or WebSocket) opened on a node.
    #[serde(rename = "connection.opened")]
    ConnectionOpened,
    /// A connection closed.
    #[serde(rename = "connection.closed")]
    ConnectionClosed,
    /// A channel got its first subscriber, across every node.
    #[serde(rename = "channel.occupied")]
    ChannelOccupied,
    /// A channel lost its last subscriber, across every node.
    #[serde(rename = "channel.vacated")]
    ChannelVacated,
    /// A user came online in a presence channel.
    #[serde(rename = "presence.online")]
    PresenceOnline,
    /// A user went offline in a presence channel (after `presence_grace`).
    #[serde(rename = "presence.offline")]
    PresenceOffline,
    /// An event was published on a namespace with `publish_webhook = true`.
    #[serde(rename = "event.published")]
    EventPublished,
}

impl WebhookEvent {
    /// Every kind, in the order of the docs.
    pub const ALL: [Self; 7] = [
        Self::ConnectionOpened,
        Self::ConnectionClosed,
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::PresenceOnline,
        Self::PresenceOffline,
        Self::EventPublished,
    ];

    /// Its name on the wire and in `webhooks.events`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConnectionOpened => "connection.opened",
            Self::ConnectionClosed => "connection.closed",
            Self::ChannelOccupied => "channel.occupied",
            Self::ChannelVacated => "channel.vacated",
            Self::PresenceOnline => "presence.online",
            Self::PresenceOffline => "presence.offline",
            Self::EventPublished => "event.published",
        }
    }
}

/// Lifecycle webhooks (`docs/backend.md`): Herald tells a URL of the application what happened,
/// signed, batched and retried. Off without `url`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where the webhooks are posted.
    pub url: Option<String>,
    /// The HMAC-SHA256 key of `X-Herald-Signature` (at least 16 bytes; required with `url`).
    pub secret: Option<String>,
    /// What is reported (default: every kind but `event.published`).
    pub events: Vec<WebhookEvent>,
    /// Longest wait for one delivery's answer (default 5 s).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Occurrences waiting to be sent, per node; beyond it new ones are dropped and counted
    /// (default 10000).
    pub queue_size: usize,
    /// Most occurrences in one request (default 100).
    pub max_batch: usize,
    /// Tries of one batch before it is given up and counted as failed (default 10).
    pub max_attempts: u32,
    /// The wait before the first retry, doubled each time up to 30 s (default 500 ms).
    #[serde(deserialize_with = "duration")]
    pub retry_backoff: Duration,
    /// PEM file of a CA that an `https://` URL's certificate may chain to, besides the public
    /// roots.
    pub tls_ca: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            events: WebhookEvent::ALL.into_iter().filter(|e| *e != WebhookEvent::EventPublished).collect(),
            timeout: Duration::from_secs(5),
            queue_size: 10_000,
            max_batch: 100,
            max_attempts: 10,
            retry_backoff: Duration::from_millis(500),
            tls_ca: None,
        }
    }
}

impl WebhooksConfig {
    /// Every problem with the webhooks' settings, in words.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(url) = &self.url else { return problems };
        if !is_hook_url(url) {
            problems.push(format!(
                "webhooks.url: {url:?} is not an http:// or https:// URL with a host and no credentials"
            ));
        }
        if self.secret.as_ref().is_none_or(|s| s.len() < 16) {
            problems.push("webhooks.secret must be set, at least 16 bytes, with webhooks.url".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("webhooks.timeout must be greater than zero".to_owned());
        }
        if self.queue_size == 0 || self.max_batch == 0 || self.max_attempts == 0 {
            problems.push("webhooks.queue_size, max_batch and max_attempts must be at least 1".to_owned());
        }
        problems
    }
}

/// Whether `url` is one Herald's hook client can call: `http(s)://host[:port][/path]`, with no
/// credentials in it (they would be sent nowhere, and logged with the URL).
fn is_hook_url(url: &str) -> bool {
    url.parse::<axum::http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some_and(|h| !h.is_empty())
            && !url.contains('@')
    })
}

/// A configuration problem, said so that a person can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks the values together; every problem found is listed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                problems.push(msg.to_owned());
            }
        };
        check(!self.heartbeat_interval.is_zero(), "heartbeat_interval must be greater than zero");
        check(self.client_timeout > self.heartbeat_interval, "client_timeout must be longer than heartbeat_interval");
        check(self.buffer_size > 0, "buffer_size must be at least 1");
        check(self.max_connections > 0, "max_connections must be at least 1");
        check(self.max_channels_per_connection > 0, "max_channels_per_connection must be at least 1");
        check(!self.history_ttl.is_zero(), "history_ttl must be greater than zero");
        check(!self.ai_stream_retention.is_zero(), "ai_stream_retention must be greater than zero");
        check(self.history_ttl <= MAX_RETENTION, "history_ttl must be at most 100 years");
        check(self.ai_stream_retention <= MAX_RETENTION, "ai_stream_retention must be at most 100 years");
        check(self.max_payload_bytes > 0, "max_payload_bytes must be at least 1");
        check(self.max_body_bytes >= self.max_payload_bytes, "max_body_bytes must be at least max_payload_bytes");
        check(self.max_batch > 0, "max_batch must be at least 1");
        check(self.max_channels_per_publish > 0, "max_channels_per_publish must be at least 1");
        check(!self.idle_timeout.is_zero(), "idle_timeout must be greater than zero");
        check(!self.body_read_timeout.is_zero(), "body_read_timeout must be greater than zero");
        check(!self.idempotency_window.is_zero(), "idempotency_window must be greater than zero");
        check(self.http2_max_concurrent_streams > 0, "http2_max_concurrent_streams must be at least 1");
        check(self.tls_cert.is_some() == self.tls_key.is_some(), "tls_cert and tls_key must be given together");
        check(self.max_connections_per_user > 0, "max_connections_per_user must be at least 1");
        let sentinel = !self.redis_sentinels.is_empty();
        check(
            sentinel == self.redis_sentinel_master.as_deref().is_some_and(|m| !m.is_empty()),
            "redis_sentinels and redis_sentinel_master must be given together",
        );
        check(!sentinel || self.redis_url.is_none(), "redis_sentinels replace redis_url: give one of them");
        check(!sentinel || !self.redis_cluster, "redis_sentinels and redis_cluster cannot be combined");
        check(
            self.publish_rate > 0.0 && self.publish_burst >= 1.0,
            "publish_rate must be positive and publish_burst at least 1",
        );
        check(
            self.api_key_publish_rate > 0.0 && self.api_key_publish_burst >= 1.0,
            "api_key_publish_rate must be positive and api_key_publish_burst at least 1",
        );
        check(self.max_query_bytes >= 256, "max_query_bytes must be at least 256");
        check(!self.auth.cookie_name.is_empty(), "auth.cookie_name must not be empty");
        check(!self.auth.ticket_ttl.is_zero(), "auth.ticket_ttl must be greater than zero");
        check(self.auth.jwt_secret.as_ref().is_none_or(|s| s.len() >= 16), "auth.jwt_secret must be at least 16 bytes");
        for key in &self.api_keys {
            check(key.key.len() >= 16, "every API key must be at least 16 characters");
            check(!key.name.is_empty(), "every API key needs a name");
            check(!key.scopes.is_empty(), "every API key needs at least one scope (`publish`, `admin`)");
        }
        for origin in &self.cors_origins {
            let alone = origin == "*" && self.cors_origins.len() == 1;
            check(
                alone || is_origin(origin),
                &format!(
                    "cors_origins: {origin:?} is not an origin such as \"https://app.example.com\" \
                     (scheme, host, optional port, no path), or \"*\" alone"
                ),
            );
        }
        if let Some(c) = &self.centrifugo {
            for (name, path) in [("path", &c.path), ("api_prefix", &c.api_prefix)] {
                check(
                    path.starts_with('/') && path.len() > 1 && !path.ends_with('/') && !path.starts_with("/api/"),
                    &format!(
                        "centrifugo.{name} must start with `/`, not end with one, and lie outside Herald's own `/api/`"
                    ),
                );
            }
            let paths = c.paths();
            for (i, path) in paths.iter().enumerate() {
                check(
                    !paths[..i].contains(path) && !OWN_PATHS.contains(&path.as_str()),
                    &format!(
                        "centrifugo: {path} is served twice (`path`'s folder also holds the unidirectional \
                         transports and the emulation's streams, and {EMULATION_PATH} the emulation's commands; \
                         {} are Herald's own)",
                        OWN_PATHS.join(", ")
                    ),
                );
            }
            if let Some(url) = &c.mirror_url {
                let ok = url.parse::<axum::http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
                });
                check(
                    ok,
                    "centrifugo.mirror_url must be an http:// or https:// URL, such as \"http://centrifugo:8000/api\"",
                );
                check(c.mirror_queue > 0, "centrifugo.mirror_queue must be at least 1");
            }
        }
        for (name, ns) in &self.namespaces {
            check(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "namespace names are lowercase ASCII letters and `_`",
            );
            check(
                ns.deliver_last.is_none_or(|n| n <= MAX_LAST),
                &format!("namespaces.{name}.deliver_last must be at most {MAX_LAST}"),
            );
            for (key, retention) in [("history_ttl", ns.history_ttl), ("ai_stream_retention", ns.ai_stream_retention)] {
                check(
                    retention.is_none_or(|r| r <= MAX_RETENTION),
                    &format!("namespaces.{name}.{key} must be at most 100 years"),
                );
            }
        }
        check(
            self.auth_configured() || self.allow_anonymous || self.listen.ip().is_loopback(),
            "no authentication is configured, so Herald only listens on a loopback address; \
             configure auth (jwt_secret, jwt_public_keys, jwks_url or an API key) or pass --allow-anonymous",
        );
        if let Some(id) = &self.node_id {
            check(
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()),
                "node_id must be 1 to 64 visible ASCII characters",
            );
        }
        problems.extend(self.hooks.problems(&self.namespaces));
        problems.extend(self.webhooks.problems());
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems.join("; "))) }
    }
}

impl Config {
    /// Whether any way to authenticate is configured; without one Herald runs in dev mode.
    pub fn auth_configured(&self) -> bool {
        self.auth.jwt_secret.is_some()
            || !self.auth.jwt_public_keys.is_empty()
            || self.auth.jwks_url.is_some()
            || !self.api_keys.is_empty()
    }

    /// Whether `herald serve` mounts the demo: in dev mode, or when `demo` asks for it. A
    /// node with authentication configured does not expose it unless told to.
    pub fn demo_enabled(&self) -> bool {
        self.demo || !self.auth_configured()
    }
}

/// Whether `s` is an origin as browsers send it: `http` or `https`, a host, an optional
/// port, and nothing else (no path, not even `/`).
fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority.parse::<axum::http::uri::Authority>().is_ok()
        && !authority.contains(['/', '@', '?', '#'])
        && s.bytes().all(|b| b.is_ascii_graphic())
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Accepts `"30s"`, `"5m"`, `"1h 30m"` (humantime) or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration ({e}); write it like \"30s\" or \"5m\""))
        }),
        Raw::Seconds(n) => Ok(Duration::from_secs(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_source_documents_and_are_valid() {
        let c = Config::default();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.client_timeout, Duration::from_secs(300));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn centrifugo_is_off_by_default_and_on_with_true_or_a_table() {
        assert_eq!(Config::default().centrifugo, None);
        let on = Config::from_toml("centrifugo = true").map(|c| c.centrifugo);
        assert_eq!(on, Ok(Some(CentrifugoConfig::default())));
        assert_eq!(Config::from_toml("centrifugo = false").map(|c| c.centrifugo), Ok(None));
        let table = Config::from_toml("[centrifugo]\npath = \"/ws\"").map(|c| c.centrifugo.map(|c| c.path));
        assert_eq!(table, Ok(Some("/ws".to_owned())));
        let clash = Config::from_toml("[centrifugo]\npath = \"/api/ws\"").map(|c| c.validate().is_err());
        assert_eq!(clash, Ok(true));
    }

    #[test]
    fn a_centrifugo_endpoint_may_not_take_another_ones_path_or_one_of_heralds_own() {
        let valid = |table: &str| Config::from_toml(&format!("[centrifugo]\n{table}")).map(|c| c.validate().is_ok());
        assert_eq!(valid("uni = true\nemulation = true"), Ok(true));
        assert_eq!(valid("path = \"/connection/sse\"\nemulation = true"), Ok(false));
        assert_eq!(valid("path = \"/connection/sse\""), Ok(true));
        assert_eq!(valid("path = \"/emulation\"\nemulation = true"), Ok(false));
        assert_eq!(valid("path = \"/ws/uni_sse\"\nuni = true"), Ok(false));
        assert_eq!(valid("path = \"/metrics\""), Ok(false));
        let paths =
            Config::from_toml("[centrifugo]\nuni = true\nemulation = true").map(|c| c.centrifugo.map(|c| c.paths()));
        assert_eq!(paths.ok().flatten().map(|p| p.len()), Some(7));
    }

    #[test]
    fn a_centrifugo_mirror_url_must_be_an_http_url() {
        let valid = |mirror: &str| {
            Config::from_toml(&format!("[centrifugo]\nmirror_url = \"{mirror}\"")).map(|c| c.validate().is_ok())
        };
        assert_eq!(valid("http://centrifugo:8000/api"), Ok(true));
        assert_eq!(valid("https://centrifugo.example.com/api"), Ok(true));
        assert_eq!(valid("centrifugo:8000/api"), Ok(false));
        assert_eq!(valid("ftp://centrifugo/api"), Ok(false));
    }

    #[test]
    fn a_retention_of_a_hundred_years_is_the_longest_taken() {
        let valid = |toml: &str| Config::from_toml(toml).map(|c| c.validate().map_err(|e| e.to_string()));
        for ok in
            ["history_ttl = \"100y\"", "ai_stream_retention = \"100y\"", "[namespaces.log]\nhistory_ttl = \"100y\""]
        {
            assert_eq!(valid(ok), Ok(Ok(())), "{ok}");
        }
        for (toml, key) in [
            ("history_ttl = \"101y\"", "history_ttl"),
            ("ai_stream_retention = \"1000y\"", "ai_stream_retention"),
            ("[namespaces.log]\nhistory_ttl = \"101y\"", "namespaces.log.history_ttl"),
        ] {
            let refused = valid(toml).ok().and_then(Result::err).unwrap_or_default();
            assert!(refused.contains(&format!("{key} must be at most 100 years")), "{toml}: {refused}");
        }
    }

    #[test]
    fn toml_overrides_defaults_with_readable_durations() {
        let c = Config::from_toml("heartbeat_interval = \"15s\"\nhistory_ttl = 60\nlisten = \"0.0.0.0:9000\"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.history_ttl, Duration::from_secs(60));
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.buffer_size, Config::default().buffer_size);
    }

    #[test]
    fn batch_messages_are_off_by_default_and_on_with_the_toml_key() {
        assert!(!Config::default().redis_batch_messages);
        let on = Config::from_toml("redis_batch_messages = true").map(|c| c.redis_batch_messages);
        assert_eq!(on, Ok(true));
    }

    #[test]
    fn bad_config_is_explained() {
        let unknown = Config::from_toml("heartbeat = \"15s\"").err().unwrap_or_default();
        assert!(unknown.contains("unknown field `heartbeat`"), "{unknown}");
        let bad = Config::from_toml("heartbeat_interval = \"soon\"").err().unwrap_or_default();
        assert!(bad.contains("`soon` is not a duration"), "{bad}");
        let c = Config { buffer_size: 0, tls_cert: Some("a".into()), ..Config::default() };
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("buffer_size") && msg.contains("tls_cert and tls_key"), "{msg}");
    }

    #[test]
    fn webhooks_need_a_url_and_a_secret_and_name_known_events() {
        let mut c = Config::from_toml(
            "[webhooks]\nurl = \"http://127.0.0.1:3000/wh\"\nevents = [\"channel.occupied\", \"event.published\"]\n\
             [namespaces.orders]\npublish_webhook = true",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.webhooks.events, [WebhookEvent::ChannelOccupied, WebhookEvent::EventPublished]);
        assert_eq!(c.namespaces.get("orders").and_then(|ns| ns.publish_webhook), Some(true));
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("webhooks.secret must be set"), "{msg}");
        c.webhooks.secret = Some("0123456789abcdef".to_owned());
        assert!(c.validate().is_ok());
        assert!(Config::from_toml("[webhooks]\nevents = [\"channel.renamed\"]").is_err());
        assert!(WebhooksConfig::default().events.iter().all(|e| *e != WebhookEvent::EventPublished));
    }

    #[test]
    fn a_hook_url_must_be_plain_http_with_a_host() {
        let mut c = Config::from_toml(
            "[hooks]\nconnect_url = \"ftp://app.example/hook\"\ntimeout = \"500ms\"\n\
             [namespaces.chat]\nsubscribe_hook = \"app.example/sub\"\npublish_hook = \"\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.hooks.timeout, Duration::from_millis(500));
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(r#""ftp://app.example/hook" is not an http:// or https:// URL"#), "{msg}");
        assert!(msg.contains(r#""app.example/sub" is not an http://"#), "{msg}");
        c.hooks.connect_url = Some("http://user:pw@app.example/hook".to_owned());
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("user:pw@app.example/hook\" is not an http://"), "{msg}");
        c.hooks.headers = vec!["X-Api-Key".to_owned()];
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("X-Api-Key carries Herald's API keys"), "{msg}");
        c.hooks.headers = vec!["authorization".to_owned()];
        c.hooks.connect_url = Some("http://127.0.0.1:3000/hook".to_owned());
        c.namespaces.clear();
        assert!(c.validate().is_ok());
        c.hooks.rpc_url = Some("app.example/rpc".to_owned());
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(r#""app.example/rpc" is not an http://"#), "{msg}");
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for ok in ["https://app.example.com", "http://localhost:5173", "http://127.0.0.1:3000", "https://[::1]:8443"] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "https://",
            "https://app.example.com?x",
            "https://app example.com",
            "*.example.com",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let check = |origins: &[&str]| {
            let c = Config { cors_origins: origins.iter().map(|o| (*o).to_owned()).collect(), ..Config::default() };
            c.validate().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(check(&["*"]), "");
        assert_eq!(check(&["https://a.example", "http://localhost:5173"]), "");
        assert!(check(&["*", "https://a.example"]).contains(r#"cors_origins: "*" is not an origin"#));
        assert!(check(&["https://a.example/"]).contains(r#"cors_origins: "https://a.example/""#));
    }
}
