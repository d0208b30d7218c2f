//! The one error shape of the HTTP API: `{"error":{"code":"...","message":"..."}}`.
//!
//! Every refusal leaves the HTTP layer as an [`ApiError`]: Herald's own as a [`Refusal`]
//! (whose status, code and metrics reasons come from one table, `super::refusal`), an
//! embedding application's with a status and code of its own; it is logged once here. The
//! typed errors of the node (`PublishError`, `SubscribeError`, `EngineError`, ...) become
//! refusals below, with exhaustive matches.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::refusal::Refusal;
use crate::auth::AuthError;
use crate::channel::ChannelError;
use crate::engine::EngineError;
use crate::event::EventError;
use crate::herald::{
    CensusError, DisconnectError, HistoryError, PresenceError, PublishError, RoomError, SubscribeError,
};
use crate::policy::Denied;

/// A refused request: a status, a stable snake_case code and a sentence for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    kind: Kind,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// One of Herald's own refusals.
    Herald(Refusal),
    /// An embedding application's own (`ApiError::new`).
    App { status: StatusCode, code: &'static str },
    /// The application's backend hook said no, with its own status and code.
    Hook { status: StatusCode, code: std::sync::Arc<str> },
}

impl ApiError {
    /// One of Herald's refusals, with its `Retry-After` if it has one.
    pub fn refuse(refusal: Refusal, message: impl Into<String>) -> Self {
        Self { kind: Kind::Herald(refusal), message: message.into(), retry_after: refusal.retry_after() }
    }

