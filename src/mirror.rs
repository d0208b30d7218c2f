//! The Centrifugo mirror (`centrifugo.mirror_url`): during a migration, every event published
//! through this node is also published to an existing Centrifugo-compatible server API, so
//! that clients still on the old server get it too (the `UnifiedBroadcaster`'s Hybrid mode,
//! from Herald's side).
//!
//! A publish only offers its events to a bounded queue and never waits: a full queue drops
//! the event (counted and logged), and one task sends what is queued, in order, as the
//! commands of one `batch` call at a time. What the mirror refuses or does not answer is
//! counted and logged, not retried. It owns the queue, its task and the channel-name mapping
//! back to Centrifugo's names ([`centrifugo_name`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Uri};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::CentrifugoConfig;
use crate::event::{Prepared, SERVER_EVENT_TYPES};
use crate::metrics::MirrorCounters;
use crate::outbound::client::Client;

/// Commands sent in one `batch` call at most.
const BATCH: usize = 100;

/// The longest wait for the mirror's answer to one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The Centrifugo name of a Herald channel, the one a Centrifugo client would subscribe
/// with (`docs/centrifugo.md`): `channel:news` is `news`, `user:42` is `#42`, a configured
/// namespace's channel keeps its name.
pub fn centrifugo_name(channel: &str) -> String {
    match channel.split_once(':') {
        Some(("channel", name)) if !name.contains(':') && !name.contains('#') => name.to_owned(),
        Some(("user", id)) => format!("#{id}"),
        _ => channel.to_owned(),
    }
}

/// The queue to the mirror; its task runs while the node does.
pub struct Mirror {
    tx: mpsc::Sender<String>,
    counters: Arc<MirrorCounters>,
    /// Drops so far: the first is logged, then one line per thousand.
    unreported: AtomicU64,
}

impl Mirror {
    /// Starts the mirror `cfg` configures, if any (a Tokio runtime must be running).
    pub fn start(cfg: &CentrifugoConfig, counters: Arc<MirrorCounters>) -> Option<Self> {
        let url: Uri = format!("{}/batch", cfg.mirror_url.as_deref()?.trim_end_matches('/')).parse().ok()?;
        let tls = match crate::outbound::tls_client(None) {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(error = %e, "centrifugo mirror off: no TLS configuration");
                return None;
            }
        };
        let mut headers = Vec::new();
        if let Some(key) = &cfg.mirror_api_key {
            match HeaderValue::from_str(key) {
                Ok(v) => headers.push((HeaderName::from_static("x-api-key"), v)),
                Err(_) => tracing::error!("centrifugo.mirror_api_key is not a valid header value; sending none"),
            }
        }
        let (tx, rx) = mpsc::channel(cfg.mirror_queue.max(1));
        let task = Sender { url, headers, client: Client::new(tls), counters: Arc::clone(&counters) };
        tokio::spawn(task.run(rx));
        tracing::info!(url = cfg.mirror_url.as_deref().unwrap_or_default(), "centrifugo mirror on");
        Some(Self { tx, counters, unreported: AtomicU64::new(0) })
    }

    /// Offers accepted events to the mirror, one `publish` command a channel: their JSON as
    /// subscribers get it is the publication's `data`. Herald's own notices (presence,
    /// join/leave, ...) are not publications and stay here. Never waits.
    pub fn offer(&self, events: &[Prepared]) {
        for event in events {
            let kind = &*event.event_type;
            if SERVER_EVENT_TYPES.contains(&kind) || matches!(kind, "presence" | "join" | "leave") {
                continue;
            }
            for channel in &event.channels {
                let data = event.json_for(channel);
                let mut command = String::with_capacity(data.len() + 64);
                command.push_str(r#"{"publish":{"channel":"#);
                command.push_str(&serde_json::Value::String(centrifugo_name(channel.as_str())).to_string());
                command.push_str(r#","data":"#);
                command.push_str(&String::from_utf8_lossy(&data));
                command.push_str("}}");
                if self.tx.try_send(command).is_err() {
                    self.dropped();
                }
            }
        }
    }

    fn dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        // The first drop of a run is logged; then one line per thousand.
        let n = self.unreported.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(dropped = n + 1, "centrifugo mirror queue full: events dropped for the mirror");
        }
    }
}

/// The mirror's task: sends what is queued, in order.
struct Sender {
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Keeps its connection to the mirror open between batches.
    client: Client,
    counters: Arc<MirrorCounters>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let mut commands = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut commands, BATCH).await > 0 {
            let n = commands.len() as u64;
            let mut body = String::from(r#"{"commands":["#);
            body.push_str(&commands.join(","));
            body.push_str("]}");
            commands.clear();
            let call = self.client.post(&self.url, Bytes::from(body), &self.headers);
            let refused = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Err(_) => Err("no answer in time".to_owned()),
                Ok(Err(e)) => Err(e),
                Ok(Ok((status, _))) if !status.is_success() => Err(format!("HTTP {status}")),
                Ok(Ok((_, answer))) => Ok(refusals(&answer)),
            };
            match refused {
                Ok(0) => {
                    self.counters.sent.fetch_add(n, Ordering::Relaxed);
                }
                Ok(refused) => {
                    self.counters.sent.fetch_add(n.saturating_sub(refused), Ordering::Relaxed);
                    self.counters.failed.fetch_add(refused.min(n), Ordering::Relaxed);
                    tracing::warn!(events = n, refused, "the centrifugo mirror refused some events");
                }
                Err(error) => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(events = n, %error, "the centrifugo mirror did not take events");
                }
            }
        }
    }
}

/// How many replies of a `batch` answer are errors (all of them when it is not one).
fn refusals(answer: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) else { return u64::MAX };
    if answer.get("error").is_some() {
        return u64::MAX;
    }
    let replies = answer.pointer("/result/replies").or_else(|| answer.get("replies"));
    match replies.and_then(|r| r.as_array()) {
        Some(replies) => replies.iter().filter(|r| r.get("error").is_some()).count() as u64,
        None => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_channels_get_the_centrifugo_names_clients_subscribe_with() {
        assert_eq!(centrifugo_name("channel:news"), "news");
        assert_eq!(centrifugo_name("user:42"), "#42");
        assert_eq!(centrifugo_name("chat:index"), "chat:index");
    }

    #[test]
    fn a_batch_answer_counts_its_error_replies_and_anything_else_is_all_refused() {
        assert_eq!(refusals(br#"{"result":{"replies":[{"publish":{}},{"error":{"code":102}}]}}"#), 1);
        assert_eq!(refusals(br#"{"replies":[{"publish":{}}]}"#), 0);
        assert_eq!(refusals(br#"{"error":{"code":100}}"#), u64::MAX);
        assert_eq!(refusals(b"oops"), u64::MAX);
    }
}
