//! The async-jobs example on a real port, over real TCP and HTTP/1.1: a user starts a job,
//! their `user:<id>` stream sees it start, progress and complete with the right answer, and
//! nobody else sees any of it.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Longest wait for anything: a broken test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> TestResult<T> {
    tokio::time::timeout(WAIT, fut).await.map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

/// The primes below `limit`, counted here independently of the app: a plain sieve.
fn primes_below(limit: u64) -> u64 {
    let mut composite = vec![false; limit as usize];
    let mut count = 0;
    for n in 2..limit as usize {
        if !composite[n] {
            count += 1;
            (n * n..limit as usize).step_by(n).for_each(|m| composite[m] = true);
        }
    }
    count
}

struct TestApp {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    async fn start() -> TestResult<Self> {
        let mut config = herald::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_timeout: Duration::from_secs(1),
            ..herald::Config::default()
        };
        config.auth.jwt_secret = Some("async-jobs-test-secret-0123".to_owned());
        let herald = herald::Herald::new(config)?;
        let app = herald_example_async_jobs::app(herald.clone());
        let server = herald::Server::bind_with_router(herald, app).await?;
        let addr = server.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, shutdown, task })
    }

    /// One request on a fresh connection, with extra headers.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> TestResult<Response<Incoming>> {
        let tcp = within("connect", TcpStream::connect(self.addr)).await??;
        let (mut sender, conn) = within("handshake", http1::handshake(TokioIo::new(tcp))).await??;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        Ok(within("response headers", sender.send_request(req.body(body)?)).await??)
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> TestResult<(StatusCode, Value)> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status();
        let bytes = within("response body", resp.into_body().collect()).await??.to_bytes();
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    /// Signs in as `user` through the app's login; returns the bearer header value.
    async fn login(&self, user: &str) -> TestResult<String> {
        let (status, answer) = self.json("POST", "/login", &[], Some(&json!({"userId": user}))).await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
        Ok(format!("Bearer {}", answer["token"].as_str().ok_or("no token")?))
    }

    /// Opens `user:<user>` with the user's token and reads up to `connected`.
    async fn follow(&self, user: &str, bearer: &str) -> TestResult<SseStream> {
        let path = format!("/api/events?channel=user:{user}");
        let resp = self.send("GET", &path, &[("authorization", bearer)], None).await?;
        assert_eq!(resp.status(), StatusCode::OK, "subscribe to user:{user}");
        let mut stream = SseStream { body: resp.into_body(), buf: Vec::new() };
        assert_eq!(stream.next().await?["type"], "connected");
        Ok(stream)
    }

    async fn stop(self) -> TestResult {
        let _ = self.shutdown.send(());
        within("server shutdown", self.task).await???;
        Ok(())
    }
}

