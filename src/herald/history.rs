//! Reading a channel's history on request (`GET /api/channels/{channel}/history`, and the
//! Centrifugo `history` command through the same method): checked like a subscription, a
//! bounded page, newest or oldest first.

use std::sync::Arc;

use super::Herald;
use crate::auth::Principal;
use crate::channel::ChannelName;
use crate::cursor::{Cursor, Position};
use crate::engine::{EngineError, GapReason, PageQuery};
use crate::event::Published;
use crate::policy::Denied;

/// Most events one history page holds.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Which end of the range a page starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistoryOrder {
    /// The newest events of the range, newest first (the default).
    #[default]
    NewestFirst,
    /// The oldest events of the range, oldest first.
    OldestFirst,
}

impl HistoryOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewestFirst => "newest",
            Self::OldestFirst => "oldest",
        }
    }
}

/// What a history request asks for: at most `limit` events strictly after `after` and
/// strictly before `before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub limit: usize,
    pub after: Option<Position>,
    pub before: Option<Position>,
    pub order: HistoryOrder,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self { limit: 100, after: None, before: None, order: HistoryOrder::default() }
    }
}

/// A page of a channel's history.
#[derive(Clone, Debug)]
pub struct History {
    pub channel: ChannelName,
    /// The channel's last position: a stream opened with its id (see
    /// [`History::id_of`]) continues right after the page's range, missing nothing.
    pub head: Position,
    /// The events, in the order asked for.
    pub events: Vec<Arc<Published>>,
    /// The range holds more events than the page.
    pub more: bool,
}

impl History {
    /// The SSE id of a position in this channel (`tag:pos`): what a stream resumes from and
    /// what `after`/`before` take.
    pub fn id_of(&self, position: Position) -> String {
        Cursor { positions: smallvec::smallvec![position] }.encode(std::slice::from_ref(&self.channel))
    }
}

/// A history request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("`limit` must be at most {MAX_HISTORY_LIMIT}")]
    Limit,
    #[error("history is not kept for patterns")]
    Pattern,
    /// `after` is older than what the channel still keeps: events after it were trimmed.
    #[error("history no longer reaches back to that position; read without `after` and refetch state")]
    Expired,
    /// `after` is not a position this channel ever had (ahead of its head).
    #[error("that position is ahead of the channel's last event")]
    UnknownPosition,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Herald {
    /// A page of `channel`'s history for `who`, who must be allowed to subscribe to it.
    pub async fn history(
        &self,
        who: &Principal,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, HistoryError> {
        if channel.is_pattern() {
            return Err(HistoryError::Pattern);
        }
        if query.limit > MAX_HISTORY_LIMIT {
            return Err(HistoryError::Limit);
        }
        self.policies().can_subscribe(who, channel)?;
        let page = PageQuery {
            after: query.after,
            before: query.before,
            limit: query.limit,
            newest_first: query.order == HistoryOrder::NewestFirst,
        };
        let page = self.engine().history_page(channel, page).await?;
        let events = page.events.map_err(|gap| match gap {
            GapReason::HistoryExpired => HistoryError::Expired,
            GapReason::UnknownPosition => HistoryError::UnknownPosition,
        })?;
        Ok(History { channel: channel.clone(), head: page.head, events, more: page.more })
    }
}
