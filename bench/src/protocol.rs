//! What the coordinator and its worker processes say to each other: one JSON object per
//! line, coordinator → worker on the worker's stdin, worker → coordinator on its stdout.

use serde::{Deserialize, Serialize};

use crate::hist::Hist;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Proto {
    /// HTTP/1.1: one TCP connection per subscriber.
    H1,
    /// HTTP/2 with prior knowledge (h2c): many subscribers per TCP connection.
    H2,
    /// WebSocket over HTTP/1.1: one connection per subscriber, subscribed by the URL
    /// (Herald's `/api/ws?channel=..`, Nchan's `nchan_subscriber websocket`); each text
    /// or binary message is an event (or several, one a line).
    Ws,
    /// Centrifugo's client protocol (JSON) over WebSocket: `connect`, then `subscribe` to
    /// `--centrifugo-channel`, and the server's `{}` pings answered with `{}`.
    Centrifugo,
    /// The same in Centrifugo's Protobuf protocol (subprotocol `centrifuge-protobuf`):
    /// length-delimited messages in binary frames, empty ones for pings and pongs.
    CentrifugoProtobuf,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
            Self::Ws => "ws",
            Self::Centrifugo => "centrifugo",
            Self::CentrifugoProtobuf => "centrifugo-protobuf",
        }
    }

    /// Whether subscribers speak Centrifugo's client protocol (either encoding).
    pub fn is_centrifugo(self) -> bool {
        matches!(self, Self::Centrifugo | Self::CentrifugoProtobuf)
    }
}

/// A worker's share of the subscribers and how to open them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// Subscribers `first..first + count` (global indexes).
    pub first: u64,
    pub count: u64,
    /// The subscribe URL template; `{i}` is the subscriber's channel.
    pub sub_url: String,
    /// Subscriber `i` follows channel `i % channels`.
    pub channels: u64,
    pub run: String,
    /// Extra request headers, `name: value`.
    pub headers: Vec<String>,
    pub proto: Proto,
    /// A stream is established once a frame containing this arrives (empty: any frame).
    pub ready: String,
    /// Connections come from 127.0.0.1 ..= 127.0.0.<source_ips>.
    pub source_ips: u32,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Limit for one subscriber to connect and get its ready frame.
    pub connect_timeout_ms: u64,
    /// HTTP/2: streams per TCP connection.
    pub h2_streams: u64,
    /// With one channel: events 1..=floor_events whose delivery to every subscriber is
    /// tracked, so the publisher can keep a window; 0 turns tracking off.
    pub floor_events: u64,
    /// Read buffer per HTTP/1.1 connection.
    pub read_buf: usize,
    /// Never sleep: poll the sockets in a loop.
    pub busy_poll: bool,
    /// Centrifugo: the channel template each subscriber subscribes to.
    #[serde(default)]
    pub centrifugo_channel: String,
    /// Centrifugo: the token of `connect`.
    #[serde(default)]
    pub centrifugo_token: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Start(WorkerPlan),
    /// Publishing is over: channel `c` ended at sequence `last_seq[c]`. Report when every
    /// subscriber has it all, or after `timeout_ms`.
    Finish {
        last_seq: Vec<u64>,
        timeout_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Every subscriber of the worker is established or has failed.
    Connected {
        established: u64,
        failed: u64,
        errors: Vec<String>,
    },
    /// Deliveries so far, and (one channel) the highest sequence every subscriber has.
    Progress {
        delivered: u64,
        floor: u64,
    },
    Report(WorkerReport),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub subscribers: u64,
    pub established: u64,
    pub failed: u64,
    /// Events received with a sequence number (duplicates included).
    pub delivered: u64,
    /// Events the established subscribers should have received.
    pub expected: u64,
    /// Expected events never received.
    pub lost: u64,
    /// Events received again, or late after a later one.
    pub duplicates: u64,
    /// Times a subscriber saw a sequence number jump forward.
    pub gaps: u64,
    /// Established streams that ended before the run did.
    pub closed_early: u64,
    /// Subscribers that received every expected event.
    pub complete: u64,
    /// Wall-clock time of the first and last delivery, µs since the Unix epoch.
    pub first_delivery_us: u64,
    pub last_delivery_us: u64,
    pub latency: Hist,
    pub errors: Vec<String>,
}
