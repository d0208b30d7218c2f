//! `POST /api/tickets`: trade an authenticated request for a short-lived, single-use
//! ticket, because a browser `EventSource` cannot send an `Authorization` header.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::auth::principal;
use super::error::ApiError;
use super::refusal::Refusal;
use crate::auth::Principal;
use crate::herald::Herald;

pub async fn issue(State(herald): State<Herald>, headers: HeaderMap) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = match principal(&herald, &headers, None).await? {
        Principal::User(user) => user,
        Principal::Anonymous => {
            return Err(ApiError::refuse(Refusal::Unauthorized, "a ticket needs a user token"));
        }
        Principal::ApiKey(_) => {
            return Err(ApiError::refuse(Refusal::Forbidden, "tickets are issued to users, not API keys"));
        }
    };
    let ticket = herald.issue_ticket(&user).await?;
    let ttl = herald.config().auth.ticket_ttl.as_secs();
    Ok((StatusCode::CREATED, Json(json!({"ticket": ticket, "expiresIn": ttl}))))
}
