//! `herald-bench`: a load generator for Server-Sent Events and WebSocket servers, so that Herald and its
//! peers (Nchan, ...) are measured by the same tool on the same machine.
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line: scenarios and their options |
//! | [`coordinator`] | a run: worker processes, publishing, CPU and memory readings, the outcome |
//! | [`worker`] | a worker process: its subscribers' connections and what they received |
//! | [`protocol`] | the lines coordinator and workers exchange |
//! | [`sse`] | reading streams cheaply: chunked decoding, frames, `seq` and `ts` |
//! | [`ws`] | WebSocket subscribers: the upgrade, the server's frames, masked client frames |
//! | [`nodes`] | the `nodes` scenario: subscribers and publishes spread over several nodes, each server read apart |
//! | [`net`] | sockets from several source addresses, the HTTP/1.1 publisher |
//! | [`target`] | loopback URLs |
//! | [`template`] | `{i}`, `{seq}`, `{ts}`, `{run}` in URLs and bodies |
//! | [`hist`] | latency histograms |
//! | [`procfs`] | CPU time and memory of processes from `/proc` |
//! | [`report`] | the outcome, printed, as JSON, and as a markdown table of many runs |
#![forbid(unsafe_code)]

pub mod cli;
pub mod coordinator;
pub mod hist;
pub mod net;
pub mod nodes;
pub mod procfs;
pub mod protocol;
pub mod report;
pub mod sse;
pub mod target;
pub mod template;
pub mod worker;
pub mod ws;
