//! Operations that only the `herald` binary does: its log format, checked over real HTTP
//! against a running `herald serve`.

mod support;

use support::{Proto, TestServer};

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_never_contain_tickets_or_tokens() {
    let mut cmd = support::herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log", "debug"])
        .args(["--jwt-secret", support::SECRET])
        .stderr(std::process::Stdio::piped());
    let mut run = support::start_with_stderr(cmd).await;
    let token = support::token("7");
    let mut user = TestServer::client_at(run.addr, Proto::H1).user("7");
    let (_, body) = user.post_raw("/api/tickets", "").await;
    let ticket = body["ticket"].as_str().unwrap_or_default().to_owned();
    let stream =
        TestServer::client_at(run.addr, Proto::H1).subscribe(&format!("channel=user:7&ticket={ticket}"), &[]).await;
    drop(stream);
    let (status, _) = TestServer::client_at(run.addr, Proto::H1).get_json("/nope").await;
    assert_eq!(status, 404);
    let _ = std::process::Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status();
    let logs = run.stderr_to_end().await;
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{line}");
    }
    assert!(logs.contains("request_id"), "requests carry their id");
    assert!(!logs.contains(&ticket), "a ticket was logged");
    assert!(!logs.contains(&token), "a token was logged");
}

#[tokio::test]
async fn the_binary_turns_websocket_on_by_flag_and_drains_sockets_with_1012_before_it_exits() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut cmd = support::herald();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--websocket"]);
    let run = support::start(cmd).await;
    let url = format!("ws://{}/api/ws?channel=channel:d", run.addr);
    let (mut ws, _) =
        support::within("the upgrade", tokio_tungstenite::connect_async(url)).await.unwrap_or_else(|e| panic!("{e}"));
    let first = support::within("the connected event", ws.next()).await;
    let Some(Ok(Message::Text(first))) = first else { panic!("first frame: {first:?}") };
    assert!(first.as_str().contains("connected"), "{first}");
    let _ = std::process::Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status();
    let close = loop {
        match support::within("the close frame", ws.next()).await {
            Some(Ok(Message::Close(close))) => break close,
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    };
    let close = close.unwrap_or_else(|| panic!("a close frame without a code"));
    let reason: serde_json::Value = serde_json::from_str(&close.reason).unwrap_or_default();
    assert_eq!((u16::from(close.code), reason["code"].as_str()), (1012, Some("server_draining")));
}
