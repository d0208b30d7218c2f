//! `herald publish`: one event (to one or several channels) or a batch, through
//! `POST /api/publish` (or, with `--ws`, a `publish` command over the WebSocket `/api/ws`);
//! prints the id of each published event, one a line. A try whose outcome is unknown is
//! retried under one idempotency key, so it publishes once.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value, json};

use super::Remote;
use super::http::Refusal;
use super::ws;

/// How long the whole publish may take.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct PublishArgs {
    /// Channel to publish to (`channel:general`, `user:42`, `system`); repeat it to publish
    /// one event to several channels.
    #[arg(long = "channel", value_name = "CHANNEL", required_unless_present = "batch")]
    channels: Vec<String>,
    /// The event type (`chat`, `notification`, ...).
    #[arg(long = "type", value_name = "TYPE", required_unless_present = "batch")]
    event_type: Option<String>,
    /// The payload: a JSON object whose fields go into the event; `-` reads it from stdin,
    /// `@file` from a file.
    #[arg(long, value_name = "JSON", conflicts_with = "batch")]
    data: Option<String>,
    /// Publish a JSON array of whole events (each with `channel` or `channels`, and `type`)
    /// in order, all or nothing; `-` reads it from stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["channels", "event_type"])]
    batch: Option<String>,
    /// Retries after an answer that may hide a published event (no answer, 502, 503, 504)
    /// or asks to wait (408, 429); every try carries the same idempotency key.
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
    /// The idempotency key of this publish (default: a new one for this run). Give the same
    /// key to a second run to retry a publish whose outcome you did not see.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Publish over the WebSocket endpoint (`/api/ws`, which the server must have on): the
    /// same body, checks and answer, as a `publish` command on a socket.
    #[arg(long)]
    ws: bool,
    #[command(flatten)]
    remote: Remote,
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let event = body(&args)?;
    let body = Bytes::from(event.to_string());
    let endpoint = args.remote.endpoint()?;
    // 128 random bits: unique among this publisher's keys of the last few minutes.
    let key = args.idempotency_key.clone().unwrap_or_else(|| format!("cli-{:032x}", fastrand::u128(..)));
    let ids = super::runtime()?.block_on(async {
        tokio::time::timeout(TIMEOUT, async {
            let mut attempt = 0;
            loop {
                let outcome = if args.ws {
                    publish_over_socket(&args.remote, &endpoint, &event, &key).await
                } else {
                    let req = args
                        .remote
                        .authorize(endpoint.request("POST", "/api/publish"))
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .header("idempotency-key", key.as_str())
                        .body(Full::new(body.clone()))?;
                    publish_once(&endpoint, req).await
                };
                match outcome {
                    Ok(ids) => return Ok(ids),
                    Err(Attempt::Retry { error, wait }) if attempt < args.retries => {
                        attempt += 1;
                        let wait = wait.unwrap_or_else(|| backoff(attempt));
                        eprintln!("publish: {error:#}; retry {attempt} of {} in {wait:?}", args.retries);
                        tokio::time::sleep(wait).await;
                    }
                    Err(Attempt::Retry { error, .. } | Attempt::Fail(error)) => return Err(error),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {TIMEOUT:?}", endpoint.url()))?
    })?;
    let mut out = std::io::stdout().lock();
    for id in ids {
        if let Err(e) = std::io::Write::write_all(&mut out, format!("{id}\n").as_bytes()) {
            // `herald publish | head -0` and the like: the reader left, nothing is wrong.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
    }
    Ok(())
}

/// How one try of a publish ended, if not with ids.
enum Attempt {
    /// The event may or may not have been published, or the server asked to wait: retry
    /// (after `wait`, if the server named it), under the same key.
    Retry { error: anyhow::Error, wait: Option<Duration> },
    /// Retrying cannot help.
    Fail(anyhow::Error),
}

/// Sends one try; answers the published ids.
async fn publish_once(
    endpoint: &super::http::Endpoint,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Vec<String>, Attempt> {
    let resp = endpoint
        .send(req)
        .await
        .map_err(|error| if transient(&error) { Attempt::Retry { error, wait: None } } else { Attempt::Fail(error) })?;
    if !resp.status().is_success() {
        return Err(refused(endpoint, Refusal::read(resp).await));
    }
    // An answer cut short hides the ids of a publish that happened: a retry reads them.
    let bytes = match Limited::new(resp.into_body(), 1024 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Err(Attempt::Retry { error: anyhow::anyhow!("reading the answer: {e}"), wait: None }),
    };
    let answer: Value = serde_json::from_slice(&bytes).context("the answer is not JSON").map_err(Attempt::Fail)?;
    ids(&answer).with_context(|| format!("unexpected answer: {answer}")).map_err(Attempt::Fail)
}

/// Sends one try as a `publish` command on a socket of its own; answers the published ids.
async fn publish_over_socket(
    remote: &super::Remote,
    endpoint: &super::http::Endpoint,
    event: &Value,
    key: &str,
) -> Result<Vec<String>, Attempt> {
    let retry_if = |error: anyhow::Error| {
        if transient(&error) { Attempt::Retry { error, wait: None } } else { Attempt::Fail(error) }
    };
    let mut socket = match ws::open(remote, endpoint, "").await {
        Ok(socket) => socket,
        Err(ws::OpenError::Network(e)) => return Err(retry_if(e)),
        Err(ws::OpenError::Refused(refusal)) => return Err(refused(endpoint, refusal)),
    };
    let command = json!({"type": "publish", "id": 1, "event": event, "idempotencyKey": key});
    ws::send(&mut socket, &command).await.map_err(|error| Attempt::Retry { error, wait: None })?;
    // Whatever ends the socket before the answer hides the outcome: a retry under the same
    // key finds out.
    let unknown = |error: anyhow::Error| Attempt::Retry { error, wait: None };
    loop {
        match ws::next(&mut socket).await {
            None => return Err(unknown(anyhow::anyhow!("the socket ended before the answer"))),
            Some(Err(e)) => return Err(unknown(e)),
            Some(Ok(ws::Frame::Reply { result, .. })) => {
                let _ = socket.close(None).await;
                return ids(&result).with_context(|| format!("unexpected answer: {result}")).map_err(Attempt::Fail);
            }
            Some(Ok(ws::Frame::Error { code, message, retry_after, .. })) => {
                let error = anyhow::anyhow!("publish refused by {}: {message} ({code})", endpoint.url());
                let retry = retry_after.is_some() || matches!(code.as_str(), "engine_unavailable" | "server_draining");
                return Err(if retry { Attempt::Retry { error, wait: retry_after } } else { Attempt::Fail(error) });
            }
            Some(Ok(ws::Frame::Closed { code, reason })) => {
                return Err(unknown(anyhow::anyhow!("the server closed the socket: {code} {reason}")));
            }
            Some(Ok(ws::Frame::Event { .. } | ws::Frame::Other)) => {}
        }
    }
}

/// A refused request as a try's outcome: worth a retry for 408, 429, 502, 503, 504.
fn refused(endpoint: &super::http::Endpoint, refusal: Refusal) -> Attempt {
    let retry = matches!(refusal.status.as_u16(), 408 | 429 | 502 | 503 | 504);
    let wait = refusal.retry_after;
    let error = anyhow::anyhow!("publish refused by {}: {refusal}", endpoint.url());
    if retry { Attempt::Retry { error, wait } } else { Attempt::Fail(error) }
}

/// Whether a request that failed may pass on a retry: the network (refused, reset), not a
/// certificate that will be refused again.
fn transient(e: &anyhow::Error) -> bool {
    let certificate = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).is_some_and(|inner| inner.is::<rustls::Error>())
    });
    !certificate && e.chain().any(|c| c.is::<std::io::Error>() || c.is::<hyper::Error>())
}

/// The wait before retry `attempt` (from 1): full jitter below 250 ms × 2^(attempt-1), at most 4 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 250u64.saturating_mul(1 << attempt.saturating_sub(1).min(4));
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

/// The request body: the `--batch` array as it is, or one event built from the flags.
fn body(args: &PublishArgs) -> anyhow::Result<Value> {
    if let Some(source) = &args.batch {
        let text = read_source(source)?;
        let batch: Value = serde_json::from_str(&text).context("--batch is not valid JSON")?;
        if !batch.is_array() {
            bail!("--batch must be a JSON array of events");
        }
        return Ok(batch);
    }
    let mut event = match &args.data {
        None => Map::new(),
        Some(source) => {
            let text = if source == "-" || source.starts_with('@') { read_source(source)? } else { source.clone() };
            match serde_json::from_str(&text).context("--data is not valid JSON")? {
                Value::Object(fields) => fields,
                _ => bail!("--data must be a JSON object, like '{{\"content\":\"hi\"}}'"),
            }
        }
    };
    let event_type = args.event_type.clone().unwrap_or_default();
    event.insert("type".to_owned(), event_type.into());
    match args.channels.as_slice() {
        [one] => event.insert("channel".to_owned(), one.clone().into()),
        many => event.insert("channels".to_owned(), many.to_vec().into()),
    };
    Ok(Value::Object(event))
}

/// `-` is stdin, `@path` (or, for `--batch`, any other value) a file.
fn read_source(source: &str) -> anyhow::Result<String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        return Ok(text);
    }
    let path = Path::new(source.strip_prefix('@').unwrap_or(source));
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `{"id": ..}` or `{"ids": [..]}`.
fn ids(answer: &Value) -> Option<Vec<String>> {
    if let Some(id) = answer["id"].as_str() {
        return Some(vec![id.to_owned()]);
    }
    answer["ids"].as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}
