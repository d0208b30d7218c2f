//! Every refusal Herald itself answers, as a type, and the one table that says what each
//! becomes: its HTTP status, its JSON error `code`, the `reason` label it is counted under
//! on `/metrics` (for a publish and for a stream), and its `Retry-After`.
//!
//! Refusals arise as typed errors (`PublishError`, `SubscribeError`, `EngineError`, ...);
//! `super::error` turns each into a [`Refusal`] with exhaustive matches, and the response
//! carries the [`Refusal`] itself, so the counters read a type rather than rebuilding a
//! reason from a status and a string. Several refusals may share a code (`too_many_channels`
//! is `400` for a stream and `413` for an event) but never a row. `docs/http-api.md`
//! ("Error codes") lists the same rows; a test holds the two together.

use axum::http::StatusCode;

use crate::metrics::{PublishRefusal, SubscribeRefusal};

/// Declares [`Refusal`] from its table: each variant with its status, code, metrics labels
/// and `Retry-After`, and `Refusal::ALL`, every variant in table order.
macro_rules! refusals {
    ($($(#[$meta:meta])* $variant:ident => $status:ident, $code:literal, $publish:ident, $subscribe:ident, $retry:expr;)+) => {
        /// Why Herald refused a request; see the module's table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Refusal {
            $($(#[$meta])* $variant,)+
        }

        impl Refusal {
            /// Every refusal, in table order.
            pub const ALL: &'static [Refusal] = &[$(Refusal::$variant,)+];

            /// The row of the table: status, code, publish label, stream label, `Retry-After`.
            const fn row(self) -> (StatusCode, &'static str, PublishRefusal, SubscribeRefusal, Option<u64>) {
                match self {
                    $(Refusal::$variant => (
                        StatusCode::$status,
                        $code,
                        PublishRefusal::$publish,
                        SubscribeRefusal::$subscribe,
                        $retry,
                    ),)+
                }
            }
        }
    };
}

refusals! {
    // Who is asking.
    InvalidToken => UNAUTHORIZED, "invalid_token", Unauthorized, Unauthorized, None;
    TokenExpired => UNAUTHORIZED, "token_expired", Unauthorized, Unauthorized, None;
    InvalidApiKey => UNAUTHORIZED, "invalid_api_key", Unauthorized, Unauthorized, None;
    InvalidTicket => UNAUTHORIZED, "invalid_ticket", Unauthorized, Unauthorized, None;
    /// Anonymous where a user or a key is needed, or a malformed credential.
    Unauthorized => UNAUTHORIZED, "unauthorized", Unauthorized, Unauthorized, None;
    /// The JWKS keys cannot be fetched and none are cached.
    AuthUnavailable => SERVICE_UNAVAILABLE, "auth_unavailable", AuthUnavailable, AuthUnavailable, Some(5);
    // What they may do.
    Forbidden => FORBIDDEN, "forbidden", Forbidden, Forbidden, None;
    Banned => FORBIDDEN, "banned", Forbidden, Banned, None;
    OriginNotAllowed => FORBIDDEN, "origin_not_allowed", Forbidden, Forbidden, None;
    JsonRequired => UNSUPPORTED_MEDIA_TYPE, "json_required", Invalid, Invalid, None;
    // Channels.
    InvalidChannel => BAD_REQUEST, "invalid_channel", Invalid, Invalid, None;
    MissingChannel => BAD_REQUEST, "missing_channel", Invalid, Invalid, None;
    /// A stream (or a live join) past `max_channels_per_connection`.
    TooManyChannels => BAD_REQUEST, "too_many_channels", Invalid, ChannelLimit, None;
    /// An event naming more than `max_channels_per_publish` channels.
    EventTooManyChannels => PAYLOAD_TOO_LARGE, "too_many_channels", TooLarge, ChannelLimit, None;
    PatternsUnsupported => BAD_REQUEST, "patterns_unsupported", Invalid, Invalid, None;
    // The request.
    InvalidParameter => BAD_REQUEST, "invalid_parameter", Invalid, Invalid, None;
    InvalidFilter => BAD_REQUEST, "invalid_filter", Invalid, Invalid, None;
    InvalidLastEventId => BAD_REQUEST, "invalid_last_event_id", Invalid, Invalid, None;
    /// `?last=` is not a count up to the most, or names a channel the stream does not follow.
    InvalidLast => BAD_REQUEST, "invalid_last", Invalid, Invalid, None;
    QueryTooLong => URI_TOO_LONG, "query_too_long", Invalid, Invalid, None;
    InvalidPath => BAD_REQUEST, "invalid_path", Invalid, Invalid, None;
    InvalidJson => BAD_REQUEST, "invalid_json", Invalid, Invalid, None;
    InvalidBody => BAD_REQUEST, "invalid_body", Invalid, Invalid, None;
    BodyTooLarge => PAYLOAD_TOO_LARGE, "body_too_large", TooLarge, Invalid, None;
    BodyTimeout => REQUEST_TIMEOUT, "body_timeout", Invalid, Invalid, None;
    NotFound => NOT_FOUND, "not_found", Invalid, Invalid, None;
    MethodNotAllowed => METHOD_NOT_ALLOWED, "method_not_allowed", Invalid, Invalid, None;
    // Events and batches.
    InvalidEvent => BAD_REQUEST, "invalid_event", Invalid, Invalid, None;
    MissingType => BAD_REQUEST, "missing_type", Invalid, Invalid, None;
    InvalidType => BAD_REQUEST, "invalid_type", Invalid, Invalid, None;
    EmptyBatch => BAD_REQUEST, "empty_batch", Invalid, Invalid, None;
    BatchTooLarge => PAYLOAD_TOO_LARGE, "batch_too_large", TooLarge, Invalid, None;
    PayloadTooLarge => PAYLOAD_TOO_LARGE, "payload_too_large", TooLarge, Invalid, None;
    InvalidIdempotencyKey => BAD_REQUEST, "invalid_idempotency_key", Invalid, Invalid, None;
    IdempotencyKeyReused => UNPROCESSABLE_ENTITY, "idempotency_key_reused", Invalid, Invalid, None;
    /// The publisher's rate limit is spent; the caller sets `Retry-After` from the limiter.
    RateLimited => TOO_MANY_REQUESTS, "rate_limited", RateLimited, UserLimit, None;
    TooManyConnections => TOO_MANY_REQUESTS, "too_many_connections", RateLimited, UserLimit, Some(5);
    // History (`GET /api/channels/{channel}/history`) and listings.
    InvalidLimit => BAD_REQUEST, "invalid_limit", Invalid, Invalid, None;
    /// `after` or `before` is not an event id of the channel.
    InvalidPosition => BAD_REQUEST, "invalid_position", Invalid, Invalid, None;
    /// `after` is ahead of the channel's last event (an id from another deployment).
    UnknownPosition => CONFLICT, "unknown_position", Invalid, Invalid, None;
    /// History no longer reaches back to `after`.
    HistoryExpired => GONE, "history_expired", Invalid, Invalid, None;
    InvalidPattern => BAD_REQUEST, "invalid_pattern", Invalid, Invalid, None;
    // Live rooms, presence, disconnects and bans.
    ConnectionNotFound => NOT_FOUND, "connection_not_found", Invalid, Invalid, None;
    PresenceDisabled => NOT_FOUND, "presence_disabled", Invalid, Invalid, None;
    InvalidStatus => BAD_REQUEST, "invalid_status", Invalid, Invalid, None;
    InvalidUser => BAD_REQUEST, "invalid_user", Invalid, Invalid, None;
    InvalidTarget => BAD_REQUEST, "invalid_target", Invalid, Invalid, None;
    InvalidConnection => BAD_REQUEST, "invalid_connection", Invalid, Invalid, None;
    InvalidBan => BAD_REQUEST, "invalid_ban", Invalid, Invalid, None;
    InvalidTtl => BAD_REQUEST, "invalid_ttl", Invalid, Invalid, None;
    // A WebSocket's own (`docs/websocket.md`); a socket's other refusals are the rows above.
    /// `GET /api/ws` without a WebSocket upgrade.
    WebsocketRequired => UPGRADE_REQUIRED, "websocket_required", Invalid, Invalid, None;
    InvalidCommand => BAD_REQUEST, "invalid_command", Invalid, Invalid, None;
    InvalidRequestId => BAD_REQUEST, "invalid_request_id", Invalid, Invalid, None;
    UnknownCommand => BAD_REQUEST, "unknown_command", Invalid, Invalid, None;
    AlreadyAuthenticated => BAD_REQUEST, "already_authenticated", Invalid, Invalid, None;
    NotSubscribed => BAD_REQUEST, "not_subscribed", Invalid, Invalid, None;
    BinaryNotSupported => BAD_REQUEST, "binary_not_supported", Invalid, Invalid, None;
    SubscribeTimeout => REQUEST_TIMEOUT, "subscribe_timeout", Invalid, Invalid, None;
    // Centrifugo's bidirectional emulation (`docs/centrifugo.md`).
    /// `POST /emulation` names a session no node has (it ended, or its node is gone).
    SessionNotFound => NOT_FOUND, "session_not_found", Invalid, Invalid, None;
    // The application's backend hooks (`docs/backend.md`).
    /// The hook said no; the answer carries the hook's own status and code, this row's when
    /// it gave none that Herald can pass on.
    HookDenied => FORBIDDEN, "hook_denied", HookDenied, HookDenied, None;
    /// The hook did not answer in time, could not be reached, or answered nonsense.
    HookUnavailable => SERVICE_UNAVAILABLE, "hook_unavailable", HookUnavailable, HookUnavailable, Some(1);
    // The node.
    ServerAtCapacity => SERVICE_UNAVAILABLE, "server_at_capacity", EngineUnavailable, AtCapacity, Some(5);
    ServerDraining => SERVICE_UNAVAILABLE, "server_draining", EngineUnavailable, Draining, Some(1);
    /// The engine cannot do it now (Redis unreachable, an in-memory table full).
    EngineUnavailable => SERVICE_UNAVAILABLE, "engine_unavailable", EngineUnavailable, EngineUnavailable, Some(1);
    /// A fault of the node itself (no secure random source, a value it cannot encode).
    Internal => INTERNAL_SERVER_ERROR, "internal_error", Internal, Internal, None;
}

impl Refusal {
    /// The HTTP status of the answer.
    pub const fn status(self) -> StatusCode {
        self.row().0
    }

    /// The stable snake_case `code` of the JSON error.
    pub const fn code(self) -> &'static str {
        self.row().1
    }

    /// The `reason` it counts under when a publish is refused.
    pub const fn publish_reason(self) -> PublishRefusal {
        self.row().2
    }

    /// The `reason` it counts under when a stream is refused.
    pub const fn subscribe_reason(self) -> SubscribeRefusal {
        self.row().3
    }

    /// The `Retry-After` (seconds) it is answered with, unless the caller knows better.
    pub const fn retry_after(self) -> Option<u64> {
        self.row().4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason a publish was refused, as it was derived from status and code before
    /// refusals were a type.
    fn publish_rule(status: StatusCode, code: &str) -> PublishRefusal {
        match (status, code) {
            (StatusCode::UNAUTHORIZED, _) => PublishRefusal::Unauthorized,
            (StatusCode::FORBIDDEN, _) => PublishRefusal::Forbidden,
            (StatusCode::TOO_MANY_REQUESTS, _) => PublishRefusal::RateLimited,
            (StatusCode::PAYLOAD_TOO_LARGE, _) => PublishRefusal::TooLarge,
            (_, "auth_unavailable") => PublishRefusal::AuthUnavailable,
            (StatusCode::SERVICE_UNAVAILABLE, _) => PublishRefusal::EngineUnavailable,
            _ => PublishRefusal::Invalid,
        }
    }

    /// The reason a stream was refused, as it was derived before.
    fn subscribe_rule(status: StatusCode, code: &str) -> SubscribeRefusal {
        match (status, code) {
            (StatusCode::UNAUTHORIZED, _) => SubscribeRefusal::Unauthorized,
            (_, "banned") => SubscribeRefusal::Banned,
            (StatusCode::FORBIDDEN, _) => SubscribeRefusal::Forbidden,
            (StatusCode::TOO_MANY_REQUESTS, _) => SubscribeRefusal::UserLimit,
            (_, "server_at_capacity") => SubscribeRefusal::AtCapacity,
            (_, "too_many_channels") => SubscribeRefusal::ChannelLimit,
            (_, "server_draining") => SubscribeRefusal::Draining,
            (_, "auth_unavailable") => SubscribeRefusal::AuthUnavailable,
            (StatusCode::SERVICE_UNAVAILABLE, _) => SubscribeRefusal::EngineUnavailable,
            _ => SubscribeRefusal::Invalid,
        }
    }

    #[test]
    fn every_refusal_counts_under_the_reason_its_status_and_code_gave_before() {
        let newer = [Refusal::Internal, Refusal::HookDenied, Refusal::HookUnavailable];
        for r in Refusal::ALL.iter().filter(|r| !newer.contains(r)) {
            assert_eq!(r.publish_reason(), publish_rule(r.status(), r.code()), "{r:?}");
            assert_eq!(r.subscribe_reason(), subscribe_rule(r.status(), r.code()), "{r:?}");
        }
        // New with the backend hooks: the application's no and its silence have their own.
        for (r, publish, subscribe) in [
            (Refusal::HookDenied, PublishRefusal::HookDenied, SubscribeRefusal::HookDenied),
            (Refusal::HookUnavailable, PublishRefusal::HookUnavailable, SubscribeRefusal::HookUnavailable),
        ] {
            assert_eq!((r.publish_reason(), r.subscribe_reason()), (publish, subscribe), "{r:?}");
        }
        // New with the split of engine failures: a fault of the node is neither the client's
        // nor the engine's.
        let internal = Refusal::Internal;
        assert_eq!((internal.status(), internal.code()), (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"));
        assert_eq!(
            (internal.publish_reason(), internal.subscribe_reason()),
            (PublishRefusal::Internal, SubscribeRefusal::Internal)
        );
    }

    #[test]
    fn every_refusal_is_an_error_status_with_a_snake_case_code_and_one_row() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
            assert!(r.status().is_client_error() || r.status().is_server_error(), "{r:?}");
            assert!(r.code().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}");
            let same: Vec<_> =
                Refusal::ALL.iter().filter(|o| (o.status(), o.code()) == (r.status(), r.code())).collect();
            assert_eq!(same, [r], "two refusals answer alike");
        }
        // Every 429 and 503 tells the client when to come back (`rate_limited` from its limiter).
        for r in Refusal::ALL {
            let must = matches!(r.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.retry_after().is_some(), must && *r != Refusal::RateLimited, "{r:?}");
        }
    }

    #[test]
    fn the_error_table_of_the_http_docs_lists_every_refusal_and_no_other() {
        let docs = include_str!("../../docs/http-api.md");
        let table = &docs[docs.find("### Error codes").unwrap_or(0)..];
        let mut documented: Vec<(String, u16)> = table
            .lines()
            .skip_while(|l| !l.starts_with("| code |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let mut cells = l.split('|').map(str::trim).skip(1);
                let code = cells.next()?.trim_matches('`').to_owned();
                Some((code, cells.next()?.parse().ok()?))
            })
            .collect();
        let mut ours: Vec<(String, u16)> =
            Refusal::ALL.iter().map(|r| (r.code().to_owned(), r.status().as_u16())).collect();
        documented.sort();
        ours.sort();
        assert_eq!(documented, ours);
    }
}
