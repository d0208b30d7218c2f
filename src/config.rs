//! Configuration: one typed struct, its defaults, loading from TOML, and validation.
//!
//! Sources apply in this order, each overriding the one before: the defaults below (from
//! the source documents where they give one), a TOML file (`--config`), then `HERALD_*`
//! environment variables and command-line flags (merged by the binary). [`Config::validate`]
//! runs once at start and explains every problem in words.

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
    /// Interval of heartbeat comments on idle streams (document 004: 30 s).
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// A stream that accepts nothing for this long is closed (document 004: 5 min).
    #[serde(deserialize_with = "duration")]
    pub client_timeout: Duration,
    /// The `retry:` hint sent at the start of each stream.
    #[serde(deserialize_with = "duration")]
    pub retry: Duration,
    /// Events queued per connection before it counts as a slow consumer and is closed.
    pub buffer_size: usize,
    /// Open SSE connections per node; over it, `503` (document 002: 10,000 per pod).
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
    /// Longest time to finish open requests after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// On drain, clients are told to reconnect after a random delay up to this long.
    #[serde(deserialize_with = "duration")]
    pub drain_reconnect_window: Duration,
    /// Longest time a client may take to send its request headers.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection (hyper's default is 200).
    pub http2_max_concurrent_streams: u32,
    /// TLS certificate chain (PEM). With `tls_key`, serves HTTPS with HTTP/2 by ALPN.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
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
            drain_timeout: Duration::from_secs(10),
            drain_reconnect_window: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 1000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A configuration problem, said so that a person can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
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
        check(
            !self.heartbeat_interval.is_zero(),
            "heartbeat_interval must be greater than zero",
        );
        check(
            self.client_timeout > self.heartbeat_interval,
            "client_timeout must be longer than heartbeat_interval",
        );
        check(self.buffer_size > 0, "buffer_size must be at least 1");
        check(
            self.max_connections > 0,
            "max_connections must be at least 1",
        );
        check(
            self.max_channels_per_connection > 0,
            "max_channels_per_connection must be at least 1",
        );
        check(
            !self.history_ttl.is_zero(),
            "history_ttl must be greater than zero",
        );
        check(
            self.max_payload_bytes > 0,
            "max_payload_bytes must be at least 1",
        );
        check(
            self.max_body_bytes >= self.max_payload_bytes,
            "max_body_bytes must be at least max_payload_bytes",
        );
        check(self.max_batch > 0, "max_batch must be at least 1");
        check(
            self.http2_max_concurrent_streams > 0,
            "http2_max_concurrent_streams must be at least 1",
        );
        check(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key must be given together",
        );
        if let Some(id) = &self.node_id {
            check(
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()),
                "node_id must be 1 to 64 visible ASCII characters",
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
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
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write it like \"30s\" or \"5m\""
            ))
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
    fn toml_overrides_defaults_with_readable_durations() {
        let c = Config::from_toml(
            "heartbeat_interval = \"15s\"\nhistory_ttl = 60\nlisten = \"0.0.0.0:9000\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.history_ttl, Duration::from_secs(60));
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.buffer_size, Config::default().buffer_size);
    }

    #[test]
    fn bad_config_is_explained() {
        let unknown = Config::from_toml("heartbeat = \"15s\"")
            .err()
            .unwrap_or_default();
        assert!(unknown.contains("unknown field `heartbeat`"), "{unknown}");
        let bad = Config::from_toml("heartbeat_interval = \"soon\"")
            .err()
            .unwrap_or_default();
        assert!(bad.contains("`soon` is not a duration"), "{bad}");
        let c = Config {
            buffer_size: 0,
            tls_cert: Some("a".into()),
            ..Config::default()
        };
        let msg = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("buffer_size") && msg.contains("tls_cert and tls_key"),
            "{msg}"
        );
    }
}
