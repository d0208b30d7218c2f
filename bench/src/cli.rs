//! The command line: one subcommand per scenario, all sharing [`RunArgs`]; `table` turns
//! saved `--json` results into a markdown table; `worker` is started by the bench itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::protocol::Proto;

#[derive(Parser, Debug)]
#[command(
    name = "herald-bench",
    version,
    args_override_self = true,
    about = "Load generator for SSE and WebSocket servers (Herald, Nchan, ...): memory per idle \
             connection, fan-out throughput, latency, private channels, clusters. Loopback only."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// N connections held open: server memory per connection (then one event checks them all).
    Idle(RunArgs),
    /// S subscribers on one channel, M events as fast as delivered: deliveries per second.
    Fanout(RunArgs),
    /// S subscribers on one channel, events at a fixed --rate: publish-to-receipt latency.
    Latency(RunArgs),
    /// N subscribers each on its own channel ({i}), M events to random ones, one request each.
    Private(RunArgs),
    /// Like fanout, with --pub-url on one node and --sub-url on another.
    Cluster(RunArgs),
    /// Several nodes of one cluster: worker process w subscribes on node w % nodes
    /// (--sub-url, then each --node-sub-url), subscriber i follows channel i % --channels,
    /// M events to random channels, channel c published on node c % nodes; memory and CPU
    /// of each --server-pid apart.
    Nodes(RunArgs),
    /// A markdown table (median and min–max per case and server) from `--json` result files.
    Table(TableArgs),
    /// Internal: a worker process, driven over stdin/stdout by the coordinator.
    #[command(hide = true)]
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Idle,
    Fanout,
    Latency,
    Private,
    Cluster,
    Nodes,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Fanout => "fanout",
            Self::Latency => "latency",
            Self::Private => "private",
            Self::Cluster => "cluster",
            Self::Nodes => "nodes",
        }
    }

    pub fn default_events(self) -> u64 {
        match self {
            Self::Idle => 1,
            Self::Fanout | Self::Cluster => 1000,
            Self::Latency => 500,
            Self::Private => 10_000,
            Self::Nodes => 1000,
        }
    }
}

/// Most subscribers in one run.
pub const MAX_SUBSCRIBERS: u64 = 100_000;
/// Most events in one run.
pub const MAX_EVENTS: u64 = 10_000_000;

/// The default body: the bench reads `seq` and `ts` back from every delivered event.
pub const DEFAULT_BODY: &str = r#"{"type":"bench","seq":{seq},"ts":{ts}}"#;

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Subscribe URL template; `{i}` is the channel index, `{run}` this run's id.
    /// Example: `http://127.0.0.1:8080/api/events?channel=channel:b{run}`.
    #[arg(long)]
    pub sub_url: String,
    /// Publish URL template (`{i}`: the event's channel).
    #[arg(long)]
    pub pub_url: String,
    #[arg(long, default_value = "POST")]
    pub pub_method: String,
    /// Publish body template: must carry `{seq}` (and `{ts}` for latency) into the event the
    /// server delivers, as `"seq":N` and `"ts":N`.
    #[arg(long, default_value = DEFAULT_BODY)]
    pub pub_body: String,
    /// Header for subscribe requests, `name: value` (repeatable).
    #[arg(long = "sub-header")]
    pub sub_headers: Vec<String>,
    /// Header for publish requests, `name: value` (repeatable).
    #[arg(long = "pub-header")]
    pub pub_headers: Vec<String>,
    /// Subscribers (connections with h1, streams with h2).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: u64,
    /// Events to publish [default: idle 1, fanout/cluster 1000, latency 500, private 10000].
    #[arg(long, short = 'm')]
    pub events: Option<u64>,
    /// latency: events per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// fanout, cluster: publish at this many events a second, on schedule, with up to
    /// `--pipeline` requests in flight (an open loop: the offered load is the same whatever
    /// the server's answers cost it), instead of as fast as the server answers.
    #[arg(long)]
    pub pace: Option<f64>,
    /// Most events published but not yet received by every subscriber (0: no limit).
    /// With one channel it is exact; with several, it bounds deliveries in flight.
    #[arg(long, default_value_t = 100)]
    pub window: u64,
    /// fanout, cluster, idle: publish requests in flight on the one publishing connection
    /// (HTTP/1.1 pipelining keeps the server busy between responses; order holds).
    #[arg(long, default_value_t = 16)]
    pub pipeline: u64,
    /// private: publishing connections (each channel always uses the same one, so order holds).
    #[arg(long, default_value_t = 4)]
    pub publishers: u64,
    /// private: events per publish request. Above 1 the body is a JSON array of that many
    /// `--pub-body` renders, each with its own `{i}` (Herald's batch publish); the body, not
    /// the URL, must then name the channel.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// idle: seconds to hold the connections before measuring memory.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    #[arg(long, value_enum, default_value = "h1")]
    pub proto: Proto,
    /// h2: streams per TCP connection (Nchan's nginx allows 128 by default).
    #[arg(long, default_value_t = 100)]
    pub h2_streams: u64,
    /// Subscribers per worker process (a process may hold 20,000 files here).
    #[arg(long, default_value_t = 10_000)]
    pub per_worker: u64,
    /// Connections come from 127.0.0.1 ..= 127.0.0.<source-ips>.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u32,
    /// Connections opened at once (per worker).
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// A server process to measure (CPU, memory); repeat for several (nginx master + worker).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// A stream counts as established once a frame containing this arrives (Herald:
    /// `"connected"`); empty: its first frame.
    #[arg(long, default_value = "")]
    pub ready: String,
    /// Run id for `{run}` [default: random].
    #[arg(long)]
    pub run: Option<String>,
    /// Name of the server in results, like `herald` or `nchan`.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Name of the case in results, like `fanout-1k`.
    #[arg(long, default_value = "")]
    pub case: String,
    /// Print the result as JSON on stdout (the human summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Seconds for all subscribers to be established.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Seconds after the last publish for every event to arrive.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Seconds the publisher may wait on the window without progress.
    #[arg(long, default_value_t = 10.0)]
    pub stall_timeout: f64,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = 900.0)]
    pub max_duration: f64,
    /// Read buffer per HTTP/1.1 subscriber, bytes.
    #[arg(long, default_value_t = 8192)]
    pub read_buf: usize,
    /// Worker processes never sleep: they poll their sockets in a loop. On loopback a write
    /// to a sleeping reader also pays for waking it on the other core; a remote client puts
    /// no such cost on the server. Their core then shows 100% busy.
    #[arg(long)]
    pub busy_poll: bool,
    /// `--proto centrifugo`: the channel each subscriber subscribes to (`{i}`, `{run}`),
    /// like `channel:b{run}`.
    #[arg(long, default_value = "")]
    pub centrifugo_channel: String,
    /// `--proto centrifugo`: the connection token sent in `connect` (empty: anonymous).
    #[arg(long, default_value = "")]
    pub centrifugo_token: String,
    /// nodes: the subscribe URL of a further node (repeat for each).
    #[arg(long = "node-sub-url")]
    pub node_sub_urls: Vec<String>,
    /// nodes: the publish URL of a further node, in the order of --node-sub-url.
    #[arg(long = "node-pub-url")]
    pub node_pub_urls: Vec<String>,
    /// nodes: channels the subscribers are spread over (subscriber i follows i % channels).
    #[arg(long, default_value_t = 60)]
    pub channels: u64,
}

#[derive(Args, Clone, Debug)]
pub struct TableArgs {
    /// Result files written by `--json`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}
