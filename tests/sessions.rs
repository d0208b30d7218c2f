//! Sessions end with their credential: a stream (or a library connection) opened with a
//! token, or with a ticket issued for one, ends at the token's `exp` plus `auth.leeway` with
//! a `token_expired` notice whose id resumes it, and nothing published later reaches it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Proto, SseStream, TestServer, now, token, token_with};

/// A server that allows `leeway` of clock skew: a token's streams end at `exp` plus that.
async fn server_with_leeway(leeway: u64) -> TestServer {
    TestServer::secured(|c| c.auth.leeway = Duration::from_secs(leeway)).await
}

async fn strict_server() -> TestServer {
    server_with_leeway(0).await
}

/// A token for `sub` that expires within two seconds, and when it ends (after `leeway`).
fn short_token(sub: &str, leeway: u64) -> (String, u64) {
    let exp = now() + 2;
    (token_with(json!({"sub": sub, "exp": exp})), exp + leeway)
}

/// Reads `stream` through the private event published before expiry, the `token_expired`
/// notice and the end of the stream; publishes after the expiry and checks that a resume
/// from the notice's id, with a fresh token, gets exactly what came after.
/// `deadline` is the token's `exp` plus the leeway, in seconds.
async fn ends_at_expiry_and_resumes(
    server: &TestServer,
    user: &str,
    mut stream: SseStream,
    named: bool,
    deadline: u64,
) {
    let channel = format!("user:{user}");
    let mut backend = server.client(Proto::H1).backend();
    backend.publish(&json!({"channel": channel, "type": "note", "n": 1})).await;
    let before = stream.expect().await;
    assert_eq!(before.data["n"], 1, "{:?}", before.data);

    let expired = stream.expect().await;
    assert!(now() >= deadline, "not before `exp` plus the leeway");
    assert_eq!(expired.data["type"], "token_expired", "{:?}", expired.data);
    assert_eq!(expired.event, if named { "token_expired" } else { "message" });
    assert_eq!(expired.data["connectionId"], stream.connection_id().as_str());
    assert_eq!(expired.id, before.id, "the notice's id is the cursor after the last event written");

    // Published after the expiry: the stream ended and never sees it.
    backend.publish(&json!({"channel": channel, "type": "note", "n": 2})).await;
    let rest = stream.until_end().await;
    assert!(rest.is_empty(), "nothing after token_expired: {rest:?}");
    assert_eq!(backend.metric("herald_token_expired_disconnects_total").await, 1.0);

    // The client comes back with a fresh token and loses nothing.
    let fresh = format!("Bearer {}", token(user));
    let mut resumed = server
        .client(Proto::H1)
        .subscribe(&format!("channel={channel}"), &[("authorization", &fresh), ("last-event-id", &expired.id)])
        .await;
    let after = resumed.expect().await;
    assert_eq!(after.data["n"], 2, "{:?}", after.data);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_resumes_with_a_fresh_one() {
    let server = strict_server().await;
    let (token, deadline) = short_token("ann", 0);
    let bearer = format!("Bearer {token}");
    let stream = server.client(Proto::H1).subscribe("channel=user:ann", &[("authorization", &bearer)]).await;
    ends_at_expiry_and_resumes(&server, "ann", stream, false, deadline).await;
}

#[tokio::test]
async fn a_stream_opened_with_a_ticket_ends_when_the_tokens_expires_plus_the_leeway() {
    let server = server_with_leeway(1).await;
    let (token, deadline) = short_token("bob", 1);
    let bearer = format!("Bearer {token}");
    let mut user = server.client(Proto::H1).with_header("authorization", &bearer);
    let (status, body) = user.post_raw("/api/tickets", "").await;
    assert_eq!(status, 201, "{body}");
    let ticket = body["ticket"].as_str().unwrap_or_default().to_owned();
    // Over HTTP/2, with named events.
    let stream =
        server.client(Proto::H2c).subscribe(&format!("channel=user:bob&events=named&ticket={ticket}"), &[]).await;
    ends_at_expiry_and_resumes(&server, "bob", stream, true, deadline).await;
}

#[tokio::test]
async fn a_ticket_does_not_outlive_the_token_it_was_issued_for() {
    let server = strict_server().await;
    let exp = now() + 1;
    let bearer = format!("Bearer {}", token_with(json!({"sub": "cy", "exp": exp})));
    let (status, body) =
        server.client(Proto::H1).with_header("authorization", &bearer).post_raw("/api/tickets", "").await;
    assert_eq!(status, 201, "{body}");
    let ticket = body["ticket"].as_str().unwrap_or_default().to_owned();
    // The ticket lives 30 s; the token does not: wait for the clock to pass its `exp`.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = server.client(Proto::H1).open_events(&format!("channel=user:cy&ticket={ticket}"), &[]).await;
    let (status, body) = support::read_json(resp).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (401, Some("token_expired")), "{body}");
}

#[tokio::test]
async fn a_library_connection_of_a_user_ends_when_the_users_token_expires() {
    let server = strict_server().await;
    let h = &server.herald;
    let who = herald::Principal::User(std::sync::Arc::new(herald::UserIdentity {
        id: "dee".into(),
        name: None,
        subscribe: None,
        publish: None,
        expires_at: Some(now() + 2),
    }));
    let channel = h.parse_channel("user:dee").unwrap_or_else(|e| panic!("{e}"));
    let mut conn =
        h.connect(herald::StreamRequest::new(who, vec![channel])).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let connected = support::within("connected", conn.recv()).await.unwrap_or_else(|| panic!("ended early"));
    assert_eq!(connected.event_type, "connected");
    let expired = support::within("token_expired", conn.recv()).await.unwrap_or_else(|| panic!("ended early"));
    assert_eq!(expired.event_type, "token_expired");
    assert_eq!(expired.id, connected.id, "nothing was written in between: the cursor did not move");
    assert_eq!(support::within("the end", conn.recv()).await, None);
    assert_eq!(conn.close_reason(), Some(herald::CloseReason::TokenExpired));
    assert_eq!(h.connection_count(), 0, "it left the hub");
}
