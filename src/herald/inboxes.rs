//! Inboxes of sessions whose client writes by separate HTTP requests: Centrifugo's
//! bidirectional emulation, where the replies go down one HTTP stream and each batch of
//! commands comes up in a `POST` of its own, perhaps to another node. A session takes an
//! inbox under an unguessable key; [`Herald::deliver`] puts a request's commands into it,
//! on this node or, through the engine, on the node the client names.
//!
//! An inbox holds a few requests at most ([`INBOX_REQUESTS`]): a client that sends faster
//! than its session reads is refused, not queued without bound. The key is the only proof
//! that a request comes from the session's client, so it is 256 bits of the system's secure
//! random source, never a counter or a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::Herald;
use crate::engine::{EngineError, NodeCommand, NodeReply};

/// Requests an inbox holds before its session reads them; past it a request is refused.
pub const INBOX_REQUESTS: usize = 16;

/// Requests this node passes to other nodes at once; past it one is refused. Anyone may
/// post to the emulation endpoint, and a request for another node costs every node a
/// look: this bounds what a flood of made-up requests can make the cluster do.
const FORWARDS_IN_FLIGHT: usize = 256;

/// The length of a key: 32 bytes in unpadded URL-safe base64. A request that names a key of
/// another shape is no session's, and is not passed on.
const KEY_LEN: usize = 43;

/// The node's inboxes, by key.
pub(super) struct Inboxes {
    open: Mutex<HashMap<Arc<str>, mpsc::Sender<String>>>,
    forwards: tokio::sync::Semaphore,
}

impl Default for Inboxes {
    fn default() -> Self {
        Self { open: Mutex::default(), forwards: tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT) }
    }
}

/// A session's inbox: what the client's requests carried, in the order they came. Dropped,
/// it is closed and its key forgotten.
pub struct Inbox {
    key: Arc<str>,
    rx: mpsc::Receiver<String>,
    herald: Herald,
}

impl Inbox {
    /// The key the client names its requests by.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// The next request's text; never ends while the inbox is open.
    pub async fn recv(&mut self) -> Option<String> {
        self.rx.recv().await
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.herald.inner.inboxes.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// Whether `key` has the shape of a key [`Herald::open_inbox`] makes.
fn is_key(key: &str) -> bool {
    key.len() == KEY_LEN && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What became of a request for an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the inbox.
    Delivered,
    /// The inbox holds [`INBOX_REQUESTS`] unread already, or this node passes as many
    /// requests to other nodes as it may.
    Full,
    /// No node has an inbox of that key (its session ended, or the node is gone).
    Unknown,
}

impl Herald {
    /// A new inbox for a session of this node.
    pub fn open_inbox(&self) -> Result<Inbox, ring::error::Unspecified> {
        let key: Arc<str> = Arc::from(crate::auth::new_ticket()?);
        let (tx, rx) = mpsc::channel(INBOX_REQUESTS);
        self.inner.inboxes.open.lock().unwrap_or_else(PoisonError::into_inner).insert(Arc::clone(&key), tx);
        Ok(Inbox { key, rx, herald: self.clone() })
    }

    /// Puts `data` into the inbox `key` of node `node`: here, or through the engine on the
    /// node of that id.
    pub async fn deliver(&self, node: &str, key: &str, data: String) -> Result<Delivery, EngineError> {
        if node == self.node_id() {
            return Ok(self.deliver_here(key, data));
        }
        if !is_key(key) {
            return Ok(Delivery::Unknown);
        }
        let Ok(_slot) = self.inner.inboxes.forwards.try_acquire() else { return Ok(Delivery::Full) };
        let command = NodeCommand::Deliver { node: node.to_owned(), key: key.to_owned(), data };
        let replies = self.engine().command(command).await?;
        let delivery = replies.iter().find_map(|r| match r {
            NodeReply::Done => Some(Delivery::Delivered),
            NodeReply::Full => Some(Delivery::Full),
            _ => None,
        });
        Ok(delivery.unwrap_or(Delivery::Unknown))
    }

    /// [`Herald::deliver`] on this node.
    fn deliver_here(&self, key: &str, data: String) -> Delivery {
        let tx = self.inner.inboxes.open.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        match tx.map(|tx| tx.try_send(data)) {
            Some(Ok(())) => Delivery::Delivered,
            Some(Err(mpsc::error::TrySendError::Full(_))) => Delivery::Full,
            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => Delivery::Unknown,
        }
    }

    /// A [`NodeCommand::Deliver`] from any node: run where `node` is this node's id.
    pub(super) fn local_deliver(&self, node: &str, key: &str, data: String) -> NodeReply {
        if node != self.node_id() {
            return NodeReply::NotHere;
        }
        match self.deliver_here(key, data) {
            Delivery::Delivered => NodeReply::Done,
            Delivery::Full => NodeReply::Full,
            Delivery::Unknown => NodeReply::NotHere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inbox_takes_requests_in_order_refuses_past_its_bound_and_is_forgotten_when_dropped() {
        let herald = Herald::new(crate::config::Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let node = herald.node_id().to_owned();
        let mut inbox = herald.open_inbox().unwrap_or_else(|_| panic!("no random source"));
        let key = inbox.key().to_string();
        assert!(is_key(&key), "a key of 32 random bytes: {key}");
        assert!(!is_key("made-up") && !is_key(&format!("{}=", &key[1..])));
        for n in 0..INBOX_REQUESTS {
            assert_eq!(herald.deliver(&node, &key, n.to_string()).await.ok(), Some(Delivery::Delivered));
        }
        assert_eq!(herald.deliver(&node, &key, "one too many".into()).await.ok(), Some(Delivery::Full));
        assert_eq!(inbox.recv().await.as_deref(), Some("0"));
        assert_eq!(inbox.recv().await.as_deref(), Some("1"));
        assert_eq!(herald.deliver(&node, "another key", "x".into()).await.ok(), Some(Delivery::Unknown));
        assert_eq!(herald.deliver("another node", &key, "x".into()).await.ok(), Some(Delivery::Unknown));
        drop(inbox);
        assert_eq!(herald.deliver(&node, &key, "late".into()).await.ok(), Some(Delivery::Unknown));
        assert!(herald.inner.inboxes.open.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
    }
}
