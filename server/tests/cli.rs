//! The `herald` binary: configuration from file, environment and flags, readable config
//! errors, and a clean exit 0 on SIGTERM with open streams; and its command-line clients,
//! `herald publish` and `herald subscribe`, run as processes against real servers.

mod support;

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use herald::Config;
use serde_json::{Value, json};
use support::{Proto, RawStream, RedisServer, TempDir, TestServer, herald, start, token, within};
use tokio::sync::mpsc;

fn client_for(addr: SocketAddr) -> support::Client {
    TestServer::client_at(addr, Proto::H1)
}

#[tokio::test]
async fn flags_override_the_environment_which_overrides_the_config_file() {
    let tmp = TempDir::new();
    let file = tmp.path.join("herald.toml");
    std::fs::write(&file, "node_id = \"from-file\"\nlisten = \"127.0.0.1:0\"\n").unwrap_or_else(|e| panic!("{e}"));

    let mut cmd = herald();
    cmd.args(["serve", "--config"]).arg(&file);
    let run = start(cmd).await;
    assert_eq!(client_for(run.addr).get_json("/api/status").await.1["nodeId"], "from-file");

    let mut cmd = herald();
    cmd.args(["serve", "--config"]).arg(&file).env("HERALD_NODE_ID", "from-env");
    let run = start(cmd).await;
    assert_eq!(client_for(run.addr).get_json("/api/status").await.1["nodeId"], "from-env");

    let mut cmd = herald();
    cmd.args(["serve", "--node-id", "from-flag", "--config"]).arg(&file).env("HERALD_NODE_ID", "from-env");
    let run = start(cmd).await;
    assert_eq!(client_for(run.addr).get_json("/api/status").await.1["nodeId"], "from-flag");
}

