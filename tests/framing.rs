//! Framing is safe: no payload can produce a second event or a broken frame. Payloads are
//! published over HTTP and the stream's bytes are parsed by an independent SSE parser.

mod support;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use support::{Proto, SseStream, TestServer};

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                Just("\n".to_owned()),
                Just("\r".to_owned()),
                Just("\r\n".to_owned()),
                Just("\n\n".to_owned()),
                Just("data: evil".to_owned()),
                Just("event: evil".to_owned()),
                Just("id: 1".to_owned()),
                Just("retry: 1".to_owned()),
                Just(":".to_owned()),
                Just("\u{0}".to_owned()),
                Just("\u{2028}\u{2029}\u{85}".to_owned()),
                Just("\u{feff}".to_owned()),
                any::<String>(),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn payload() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(hostile_string(), hostile_string().prop_map(Value::String), 1..4)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_payload_breaks_the_sse_framing(fields in payload(), named in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let server = TestServer::start().await;
            let mut client = server.client(Proto::H1);
            let query = if named { "channel=channel:f&events=named" } else { "channel=channel:f" };
            let mut stream: SseStream = client.subscribe(query, &[]).await;
            let mut event = fields.clone();
            event.insert("channel".into(), json!("channel:f"));
            event.insert("type".into(), json!("chat"));
            client.publish(&Value::Object(event)).await;
            client.publish(&json!({"channel": "channel:f", "type": "sentinel"})).await;

            let got = stream.expect().await;
            assert_eq!(got.data["type"], "chat", "exactly one event for the payload");
            assert_eq!(got.event, if named { "chat" } else { "message" });
            for (k, v) in &fields {
                if !herald::event::RESERVED_FIELDS.contains(&k.as_str()) {
                    assert_eq!(got.data.get(k), Some(v), "field {k:?} arrives intact");
                }
            }
            let next = stream.expect().await;
            assert_eq!(next.data["type"], "sentinel", "no extra event was injected");
        });
    }
}
