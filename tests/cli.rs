//! The `herald` binary: configuration from file, environment and flags, readable config
//! errors, and a clean exit 0 on SIGTERM with open streams.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::{Proto, RawStream, TempDir, TestServer, herald, start, within};

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
