//! The library API an embedding application calls: `send_to_user`, `send_to_users`,
//! `send_to_all`, `broadcast`, and the counts, observed by real SSE subscribers.

mod support;

use herald::{Event, PublishError};
use support::{Proto, TestServer};

#[tokio::test]
async fn the_document_shaped_helpers_reach_the_right_channels() {
    let server = TestServer::secured(|_| {}).await;
    let h = server.herald.clone();
    let mut u1 = server.client(Proto::H2c).user("1").subscribe("channel=user:1&channel=system", &[]).await;
    let mut u2 = server.client(Proto::H2c).user("2").subscribe("channel=user:2", &[]).await;
    let mut room = server.client(Proto::H2c).user("3").subscribe("channel=channel:general", &[]).await;
    assert_eq!((h.connection_count(), h.channel_count()), (3, 4));

    let ack = h.send_to_user("1", Event::new("generation_complete").with("jobId", "j1")).await;
    let id = ack.unwrap_or_else(|e| panic!("{e}")).id;
    let ev = u1.expect().await;
    assert_eq!((ev.data["id"].as_str(), ev.data["jobId"].as_str()), (Some(&*id), Some("j1")));
    assert_eq!(ev.data["channel"], "user:1");

    h.send_to_users(&["1", "2"], Event::new("update").with("action", "dish_posted"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u1.expect().await.data["action"], "dish_posted");
    assert_eq!(u2.expect().await.data["action"], "dish_posted");

    h.send_to_all(Event::new("system").with("message", "maintenance in 10 minutes"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = u1.expect().await;
    assert_eq!((ev.data["channel"].as_str(), ev.data["type"].as_str()), (Some("system"), Some("system")));

    assert_eq!(room.expect().await.data["type"], "presence", "user 3's own arrival in the room");
    h.broadcast("general", Event::new("chat").with("content", "hi")).await.unwrap_or_else(|e| panic!("{e}"));
    h.broadcast("channel:general", Event::new("chat").with("content", "again")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(room.expect().await.data["content"], "hi");
    assert_eq!(room.expect().await.data["content"], "again");
}

#[tokio::test]
async fn broadcast_reaches_rooms_only_never_a_private_channel() {
    let server = TestServer::start().await;
    for name in ["user:42", "channel:a b", ""] {
        let refused = server.herald.broadcast(name, Event::new("chat")).await;
        assert!(matches!(refused, Err(PublishError::Channel(_))), "{name:?}: {refused:?}");
    }
    // A room called "system" is `channel:system`, not the `system` channel.
    let ack = server.herald.broadcast("system", Event::new("chat")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ack.positions[0].0.as_str(), "channel:system");
}

#[tokio::test]
async fn an_application_can_publish_on_behalf_of_a_user_it_authenticated() {
    let server = TestServer::secured(|_| {}).await;
    let mut room = server.client(Proto::H1).user("9").subscribe("channel=channel:general", &[]).await;
    assert_eq!(room.expect().await.data["userId"], "9", "user 9's own arrival in the room");
    let ann = herald::Publisher { user_id: Some("u_ann".into()), user_name: Some("Ann".into()) };
    let general = herald::ChannelName::parse("channel:general").unwrap_or_else(|e| panic!("{e}"));
    let presence = Event::presence(herald::catalogue::PresenceStatus::Online);
    server.herald.publish_for(vec![general], presence, &ann).await.unwrap_or_else(|e| panic!("{e}"));
    let ev = room.expect().await;
    assert_eq!((ev.data["userId"].as_str(), ev.data["userName"].as_str()), (Some("u_ann"), Some("Ann")));
    assert_eq!((ev.data["type"].as_str(), ev.data["status"].as_str()), (Some("presence"), Some("online")));
}
