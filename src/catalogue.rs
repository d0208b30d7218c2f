//! The event catalogue: a typed constructor for every event type listed in `docs/channels.md`.
//!
//! Each returns an [`Event`] with its type name and camelCase fields, ready for
//! [`crate::Herald::send_to_user`] and friends. Identity fields (`userId`, `userName`) are
//! never set here: the server writes them from the publisher's credential. Custom types
//! (`incident.created`, ...) stay possible with [`Event::new`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::event::Event;

/// The type names of the catalogue, as constants.
pub mod types {
    pub const CHAT: &str = "chat";
    pub const NOTIFICATION: &str = "notification";
    pub const BADGE_UPDATE: &str = "badge_update";
    pub const NEW_ITEM: &str = "new_item";
    pub const UPDATE: &str = "update";
    pub const ALERT: &str = "alert";
    pub const PRESENCE: &str = "presence";
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const SYSTEM: &str = "system";
    pub const ERROR: &str = "error";
    pub const GENERATION_STARTED: &str = "generation_started";
    pub const GENERATION_PROGRESS: &str = "generation_progress";
    pub const GENERATION_COMPLETE: &str = "generation_complete";
    pub const GENERATION_FAILED: &str = "generation_failed";
    pub const UPLOAD_STARTED: &str = "upload_started";
    pub const UPLOAD_PROGRESS: &str = "upload_progress";
    pub const UPLOAD_COMPLETE: &str = "upload_complete";
    pub const UPLOAD_FAILED: &str = "upload_failed";
    pub const AI_CHAT: &str = "ai_chat";
    pub const AI_CHAT_CHUNK: &str = "ai_chat_chunk";
    /// An incident platform's custom types, dot-named by domain.
    pub const INCIDENT_CREATED: &str = "incident.created";
    pub const INCIDENT_UPDATED: &str = "incident.updated";
    pub const TIMELINE_UPDATED: &str = "timeline.updated";
    pub const CONNECTOR_SYNC: &str = "connector.sync";
    pub const SLA_BREACH: &str = "sla.breach";
    pub const SYSTEM_NOTIFICATION: &str = "system.notification";
}

/// A user's presence: online, offline or away. On every wire (events, the presence API,
/// commands between nodes, Redis) it is its lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Offline,
    Away,
}

impl PresenceStatus {
    /// The statuses a user may set (`POST /api/presence`); `offline` is the server's to say.
    pub const USER_SETTABLE: [Self; 2] = [Self::Online, Self::Away];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Away => "away",
        }
    }

    /// The status a name stands for (`online`, `offline`, `away`).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Online, Self::Offline, Self::Away].into_iter().find(|s| s.as_str() == name)
    }
}

/// The result of a finished generation job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationResult {
    pub url: String,
    pub provider: String,
    pub latency_ms: u64,
}

/// The result of a finished upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadResult {
    pub id: String,
    pub original: String,
    pub optimized: String,
    pub thumbnail: String,
}

