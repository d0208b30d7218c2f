//! What a connection's reader writes to: its transport's output ([`Emit`]), and the id an
//! event is shown with there ([`event_id`]). The reader (`reader.rs`) and what it replays
//! from history (`replay.rs`) both write through it.

use crate::channel::ChannelName;
use crate::cursor::Cursor;
use crate::event::Copy;

/// Where a connection's output goes: the transport reading it (`crate::transport`).
pub(crate) trait Emit {
    /// An event's copy on one channel. `id` is the id to show; `None` means the copy's own
    /// (single-channel) id, which is part of its shared frame ([`event_id`] says which).
    fn event(&mut self, event_type: &str, copy: &Copy, id: Option<&str>);
    /// An event made for this connection alone, with the id to show.
    fn notice(&mut self, event_type: &str, id: &str, json: &[u8]);
    /// About `n` items follow (a hint, so that a queue grows once per batch, not by halves).
    fn reserve(&mut self, _n: usize) {}
}

/// The id an event's copy is shown with on a connection that follows `channels` and is at
/// `cursor` once the event is counted: on one channel, the copy's own id (`None`), which
/// is that cursor already and is part of the frame shared by every subscriber, so nothing
/// is written per connection; on several channels, the cursor, which alone says where the
/// connection is in each of them. `buf` is the connection's buffer for it.
pub(crate) fn event_id<'a>(channels: &[ChannelName], cursor: &Cursor, buf: &'a mut String) -> Option<&'a str> {
    if channels.len() == 1 {
        return None;
    }
    buf.clear();
    cursor.encode_into(channels, buf);
    Some(buf)
}
