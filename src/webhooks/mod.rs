//! Lifecycle webhooks (`docs/backend.md`): Herald tells the application's backend what
//! happened (connections opened and closed, channels occupied and vacated, users online and
//! offline, events published where a namespace asks), without being asked.
//!
//! This module owns the sending: the node reports each occurrence with [`Webhooks::emit`],
//! which queues it (bounded: a full queue drops and counts it, the caller never waits) for
//! one delivery task that batches what is waiting, signs each request (`signature.rs`),
//! posts it on a kept-alive connection and retries it with backoff until the application
//! answers 2xx or `webhooks.max_attempts` tries failed. Every occurrence has an `id` that a
//! retry repeats, so the application can drop what it already handled (delivery is at least
//! once). One task sends in queue order, so one node's occurrences arrive in the order they
//! happened. Deciding *which* node reports a cluster-wide occurrence (a channel's first
//! subscriber on any node) is the node's and the engine's business, not this module's.

pub mod signature;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Uri};
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError, WebhookEvent, WebhooksConfig};
use crate::metrics::webhooks::Metrics;
use crate::outbound::client::Client;

/// The longest wait between two tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The header naming a request's batch (the same on every try).
const BATCH_HEADER: HeaderName = HeaderName::from_static("x-herald-webhook-id");
/// The header carrying the signature.
const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-herald-signature");

/// The webhooks of one node; with no `webhooks.url`, every call does nothing.
pub struct Webhooks {
    cfg: WebhooksConfig,
    /// The queue of the delivery task (`None`: webhooks are off).
    tx: Option<mpsc::Sender<Item>>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// The webhooks `cfg` configures, their delivery task started (so call it inside a Tokio
    /// runtime); fails only on an unreadable `webhooks.tls_ca` or a URL that does not parse.
    pub fn start(cfg: &Config, node_id: &str, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let wh = cfg.webhooks.clone();
        let (Some(url), Some(secret)) = (&wh.url, &wh.secret) else {
            return Ok(Self { cfg: wh, tx: None, metrics });
        };
        let url: Uri = url.parse().map_err(|e| ConfigError::Invalid(format!("webhooks.url: {e}")))?;
        let tls = crate::outbound::tls_client(wh.tls_ca.as_deref())
            .map_err(|e| ConfigError::Invalid(format!("webhooks.tls_ca: {e}")))?;
        let (tx, rx) = mpsc::channel(wh.queue_size);
        let delivery = Delivery {
            url,
            secret: Bytes::from(secret.clone().into_bytes()),
            node: node_id.to_owned(),
            client: Client::new(tls),
            cfg: wh.clone(),
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(delivery.run(rx));
        Ok(Self { cfg: wh, tx: Some(tx), metrics })
    }

    /// Whether occurrences of `kind` are sent (check before building one).
    pub fn sends(&self, kind: WebhookEvent) -> bool {
        self.tx.is_some() && self.cfg.events.contains(&kind)
    }

    /// Queues an occurrence of `kind` with `fields`, if `kind` is sent; given an `id`, a
    /// `type` and a `time` (Unix milliseconds) here. Never waits: when the queue is full the
    /// occurrence is dropped and counted.
    pub fn emit(&self, kind: WebhookEvent, fields: Map<String, Value>) {
        let Some(tx) = self.tx.as_ref().filter(|_| self.cfg.events.contains(&kind)) else { return };
        let mut occurrence = Map::with_capacity(fields.len() + 3);
        occurrence.insert("id".into(), Value::String(crate::ids::new_id()));
        occurrence.insert("type".into(), Value::String(kind.name().to_owned()));
        occurrence.insert("time".into(), Value::from(crate::ids::now_ms()));
        occurrence.extend(fields);
        match tx.try_send(Item::Occurrence(Value::Object(occurrence))) {
            Ok(()) => {
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = kind.name(), "webhook queue full; occurrence dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Waits until everything queued so far was sent or given up (a node shutting down).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, flushed) = oneshot::channel();
        if tx.send(Item::Flushed(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

/// What the queue holds.
enum Item {
    /// An occurrence to send.
    Occurrence(Value),
    /// Answered once everything queued before it was sent or given up.
    Flushed(oneshot::Sender<()>),
}

/// The delivery task's own state.
struct Delivery {
    url: Uri,
    secret: Bytes,
    node: String,
    client: Client,
    cfg: WebhooksConfig,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Sends what is queued, a batch at a time, until the node is gone and the queue empty.
    async fn run(self, mut rx: mpsc::Receiver<Item>) {
        let mut items = Vec::with_capacity(self.cfg.max_batch);
        while rx.recv_many(&mut items, self.cfg.max_batch).await > 0 {
            let mut events = Vec::with_capacity(items.len());
            let mut flushed = Vec::new();
            for item in items.drain(..) {
                match item {
                    Item::Occurrence(event) => events.push(event),
                    Item::Flushed(done) => flushed.push(done),
                }
            }
            let n = events.len() as u64;
            if n > 0 {
                self.metrics.queued.fetch_sub(n, Ordering::Relaxed);
                let body = serde_json::json!({"id": crate::ids::new_id(), "node": self.node, "events": events});
                let counter = if self.deliver(&body).await { &self.metrics.sent } else { &self.metrics.failed };
                counter.fetch_add(n, Ordering::Relaxed);
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    /// Posts one batch until the application takes it or the tries run out.
    async fn deliver(&self, body: &Value) -> bool {
        let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
        let Ok(batch_id) = HeaderValue::try_from(id) else { return false };
        let bytes = Bytes::from(body.to_string());
        let mut backoff = self.cfg.retry_backoff;
        for attempt in 1..=self.cfg.max_attempts {
            if attempt > 1 {
                self.metrics.retried.fetch_add(1, Ordering::Relaxed);
            }
            let signature = signature::sign(&self.secret, crate::ids::now_ms() / 1000, &bytes);
            let Ok(signature) = HeaderValue::try_from(signature) else { return false };
            let headers = [(BATCH_HEADER, batch_id.clone()), (SIGNATURE_HEADER, signature)];
            let sent = tokio::time::timeout(self.cfg.timeout, self.client.post(&self.url, bytes.clone(), &headers));
            let why = match sent.await {
                Ok(Ok((status, _))) if status.is_success() => return true,
                Ok(Ok((status, _))) => format!("it answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {:?}", self.cfg.timeout),
            };
            tracing::warn!(batch = id, attempt, url = %self.url, "webhook not delivered: {why}");
            if attempt < self.cfg.max_attempts {
                // Jitter keeps the nodes of a cluster from retrying in step.
                let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tracing::error!(batch = id, tries = self.cfg.max_attempts, "webhook batch given up");
        false
    }
}
