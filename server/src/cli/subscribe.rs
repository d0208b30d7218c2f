//! `herald subscribe`: follows channels over `GET /api/events` (or, with `--ws`, over the
//! WebSocket `GET /api/ws`) and prints each event, one readable line each (or its raw JSON
//! with `--json`), for as long as it runs. Both transports print the same.
//!
//! A dropped stream is reopened with `Last-Event-ID` (`lastEventId` for a socket), so the server replays what was missed
//! (or says `reset` when it cannot). The wait before reopening starts at the server's
//! `retry:` hint and doubles after each failed attempt up to 30 s, plus up to half again at
//! random so that many clients do not return at once. A stream that brings nothing, not
//! even a heartbeat, for `--idle-timeout` is taken for dead. A 4xx answer is final.
//!
//! Events go to stdout; what happens to the connection (connected, reconnecting, reset)
//! goes to stderr.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::Remote;
use super::http::{Endpoint, Refusal};
use super::sse::{Item, Parser};
use super::ws;

/// The longest wait between attempts (unless the server's own hint is longer).
const MAX_DELAY: Duration = Duration::from_secs(30);
/// The wait before the first reconnect if the server never sent `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Fields every event has; the pretty output shows them in front, not in the payload.
const ENVELOPE: [&str; 6] = ["id", "channel", "type", "timestamp", "userId", "userName"];

#[derive(Args)]
pub struct SubscribeArgs {
    /// Channel to follow; repeat it for several.
    #[arg(long = "channel", value_name = "CHANNEL", required = true)]
    channels: Vec<String>,
    /// Only events whose top-level FIELD equals VALUE; repeat it, and all must match.
    #[arg(long = "filter", value_name = "FIELD:VALUE")]
    filters: Vec<String>,
    /// Ask for named events (`event: <type>` lines), as `addEventListener` clients get.
    #[arg(long)]
    named: bool,
    /// Print each event's JSON on one line as it arrives (`connected` and `reset` included),
    /// for scripts.
    #[arg(long)]
    json: bool,
    /// Start after this SSE id, as a reconnect would (to continue an earlier run).
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Follow the channels over the WebSocket endpoint (`/api/ws`, which the server must
    /// have on) instead of an SSE stream.
    #[arg(long)]
    ws: bool,
    /// Reconnect when nothing, not even a heartbeat, arrives for this long.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    #[command(flatten)]
    remote: Remote,
}

pub fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let endpoint = args.remote.endpoint()?;
    let mut session = Session {
        channels: args.channels.clone(),
        last_id: args.last_event_id.clone().filter(|id| !id.is_empty()),
        retry: DEFAULT_RETRY,
        failures: 0,
        connections: 0,
        endpoint,
        args,
    };
    super::runtime()?.block_on(async {
        let stop = crate::shutdown_signal()?;
        tokio::select! {
            r = session.follow() => match r {
                Err(e) if e.is::<StdoutClosed>() => Ok(()),
                other => other,
            },
            () = stop => Ok(()),
        }
    })
}

/// The reader of our stdout went away (`herald subscribe .. | head -3`): time to stop.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
struct StdoutClosed;

struct Session {
    endpoint: Endpoint,
    args: SubscribeArgs,
    /// The channels to ask for on the next connection (live joins and leaves change them).
    channels: Vec<String>,
    /// The last SSE id seen: where the next connection resumes.
    last_id: Option<String>,
    /// The server's latest `retry:` hint.
    retry: Duration,
    /// Attempts in a row that did not reach `connected`.
    failures: u32,
    connections: u64,
}

/// Why a connection is over, when it is worth another try.
struct Interrupted {
    reason: String,
    /// The server's `Retry-After`, if it asked for a longer wait.
    at_least: Option<Duration>,
}

