//! Where the primary Redis is when Redis Sentinel names it (`redis_sentinels`,
//! `redis_sentinel_master`), asked again whenever a connection to it fails, so that the node
//! follows a failover. (A fixed `redis_url` needs none of this: its one connection is a
//! connection manager that reconnects to the same address by itself.)
//!
//! Both of a Sentinel node's connections go through here: the pub/sub link asks
//! [`Primary::client`] each time it opens (after a failure it opens again with backoff,
//! resubscribes and catches up, as after any reconnect), and the command connection is a
//! [`Following`], which drops its connection when the primary fails or turns out to be a
//! replica now (`READONLY`), and connects to the one the Sentinels name at the next command.
//! A command that meets the failure is not retried: its caller answers `503`, so that a
//! publish made while there is no primary is refused, never taken for accepted.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// How long finding and reaching the primary may take before a command fails.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(2);

/// The Sentinels that name the primary.
#[derive(Clone)]
pub(super) struct Primary(Arc<tokio::sync::Mutex<SentinelClient>>);

impl Primary {
    /// Asks the Sentinels at `sentinels` (`host:port` or `redis://host:port`) for `master`.
    pub(super) fn sentinel(sentinels: &[String], master: &str) -> RedisResult<Self> {
        let urls: Vec<String> =
            sentinels.iter().map(|s| if s.contains("://") { s.clone() } else { format!("redis://{s}") }).collect();
        let client = SentinelClient::build(urls, master, None, SentinelServerType::Master)?;
        Ok(Self(Arc::new(tokio::sync::Mutex::new(client))))
    }

    /// A client for the primary as it is now: the Sentinels' answer is checked with `ROLE`.
    pub(super) async fn client(&self) -> Result<redis::Client, String> {
        let ask = async { self.0.lock().await.async_get_client().await };
        match tokio::time::timeout(DISCOVERY_DEADLINE, ask).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("no primary from the sentinels: {e}")),
            Err(_) => Err(format!("the sentinels named no primary within {DISCOVERY_DEADLINE:?}")),
        }
    }
}

/// The command connection of a Sentinel setup: a multiplexed connection to the primary,
/// dropped when the primary fails and opened to the one the Sentinels name at the next command.
#[derive(Clone)]
pub(super) struct Following(Arc<Inner>);

struct Inner {
    primary: Primary,
    config: AsyncConnectionConfig,
    current: Mutex<Option<MultiplexedConnection>>,
    /// One discovery at a time: the commands that find no connection wait for it, and
    /// share its failure if it failed (each trying again would make them wait in turn).
    discovering: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// How long a failed discovery answers for the commands that waited on it.
const FAILURE_SHARED: Duration = Duration::from_millis(200);

impl Following {
    /// Connects to the primary the Sentinels name now.
    pub(super) async fn connect(primary: Primary, config: AsyncConnectionConfig) -> RedisResult<Self> {
        let following = Self(Arc::new(Inner {
            primary,
            config,
            current: Mutex::new(None),
            discovering: tokio::sync::Mutex::new(None),
        }));
        // Boxed: the start of a node awaits this inside futures that are deep already.
        Box::pin(following.connection()).await?;
        Ok(following)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.0.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let mut last_failure = self.0.discovering.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        if let Some((at, e)) = last_failure.as_ref().filter(|(at, _)| at.elapsed() < FAILURE_SHARED) {
            return Err(RedisError::from(std::io::Error::other(format!("{e} ({:?} ago)", at.elapsed()))));
        }
        let connected = async {
            let client = self.0.primary.client().await.map_err(|e| RedisError::from(std::io::Error::other(e)))?;
            let conn = client.get_multiplexed_async_connection_with_config(&self.0.config).await?;
            Ok::<_, RedisError>((client, conn))
        };
        let (client, conn) = match connected.await {
            Ok(found) => found,
            Err(e) => {
                *last_failure = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        *last_failure = None;
        *self.0.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        tracing::info!(primary = ?client.get_connection_info().addr(), "redis command connection follows the primary");
        Ok(conn)
    }

    /// After a failed command: a connection that failed, or a primary that is a replica now,
    /// is let go, and the next command asks the Sentinels again.
    fn failed(&self, e: &RedisError) {
        let lost = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ServerErrorKind::ReadOnly.into();
        if lost && self.0.current.lock().unwrap_or_else(PoisonError::into_inner).take().is_some() {
            tracing::warn!(error = %e, "redis primary lost; asking the sentinels again");
        }
    }
}

impl ConnectionLike for Following {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let answer = conn.req_packed_command(cmd).await;
            if let Err(e) = &answer {
                self.failed(e);
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let answer = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &answer {
                self.failed(e);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