    /// An application's own refusal, in the same shape (Herald's own use [`ApiError::refuse`]).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind: Kind::App { status, code }, message: message.into(), retry_after: None }
    }

    /// An application's own `400` refusal.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// `429 rate_limited` with `message`, and `Retry-After` in whole seconds, rounded up.
    pub(crate) fn rate_limited(message: String, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        Self::refuse(Refusal::RateLimited, message).with_retry_after(secs)
    }

    /// Puts `prefix` before the message (`event 2 of the batch: ...`).
    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub fn status(&self) -> StatusCode {
        match &self.kind {
            Kind::Herald(r) => r.status(),
            Kind::App { status, .. } | Kind::Hook { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &str {
        match &self.kind {
            Kind::Herald(r) => r.code(),
            Kind::App { code, .. } => code,
            Kind::Hook { code, .. } => code,
        }
    }

    /// Herald's refusal, if it is one (not an application's).
    pub fn refusal(&self) -> Option<Refusal> {
        match self.kind {
            Kind::Herald(r) => Some(r),
            Kind::Hook { .. } => Some(Refusal::HookDenied),
            Kind::App { .. } => None,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Retry-After` (seconds) it is answered with, if any.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = (self.status(), self.code());
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, "{}", self.message);
        } else {
            tracing::info!(status = status.as_u16(), code, "{}", self.message);
        }
        let body = json!({"error": {"code": code, "message": &self.message}});
        let mut resp = (status, axum::Json(body)).into_response();
        // The refusal counters read the type (`super::observe`).
        if let Some(refusal) = self.refusal() {
            resp.extensions_mut().insert(refusal);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<crate::hooks::HookError> for ApiError {
    fn from(e: crate::hooks::HookError) -> Self {
        use crate::hooks::HookError;
        match e {
            HookError::Denied { status, code, message } => {
                let code = code.unwrap_or_else(|| Refusal::HookDenied.code().to_owned());
                Self { kind: Kind::Hook { status, code: code.into() }, message, retry_after: None }
            }
            HookError::Unavailable { hook, .. } => Self::refuse(
                Refusal::HookUnavailable,
                format!("the application's {hook} hook did not answer; try again shortly"),
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let refusal = match e {
            AuthError::InvalidToken(_) => Refusal::InvalidToken,
            AuthError::Expired => Refusal::TokenExpired,
            AuthError::InvalidApiKey => Refusal::InvalidApiKey,
            AuthError::InvalidTicket => Refusal::InvalidTicket,
            AuthError::KeysUnavailable(_) => Refusal::AuthUnavailable,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        let refusal = match e {
            Denied::Unauthenticated { .. } => Refusal::Unauthorized,
            Denied::Forbidden { .. } => Refusal::Forbidden,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> Self {
        Self::refuse(Refusal::InvalidChannel, e.to_string())
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let refusal = match e {
            EventError::MissingType => Refusal::MissingType,
            EventError::BadType | EventError::ReservedType(_) => Refusal::InvalidType,
            EventError::NoChannel => Refusal::MissingChannel,
            EventError::BadIdempotencyKey => Refusal::InvalidIdempotencyKey,
            EventError::TooLarge { .. } => Refusal::PayloadTooLarge,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::IdempotencyKeyReused => {
                tracing::info!("publish refused: idempotency key reused for a different event");
                Self::refuse(Refusal::IdempotencyKeyReused, e.to_string())
            }
            // The engine's own words (Redis errors) go to the log, not to the client.
            EngineError::Unavailable(_) | EngineError::Full(_) => {
                tracing::warn!(error = %e, "engine unavailable");
                Self::refuse(Refusal::EngineUnavailable, "the event engine is unavailable; try again shortly")
            }
            EngineError::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                Self::refuse(Refusal::Internal, "the server could not do this; it is a fault of the server")
            }
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let refusal = match e {
            PublishError::Channel(e) => return e.into(),
            PublishError::Event(e) => return e.into(),
            PublishError::Engine(e) => return e.into(),
            PublishError::Denied(e) => return e.into(),
            PublishError::InBatch { index, source } => {
                return Self::from(source).prefixed(&format!("event {index} of the batch"));
            }
            PublishError::RateLimited { retry_after } => return Self::rate_limited(e.to_string(), retry_after),
            PublishError::BatchTooLarge { .. } => Refusal::BatchTooLarge,
            PublishError::TooManyChannels { .. } => Refusal::EventTooManyChannels,
            PublishError::EmptyBatch => Refusal::EmptyBatch,
            PublishError::Banned => Refusal::Banned,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        let refusal = match e {
            SubscribeError::Channel(e) => return e.into(),
            SubscribeError::Engine(e) => return e.into(),
            SubscribeError::Denied(e) => return e.into(),
            SubscribeError::NoChannel => Refusal::MissingChannel,
            SubscribeError::TooManyChannels { .. } => Refusal::TooManyChannels,
            SubscribeError::AtCapacity => Refusal::ServerAtCapacity,
            SubscribeError::PatternsUnsupported => Refusal::PatternsUnsupported,
            SubscribeError::Draining => Refusal::ServerDraining,
            SubscribeError::Banned => Refusal::Banned,
            SubscribeError::UserLimit { .. } => Refusal::TooManyConnections,
            SubscribeError::TicketsRateLimited { retry_after } | SubscribeError::JoinsRateLimited { retry_after } => {
                return Self::rate_limited(e.to_string(), retry_after);
            }
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        let refusal = match e {
            RoomError::Denied(d) => return d.into(),
            RoomError::Engine(e) => return e.into(),
            RoomError::Event(e) => return e.into(),
            RoomError::NoConnection(_) => Refusal::ConnectionNotFound,
            RoomError::TooManyChannels(_) => Refusal::TooManyChannels,
            RoomError::PatternsUnsupported => Refusal::PatternsUnsupported,
            RoomError::Pattern | RoomError::ChannelRefused(_) => Refusal::InvalidChannel,
            RoomError::RateLimited { retry_after } => return Self::rate_limited(e.to_string(), retry_after),
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        let refusal = match e {
            PresenceError::Denied(d) => return d.into(),
            PresenceError::Engine(e) => return e.into(),
            PresenceError::Disabled(_) => Refusal::PresenceDisabled,
            PresenceError::NotAUser => Refusal::Forbidden,
            PresenceError::BadStatus => Refusal::InvalidStatus,
            PresenceError::RateLimited { retry_after } => return Self::rate_limited(e.to_string(), retry_after),
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        let refusal = match e {
            HistoryError::Denied(d) => return d.into(),
            HistoryError::Engine(e) => return e.into(),
            HistoryError::Limit => Refusal::InvalidLimit,
            HistoryError::Pattern => Refusal::InvalidChannel,
            HistoryError::Expired => Refusal::HistoryExpired,
            HistoryError::UnknownPosition => Refusal::UnknownPosition,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<CensusError> for ApiError {
    fn from(e: CensusError) -> Self {
        let refusal = match e {
            CensusError::Engine(e) => return e.into(),
            CensusError::Unauthenticated => Refusal::Unauthorized,
            CensusError::NotAnApiKey | CensusError::KeyCannotReach(_) => Refusal::Forbidden,
            CensusError::InvalidPattern => Refusal::InvalidPattern,
            CensusError::InvalidUser => Refusal::InvalidUser,
        };
        Self::refuse(refusal, e.to_string())
    }
}

impl From<DisconnectError> for ApiError {
    fn from(e: DisconnectError) -> Self {
        let refusal = match e {
            DisconnectError::Channel(e) => return e.into(),
            DisconnectError::Engine(e) => return e.into(),
            DisconnectError::Unauthenticated => Refusal::Unauthorized,
            DisconnectError::NotAnApiKey | DisconnectError::KeyCannotReach(_) => Refusal::Forbidden,
            DisconnectError::InvalidUser => Refusal::InvalidUser,
            DisconnectError::InvalidConnection => Refusal::InvalidConnection,
            DisconnectError::BanNeedsUser => Refusal::InvalidBan,
            DisconnectError::InvalidTtl => Refusal::InvalidTtl,
        };
        Self::refuse(refusal, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CommandRefusal, NodeReply};

    /// The status and code of one of Herald's own refusals.
    fn answer(e: impl Into<ApiError>) -> (u16, &'static str) {
        let e = e.into();
        let refusal = e.refusal().unwrap_or_else(|| panic!("not Herald's refusal: {e:?}"));
        assert_eq!(e.code(), refusal.code());
        (e.status().as_u16(), refusal.code())
    }

    #[test]
    fn each_engine_failure_answers_with_its_own_status_and_code() {
        let cases = [
            (EngineError::Unavailable("redis: connection refused".into()), (503, "engine_unavailable")),
            (EngineError::Full("too many outstanding tickets".into()), (503, "engine_unavailable")),
            (EngineError::IdempotencyKeyReused, (422, "idempotency_key_reused")),
            (EngineError::Internal("no secure random source".into()), (500, "internal_error")),
        ];
        for (e, expected) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!((api.status().as_u16(), api.code()), expected, "{e:?}");
            // The engine's own words stay in the log.
            assert!(!api.message().contains("redis") && !api.message().contains("random"), "{e:?}");
            let retry = api.into_response().headers().get(header::RETRY_AFTER).cloned();
            assert_eq!(retry.is_some(), expected.0 == 503, "{e:?}");
        }
    }

    /// A node's refusal, sent as another node receives it (JSON over the engine), and answered.
    fn over_the_wire(code: &str) -> (u16, &'static str) {
        let wire = format!(r#"{{"reply":"refused","code":"{code}","message":"said the other node"}}"#);
        let Ok(NodeReply::Refused { code, message }) = serde_json::from_str::<NodeReply>(&wire) else {
            panic!("{wire} does not read as a refusal");
        };
        answer(RoomError::refused_by_node(code, message, "c1", 8))
    }

    #[test]
    fn a_refusal_from_the_node_holding_the_connection_keeps_its_code() {
        assert_eq!(over_the_wire("invalid_channel"), (400, "invalid_channel"));
        assert_eq!(over_the_wire("too_many_channels"), (400, "too_many_channels"));
        assert_eq!(over_the_wire("engine_unavailable"), (503, "engine_unavailable"));
        // Another user's connection answers as an unknown one, so ids cannot be probed.
        assert_eq!(over_the_wire("not_yours"), (404, "connection_not_found"));
        // A refusal a newer node knows and this one does not is the other node's failure.
        assert_eq!(over_the_wire("some_future_refusal"), (503, "engine_unavailable"));
    }

    #[test]
    fn a_command_refusal_is_written_as_the_code_it_becomes() {
        for code in [CommandRefusal::InvalidChannel, CommandRefusal::TooManyChannels, CommandRefusal::EngineUnavailable]
        {
            let wire = serde_json::to_value(NodeReply::Refused { code, message: String::new() }).unwrap_or_default();
            let (_, http) = answer(RoomError::refused_by_node(code, String::new(), "c1", 8));
            assert_eq!(wire["code"], http, "{code:?}");
        }
    }
}
