//! The demo that `herald serve` shows at `/`: a page (embedded in the binary, with the
//! TypeScript client's browser bundle) and the few server routes it needs.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `GET /demo/*.js`, `GET /demo/style.css` | the page and its assets |
//! | `GET /demo/config` | whether dev tokens are available, the room, the AI channel |
//! | `POST /api/dev/token` | dev mode only: a token for `{"userId","userName"}` |
//! | `POST /demo/jobs` | a real CPU-bound job (a SHA-256 chain, in chunks on blocking threads) reporting `generation_*` to `user:<id>` |
//! | `POST /demo/ai` | an AI-style token stream: `ai_chat_chunk` events of a Markov chain over the embedded docs |
//! | `POST /demo/poke` | a notification and a badge count to another user |
//! | `POST /demo/notifications/read` | resets the caller's badge |
//!
//! Everything goes through the library API an embedding application uses
//! ([`Herald::send_to_user`], [`Herald::publish`]); the routes are not part of
//! [`crate::http::router`], which applications mount: only `herald serve` adds them, in dev
//! mode or with `demo = true`, and only when built with the `demo` cargo feature.
//!
//! The routes publish as the application, so they hold their callers to what the public API
//! would: each action is charged to the caller's publish rate limit for every event it will
//! publish, and needs the caller to be allowed to publish on the room it happens in.

pub mod markov;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::auth::{Principal, UserIdentity};
use crate::catalogue::types;
use crate::channel::ChannelName;
use crate::event::Event;
use crate::herald::Herald;
use crate::http::ApiError;
use crate::http::auth::{principal, rate_key};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
/// Built from `clients/js` by `npm run bundle:demo`; its tests check it is current.
const CLIENT_JS: &str = include_str!("assets/herald-client.js");

/// The room of the demo's chat and AI streams.
pub const ROOM: &str = "channel:lobby";
/// Jobs and AI streams running at once, over all users; more get `429 busy`.
const MAX_TASKS: usize = 4;
/// Largest job, in SHA-256 rounds.
const MAX_ROUNDS: u64 = 20_000_000;
const DEFAULT_ROUNDS: u64 = 3_000_000;
/// Progress events per job.
const JOB_STEPS: u64 = 40;
/// Events a job publishes: started, one per step, complete, a notification and a badge.
const JOB_EVENTS: usize = JOB_STEPS as usize + 4;
/// Pause between two AI tokens: the chain is fast; this makes it read like a model.
const TOKEN_PACE: Duration = Duration::from_millis(60);
/// Users whose unread count the demo remembers.
const MAX_UNREAD_USERS: usize = 10_000;

#[derive(Clone)]
struct Demo {
    herald: Herald,
    tasks: Arc<Semaphore>,
    unread: Arc<Mutex<HashMap<String, u64>>>,
}

/// The demo's routes, to merge beside [`crate::http::router`].
pub fn router(herald: Herald) -> Router {
    let demo = Demo { herald, tasks: Arc::new(Semaphore::new(MAX_TASKS)), unread: Arc::default() };
    Router::new()
        .route("/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/demo/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/demo/herald-client.js", get(|| async { asset(CLIENT_JS, "text/javascript; charset=utf-8") }))
        .route("/demo/style.css", get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }))
        .route("/demo/config", get(config))
        .route("/api/dev/token", post(dev_token))
        .route("/demo/jobs", post(start_job))
        .route("/demo/ai", post(start_ai))
        .route("/demo/poke", post(poke))
        .route("/demo/notifications/read", post(read_notifications))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(demo)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

/// Dev tokens exist in dev mode on a loopback listener only: with `--allow-anonymous` on a
/// public address anyone could mint a token for anyone's `user:` channel.
fn dev_tokens_available(herald: &Herald) -> bool {
    let cfg = herald.config();
    !cfg.auth_configured() && cfg.listen.ip().is_loopback()
}

