//! The one error shape of the HTTP API: `{"error":{"code":"...","message":"..."}}`.
//!
//! Every refusal leaves the HTTP layer as an [`ApiError`] with a status, a stable
//! snake_case code and a sentence for a person; it is logged once here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::channel::ChannelError;
use crate::engine::EngineError;
use crate::event::EventError;
use crate::herald::{DisconnectError, PresenceError, PublishError, RoomError, SubscribeError};
use crate::policy::Denied;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, "{}", self.message);
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, "{}", self.message);
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(super::observe::ErrorCode(self.code));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::InvalidTicket => "invalid_ticket",
            AuthError::KeysUnavailable(_) => {
                return Self::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", e.to_string())
                    .with_retry_after(5);
            }
        };
        Self::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        match e {
            Denied::Unauthenticated { .. } => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
            Denied::Forbidden { .. } => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
        }
    }
}

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> Self {
        Self::bad_request("invalid_channel", e.to_string())
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let code = match e {
            EventError::MissingType => "missing_type",
            EventError::BadType | EventError::ReservedType(_) => "invalid_type",
            EventError::NoChannel => "missing_channel",
            EventError::BadIdempotencyKey => "invalid_idempotency_key",
            EventError::TooLarge { .. } => {
                return Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string());
            }
        };
        Self::bad_request(code, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if let EngineError::IdempotencyKeyReused = e {
            tracing::info!("publish refused: idempotency key reused for a different event");
            return Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", e.to_string());
        }
        // The engine's own words (Redis errors) go to the log, not to the client.
        tracing::warn!(error = %e, "engine unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_unavailable",
            "the event engine is unavailable; try again shortly",
        )
        .with_retry_after(1)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Channel(e) => e.into(),
            PublishError::Event(e) => e.into(),
            PublishError::Engine(e) => e.into(),
            PublishError::Denied(e) => e.into(),
            PublishError::RateLimited { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string()).with_retry_after(secs)
            }
            PublishError::BatchTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", e.to_string())
            }
            PublishError::TooManyChannels { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_channels", e.to_string())
            }
            PublishError::EmptyBatch => Self::bad_request("empty_batch", e.to_string()),
            PublishError::InBatch { index, source } => {
                let mut api = Self::from(source);
                api.message = format!("event {index} of the batch: {}", api.message);
                api
            }
        }
    }
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::NoChannel => Self::bad_request("missing_channel", e.to_string()),
            SubscribeError::TooManyChannels { .. } => Self::bad_request("too_many_channels", e.to_string()),
            SubscribeError::Channel(e) => e.into(),
            SubscribeError::AtCapacity => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_at_capacity", e.to_string()).with_retry_after(5)
            }
            SubscribeError::PatternsUnsupported => Self::bad_request("patterns_unsupported", e.to_string()),
            SubscribeError::Draining => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_draining", e.to_string()).with_retry_after(1)
            }
            SubscribeError::Banned => Self::new(StatusCode::FORBIDDEN, "banned", e.to_string()),
            SubscribeError::Engine(e) => e.into(),
            SubscribeError::Denied(e) => e.into(),
            SubscribeError::UserLimit { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", e.to_string()).with_retry_after(5)
            }
        }
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Denied(d) => d.into(),
            RoomError::Engine(e) => e.into(),
            RoomError::Event(e) => e.into(),
            RoomError::NoConnection(_) => Self::new(StatusCode::NOT_FOUND, "connection_not_found", e.to_string()),
            RoomError::TooManyChannels(_) => Self::bad_request("too_many_channels", e.to_string()),
            RoomError::Pattern => Self::bad_request("invalid_channel", e.to_string()),
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::Denied(d) => d.into(),
            PresenceError::Engine(e) => e.into(),
            PresenceError::Disabled(_) => Self::new(StatusCode::NOT_FOUND, "presence_disabled", e.to_string()),
            PresenceError::NotAUser => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            PresenceError::BadStatus => Self::bad_request("invalid_status", e.to_string()),
        }
    }
}

impl From<DisconnectError> for ApiError {
    fn from(e: DisconnectError) -> Self {
        match e {
            DisconnectError::Unauthenticated => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
            DisconnectError::NotAnApiKey | DisconnectError::KeyCannotReach(_) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            DisconnectError::InvalidUser => Self::bad_request("invalid_user", e.to_string()),
            DisconnectError::Channel(e) => e.into(),
            DisconnectError::InvalidConnection => Self::bad_request("invalid_connection", e.to_string()),
            DisconnectError::BanNeedsUser => Self::bad_request("invalid_ban", e.to_string()),
            DisconnectError::InvalidTtl => Self::bad_request("invalid_ttl", e.to_string()),
            DisconnectError::Engine(e) => e.into(),
        }
    }
}
