//! `herald publish`: one event (to one or several channels) or a batch, through
//! `POST /api/publish`; prints the id of each published event, one a line.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};

use super::Remote;
use super::http::Refusal;

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
    #[command(flatten)]
    remote: Remote,
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let body = body(&args)?;
    let endpoint = args.remote.endpoint()?;
    let req = args
        .remote
        .authorize(endpoint.request("POST", "/api/publish"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let ids = super::runtime()?.block_on(async {
        tokio::time::timeout(TIMEOUT, async {
            let resp = endpoint.send(req).await?;
            if !resp.status().is_success() {
                let refusal = Refusal::read(resp).await;
                bail!("publish refused by {}: {refusal}", endpoint.url());
            }
            let bytes = Limited::new(resp.into_body(), 1024 * 1024)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            let answer: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
            ids(&answer).with_context(|| format!("unexpected answer: {answer}"))
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