async fn config(State(demo): State<Demo>) -> Json<Value> {
    Json(json!({
        "devTokens": dev_tokens_available(&demo.herald),
        "room": ROOM,
        "nodeId": demo.herald.node_id(),
    }))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DevTokenRequest {
    user_id: String,
    user_name: Option<String>,
}

/// `POST /api/dev/token`: `{"userId","userName"}` → `{"token"}`, in dev mode only.
async fn dev_token(
    State(demo): State<Demo>,
    req: Result<Json<DevTokenRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    if !dev_tokens_available(&demo.herald) {
        return Err(not_found());
    }
    let req = body(req)?;
    let name = req.user_name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    match demo.herald.auth().dev_token(&req.user_id, name) {
        None => Err(not_found()),
        Some(Ok(token)) => {
            tracing::info!(user = %req.user_id, "dev token issued");
            Ok(Json(json!({"token": token})))
        }
        Some(Err(e)) => Err(ApiError::bad_request("invalid_user_id", e.to_string())),
    }
}

/// The user making the request: the demo's actions need one.
async fn user(demo: &Demo, headers: &HeaderMap) -> Result<Arc<UserIdentity>, ApiError> {
    match principal(&demo.herald, headers, None).await? {
        Principal::User(u) => Ok(u),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the demo's actions need a user token")),
    }
}

/// Charges `events` publishes to `user`'s rate limit, as if they had published them.
fn charge(demo: &Demo, user: &Arc<UserIdentity>, events: usize) -> Result<(), ApiError> {
    let who = Principal::User(Arc::clone(user));
    Ok(demo.herald.charge(&who, &rate_key(&who, None), events)?)
}

/// The caller may publish on `channel`: the demo's actions happen in a room.
fn may_publish(demo: &Demo, user: &Arc<UserIdentity>, channel: &ChannelName) -> Result<(), ApiError> {
    Ok(demo.herald.policies().can_publish(&Principal::User(Arc::clone(user)), channel)?)
}

fn room() -> Result<ChannelName, ApiError> {
    Ok(ChannelName::parse(ROOM)?)
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        "the demo is running as many jobs as it allows; try again soon",
    )
    .with_retry_after(2)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    rounds: Option<u64>,
}

/// `POST /demo/jobs`: starts a job for the caller; its events go to `user:<id>`.
async fn start_job(
    State(demo): State<Demo>,
    headers: HeaderMap,
    req: Result<Json<JobRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = user(&demo, &headers).await?;
    let rounds = body(req)?.rounds.unwrap_or(DEFAULT_ROUNDS);
    if !(JOB_STEPS..=MAX_ROUNDS).contains(&rounds) {
        return Err(ApiError::bad_request(
            "invalid_rounds",
            format!("`rounds` must be from {JOB_STEPS} to {MAX_ROUNDS}"),
        ));
    }
    may_publish(&demo, &user, &room()?)?;
    let permit = Arc::clone(&demo.tasks).try_acquire_owned().map_err(|_| busy())?;
    charge(&demo, &user, JOB_EVENTS)?;
    let job_id = format!("job_{}", crate::ids::new_id().to_lowercase());
    let id = job_id.clone();
    tokio::spawn(async move {
        run_job(&demo, &user, &id, rounds).await;
        drop(permit);
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"jobId": job_id, "rounds": rounds}))))
}

/// Hashes a SHA-256 chain of `rounds` links in [`JOB_STEPS`] chunks, each on a blocking
/// thread, and reports after each one.
async fn run_job(demo: &Demo, user: &UserIdentity, job_id: &str, rounds: u64) {
    let h = &demo.herald;
    let send = |event: Event| async move {
        if let Err(e) = h.send_to_user(&user.id, event).await {
            tracing::warn!(job = job_id, error = %e, "could not report job progress");
        }
    };
    send(Event::generation_started(job_id).with("rounds", rounds)).await;
    let started = Instant::now();
    // The chain starts from the job id's bytes: the digest is SHA-256 applied `rounds` times.
    let mut state = job_id.as_bytes().to_vec();
    let mut done = 0;
    for step in 1..=JOB_STEPS {
        let upto = rounds * step / JOB_STEPS;
        let n = upto - done;
        let input = std::mem::take(&mut state);
        state = match tokio::task::spawn_blocking(move || sha256_chain(&input, n)).await {
            Ok(d) => d.to_vec(),
            Err(e) => {
                tracing::warn!(job = job_id, error = %e, "job failed");
                send(Event::generation_failed(job_id, "the worker stopped")).await;
                return;
            }
        };
        done = upto;
        let progress = (done * 100 / rounds) as u8;
        send(Event::generation_progress(job_id, progress, format!("{done} of {rounds} SHA-256 rounds"))).await;
    }
    let hex: String = state.iter().map(|b| format!("{b:02x}")).collect();
    let result = json!({
        "digest": hex,
        "rounds": rounds,
        "provider": "sha256-chain",
        "latencyMs": started.elapsed().as_millis() as u64,
    });
    send(Event::new(types::GENERATION_COMPLETE).with("jobId", job_id).with("result", result)).await;
    notify(demo, &user.id, "job_complete", "Your job is done", &format!("{rounds} SHA-256 rounds hashed")).await;
}