fn to_value(v: &impl Serialize) -> Value {
    // The catalogue's own structs serialize to JSON objects without fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Event {
    /// A chat message: `{"content"}`.
    pub fn chat(content: impl Into<String>) -> Self {
        Self::new(types::CHAT).with("content", content.into())
    }

    /// A notification: `{"kind","title","message"}`;
    /// the notification's own kind is `kind`, since `type` is the event's.
    pub fn notification(kind: impl Into<String>, title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(types::NOTIFICATION)
            .with("kind", kind.into())
            .with("title", title.into())
            .with("message", message.into())
    }

    /// A notification with extra data (`{"kind","title","message","data"}`).
    pub fn notification_with_data(
        kind: impl Into<String>,
        title: impl Into<String>,
        message: impl Into<String>,
        data: Value,
    ) -> Self {
        Self::notification(kind, title, message).with("data", data)
    }

    /// The unread count for a badge: `{"count"}`.
    pub fn badge_update(count: u64) -> Self {
        Self::new(types::BADGE_UPDATE).with("count", count)
    }

    /// A new item in a feed: `{"itemType","itemId","data"}`.
    pub fn new_item(item_type: impl Into<String>, id: impl Into<String>, data: Value) -> Self {
        Self::new(types::NEW_ITEM).with("itemType", item_type.into()).with("itemId", id.into()).with("data", data)
    }

    /// A general data update: the given fields, flat.
    pub fn update(fields: Map<String, Value>) -> Self {
        Self::from_fields(types::UPDATE, fields)
    }

    /// An important alert: `{"severity","message"}`.
    pub fn alert(severity: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(types::ALERT).with("severity", severity.into()).with("message", message.into())
    }

    /// A presence change. Identity fields are the server's: publish it with
    /// [`crate::Herald::publish_for`] and the user's [`crate::Publisher`] so it carries
    /// their `userId` and `userName`.
    pub fn presence(status: PresenceStatus) -> Self {
        Self::new(types::PRESENCE).with("status", to_value(&status))
    }

    /// A user joined a room: `{"room"}` (`userId` comes from the server).
    pub fn join(room: impl Into<String>) -> Self {
        Self::new(types::JOIN).with("room", room.into())
    }

    /// A user left a room.
    pub fn leave(room: impl Into<String>) -> Self {
        Self::new(types::LEAVE).with("room", room.into())
    }

    /// A system message: `{"kind","data"}`.
    pub fn system_message(kind: impl Into<String>, data: Value) -> Self {
        Self::new(types::SYSTEM).with("kind", kind.into()).with("data", data)
    }

    /// An error for the client: `{"code","message"}`.
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(types::ERROR).with("code", code.into()).with("message", message.into())
    }

    /// An async job started: `{"jobId"}`.
    pub fn generation_started(job_id: impl Into<String>) -> Self {
        Self::new(types::GENERATION_STARTED).with("jobId", job_id.into())
    }

    /// Job progress, 0 to 100: `{"jobId","progress","message"}`.
    pub fn generation_progress(job_id: impl Into<String>, progress: u8, message: impl Into<String>) -> Self {
        Self::new(types::GENERATION_PROGRESS)
            .with("jobId", job_id.into())
            .with("progress", progress.min(100))
            .with("message", message.into())
    }

    /// A job finished: `{"jobId","result"}`.
    pub fn generation_complete(job_id: impl Into<String>, result: &GenerationResult) -> Self {
        Self::new(types::GENERATION_COMPLETE).with("jobId", job_id.into()).with("result", to_value(result))
    }

    /// A job failed: `{"jobId","error"}`.
    pub fn generation_failed(job_id: impl Into<String>, error: impl Into<String>) -> Self {
        Self::new(types::GENERATION_FAILED).with("jobId", job_id.into()).with("error", error.into())
    }

    /// An upload started: `{"jobId"}`.
    pub fn upload_started(job_id: impl Into<String>) -> Self {
        Self::new(types::UPLOAD_STARTED).with("jobId", job_id.into())
    }

    /// Upload progress, 0 to 100.
    pub fn upload_progress(job_id: impl Into<String>, progress: u8, message: impl Into<String>) -> Self {
        Self::new(types::UPLOAD_PROGRESS)
            .with("jobId", job_id.into())
            .with("progress", progress.min(100))
            .with("message", message.into())
    }

    /// An upload finished: `{"jobId","result"}`.
    pub fn upload_complete(job_id: impl Into<String>, result: &UploadResult) -> Self {
        Self::new(types::UPLOAD_COMPLETE).with("jobId", job_id.into()).with("result", to_value(result))
    }

    /// An upload failed: `{"jobId","error"}`.
    pub fn upload_failed(job_id: impl Into<String>, error: impl Into<String>) -> Self {
        Self::new(types::UPLOAD_FAILED).with("jobId", job_id.into()).with("error", error.into())
    }

    /// A whole AI answer: `{"content","provider"}`.
    pub fn ai_chat(content: impl Into<String>, provider: impl Into<String>) -> Self {
        Self::new(types::AI_CHAT).with("content", content.into()).with("provider", provider.into())
    }

    /// One chunk of a streamed AI answer:
    /// `{"streamId","text","done"}`, and `provider` on the last chunk.
    pub fn ai_chat_chunk(
        stream_id: impl Into<String>,
        text: impl Into<String>,
        done: bool,
        provider: Option<&str>,
    ) -> Self {
        let e = Self::new(types::AI_CHAT_CHUNK)
            .with("streamId", stream_id.into())
            .with("text", text.into())
            .with("done", done);
        match provider {
            Some(p) => e.with("provider", p),
            None => e,
        }
    }

    /// An incident event (`incident.created`, ...): `{"incidentId","severity","data"}`.
    pub fn incident(
        event_type: &str,
        incident_id: impl Into<String>,
        severity: impl Into<String>,
        data: Value,
    ) -> Self {
        Self::new(event_type)
            .with("incidentId", incident_id.into())
            .with("severity", severity.into())
            .with("data", data)
    }
}

