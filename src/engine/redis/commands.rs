//! Commands between nodes over Redis pub/sub: a live join on node A asked of node B.
//!
//! Every node subscribes to one shared command channel and to a reply channel of its own.
//! A command goes to all nodes; `PUBLISH` answers how many received it, so the sender
//! knows how many replies to wait for (bounded by a deadline). Each node runs the command
//! on its node ([`crate::engine::NodeSink::run_command`]) and publishes its reply to the
//! sender. A command only one node can carry out (for one connection, or one node's inbox)
//! is settled by that node's answer, without waiting for the others' `NotHere`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{RedisEngine, unavailable};
use crate::engine::{EngineError, NodeCommand, NodeReply};

/// Longest wait for every node's reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(3);

/// A command on the wire.
#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    rid: String,
    from: String,
    cmd: NodeCommand,
}

/// A reply on the wire.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reply {
    rid: String,
    reply: NodeReply,
}

/// Commands this node sent and is gathering replies for.
#[derive(Default)]
pub(super) struct Pending {
    waiting: Mutex<HashMap<String, Gathering>>,
}

struct Gathering {
    replies: Vec<NodeReply>,
    /// How many nodes received the command (unknown until `PUBLISH` answers).
    expected: Option<usize>,
    /// Only one node can carry the command out ([`NodeCommand::answered_by_one`]): its
    /// answer settles it.
    by_one: bool,
    done: Option<oneshot::Sender<Vec<NodeReply>>>,
}

impl Gathering {
    fn settle(&mut self) {
        let all = self.expected.is_some_and(|n| self.replies.len() >= n);
        let the_one = self.by_one && self.replies.iter().any(|r| !matches!(r, NodeReply::NotHere));
        if (all || the_one)
            && let Some(done) = self.done.take()
        {
            let _ = done.send(std::mem::take(&mut self.replies));
        }
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gathering>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedisEngine {
    /// The pub/sub channel every node takes commands on.
    pub(super) fn commands_channel(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    /// The pub/sub channel a node takes replies on.
    pub(super) fn replies_channel(&self, node: &str) -> String {
        format!("{}:{{node:{node}}}", self.prefix)
    }

    fn publish_cmd(&self) -> &'static str {
        if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" }
    }

    pub(super) async fn send_command(&self, cmd: NodeCommand) -> Result<Vec<NodeReply>, EngineError> {
        let rid = crate::ids::new_id();
        let (tx, rx) = oneshot::channel();
        let by_one = cmd.answered_by_one();
        self.pending
            .lock()
            .insert(rid.clone(), Gathering { replies: Vec::new(), expected: None, by_one, done: Some(tx) });
        let request = Request { rid: rid.clone(), from: self.node_id.clone(), cmd };
        let payload = serde_json::to_string(&request).map_err(|e| EngineError::Internal(e.to_string()))?;
        let sent: Result<usize, _> = redis::cmd(self.publish_cmd())
            .arg(self.commands_channel())
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await;
        let receivers = match sent {
            Ok(n) => n,
            Err(e) => {
                self.pending.lock().remove(&rid);
                return Err(unavailable(e));
            }
        };
        if let Some(g) = self.pending.lock().get_mut(&rid) {
            g.expected = Some(receivers);
            g.settle();
        }
        let replies = match tokio::time::timeout(REPLY_DEADLINE, rx).await {
            Ok(Ok(replies)) => replies,
            // Some node did not answer in time: go with the replies there are.
            _ => self.pending.lock().remove(&rid).map(|g| g.replies).unwrap_or_default(),
        };
        self.pending.lock().remove(&rid);
        Ok(replies)
    }

    /// A message on this node's reply channel.
    pub(super) fn on_reply(&self, payload: &[u8]) {
        let Ok(reply) = serde_json::from_slice::<Reply>(payload) else {
            return tracing::warn!("ignoring a malformed node reply");
        };
        if let Some(g) = self.pending.lock().get_mut(&reply.rid) {
            g.replies.push(reply.reply);
            g.settle();
        }
    }

    /// A message on the command channel: run it, then answer its sender.
    pub(super) fn on_command(self: &Arc<Self>, payload: &[u8]) {
        let Ok(request) = serde_json::from_slice::<Request>(payload) else {
            return tracing::warn!("ignoring a malformed node command");
        };
        let Some(sink) = self.sink.get() else { return };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let reply = sink.run_command(request.cmd).await;
            let payload = match serde_json::to_string(&Reply { rid: request.rid, reply }) {
                Ok(p) => p,
                Err(e) => return tracing::warn!(error = %e, "cannot encode a node reply"),
            };
            let sent: Result<usize, _> = redis::cmd(this.publish_cmd())
                .arg(this.replies_channel(&request.from))
                .arg(payload)
                .query_async(&mut this.conn.clone())
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not answer a node command");
            }
        });
    }
}