/// `rounds` (at least one) links of `d ← SHA-256(d)`, from `seed`.
fn sha256_chain(seed: &[u8], rounds: u64) -> [u8; 32] {
    let mut d = [0u8; 32];
    d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, seed).as_ref());
    for _ in 1..rounds {
        let next = ring::digest::digest(&ring::digest::SHA256, &d);
        d.copy_from_slice(next.as_ref());
    }
    d
}

/// A notification and the new unread count for `user_id`, as two events.
async fn notify(demo: &Demo, user_id: &str, kind: &str, title: &str, message: &str) {
    let count = {
        let mut unread = demo.unread.lock().unwrap_or_else(PoisonError::into_inner);
        if unread.len() >= MAX_UNREAD_USERS && !unread.contains_key(user_id) {
            unread.clear();
        }
        let n = unread.entry(user_id.to_owned()).or_default();
        *n += 1;
        *n
    };
    for event in [Event::notification(kind, title, message), Event::badge_update(count)] {
        if let Err(e) = demo.herald.send_to_user(user_id, event).await {
            tracing::warn!(user = user_id, error = %e, "could not notify");
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AiRequest {
    prompt: String,
    channel: Option<String>,
}

/// `POST /demo/ai`: streams an answer to `prompt` as `ai_chat_chunk` events on a room the
/// caller may publish on.
async fn start_ai(
    State(demo): State<Demo>,
    headers: HeaderMap,
    req: Result<Json<AiRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = user(&demo, &headers).await?;
    let req = body(req)?;
    let prompt: String = req.prompt.trim().chars().take(200).collect();
    if prompt.is_empty() {
        return Err(ApiError::bad_request("invalid_prompt", "ask something"));
    }
    let channel = demo.herald.parse_channel(req.channel.as_deref().unwrap_or(ROOM))?;
    if channel.namespace() != "channel" {
        return Err(ApiError::bad_request("invalid_channel", "AI streams go to rooms (`channel:<name>`)"));
    }
    may_publish(&demo, &user, &channel)?;
    let permit = Arc::clone(&demo.tasks).try_acquire_owned().map_err(|_| busy())?;
    // Generated before answering, so that the caller is charged for the chunks it will get.
    let question = prompt.clone();
    let tokens = tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::new();
        let words = rng.usize(35..60);
        markov::chain().generate(&question, words, &mut rng)
    })
    .await
    .unwrap_or_default();
    charge(&demo, &user, tokens.len() + 1)?;
    let stream_id = format!("ai_{}", crate::ids::new_id().to_lowercase());
    let id = stream_id.clone();
    let asked_by = user.name.as_deref().unwrap_or(&user.id).to_owned();
    tokio::spawn(async move {
        stream_answer(&demo.herald, channel, &id, &prompt, &asked_by, tokens).await;
        drop(permit);
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"streamId": stream_id}))))
}

async fn stream_answer(
    herald: &Herald,
    channel: ChannelName,
    stream_id: &str,
    prompt: &str,
    asked_by: &str,
    tokens: Vec<String>,
) {
    let chunk = |text: &str, done: bool| {
        Event::ai_chat_chunk(stream_id, text, done, done.then_some("markov"))
            .with("prompt", prompt)
            .with("askedBy", asked_by)
    };
    for token in &tokens {
        if let Err(e) = herald.publish(vec![channel.clone()], chunk(token, false)).await {
            tracing::warn!(stream = stream_id, error = %e, "AI stream stopped");
            return;
        }
        tokio::time::sleep(TOKEN_PACE).await;
    }
    if let Err(e) = herald.publish(vec![channel], chunk("", true)).await {
        tracing::warn!(stream = stream_id, error = %e, "AI stream not finished");
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PokeRequest {
    user_id: String,
}

/// `POST /demo/poke`: a notification from the caller to another user of the room.
async fn poke(
    State(demo): State<Demo>,
    headers: HeaderMap,
    req: Result<Json<PokeRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let from = user(&demo, &headers).await?;
    let to = body(req)?.user_id;
    ChannelName::user(&to)?;
    may_publish(&demo, &from, &room()?)?;
    // The notification and the badge.
    charge(&demo, &from, 2)?;
    let name = from.name.as_deref().unwrap_or(&from.id);
    notify(&demo, &to, "wave", &format!("{name} waved at you"), "from the demo room").await;
    Ok(Json(json!({"userId": to})))
}

/// `POST /demo/notifications/read`: the caller read everything; the badge goes to 0.
async fn read_notifications(State(demo): State<Demo>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let user = user(&demo, &headers).await?;
    charge(&demo, &user, 1)?;
    demo.unread.lock().unwrap_or_else(PoisonError::into_inner).remove(&*user.id);
    demo.herald.send_to_user(&user.id, Event::badge_update(0)).await?;
    Ok(Json(json!({"count": 0})))
}