/// Every catalogue type with an example event, for docs and tests.
pub fn examples() -> Vec<Event> {
    let result =
        GenerationResult { url: "https://cdn.example/v/1.mp4".into(), provider: "runway".into(), latency_ms: 8120 };
    let upload = UploadResult {
        id: "up_1".into(),
        original: "https://cdn.example/o/1.jpg".into(),
        optimized: "https://cdn.example/p/1.webp".into(),
        thumbnail: "https://cdn.example/t/1.webp".into(),
    };
    vec![
        Event::chat("Hello world"),
        Event::notification_with_data(
            "review_reminder",
            "Time to review!",
            "Don't forget to review the dish you tried",
            json!({"dishId": "d_1"}),
        ),
        Event::badge_update(5),
        Event::new_item("dish", "d_42", json!({"name": "Margherita"})),
        Event::update(serde_json::from_value(json!({"action": "dish_posted", "dishId": "d_42"})).unwrap_or_default()),
        Event::alert("high", "Disk almost full"),
        Event::presence(PresenceStatus::Online),
        Event::join("general"),
        Event::leave("general"),
        Event::system_message("maintenance", json!({"message": "System maintenance in 10 minutes"})),
        Event::error("job_not_found", "No such job"),
        Event::generation_started("job_1"),
        Event::generation_progress("job_1", 50, "Processing..."),
        Event::generation_complete("job_1", &result),
        Event::generation_failed("job_1", "provider timed out"),
        Event::upload_started("up_1"),
        Event::upload_progress("up_1", 30, "Optimizing"),
        Event::upload_complete("up_1", &upload),
        Event::upload_failed("up_1", "unsupported format"),
        Event::ai_chat("The answer is 42.", "openai"),
        Event::ai_chat_chunk("s_1", "The answer", false, None),
        Event::ai_chat_chunk("s_1", " is 42.", true, Some("openai")),
        Event::incident(types::INCIDENT_CREATED, "INC-123", "SEV-1", json!({"title": "API down"})),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_event_has_a_valid_type_and_no_identity_fields() {
        let examples = examples();
        assert!(examples.len() >= 22);
        for e in &examples {
            assert_eq!(crate::event::validate_type(e.event_type()), Ok(()), "{}", e.event_type());
            assert!(!e.fields().contains_key("userId") && !e.fields().contains_key("type"), "{e:?}");
        }
    }

    #[test]
    fn job_and_ai_events_carry_the_documents_field_names() {
        let r = GenerationResult { url: "u".into(), provider: "p".into(), latency_ms: 7 };
        let done = Event::generation_complete("j", &r);
        assert_eq!(done.fields()["result"], json!({"url": "u", "provider": "p", "latencyMs": 7}));
        assert_eq!(Event::generation_progress("j", 250, "m").fields()["progress"], 100, "progress is capped at 100");
        let last = Event::ai_chat_chunk("s", "t", true, Some("anthropic"));
        assert_eq!((last.fields()["streamId"].as_str(), last.fields()["done"].as_bool()), (Some("s"), Some(true)));
        assert_eq!(last.fields()["provider"], "anthropic");
        assert!(Event::ai_chat_chunk("s", "t", false, None).fields().get("provider").is_none());
        assert_eq!(Event::presence(PresenceStatus::Away).fields()["status"], "away");
    }

    #[test]
    fn a_presence_status_reads_back_from_its_wire_name() {
        for s in [PresenceStatus::Online, PresenceStatus::Offline, PresenceStatus::Away] {
            assert_eq!(serde_json::to_value(s).ok(), Some(Value::from(s.as_str())));
            assert_eq!(serde_json::from_value::<PresenceStatus>(Value::from(s.as_str())).ok(), Some(s));
            assert_eq!(PresenceStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PresenceStatus::parse("busy"), None);
    }
}
