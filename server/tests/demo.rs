//! The demo's server side over real HTTP: dev identities (and that they leave dev mode's
//! policies as they are), the job that hashes for real, and the AI token stream.

mod support;

use herald::{Config, Herald, Server};
use hyper::StatusCode;
use serde_json::{Value, json};
use support::{Client, Proto, TestServer, test_config};

/// A node with Herald's routes and the demo's, as `herald serve` mounts them.
struct DemoServer {
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DemoServer {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        configure(&mut config);
        let herald = Herald::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let router = herald::http::router(herald.clone()).merge(herald::demo::router(herald.clone()));
        let server = Server::bind_with_router(herald, router).await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = server.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self { addr, shutdown: Some(tx) }
    }

    fn client(&self) -> Client {
        TestServer::client_at(self.addr, Proto::H1)
    }

    async fn dev_token(&self, user: &str) -> String {
        let (status, body) =
            self.client().post_json("/api/dev/token", &json!({"userId": user, "userName": "Ann"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap_or_else(|| panic!("no token: {body}")).to_owned()
    }
}

/// The next event of type `ty`, skipping others (presence, for one).
async fn next_of(stream: &mut support::SseStream, ty: &str) -> Value {
    loop {
        let ev = stream.expect().await;
        if ev.data["type"] == ty {
            return ev.data;
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_dev_token_makes_a_user_and_leaves_dev_mode_on_for_everyone_else() {
    let server = DemoServer::start(|_| {}).await;
    let token = server.dev_token("ann").await;
    let bearer = format!("Bearer {token}");
    let mut ann = server.client().with_header("authorization", &bearer);

    // Ann owns user:ann, not user:bob; her name comes from the token.
    let mut own = ann.subscribe("channel=user:ann&channel=channel:lobby", &[]).await;
    let refused = ann.open_events("channel=user:bob", &[]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    ann.publish(&json!({"channel": "channel:lobby", "type": "chat", "content": "hi"})).await;
    let chat = next_of(&mut own, "chat").await;
    assert_eq!(chat["content"], "hi");
    assert_eq!((chat["userId"].as_str(), chat["userName"].as_str()), (Some("ann"), Some("Ann")));

    // Dev mode still holds for anonymous clients: rooms open, user channels closed.
    let mut anon = server.client();
    anon.publish(&json!({"channel": "channel:lobby", "type": "chat", "content": "anon"})).await;
    let chat = next_of(&mut own, "chat").await;
    assert_eq!((chat["content"].as_str(), chat.get("userId")), (Some("anon"), None));
    assert_eq!(anon.open_events("channel=user:ann", &[]).await.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = anon.post_json("/api/tickets", &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And a ticket for Ann works as for any user.
    let (status, body) = ann.post_json("/api/tickets", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn dev_tokens_do_not_exist_with_auth_configured_and_are_checked_for_a_valid_id() {
    let secured = DemoServer::start(support::secure).await;
    let (status, body) = secured.client().post_json("/api/dev/token", &json!({"userId": "ann"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (_, config) = secured.client().get_json("/demo/config").await;
    assert_eq!(config["devTokens"], false);

    let dev = DemoServer::start(|_| {}).await;
    let (status, body) = dev.client().post_json("/api/dev/token", &json!({"userId": "a b"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_user_id")));
    let (status, body) = dev.client().post_json("/api/dev/token", &json!({"user": "ann"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")));

    // A token of another process (another random secret) is refused.
    let other = dev.dev_token("ann").await;
    let third = DemoServer::start(|_| {}).await;
    let resp = third
        .client()
        .with_header("authorization", &format!("Bearer {other}"))
        .open_events("channel=user:ann", &[])
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_job_hashes_for_real_and_reports_progress_to_its_user() {
    let server = DemoServer::start(|_| {}).await;
    let bearer = format!("Bearer {}", server.dev_token("ann").await);
    let mut ann = server.client().with_header("authorization", &bearer);
    let mut events = ann.subscribe("channel=user:ann", &[]).await;
    let (status, _) = server.client().post_json("/demo/jobs", &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a job needs a user");
    let (status, body) = ann.post_json("/demo/jobs", &json!({"rounds": 7})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_rounds")));

    let rounds = 4000u64;
    let (status, body) = ann.post_json("/demo/jobs", &json!({"rounds": rounds})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap_or_default().to_owned();
    assert_eq!(events.expect().await.data["type"], "generation_started");
    let mut progress = Vec::new();
    let done = loop {
        let ev = events.expect().await;
        assert_eq!(ev.data["jobId"], job_id.as_str());
        match ev.data["type"].as_str() {
            Some("generation_progress") => progress.push(ev.data["progress"].as_u64().unwrap_or(0)),
            Some("generation_complete") => break ev.data,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(progress.windows(2).all(|w| w[0] <= w[1]) && progress.last() == Some(&100), "{progress:?}");
    let mut d = job_id.as_bytes().to_vec();
    for _ in 0..rounds {
        d = ring::digest::digest(&ring::digest::SHA256, &d).as_ref().to_vec();
    }
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done["result"]["digest"], hex.as_str());
    // Then the notification and the unread count.
    assert_eq!(events.expect().await.data["type"], "notification");
    assert_eq!(events.expect().await.data["count"], 1);
}

#[tokio::test]
async fn an_ai_answer_streams_as_chunks_of_one_stream_that_end_done() {
    let server = DemoServer::start(|_| {}).await;
    let bearer = format!("Bearer {}", server.dev_token("ann").await);
    let mut ann = server.client().with_header("authorization", &bearer);
    let mut room = server.client().subscribe("channel=channel:lobby", &[]).await;
    let (status, body) = ann.post_json("/demo/ai", &json!({"prompt": "", "channel": "channel:lobby"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_prompt")));
    let (status, body) = ann.post_json("/demo/ai", &json!({"prompt": "hi", "channel": "user:ann"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_channel")));

    let (status, body) = ann.post_json("/demo/ai", &json!({"prompt": "How does resume work?"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let stream_id = body["streamId"].as_str().unwrap_or_default().to_owned();
    let mut text = String::new();
    let mut chunks = 0;
    loop {
        let ev: Value = room.expect().await.data;
        assert_eq!((ev["type"].as_str(), ev["streamId"].as_str()), (Some("ai_chat_chunk"), Some(&*stream_id)));
        assert_eq!(ev["prompt"], "How does resume work?");
        text.push_str(ev["text"].as_str().unwrap_or_default());
        chunks += 1;
        if ev["done"] == true {
            assert_eq!(ev["provider"], "markov");
            break;
        }
    }
    assert!(chunks > 30 && text.split_whitespace().count() >= 30, "{chunks} chunks: {text}");
}

/// `herald serve` with `args`, and a config file holding `toml`.
async fn serve(args: &[&str], toml: &str) -> (support::Running, support::TempDir) {
    let dir = support::TempDir::new();
    let file = dir.path.join("herald.toml");
    std::fs::write(&file, toml).unwrap_or_else(|e| panic!("write config: {e}"));
    let mut cmd = support::herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&file).args(args);
    cmd.env_remove("HERALD_DEMO");
    (support::start(cmd).await, dir)
}

#[tokio::test]
async fn a_node_with_auth_serves_no_demo_unless_asked_and_then_its_routes_keep_the_apis_limits() {
    let bearer = format!("Bearer {}", support::token("ann"));
    let (secured, _dir) = serve(&["--jwt-secret", support::SECRET], "").await;
    let mut ann = TestServer::client_at(secured.addr, Proto::H1).with_header("authorization", &bearer);
    for path in ["/", "/demo/config"] {
        assert_eq!(ann.get_json(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/demo/poke", "/demo/jobs", "/demo/ai"] {
        let (status, _) = ann.post_json(path, &json!({"userId": "bob", "prompt": "hi"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }

    // Asked for with `--demo`: served, and a poke costs what publishing it would.
    let (demo, _dir) =
        serve(&["--jwt-secret", support::SECRET, "--demo"], "publish_rate = 0.01\npublish_burst = 4\n").await;
    let mut ann = TestServer::client_at(demo.addr, Proto::H1).with_header("authorization", &bearer);
    assert_eq!(ann.get_json("/demo/config").await.0, StatusCode::OK);
    let poke = json!({"userId": "bob"});
    for _ in 0..2 {
        assert_eq!(ann.post_json("/demo/poke", &poke).await.0, StatusCode::OK);
    }
    let (status, body) = ann.post_json("/demo/poke", &poke).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")));
    let (status, body) = ann.post_json("/demo/jobs", &json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")));

    // A user whose token does not let them publish in the room cannot poke from it.
    let narrow = support::token_with(json!({"sub": "eve", "exp": support::now() + 600, "publish": ["channel:other"]}));
    let mut eve = TestServer::client_at(demo.addr, Proto::H1).with_header("authorization", &format!("Bearer {narrow}"));
    let (status, body) = eve.post_json("/demo/poke", &poke).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
}
