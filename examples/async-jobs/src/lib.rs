//! Document 002's async job pattern on Herald: the browser starts a job with a POST, a
//! worker does the work and reports `generation_started`, `generation_progress` and
//! `generation_complete` (or `generation_failed`) to the user's private `user:<id>` channel,
//! and the page follows that channel with `EventSource` to draw a progress bar.
//!
//! The job is real work: counting the primes below a limit ([`primes`]), on a blocking
//! thread, reporting after each slice it finishes. Who started a job comes only from a
//! verified token (a bearer header or Herald's token cookie), never from the request body.
//! `POST /login` stands in for a real login: it signs a token for whatever user id it is
//! given, so that the example runs without an identity provider.

pub mod jobs;
pub mod primes;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald::{ApiError, Herald, Principal, UserIdentity};
use serde::Deserialize;
use serde_json::{Value, json};

use jobs::{JobError, JobView, Jobs};

/// The largest limit a job may count to: a few seconds of work in a release build.
pub const MAX_LIMIT: u64 = 1_000_000_000;

#[derive(Clone)]
struct App {
    herald: Herald,
    jobs: Arc<Jobs>,
}

/// The example's routes merged with Herald's, sharing one [`Herald`] node. Starts the job
/// worker, so it must be called inside a Tokio runtime.
pub fn app(herald: Herald) -> Router {
    let state = App { jobs: Jobs::start(herald.clone()), herald: herald.clone() };
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/jobs", post(start_job).get(list_jobs))
        .route("/jobs/{id}", get(job).delete(cancel_job))
        .method_not_allowed_fallback(herald::http::method_not_allowed)
        .with_state(state)
        .merge(herald::http::router(herald))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    user_id: String,
    name: Option<String>,
}

/// `POST /login {"userId","name"}`: a one-hour token for that user, in the body and in
/// Herald's token cookie (which `EventSource` sends by itself). A real app checks a password
/// or an identity provider here.
async fn login(State(app): State<App>, body: Result<Json<Login>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(login) = body.map_err(|r| ApiError::new(r.status(), "invalid_body", r.body_text()))?;
    let valid = |c: char| c.is_ascii_alphanumeric() || "_-.@=+".contains(c);
    if login.user_id.is_empty() || login.user_id.len() > 64 || !login.user_id.chars().all(valid) {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            "userId is 1 to 64 ASCII letters, digits and `_ - . @ = +`",
        ));
    }
    let Some(secret) = app.herald.config().auth.jwt_secret.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_login", "this app runs without a JWT secret"));
    };
    let name = login.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| login.user_id.clone());
    let name: String = name.chars().take(64).collect();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let claims = json!({"sub": login.user_id, "name": name, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_error", e.to_string()))?;
    let cookie = format!("{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600", app.herald.auth().cookie_name);
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token_error", e.to_string()))?;
    let body = Json(json!({"userId": login.user_id, "userName": name, "token": token}));
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
}

/// The user of a request, from a verified token only.
async fn user(herald: &Herald, headers: &HeaderMap) -> Result<Arc<UserIdentity>, ApiError> {
    match herald::http::auth::principal(herald, headers, None).await? {
        Principal::User(user) => Ok(user),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in first: send a user token (Authorization: Bearer) or the cookie from POST /login",
        )),
    }
}

/// The user of a request that changes something: as [`user`], and a request carried by the
/// cookie alone must come from an allowed origin, and be JSON if it is a `POST`, which a
/// cross-site form cannot send.
async fn acting_user(herald: &Herald, parts: &Parts) -> Result<Arc<UserIdentity>, ApiError> {
    herald::http::auth::check_cookie_request(herald, parts)?;
    user(herald, &parts.headers).await
}

/// `GET /me`: who the credential says this is.
async fn me(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let user = user(&app.herald, &headers).await?;
    Ok(Json(json!({"userId": &*user.id, "userName": user.name.as_deref()})))
}

#[derive(Deserialize)]
struct NewJob {
    limit: u64,
}

/// `POST /jobs {"limit": N}`: queues a count of the primes below N for the signed-in user;
/// answers `202 {"jobId"}` at once. Its events arrive on `user:<id>`.
async fn start_job(
    State(app): State<App>,
    parts: Parts,
    body: Result<Json<NewJob>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = acting_user(&app.herald, &parts).await?;
    let Json(job) = body.map_err(|r| ApiError::new(r.status(), "invalid_body", r.body_text()))?;
    if !(2..=MAX_LIMIT).contains(&job.limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be from 2 to {MAX_LIMIT}")));
    }
    let id = app.jobs.submit(&user.id, job.limit).map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"jobId": id}))))
}

/// `GET /jobs`: the user's latest jobs, newest first (for a page that loads or reloads).
async fn list_jobs(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let user = user(&app.herald, &headers).await?;
    Ok(Json(json!({"jobs": app.jobs.list(&user.id, 20)})))
}

/// `GET /jobs/{id}`: where the user's job stands (for a page that reloads, or a `reset`).
async fn job(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let user = user(&app.herald, &headers).await?;
    app.jobs.view(&user.id, &id).map(Json).map_err(job_error)
}

/// `DELETE /jobs/{id}`: stops the user's job; it ends with `generation_failed` `cancelled`.
async fn cancel_job(
    State(app): State<App>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let user = acting_user(&app.herald, &parts).await?;
    app.jobs.cancel(&user.id, &id).map(|v| (StatusCode::ACCEPTED, Json(v))).map_err(job_error)
}

fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::QueueFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            format!("{} jobs are already waiting; try again shortly", jobs::QUEUE),
        )
        .with_retry_after(5),
        JobError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "job_not_found", "no such job of yours"),
        JobError::AlreadyFinished => {
            ApiError::new(StatusCode::CONFLICT, "job_finished", "the job has already finished")
        }
    }
}