/// The `data:` of each SSE event, parsed; comments and `retry:` are skipped.
struct SseStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl SseStream {
    async fn next(&mut self) -> TestResult<Value> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> =
                    std::str::from_utf8(&block)?.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                if !data.is_empty() {
                    return Ok(serde_json::from_str(&data.join("\n"))?);
                }
                continue;
            }
            let frame = within("an SSE event", self.body.frame()).await?.ok_or("the SSE stream ended")??;
            if let Ok(chunk) = frame.into_data() {
                self.buf.extend_from_slice(&chunk);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reports_start_rising_progress_and_the_right_count_to_its_owner_only() -> TestResult {
    let app = TestApp::start().await?;
    let ann = app.login("ann").await?;
    let bob = app.login("bob").await?;
    let mut anns = app.follow("ann", &ann).await?;
    let mut bobs = app.follow("bob", &bob).await?;

    // The body names bob; the token says ann. The token wins.
    let limit = 3_000_000;
    let (status, answer) =
        app.json("POST", "/jobs", &[("authorization", &ann)], Some(&json!({"limit": limit, "userId": "bob"}))).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let job = answer["jobId"].as_str().ok_or("no jobId")?.to_owned();

    let started = anns.next().await?;
    assert_eq!((started["type"].as_str(), started["jobId"].as_str()), (Some("generation_started"), Some(&*job)));
    assert_eq!(started["channel"], "user:ann");
    let mut last = 0;
    let done = loop {
        let ev = anns.next().await?;
        assert_eq!(ev["jobId"].as_str(), Some(&*job), "{ev}");
        if ev["type"] != "generation_progress" {
            break ev;
        }
        let progress = ev["progress"].as_u64().ok_or("no progress")?;
        assert!(progress > last && progress <= 100, "progress must rise: {last} then {ev}");
        assert!(ev["message"].as_str().is_some_and(|m| m.contains("primes so far")), "{ev}");
        last = progress;
    };
    assert_eq!(last, 100, "the last progress report is 100%");
    assert_eq!(done["type"], "generation_complete", "{done}");
    assert_eq!(done["result"]["primes"].as_u64(), Some(primes_below(limit)), "{done}");
    assert_eq!(done["result"]["limit"].as_u64(), Some(limit));
    assert_eq!(done["result"]["url"], format!("/jobs/{job}"));
    assert!(done["result"]["latencyMs"].is_u64(), "{done}");

    // The job's state agrees, for its owner; to anyone else it does not exist.
    let (status, view) = app.json("GET", &format!("/jobs/{job}"), &[("authorization", &ann)], None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((view["status"].as_str(), view["progress"].as_u64()), (Some("complete"), Some(100)));
    assert_eq!(view["result"], done["result"]);
    let (status, view) = app.json("GET", &format!("/jobs/{job}"), &[("authorization", &bob)], None).await?;
    assert_eq!((status, view["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("job_not_found")));

    // Bob saw none of it: the first event on his channel is his own job's start.
    let (status, answer) = app.json("POST", "/jobs", &[("authorization", &bob)], Some(&json!({"limit": 10}))).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let first = bobs.next().await?;
    assert_eq!(
        (first["type"].as_str(), first["jobId"].as_str()),
        (Some("generation_started"), answer["jobId"].as_str())
    );

    drop((anns, bobs));
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_ends_with_generation_failed() -> TestResult {
    let app = TestApp::start().await?;
    let ann = app.login("ann").await?;
    let mut anns = app.follow("ann", &ann).await?;
    let big = herald_example_async_jobs::MAX_LIMIT;
    let (status, answer) = app.json("POST", "/jobs", &[("authorization", &ann)], Some(&json!({"limit": big}))).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let job = answer["jobId"].as_str().ok_or("no jobId")?.to_owned();
    assert_eq!(anns.next().await?["type"], "generation_started");
    assert_eq!(anns.next().await?["type"], "generation_progress", "the work is under way");

    let (status, view) =
        app.json("DELETE", &format!("/jobs/{job}"), &[("authorization", &ann)], Some(&json!({}))).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    let failed = loop {
        let ev = anns.next().await?;
        if ev["type"] != "generation_progress" {
            break ev;
        }
    };
    assert_eq!((failed["type"].as_str(), failed["error"].as_str()), (Some("generation_failed"), Some("cancelled")));
    assert_eq!(failed["jobId"].as_str(), Some(&*job));
    let (status, view) =
        app.json("DELETE", &format!("/jobs/{job}"), &[("authorization", &ann)], Some(&json!({}))).await?;
    assert_eq!((status, view["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("job_finished")));

    drop(anns);
    app.stop().await
}

#[tokio::test]
async fn jobs_need_a_verified_user_and_a_sensible_limit() -> TestResult {
    let app = TestApp::start().await?;
    let body = json!({"limit": 100, "userId": "ann"});
    let (status, answer) = app.json("POST", "/jobs", &[], Some(&body)).await?;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{answer}"
    );
    let forged = [("authorization", "Bearer not-a-token")];
    let (status, answer) = app.json("POST", "/jobs", &forged, Some(&body)).await?;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token")),
        "{answer}"
    );

    let ann = app.login("ann").await?;
    for bad in [json!({"limit": 1}), json!({"limit": herald_example_async_jobs::MAX_LIMIT + 1})] {
        let (status, answer) = app.json("POST", "/jobs", &[("authorization", &ann)], Some(&bad)).await?;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_limit")),
            "{bad}"
        );
    }
    let (status, answer) =
        app.json("POST", "/jobs", &[("authorization", &ann)], Some(&json!({"limit": "many"}))).await?;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(answer["error"]["code"], "invalid_body", "{answer}");
    let (status, answer) = app.json("POST", "/login", &[], Some(&json!({"userId": "a b"}))).await?;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_user_id")));

    // The page is served, and the cookie from the login works for the page's own calls.
    let resp = app.send("GET", "/", &[], None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let login = app.send("POST", "/login", &[], Some(&json!({"userId": "cat"}))).await?;
    let cookie = login.headers().get("set-cookie").and_then(|v| v.to_str().ok()).ok_or("no cookie")?;
    let cookie = cookie.split(';').next().ok_or("empty cookie")?.to_owned();
    let (status, me) = app.json("GET", "/me", &[("cookie", &cookie)], None).await?;
    assert_eq!((status, me["userId"].as_str()), (StatusCode::OK, Some("cat")));
    app.stop().await
}