impl Session {
    async fn follow(&mut self) -> anyhow::Result<()> {
        loop {
            let Interrupted { reason, at_least } = self.connect().await?;
            let delay = self.delay().max(at_least.unwrap_or_default());
            status(&format!("{reason}; reconnecting in {}", seconds(delay)));
            self.failures = self.failures.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// The wait before the next attempt: the hint, doubled per failure, capped, jittered.
    fn delay(&self) -> Duration {
        let cap = MAX_DELAY.max(self.retry);
        let base = self.retry.saturating_mul(1u32 << self.failures.min(16)).min(cap);
        base + base.mul_f64(fastrand::f64() / 2.0)
    }

    fn query(&self) -> String {
        self.query_with(None)
    }

    /// The query, with `lastEventId` when given (a socket cannot send `Last-Event-ID`).
    fn query_with(&self, last_id: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(id) = last_id {
            q.append_pair("lastEventId", id);
        }
        for c in &self.channels {
            q.append_pair("channel", c);
        }
        for f in &self.args.filters {
            q.append_pair("filter", f);
        }
        if self.args.named {
            q.append_pair("events", "named");
        }
        q.finish()
    }

    /// One connection, from the request to the end of its stream. `Err` is final.
    async fn connect(&mut self) -> anyhow::Result<Interrupted> {
        if self.args.ws {
            return self.connect_ws().await;
        }
        let path = format!("/api/events?{}", self.query());
        let mut req =
            self.args.remote.authorize(self.endpoint.request("GET", &path)).header("accept", "text/event-stream");
        if let Some(id) = &self.last_id {
            req = req.header("last-event-id", id);
        }
        let resp = match self.endpoint.send(req.body(Full::default())?).await {
            Ok(resp) => resp,
            Err(e) => return Ok(Interrupted { reason: format!("{e:#}"), at_least: None }),
        };
        if !resp.status().is_success() {
            return self.refused(Refusal::read(resp).await);
        }
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            bail!(
                "{} did not answer with an event stream (Content-Type `{content_type}`): is it Herald?",
                self.endpoint.url()
            );
        }
        let mut body = resp.into_body();
        let mut parser = Parser::default();
        loop {
            let frame = match tokio::time::timeout(self.args.idle_timeout, body.frame()).await {
                Err(_) => {
                    let reason = format!("nothing received for {}", seconds(self.args.idle_timeout));
                    return Ok(Interrupted { reason, at_least: None });
                }
                Ok(None) => {
                    return Ok(Interrupted { reason: "the server ended the stream".to_owned(), at_least: None });
                }
                Ok(Some(Err(e))) => {
                    return Ok(Interrupted { reason: format!("the stream broke: {e}"), at_least: None });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(chunk) = frame.into_data() else { continue };
            for item in parser.feed(&chunk) {
                match item {
                    Item::Retry(hint) => self.retry = hint,
                    Item::Comment => {}
                    Item::Event { id, data, .. } => {
                        if !id.is_empty() {
                            self.last_id = Some(id);
                        }
                        self.event(&data)?;
                    }
                }
            }
        }
    }

    /// A refused request: final for a 4xx, another try later otherwise.
    fn refused(&self, refusal: Refusal) -> anyhow::Result<Interrupted> {
        if refusal.status.is_client_error() {
            bail!("subscription refused by {}: {refusal}", self.endpoint.url());
        }
        let at_least = refusal.retry_after;
        Ok(Interrupted { reason: format!("{} answered: {refusal}", self.endpoint.url()), at_least })
    }

    /// One socket, from the upgrade to its close. `Err` is final: a refusal, or a close
    /// that says the client is at fault.
    async fn connect_ws(&mut self) -> anyhow::Result<Interrupted> {
        let query = self.query_with(self.last_id.as_deref());
        let mut socket = match ws::open(&self.args.remote, &self.endpoint, &query).await {
            Ok(socket) => socket,
            Err(ws::OpenError::Network(e)) => return Ok(Interrupted { reason: format!("{e:#}"), at_least: None }),
            Err(ws::OpenError::Refused(refusal)) => return self.refused(refusal),
        };
        loop {
            let frame = match tokio::time::timeout(self.args.idle_timeout, ws::next(&mut socket)).await {
                Err(_) => {
                    let reason = format!("nothing received for {}", seconds(self.args.idle_timeout));
                    return Ok(Interrupted { reason, at_least: None });
                }
                Ok(None) => {
                    return Ok(Interrupted { reason: "the server ended the socket".to_owned(), at_least: None });
                }
                Ok(Some(Err(e))) => {
                    return Ok(Interrupted { reason: format!("the socket broke: {e:#}"), at_least: None });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                ws::Frame::Event { id, data } => {
                    if !id.is_empty() {
                        self.last_id = Some(id);
                    }
                    self.event(&data)?;
                }
                ws::Frame::Closed { code, reason } => {
                    let why = reason["code"].as_str().unwrap_or_default().to_owned();
                    // Protocol, data and policy closes (1002, 1003, 1007, 1008, 1009) will
                    // come again: the others (normal, going away, drain, try again) end a
                    // socket the way a stream ends.
                    if matches!(code, 1002 | 1003 | 1007 | 1008 | 1009) {
                        bail!("{} closed the socket: {code} {why}", self.endpoint.url());
                    }
                    let at_least = reason["retryMs"].as_u64().map(Duration::from_millis);
                    return Ok(Interrupted {
                        reason: format!("the server closed the socket ({code} {why})"),
                        at_least,
                    });
                }
                ws::Frame::Error { code, message, .. } => status(&format!("the server says: {message} ({code})")),
                ws::Frame::Reply { .. } | ws::Frame::Other => {}
            }
        }
    }

    fn event(&mut self, data: &str) -> anyhow::Result<()> {
        let value: Option<Value> = serde_json::from_str(data).ok();
        let field = |name: &str| value.as_ref().and_then(|v| v[name].as_str()).unwrap_or_default().to_owned();
        let control = match field("type").as_str() {
            "connected" => {
                self.failures = 0;
                self.connections += 1;
                let shown = value.as_ref().map(|v| &v["channels"]).and_then(Value::as_array).map_or_else(
                    || self.channels.join(", "),
                    |cs| cs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                );
                let word = if self.connections == 1 { "connected to" } else { "reconnected to" };
                status(&format!("{word} {}: {shown} (connection {})", self.endpoint.url(), field("connectionId")));
                true
            }
            "reset" => {
                status(&format!(
                    "reset on {} ({}): events since the last one shown were lost; refetch this channel's state",
                    field("channel"),
                    field("reason").replace('_', " ")
                ));
                true
            }
            "subscribed" => {
                let channel = field("channel");
                status(&format!("joined {channel}"));
                if !self.channels.contains(&channel) {
                    self.channels.push(channel);
                }
                true
            }
            "unsubscribed" => {
                let channel = field("channel");
                status(&format!("left {channel}"));
                self.channels.retain(|c| *c != channel);
                true
            }
            _ => false,
        };
        let line = match (&value, self.args.json) {
            // Re-serialized only if the data spans several lines, to keep one event a line.
            (Some(v), true) if data.contains('\n') => v.to_string(),
            (_, true) => data.to_owned(),
            (_, false) if control => return Ok(()),
            (Some(v), false) => pretty(v),
            (None, false) => data.replace('\n', " "),
        };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            other => other.context("cannot write to stdout"),
        }
    }
}

/// `12:21:46.964  channel:general  chat  Ann (42)  {"content":"hi"}`: the time (UTC),
/// channel, type, publisher if a user, then the payload.
fn pretty(v: &Value) -> String {
    let text = |name: &str| v[name].as_str().unwrap_or_default();
    let time = text("timestamp").split_once('T').map_or(text("timestamp"), |(_, t)| t).trim_end_matches('Z');
    let mut line = format!("{time}  {}  {}", text("channel"), text("type"));
    match (v["userName"].as_str(), v["userId"].as_str()) {
        (Some(name), Some(id)) => line.push_str(&format!("  {name} ({id})")),
        (None, Some(id)) => line.push_str(&format!("  {id}")),
        _ => {}
    }
    if let Some(fields) = v.as_object() {
        let payload: serde_json::Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| !ENVELOPE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !payload.is_empty() {
            line.push_str(&format!("  {}", Value::Object(payload)));
        }
    }
    line
}

/// A line about the connection, on stderr.
fn status(message: &str) {
    eprintln!("herald: {message}");
}

/// `1.5s`, `250ms`.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pretty_line_shows_time_channel_type_publisher_and_payload_only() {
        let v = json!({"id":"01X","channel":"channel:general","type":"chat","timestamp":"2026-11-22T12:21:46.964Z",
                       "userId":"42","userName":"Ann","content":"hi"});
        assert_eq!(pretty(&v), r#"12:21:46.964  channel:general  chat  Ann (42)  {"content":"hi"}"#);
        let v = json!({"id":"01X","channel":"system","type":"ping","timestamp":"2026-11-22T12:21:46.964Z"});
        assert_eq!(pretty(&v), "12:21:46.964  system  ping");
    }
}
