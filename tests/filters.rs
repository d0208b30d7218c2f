//! Subscription filters (`docs/channels.md`, "Filters"): `filter=field:value`, repeatable,
//! all must match, applied on the server to live events and to what a resume replays.

mod support;

use serde_json::json;
use support::{Proto, TestServer};

#[tokio::test]
async fn filters_let_through_exactly_the_events_that_match_every_one() {
    let server = TestServer::start().await;
    let q = "channel=channel:incidents&filter=severity:SEV-1&filter=type:incident.created";
    let mut sev1 = server.client(Proto::H1).subscribe(q, &[]).await;
    let mut all = server.client(Proto::H1).subscribe("channel=channel:incidents", &[]).await;
    let mut p = server.client(Proto::H1);
    let events = [
        ("incident.created", "SEV-1", 0),
        ("incident.created", "SEV-2", 1),
        ("incident.updated", "SEV-1", 2),
        ("incident.created", "SEV-1", 3),
    ];
    for (t, sev, n) in events {
        p.publish(&json!({"channel": "channel:incidents", "type": t, "severity": sev, "n": n})).await;
    }
    for n in [0, 3] {
        assert_eq!(sev1.expect().await.data["n"], n);
    }
    for n in 0..4 {
        assert_eq!(all.expect().await.data["n"], n, "an unfiltered stream gets everything");
    }
    // Numbers and booleans compare by their JSON text.
    let mut five =
        server.client(Proto::H2c).subscribe("channel=channel:b&filter=count:5&filter=urgent:true", &[]).await;
    p.publish(&json!({"channel": "channel:b", "type": "badge_update", "count": 4, "urgent": true})).await;
    p.publish(&json!({"channel": "channel:b", "type": "badge_update", "count": 5, "urgent": false})).await;
    p.publish(&json!({"channel": "channel:b", "type": "badge_update", "count": 5, "urgent": true, "n": 9})).await;
    assert_eq!(five.expect().await.data["n"], 9);
}

#[tokio::test]
async fn a_resumed_filtered_stream_replays_only_the_matching_events() {
    let server = TestServer::start().await;
    let q = "channel=channel:f&filter=severity:SEV-1";
    let s = server.client(Proto::H1).subscribe(q, &[]).await;
    let last = s.connected_id();
    drop(s);
    let mut p = server.client(Proto::H1);
    for (sev, n) in [("SEV-2", 0), ("SEV-1", 1), ("SEV-3", 2), ("SEV-1", 3)] {
        p.publish(&json!({"channel": "channel:f", "type": "alert", "severity": sev, "n": n})).await;
    }
    let mut resumed = server.client(Proto::H1).subscribe(q, &[("last-event-id", &last)]).await;
    assert_eq!(resumed.expect().await.data["n"], 1);
    assert_eq!(resumed.expect().await.data["n"], 3);
}

#[tokio::test]
async fn a_channel_filter_matches_the_copy_of_a_multi_channel_event_the_stream_receives() {
    let server = TestServer::start().await;
    let q = "channel=channel:fb&filter=channel:channel:fb";
    let mut live = server.client(Proto::H1).subscribe(q, &[]).await;
    let gone = server.client(Proto::H2c).subscribe(q, &[]).await;
    let last = gone.connected_id();
    drop(gone);
    let mut p = server.client(Proto::H1);
    // The event's first copy is on `channel:fa`; the stream follows `channel:fb` and gets that
    // copy, whose `channel` is `channel:fb`.
    p.publish(&json!({"channels": ["channel:fa", "channel:fb"], "type": "note", "n": 1})).await;
    p.publish(&json!({"channel": "channel:fb", "type": "note", "n": 2})).await;
    for stream in [&mut live, &mut server.client(Proto::H1).subscribe(q, &[("last-event-id", &last)]).await] {
        let first = stream.expect().await;
        assert_eq!((first.data["n"].clone(), first.data["channel"].clone()), (json!(1), json!("channel:fb")));
        assert_eq!(stream.expect().await.data["n"], 2);
    }
}

#[tokio::test]
async fn malformed_or_too_many_filters_are_refused() {
    let server = TestServer::start().await;
    for q in ["channel=channel:x&filter=novalue", "channel=channel:x&filter=:v"] {
        let resp = server.client(Proto::H1).open_events(q, &[]).await;
        let (status, body) = support::read_json(resp).await;
        assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid_filter")), "{q}");
    }
    let many = (0..9).map(|i| format!("filter=f{i}:v")).collect::<Vec<_>>().join("&");
    let resp = server.client(Proto::H1).open_events(&format!("channel=channel:x&{many}"), &[]).await;
    assert_eq!(resp.status(), 400);
}