#[tokio::test]
async fn an_invalid_configuration_stops_the_start_with_a_readable_error() {
    let tmp = TempDir::new();
    let file = tmp.path.join("bad.toml");
    std::fs::write(&file, "heartbeat_interval = \"soon\"\n").unwrap_or_else(|e| panic!("{e}"));
    let out = herald().args(["serve", "--config"]).arg(&file).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`soon` is not a duration"), "{err}");

    let out = herald()
        .args(["serve", "--listen", "127.0.0.1:0", "--heartbeat-interval", "10m", "--client-timeout", "5m"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client_timeout must be longer than heartbeat_interval"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_open_streams_and_exits_zero() {
    let mut cmd = herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--heartbeat-interval", "15s"]);
    let mut run = start(cmd).await;
    let resp = client_for(run.addr).open_events("channel=channel:general", &[]).await;
    let mut raw = RawStream::new(resp);
    assert!(raw.read_until(b"\"connected\"").await);

    let pid = run.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    raw.read_to_end().await;
    assert!(raw.text().split("\"connected\"").nth(1).is_some_and(|rest| rest.contains("retry: ")), "{}", raw.text());
    let status = within("herald to exit", async {
        loop {
            if let Some(status) = run.child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                break status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

// --- herald publish / herald subscribe ---------------------------------------------------

/// A `herald` client command running as its own process, its stdout and stderr read line by
/// line as they come. Killed when dropped.
struct ClientProcess {
    child: std::process::Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far, for failure messages.
    seen_stderr: Vec<String>,
}

impl ClientProcess {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = without_client_env(herald())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn herald: {e}"));
        let stdout = lines(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        let stderr = lines(child.stderr.take().unwrap_or_else(|| panic!("no stderr")));
        Self { child, stdout, stderr, seen_stderr: Vec::new() }
    }

    /// `herald subscribe --url http://<addr> <args>`.
    fn subscribe(addr: SocketAddr, args: &[&str]) -> Self {
        let url = format!("http://{addr}");
        Self::spawn(&[&["subscribe", "--url", &url][..], args].concat(), &[])
    }

    /// The next line on stdout.
    async fn line(&mut self) -> String {
        let stderr = self.seen_stderr.join("\n");
        within("a line from herald subscribe", self.stdout.recv())
            .await
            .unwrap_or_else(|| panic!("herald subscribe ended; stderr: {stderr}"))
    }

    /// The next line on stdout, as JSON.
    async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Reads stderr until a line contains `needle`; returns that line.
    async fn stderr_until(&mut self, needle: &str) -> String {
        loop {
            let seen = self.seen_stderr.join("\n");
            let line = within(&format!("`{needle}` on stderr (so far: {seen})"), self.stderr.recv())
                .await
                .unwrap_or_else(|| panic!("stderr ended before `{needle}`: {seen}"));
            self.seen_stderr.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command without the developer's own client settings, so only the test's count.
fn without_client_env(mut cmd: Command) -> Command {
    for var in ["HERALD_URL", "HERALD_API_KEY", "HERALD_TOKEN", "HERALD_CA_CERT"] {
        cmd.env_remove(var);
    }
    cmd
}

fn lines(from: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs a `herald` command to its end, feeding it `stdin`, off the test's runtime (the
/// server under test runs on it).
async fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = without_client_env(herald());
    cmd.args(args);
    cmd.envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let stdin = stdin.to_owned();
    within(
        "herald to finish",
        tokio::task::spawn_blocking(move || {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn herald: {e}"));
            if let Some(mut input) = child.stdin.take() {
                input.write_all(stdin.as_bytes()).unwrap_or_else(|e| panic!("stdin: {e}"));
            }
            child.wait_with_output().unwrap_or_else(|e| panic!("herald: {e}"))
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `herald publish --url http://<addr> <args>`, which must succeed; returns the printed ids.
async fn publish(addr: SocketAddr, args: &[&str], stdin: &str) -> Vec<String> {
    let url = format!("http://{addr}");
    let out = run(&[&["publish", "--url", &url][..], args].concat(), &[], stdin).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald publish {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn an_event_published_with_the_cli_reaches_cli_subscribers_as_json_and_as_a_pretty_line() {
    let server = TestServer::start().await;
    let mut raw = ClientProcess::subscribe(server.addr, &["--channel", "channel:general", "--json"]);
    assert_eq!(raw.json().await["type"], "connected");
    let mut pretty = ClientProcess::subscribe(server.addr, &["--channel", "channel:general", "--filter", "mood:happy"]);
    pretty.stderr_until("connected to").await;

    let sad = publish(
        server.addr,
        &["--channel", "channel:general", "--type", "chat", "--data", r#"{"content":"meh","mood":"sad"}"#],
        "",
    )
    .await;
    let happy = publish(
        server.addr,
        &["--channel", "channel:general", "--type", "chat", "--data", r#"{"content":"hi","mood":"happy"}"#],
        "",
    )
    .await;
    assert_eq!((sad.len(), happy.len()), (1, 1), "one id each: {sad:?} {happy:?}");

    let first = raw.json().await;
    assert_eq!((first["id"].as_str(), first["content"].as_str()), (Some(sad[0].as_str()), Some("meh")), "{first}");
    let second = raw.json().await;
    assert_eq!((second["id"].as_str(), second["type"].as_str()), (Some(happy[0].as_str()), Some("chat")), "{second}");
    assert_eq!(second["channel"], "channel:general");

    // The filtered pretty subscriber skipped the sad one; its line is time, channel, type, payload.
    let timestamp = second["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {second}"));
    let time = &timestamp[11..timestamp.len() - 1];
    let expected = format!("{time}  channel:general  chat  {}", json!({"content": "hi", "mood": "happy"}));
    assert_eq!(pretty.line().await, expected);
}

#[tokio::test]
async fn a_batch_from_stdin_and_a_multi_channel_event_print_their_ids_in_order() {
    let server = TestServer::start().await;
    let mut sub =
        ClientProcess::subscribe(server.addr, &["--channel", "channel:a", "--channel", "channel:b", "--json"]);
    assert_eq!(sub.json().await["type"], "connected");

    let batch = json!([
        {"channel": "channel:a", "type": "tick", "n": 0},
        {"channel": "channel:b", "type": "tick", "n": 1},
        {"channel": "channel:a", "type": "tick", "n": 2},
    ]);
    let ids = publish(server.addr, &["--batch", "-"], &batch.to_string()).await;
    assert_eq!(ids.len(), 3, "{ids:?}");
    for (n, id) in ids.iter().enumerate() {
        let ev = sub.json().await;
        assert_eq!((ev["n"].as_u64(), ev["id"].as_str()), (Some(n as u64), Some(id.as_str())), "{ev}");
    }

    let data = TempDir::new();
    let file = data.path.join("payload.json");
    std::fs::write(&file, r#"{"n": 3}"#).unwrap_or_else(|e| panic!("{e}"));
    let both = publish(
        server.addr,
        &[
            "--channel",
            "channel:a",
            "--channel",
            "channel:b",
            "--type",
            "tick",
            "--data",
            &format!("@{}", file.display()),
        ],
        "",
    )
    .await;
    assert_eq!(both.len(), 1, "one event, one id: {both:?}");
    let ev = sub.json().await;
    assert_eq!((ev["n"].as_u64(), ev["id"].as_str()), (Some(3), Some(both[0].as_str())), "{ev}");
    // Delivered once although the stream follows both channels: the next line is the next event.
    let marker = publish(server.addr, &["--channel", "channel:b", "--type", "marker"], "").await;
    assert_eq!(sub.json().await["id"].as_str(), Some(marker[0].as_str()));
}

/// Fast reconnects for the restart tests: a short `retry:` hint and no drain spread.
#[tokio::test]
async fn publish_retries_an_event_stored_while_redis_was_frozen_under_one_key_and_it_is_delivered_once() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let server = TestServer::secured(move |c| {
        c.redis_url = Some(redis_url);
        support::no_presence(c);
    })
    .await;
    let mut stream = client_for(server.addr).user("1").subscribe("channel=channel:frozen", &[]).await;
    // Redis caches the publish script on the first publish; a frozen EVALSHA of a script it
    // does not know would fail on thaw, and nothing would be stored.
    let first = client_for(server.addr).backend().publish(&json!({"channel": "channel:frozen", "type": "m"})).await;
    assert_eq!(stream.expect().await.data["id"], first["id"]);
    redis.signal("STOP");
    let url = format!("http://{}", server.addr);
    let args = ["publish", "--url", &url, "--api-key", support::API_KEY, "--channel", "channel:frozen", "--type", "t"];
    let mut cli = ClientProcess::spawn(&args, &[]);
    // The first try's script waits in the frozen Redis's socket; the node answers 503 after its
    // timeout, and Redis runs the script once it thaws: stored, but the answer was lost.
    cli.stderr_until("retry 1 of").await;
    redis.signal("CONT");
    let id = cli.line().await;
    assert_eq!(stream.expect().await.data["id"], id.as_str());
    let marker = client_for(server.addr).backend().publish(&json!({"channel": "channel:frozen", "type": "m"})).await;
    assert_eq!(stream.expect().await.data["id"], marker["id"], "the retry published nothing more");
}

fn quick_retry(c: &mut Config) {
    c.retry = Duration::from_millis(100);
    c.drain_reconnect_window = Duration::ZERO;
    c.drain_timeout = Duration::from_secs(2);
}

/// A server on a port below the kernel's ephemeral range (32768 and up on Linux), so no
/// other test's outgoing connection can take the port while the server is down for a restart.
async fn on_a_fixed_port(configure: impl Fn(&mut Config)) -> TestServer {
    let port = loop {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    TestServer::with(|c| {
        configure(c);
        c.listen = SocketAddr::from(([127, 0, 0, 1], port));
    })
    .await
}

#[tokio::test]
async fn subscribe_survives_a_server_restart_and_resumes_without_loss_or_duplicates() {
    survives_a_server_restart(&[]).await;
}

#[tokio::test]
async fn subscribe_over_the_websocket_survives_a_server_restart_and_resumes_without_loss_or_duplicates() {
    survives_a_server_restart(&["--ws"]).await;
}

/// `herald subscribe <transport>` follows a node that drains and comes back on the same
/// port, while another node publishes in between.
async fn survives_a_server_restart(transport: &[&str]) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let on_redis = |c: &mut Config| {
        quick_retry(c);
        c.redis_url = Some(url.clone());
        c.websocket = true;
    };
    let first = on_a_fixed_port(on_redis).await;
    let addr = first.addr;
    let mut sub =
        ClientProcess::subscribe(addr, &[&["--channel", "channel:general", "--json"][..], transport].concat());
    assert_eq!(sub.json().await["type"], "connected");
    let tick = |n: u64| json!({"channel": "channel:general", "type": "tick", "n": n});
    let mut client = first.client(Proto::H1);
    for n in 0..3 {
        client.publish(&tick(n)).await;
    }
    for n in 0..3 {
        assert_eq!(sub.json().await["n"], n);
    }

    first.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    // While nothing listens on the subscriber's port, another node publishes: only a resume
    // from history can bring these.
    let other = TestServer::with(on_redis).await;
    for n in 3..6 {
        other.client(Proto::H1).publish(&tick(n)).await;
    }
    let second = TestServer::with(|c| {
        on_redis(c);
        c.listen = addr;
    })
    .await;
    sub.stderr_until("reconnected to").await;
    assert_eq!(sub.json().await["type"], "connected");
    for n in 6..9 {
        second.client(Proto::H1).publish(&tick(n)).await;
    }
    for n in 3..9 {
        let ev = sub.json().await;
        assert_eq!(ev["n"], n, "no loss, no duplicate, in order: {ev}");
    }
    assert!(!sub.seen_stderr.iter().any(|l| l.contains("reset")), "{:?}", sub.seen_stderr);
}

#[tokio::test]
async fn subscribe_says_plainly_when_a_reconnect_cannot_be_resumed() {
    // The in-memory engine forgets its history on restart: the resume must be reported.
    let first = on_a_fixed_port(quick_retry).await;
    let addr = first.addr;
    let mut sub = ClientProcess::subscribe(addr, &["--channel", "channel:general"]);
    sub.stderr_until("connected to").await;
    publish(addr, &["--channel", "channel:general", "--type", "chat", "--data", r#"{"content":"before"}"#], "").await;
    assert!(sub.line().await.ends_with(r#"chat  {"content":"before"}"#));

    first.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    let _second = TestServer::with(|c| {
        quick_retry(c);
        c.listen = addr;
    })
    .await;
    let reset = sub.stderr_until("reset on").await;
    assert!(reset.contains("reset on channel:general (") && reset.contains("refetch"), "{reset}");
    publish(addr, &["--channel", "channel:general", "--type", "chat", "--data", r#"{"content":"after"}"#], "").await;
    assert!(sub.line().await.ends_with(r#"chat  {"content":"after"}"#));
}

#[tokio::test]
async fn refusals_exit_non_zero_with_the_servers_error_message_on_one_line() {
    let server = TestServer::secured(|_| {}).await;
    let url = format!("http://{}", server.addr);
    let other_user = token("43");

    // What the server itself says to user 43 asking for user 42's channel.
    let refused = server.client(Proto::H1).user("43").open_events("channel=user:42", &[]).await;
    let (status, body) = support::read_json(refused).await;
    assert_eq!(status.as_u16(), 403);
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{body}"));
    let out =
        run(&["subscribe", "--channel", "user:42"], &[("HERALD_URL", &url), ("HERALD_TOKEN", &other_user)], "").await;
    assert!(!out.status.success());
    assert_eq!(stderr_of(&out), format!("error: subscription refused by {url}: {message} (403 forbidden)\n"));

    // Publishing to a user's channel needs an API key; the token's owner gets the server's 403.
    let args = ["publish", "--url", &url, "--channel", "user:42", "--type", "note", "--token", &other_user];
    let out = run(&args, &[], "").await;
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.starts_with(&format!("error: publish refused by {url}: ")) && err.ends_with("(403 forbidden)\n"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // With the API key (from the environment, as for `serve`) the same publish goes through.
    let args = ["publish", "--url", &url, "--channel", "user:42", "--type", "note"];
    let out = run(&args, &[("HERALD_API_KEY", support::API_KEY)], "").await;
    assert!(out.status.success(), "{}", stderr_of(&out));

    // A mistake caught before sending is one line too.
    let out = run(&["publish", "--url", &url, "--channel", "channel:a", "--type", "t", "--data", "[1]"], &[], "").await;
    assert!(!out.status.success());
    assert_eq!(stderr_of(&out), "error: --data must be a JSON object, like '{\"content\":\"hi\"}'\n");
}

#[tokio::test]
async fn subscribe_and_publish_over_the_websocket_print_what_the_sse_mode_prints() {
    let server = TestServer::with(|c| c.websocket = true).await;
    let channels = ["--channel", "channel:a", "--channel", "channel:b"];
    let mut sse = ClientProcess::subscribe(server.addr, &[&channels[..], &["--json"]].concat());
    let mut ws = ClientProcess::subscribe(server.addr, &[&channels[..], &["--json", "--ws"]].concat());
    let mut pretty_sse = ClientProcess::subscribe(server.addr, &channels);
    let mut pretty_ws = ClientProcess::subscribe(server.addr, &[&channels[..], &["--ws"]].concat());
    assert_eq!(sse.json().await["type"], "connected");
    assert_eq!(ws.json().await["type"], "connected");
    pretty_sse.stderr_until("connected to").await;
    pretty_ws.stderr_until("connected to").await;

    let data = r#"{"content":"hi","nested":{"z":1,"a":2}}"#;
    let ids = publish(server.addr, &["--ws", "--channel", "channel:a", "--type", "chat", "--data", data], "").await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let batch =
        json!([{"channel": "channel:b", "type": "tick", "n": 0}, {"channel": "channel:a", "type": "tick", "n": 1}]);
    let batch_ids = publish(server.addr, &["--ws", "--batch", "-"], &batch.to_string()).await;
    assert_eq!(batch_ids.len(), 2, "{batch_ids:?}");
    for id in ids.iter().chain(&batch_ids) {
        let line = sse.line().await;
        assert_eq!(ws.line().await, line, "the same bytes over both transports");
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(ev["id"].as_str(), Some(id.as_str()), "{line}");
        assert_eq!(pretty_ws.line().await, pretty_sse.line().await);
    }
}

#[tokio::test]
async fn the_websocket_modes_refuse_as_the_http_ones_do_and_resume_from_an_id() {
    let server = TestServer::secured(|c| c.websocket = true).await;
    let url = format!("http://{}", server.addr);
    let other_user = token("43");
    let env = [("HERALD_URL", url.as_str()), ("HERALD_TOKEN", other_user.as_str())];
    let sse = run(&["subscribe", "--channel", "user:42"], &env, "").await;
    let ws = run(&["subscribe", "--ws", "--channel", "user:42"], &env, "").await;
    assert!(!ws.status.success());
    assert_eq!(stderr_of(&ws), stderr_of(&sse), "the same refusal, word for word");
    let args = ["publish", "--ws", "--channel", "user:42", "--type", "note"];
    let out = run(&args, &env, "").await;
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.starts_with(&format!("error: publish refused by {url}: ")) && err.ends_with("(forbidden)\n"), "{err}");

    // Published over a socket with the API key, and resumed from an SSE id with
    // `--last-event-id`, as over SSE.
    let mut sse = client_for(server.addr).user("42").subscribe("channel=user:42", &[]).await;
    let key = [("HERALD_URL", url.as_str()), ("HERALD_API_KEY", support::API_KEY)];
    for n in 0..3 {
        let note = format!("{{\"n\":{n}}}");
        let out = run(&["publish", "--ws", "--channel", "user:42", "--type", "note", "--data", &note], &key, "").await;
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    let after_first = sse.expect_ns(0..1).await;
    let owner = token("42");
    let args =
        ["--channel", "user:42", "--json", "--ws", "--token", owner.as_str(), "--last-event-id", after_first.as_str()];
    let mut resumed = ClientProcess::subscribe(server.addr, &args);
    assert_eq!(resumed.json().await["type"], "connected");
    for n in 1..3 {
        assert_eq!(resumed.json().await["n"], n);
    }
}

#[tokio::test]
async fn publish_and_subscribe_speak_https_with_a_private_ca() {
    let server = TestServer::with_tls(|_| {}).await;
    let tmp = TempDir::new();
    let ca = tmp.path.join("ca.pem");
    std::fs::write(&ca, server.ca_pem.clone().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("https://localhost:{}", server.addr.port());
    let ca = ca.display().to_string();
    let env = [("HERALD_URL", url.as_str()), ("HERALD_CA_CERT", ca.as_str())];

    let mut sub = ClientProcess::spawn(&["subscribe", "--channel", "channel:general", "--json"], &env);
    assert_eq!(sub.json().await["type"], "connected");
    let out = run(&["publish", "--channel", "channel:general", "--type", "chat"], &env, "").await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(sub.json().await["id"].as_str(), Some(id.as_str()));

    // Without the CA the certificate is not trusted, and the error says so.
    let out = run(&["publish", "--url", &url, "--channel", "channel:general", "--type", "chat"], &[], "").await;
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("TLS handshake") && err.contains("certificate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn subscribe_takes_a_silent_stream_for_dead_and_resumes_from_the_last_id() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that sends one event and then nothing at all, not even a heartbeat: what a
    // half-open connection behind a dead proxy looks like.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut sub =
        ClientProcess::subscribe(addr, &["--channel", "channel:general", "--json", "--idle-timeout", "300ms"]);

    let mut heads = Vec::new();
    let mut open = Vec::new();
    for n in 0..2 {
        let (mut socket, _) = within("a connection", listener.accept()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            within("the request head", socket.read_exact(&mut byte)).await.unwrap_or_else(|e| panic!("{e}"));
            head.push(byte[0]);
        }
        heads.push(String::from_utf8_lossy(&head).to_lowercase());
        let body = format!("retry: 50\n\nid: fte:{n}\ndata: {{\"type\":\"connected\",\"n\":{n}}}\n\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.json().await["n"], n);
        open.push(socket); // kept open and silent
    }
    assert!(!heads[0].contains("last-event-id"), "{}", heads[0]);
    assert!(heads[1].contains("\r\nlast-event-id: fte:0\r\n"), "{}", heads[1]);
    sub.stderr_until("nothing received for 300ms").await;
}
