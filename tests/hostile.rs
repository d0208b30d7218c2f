//! Hostile input over real HTTP: every bad request gets the fitting status and the one
//! error shape `{"error":{"code":"...","message":"..."}}`, and disturbs nobody else: other
//! subscribers keep their streams and receive the next good event, the server keeps
//! answering. Slow clients are cut off by `header_read_timeout`, not by luck.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};
use support::{ALL_PLAIN, API_KEY, Client, Proto, TestServer, read_json, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// helpers

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

/// Sends `method path` with `body` (and `content-type: application/json` when there is a
/// body); the answer's body must be JSON.
async fn call(client: &mut Client, method: &str, path: &str, body: impl Into<Bytes>) -> Answer {
    let body = body.into();
    let mut b = client.request(method, path);
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let req = b.body(Full::new(body)).unwrap_or_else(|e| panic!("request: {e}"));
    let resp = client.send(req).await;
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (status, body) = read_json(resp).await;
    Answer { status, content_type, body }
}

async fn publish_raw(client: &mut Client, body: impl Into<Bytes>) -> Answer {
    call(client, "POST", "/api/publish", body).await
}

async fn publish_json(client: &mut Client, body: &Value) -> Answer {
    publish_raw(client, body.to_string()).await
}

/// Opens `GET /api/events?<query>`, expecting a refusal, and reads it.
async fn subscribe_refused(client: &mut Client, query: &str) -> Answer {
    let resp = client.open_events(query, &[]).await;
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_ne!(resp.status(), StatusCode::OK, "`{query}` must be refused, got a stream");
    let (status, body) = read_json(resp).await;
    Answer { status, content_type, body }
}

/// Whether the body is exactly `{"error":{"code":"<snake_case>","message":"<non-empty>"}}`.
fn error_shape(body: &Value) -> Result<(), String> {
    let top = body.as_object().ok_or("the body is not an object")?;
    if top.keys().ne(["error"].iter()) {
        return Err("the body has other keys than `error`".into());
    }
    let err = top["error"].as_object().ok_or("`error` is not an object")?;
    let mut keys: Vec<_> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["code", "message"] {
        return Err("`error` must have `code` and `message` only".into());
    }
    let code = err["code"].as_str().ok_or("`code` is not a string")?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err("`code` is not snake_case".into());
    }
    let message = err["message"].as_str().ok_or("`message` is not a string")?;
    if message.trim().is_empty() {
        return Err("`message` is empty".into());
    }
    Ok(())
}

#[track_caller]
fn assert_error_shape(body: &Value, what: &str) {
    if let Err(problem) = error_shape(body) {
        panic!("{what}: {problem}: {body}");
    }
}

/// The answer is `status` with the JSON error `code`.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(answer.status.as_u16(), status, "{what}: {}", answer.body);
    assert!(answer.content_type.starts_with("application/json"), "{what}: content-type {:?}", answer.content_type);
    assert_error_shape(&answer.body, what);
    assert_eq!(answer.body["error"]["code"], code, "{what}: {}", answer.body);
}

/// Reads from a raw connection until the server closes it (EOF or reset); returns the
/// bytes it sent before closing.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A good event on `channel` is published and arrives as the very next event of every
/// stream given: nothing refused earlier was delivered, and the streams are alive.
async fn next_good_event_arrives(publisher: &mut Client, channel: &str, streams: &mut [&mut support::SseStream]) {
    let answer = publisher.publish(&json!({"channel": channel, "type": "good", "n": 1})).await;
    for s in streams.iter_mut() {
        let ev = s.expect().await;
        assert_eq!((&ev.data["id"], &ev.data["type"]), (&answer["id"], &json!("good")), "{:?}", ev);
    }
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

// ---------------------------------------------------------------------------------------
// publish: the body

#[tokio::test]
async fn malformed_json_on_publish_is_400_invalid_json() {
    let server = TestServer::start().await;
    let bodies: [&[u8]; 10] = [
        b"{",
        b"not json",
        b"{\"channel\":\"channel:x\",\"type\":}",
        b"{\"channel\":\"channel:x\",\"type\":\"chat\"}}",
        b"[{\"channel\":\"channel:x\",\"type\":\"chat\"},]",
        b"{'channel':'channel:x'}",
        b"{\"channel\":\"channel:x\",\"type\":\"chat\",\"n\":1e400}",
        b"",
        b"   ",
        b"\x00\x01\x02",
    ];
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for body in bodies {
            let what = format!("{proto:?} {:?}", String::from_utf8_lossy(body));
            assert_error(&publish_raw(&mut client, body).await, 400, "invalid_json", &what);
        }
    }
}

#[tokio::test]
async fn deeply_nested_json_is_400_invalid_json_not_a_crash() {
    let server = TestServer::start().await;
    let deep_array = "[".repeat(100_000);
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for (name, body) in [("arrays", &deep_array), ("objects", &deep_object)] {
            let answer = publish_raw(&mut client, body.clone()).await;
            assert_error(&answer, 400, "invalid_json", &format!("{proto:?} deep {name}"));
        }
        assert_eq!(client.get_json("/healthz").await.0, 200);
    }
}

#[tokio::test]
async fn a_json_body_that_is_not_an_object_or_array_is_400_invalid_event() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for body in [json!(42), json!("x"), json!(null), json!(true), json!(1.5)] {
            assert_error(&publish_json(&mut client, &body).await, 400, "invalid_event", &format!("{proto:?} {body}"));
        }
        // Inside a batch, too, and the message names the culprit's index.
        let batch = json!([{"channel": "channel:x", "type": "chat"}, 42]);
        let answer = publish_json(&mut client, &batch).await;
        assert_error(&answer, 400, "invalid_event", "batch with a number");
        assert!(answer.body["error"]["message"].as_str().unwrap_or_default().contains("event 1"), "{}", answer.body);
        // The REST form refuses a non-object body the same way.
        let answer = call(&mut client, "POST", "/api/channels/channel:x/events", "[1]").await;
        assert_error(&answer, 400, "invalid_event", "REST form with an array");
    }
}

#[tokio::test]
async fn a_type_that_is_not_a_string_is_400_invalid_type() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for t in [json!(5), json!(null), json!(["chat"]), json!({"t": "chat"}), json!(true)] {
            let body = json!({"channel": "channel:x", "type": t});
            assert_error(&publish_json(&mut client, &body).await, 400, "invalid_type", &format!("{proto:?} {body}"));
        }
    }
}

#[tokio::test]
async fn a_channel_that_is_not_a_string_or_channels_not_a_nonempty_string_array_is_400_invalid_channel() {
    let server = TestServer::start().await;
    let bodies = [
        json!({"channel": 5, "type": "chat"}),
        json!({"channel": null, "type": "chat"}),
        json!({"channel": ["channel:x"], "type": "chat"}),
        json!({"channels": "channel:x", "type": "chat"}),
        json!({"channels": [], "type": "chat"}),
        json!({"channels": [5], "type": "chat"}),
        json!({"channels": ["channel:x", null], "type": "chat"}),
        json!({"channels": {"channel:x": true}, "type": "chat"}),
        json!({"channels": null, "type": "chat"}),
    ];
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for body in &bodies {
            assert_error(&publish_json(&mut client, body).await, 400, "invalid_channel", &format!("{proto:?} {body}"));
        }
    }
}

#[tokio::test]
async fn a_missing_or_empty_type_is_400_missing_type() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for body in [
            json!({"channel": "channel:x", "content": "hi"}),
            json!({"channels": ["channel:x"]}),
            json!({"channel": "channel:x", "type": ""}),
        ] {
            assert_error(&publish_json(&mut client, &body).await, 400, "missing_type", &format!("{proto:?} {body}"));
        }
        let answer = call(&mut client, "POST", "/api/channels/channel:x/events", r#"{"content":"hi"}"#).await;
        assert_error(&answer, 400, "missing_type", "REST form without a type");
    }
}

#[tokio::test]
async fn a_missing_channel_is_400_missing_channel() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for body in [json!({"type": "chat"}), json!({}), json!([{"type": "chat", "content": "hi"}])] {
            assert_error(&publish_json(&mut client, &body).await, 400, "missing_channel", &format!("{proto:?} {body}"));
        }
    }
}

#[tokio::test]
async fn both_channel_and_channels_is_400_invalid_event() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let body = json!({"channel": "channel:x", "channels": ["channel:y"], "type": "chat"});
        assert_error(&publish_json(&mut client, &body).await, 400, "invalid_event", &format!("{proto:?} {body}"));
        // The REST form names the channel in the path; the body may not name one too.
        for body in
            [json!({"channel": "channel:y", "type": "chat"}), json!({"channels": ["channel:y"], "type": "chat"})]
        {
            let answer = call(&mut client, "POST", "/api/channels/channel:x/events", body.to_string()).await;
            assert_error(&answer, 400, "invalid_event", &format!("REST form with {body}"));
        }
    }
}

/// What the JSON of a body says is what is published: a channel name or a key written with
/// escapes is the one it spells, a key given twice counts with its last value, fields the
/// publish does not read are payload whatever their depth, a number past 64 bits is a float.
#[tokio::test]
async fn escapes_repeated_keys_unknown_fields_and_big_numbers_publish_what_the_json_says() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:general&channel=channel:b", &[]).await;
        let bodies: [(&str, &str); 6] = [
            ("/api/publish", r#"{"channel":"channel:\u0067eneral","\u0074ype":"ch\u0061t","n":1}"#),
            ("/api/publish", r#"{"channel":"channel:a","channel":"channel:b","type":"x","type":"chat","n":0,"n":2}"#),
            ("/api/publish", r#"{"channel":5,"channel":"channel:b","type":"chat","n":3}"#),
            (
                "/api/publish",
                r#"[{"channel":"channel:general","type":"chat","n":4,"big":18446744073709551616,"deep":{"a":[1,{"b":null}]},"quote\"d":"a\nb"},
                    {"channels":["channel:b","channel:\u0067eneral"],"type":"chat","n":5}]"#,
            ),
            ("/api/channels/channel:general/events", r#"{"\u0074ype":"chat","n":6,"n":6}"#),
            ("/api/publish", r#"{"channel":"channel:b","type":"chat","n":7,"idempotencyKey":"stays"}"#),
        ];
        for (path, body) in bodies {
            let answer = call(&mut client, "POST", path, body).await;
            assert_eq!(answer.status, StatusCode::OK, "{proto:?} {body}: {}", answer.body);
        }
        let channels = [
            "channel:general",
            "channel:b",
            "channel:b",
            "channel:general",
            "channel:b",
            "channel:general",
            "channel:b",
        ];
        for (n, channel) in (1..=7).zip(channels) {
            let ev = stream.expect().await;
            assert_eq!(
                (ev.data["n"].as_u64(), ev.data["channel"].as_str(), ev.data["type"].as_str()),
                (Some(n), Some(channel), Some("chat")),
                "{proto:?} {:?}",
                ev.data
            );
            if n == 4 {
                assert_eq!(ev.data["big"].as_f64(), Some(18_446_744_073_709_551_616.0), "{:?}", ev.data);
                assert_eq!((&ev.data["deep"], &ev.data["quote\"d"]), (&json!({"a": [1, {"b": null}]}), &json!("a\nb")));
            }
        }
        // A key given twice whose last value is wrong is refused as that value.
        let answer = publish_raw(&mut client, r#"{"channel":"channel:b","channel":5,"type":"chat"}"#).await;
        assert_error(&answer, 400, "invalid_channel", "a repeated channel, the last a number");
        let answer = publish_raw(&mut client, r#"[{"channel":"channel:\u0062 ","type":"chat"}]"#).await;
        assert_error(&answer, 400, "invalid_channel", "an escaped space in a channel name");
        next_good_event_arrives(&mut client, "channel:b", &mut [&mut stream]).await;
    }
}

#[tokio::test]
async fn invalid_utf8_in_the_body_is_400_not_500_and_the_server_carries_on() {
    let server = TestServer::start().await;
    let bodies: [&[u8]; 6] = [
        b"{\"channel\":\"channel:x\",\"type\":\"chat\",\"text\":\"\xff\xfe\"}",
        b"{\"channel\":\"channel:x\",\"type\":\"ch\xc3\x28t\"}",
        b"{\"channel\":\"channel:\xc0\xaf\",\"type\":\"chat\"}",
        b"{\"channel\":\"channel:x\",\"type\":\"chat\",\"text\":\"\xed\xa0\x80\"}",
        b"{\"channel\":\"channel:x\",\"type\":\"chat\",\"text\":\"\\ud800\"}",
        b"\xff\xfe{\x00\"\x00",
    ];
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:x", &[]).await;
        for body in bodies {
            let what = format!("{proto:?} {:?}", String::from_utf8_lossy(body));
            assert_error(&publish_raw(&mut client, body).await, 400, "invalid_json", &what);
        }
        next_good_event_arrives(&mut client, "channel:x", &mut [&mut stream]).await;
        assert_eq!(client.get_json("/healthz").await.0, 200);
    }
}

// ---------------------------------------------------------------------------------------
// publish: sizes

fn small_limits(c: &mut herald::Config) {
    c.max_body_bytes = 4096;
    c.max_payload_bytes = 1024;
    c.max_batch = 3;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413_body_too_large() {
    let server = TestServer::with(small_limits).await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:big", &[]).await;
        let body = json!({"channel": "channel:big", "type": "chat", "text": long(5000)});
        assert_error(&publish_json(&mut client, &body).await, 413, "body_too_large", &format!("{proto:?} one event"));
        // Far over the limit, and not even JSON: the size is refused first.
        let answer = publish_raw(&mut client, vec![b'['; 1 << 20]).await;
        assert_error(&answer, 413, "body_too_large", &format!("{proto:?} 1 MiB"));
        let answer = call(&mut client, "POST", "/api/channels/channel:big/events", long(5000)).await;
        assert_error(&answer, 413, "body_too_large", &format!("{proto:?} REST form"));
        next_good_event_arrives(&mut client, "channel:big", &mut [&mut stream]).await;
    }
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_413_body_too_large() {
    // No Content-Length: the limit must hold while the body streams in.
    let server = TestServer::with(small_limits).await;
    let mut tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut request = b"POST /api/publish HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let chunk = format!("{{\"channel\":\"channel:big\",\"type\":\"chat\",\"text\":\"{}\"}}", long(2500));
    for part in [&chunk[..2000], &chunk[2000..], &chunk[..2000]] {
        request.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    within("the request to be written", tcp.write_all(&request)).await.unwrap_or_else(|e| panic!("write: {e}"));
    let reply = within("the reply and close", until_closed(&mut tcp)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body ({e}): {text}"));
    assert_error_shape(&body, "chunked");
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    assert_eq!(server.client(Proto::H1).get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn an_event_payload_over_max_payload_bytes_with_a_body_under_the_limit_is_413_payload_too_large() {
    let server = TestServer::with(small_limits).await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:big", &[]).await;
        let big = json!({"channel": "channel:big", "type": "chat", "text": long(2000)});
        assert!(big.to_string().len() < 4096);
        assert_error(&publish_json(&mut client, &big).await, 413, "payload_too_large", &format!("{proto:?} single"));
        let batch = json!([{"channel": "channel:big", "type": "chat"}, big]);
        let answer = publish_json(&mut client, &batch).await;
        assert_error(&answer, 413, "payload_too_large", &format!("{proto:?} in a batch"));
        assert!(answer.body["error"]["message"].as_str().unwrap_or_default().contains("event 1"), "{}", answer.body);
        let rest = json!({"type": "chat", "text": long(2000)}).to_string();
        let answer = call(&mut client, "POST", "/api/channels/channel:big/events", rest).await;
        assert_error(&answer, 413, "payload_too_large", &format!("{proto:?} REST form"));
        // Nothing of the refused batch was delivered.
        next_good_event_arrives(&mut client, "channel:big", &mut [&mut stream]).await;
    }
}

#[tokio::test]
async fn a_batch_over_max_batch_is_413_batch_too_large_and_publishes_nothing() {
    let server = TestServer::with(small_limits).await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:b", &[]).await;
        let event = |n: usize| json!({"channel": "channel:b", "type": "update", "n": n});
        let over: Vec<_> = (0..4).map(event).collect();
        assert_error(&publish_json(&mut client, &json!(over)).await, 413, "batch_too_large", &format!("{proto:?}"));
        let far_over: Vec<_> = (0..40).map(event).collect();
        assert_error(&publish_json(&mut client, &json!(far_over)).await, 413, "batch_too_large", "40 events");
        // Exactly max_batch is fine.
        let at: Vec<_> = (0..3).map(event).collect();
        let answer = client.publish(&json!(at)).await;
        assert_eq!(answer["ids"].as_array().map(Vec::len), Some(3), "{answer}");
        for n in 0..3 {
            assert_eq!(stream.expect().await.data["n"], n, "only the accepted batch arrives");
        }
    }
}

#[tokio::test]
async fn an_empty_batch_is_400_empty_batch() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        assert_error(&publish_raw(&mut client, "[]").await, 400, "empty_batch", &format!("{proto:?}"));
        assert_error(&publish_raw(&mut client, " [ ] ").await, 400, "empty_batch", &format!("{proto:?} spaced"));
    }
}

// ---------------------------------------------------------------------------------------
// channels

/// Channel names refused everywhere, with how to write them in a query string.
fn bad_channels() -> Vec<(String, String)> {
    let very_long = format!("channel:{}", long(200));
    vec![
        ("general".into(), "general".into()),
        ("unknown:x".into(), "unknown:x".into()),
        ("channel:".into(), "channel:".into()),
        ("channel:a b".into(), "channel:a%20b".into()),
        ("channel:a\nb".into(), "channel:a%0Ab".into()),
        ("channel:a*".into(), "channel:a*".into()),
        ("channel:a:b".into(), "channel:a:b".into()),
        ("Channel:x".into(), "Channel:x".into()),
        (":x".into(), ":x".into()),
        ("".into(), "".into()),
        ("channel:é".into(), "channel:%C3%A9".into()),
        (very_long.clone(), very_long),
    ]
}

#[tokio::test]
async fn bad_channel_names_on_publish_are_400_invalid_channel() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for (name, _) in bad_channels() {
            let what = format!("{proto:?} {name:?}");
            let single = json!({"channel": name, "type": "chat"});
            assert_error(&publish_json(&mut client, &single).await, 400, "invalid_channel", &what);
            let multi = json!({"channels": ["channel:ok", name], "type": "chat"});
            assert_error(&publish_json(&mut client, &multi).await, 400, "invalid_channel", &what);
        }
        for path in ["general", "unknown:x", "channel:a%20b", "channel:a*", "channel:%C3%A9", ""] {
            let answer = call(&mut client, "POST", &format!("/api/channels/{path}/events"), r#"{"type":"chat"}"#).await;
            assert_error(&answer, 400, "invalid_channel", &format!("{proto:?} REST form {path}"));
        }
    }
}

#[tokio::test]
async fn bad_channel_names_on_subscribe_are_400_invalid_channel() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        // `channel:a*` is a pattern, which a subscription may name; malformed patterns are not.
        let bad_patterns = ["channel:a*b*", "channel:*a", "*", "unknown:x*", "user:1**", "system*"];
        let names = bad_channels()
            .into_iter()
            .filter(|(name, _)| name != "channel:a*")
            .chain(bad_patterns.iter().map(|p| ((*p).to_owned(), (*p).to_owned())));
        for (name, query) in names {
            let what = format!("{proto:?} {name:?}");
            let answer = subscribe_refused(&mut client, &format!("channel={query}")).await;
            assert_error(&answer, 400, "invalid_channel", &what);
            let answer = subscribe_refused(&mut client, &format!("channel=channel:ok&channel={query}")).await;
            assert_error(&answer, 400, "invalid_channel", &format!("{what} after a good one"));
        }
    }
    assert_eq!(server.herald.connection_count(), 0, "no refused subscribe left a connection behind");
}

#[tokio::test]
async fn system_is_a_channel_not_a_namespace() {
    // `system` is one channel; `system:x` is no channel of the spec, and the library's own
    // `ChannelName::parse` refuses it.
    assert!(herald::ChannelName::parse("system:x").is_err());
    let server = TestServer::start().await;
    let mut client = server.client(Proto::H1);
    let answer = publish_json(&mut client, &json!({"channel": "system:x", "type": "chat"})).await;
    assert_error(&answer, 400, "invalid_channel", "publish to system:x");
    let answer = subscribe_refused(&mut client, "channel=system:x").await;
    assert_error(&answer, 400, "invalid_channel", "subscribe to system:x");
}

#[tokio::test]
async fn subscribe_without_a_channel_is_400_missing_channel() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for query in ["", "events=named", "lastEventId=abc"] {
            let answer = subscribe_refused(&mut client, query).await;
            assert_error(&answer, 400, "missing_channel", &format!("{proto:?} `{query}`"));
        }
        // No query string at all.
        let answer = call(&mut client, "GET", "/api/events", Bytes::new()).await;
        assert_error(&answer, 400, "missing_channel", &format!("{proto:?} no query"));
    }
}

#[tokio::test]
async fn subscribe_to_more_than_max_channels_is_400_too_many_channels() {
    let server = TestServer::with(|c| c.max_channels_per_connection = 2).await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let answer = subscribe_refused(&mut client, "channel=channel:a&channel=channel:b&channel=channel:c").await;
        assert_error(&answer, 400, "too_many_channels", &format!("{proto:?} three"));
        let many: Vec<String> = (0..100).map(|i| format!("channel=channel:c{i}")).collect();
        let answer = subscribe_refused(&mut client, &many.join("&")).await;
        assert_error(&answer, 400, "too_many_channels", &format!("{proto:?} a hundred"));
        // Repeats of the same channels count once; the limit itself is allowed.
        let ok = client.subscribe("channel=channel:a&channel=channel:b&channel=channel:a&channel=channel:b", &[]).await;
        drop(ok);
    }
}

// ---------------------------------------------------------------------------------------
// query parameters

#[tokio::test]
async fn unknown_query_parameters_are_400_invalid_parameter() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for query in [
            "chanel=channel:x",
            "channel=channel:x&chanel=channel:y",
            "Channel=channel:x",
            "channel=channel:x&last_event_id=1",
            "channel=channel:x&=",
            "channel=channel:x&foo",
        ] {
            let answer = subscribe_refused(&mut client, query).await;
            assert_error(&answer, 400, "invalid_parameter", &format!("{proto:?} `{query}`"));
        }
        // An unknown name is quoted back shortened, never in full.
        let answer = subscribe_refused(&mut client, &format!("channel=channel:x&{}=1", long(3000))).await;
        assert_error(&answer, 400, "invalid_parameter", "long unknown name");
        assert!(answer.body["error"]["message"].as_str().map_or(0, str::len) < 200, "{}", answer.body);
    }
}

#[tokio::test]
async fn a_bad_events_value_is_400_invalid_parameter() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for value in ["bogus", "", "NAMED", "named%00", "true"] {
            let answer = subscribe_refused(&mut client, &format!("channel=channel:x&events={value}")).await;
            assert_error(&answer, 400, "invalid_parameter", &format!("{proto:?} events={value}"));
        }
    }
}

#[tokio::test]
async fn a_query_over_max_query_bytes_is_414_query_too_long() {
    let server = TestServer::with(|c| c.max_query_bytes = 1024).await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for query in [
            format!("channel=channel:{}", long(2000)),
            format!("channel=channel:x&lastEventId={}", long(2000)),
            (0..200).map(|i| format!("channel=channel:c{i}")).collect::<Vec<_>>().join("&"),
            format!("chanel={}", long(2000)),
        ] {
            let answer = subscribe_refused(&mut client, &query).await;
            assert_error(&answer, 414, "query_too_long", &format!("{proto:?} {} bytes", query.len()));
        }
    }
}

#[tokio::test]
async fn a_bad_last_event_id_is_400_invalid_last_event_id() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let answer = subscribe_refused(&mut client, &format!("channel=channel:x&lastEventId={}", long(5000))).await;
        assert_error(&answer, 400, "invalid_last_event_id", &format!("{proto:?} too long in the query"));
        let answer = call_with_last_event_id(&mut client, HeaderValue::from_bytes(b"\xff\xfe").ok()).await;
        assert_error(&answer, 400, "invalid_last_event_id", &format!("{proto:?} not ASCII in the header"));
        let answer = call_with_last_event_id(&mut client, HeaderValue::from_str(&long(5000)).ok()).await;
        assert_error(&answer, 400, "invalid_last_event_id", &format!("{proto:?} too long in the header"));
    }
}

async fn call_with_last_event_id(client: &mut Client, value: Option<HeaderValue>) -> Answer {
    let value = value.unwrap_or_else(|| panic!("header value"));
    let req = client
        .request("GET", "/api/events?channel=channel:x")
        .header("last-event-id", value)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let resp = client.send(req).await;
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (status, body) = read_json(resp).await;
    Answer { status, content_type, body }
}

// ---------------------------------------------------------------------------------------
// event types

#[tokio::test]
async fn reserved_event_types_are_400_invalid_type() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        let mut stream = server.client(proto).subscribe("channel=channel:t", &[]).await;
        for t in ["connected", "reset"] {
            let what = format!("{proto:?} {t}");
            let single = json!({"channel": "channel:t", "type": t});
            assert_error(&publish_json(&mut client, &single).await, 400, "invalid_type", &what);
            let batch = json!([{"channel": "channel:t", "type": "chat"}, single]);
            assert_error(&publish_json(&mut client, &batch).await, 400, "invalid_type", &format!("{what} in a batch"));
            let answer =
                call(&mut client, "POST", "/api/channels/channel:t/events", json!({"type": t}).to_string()).await;
            assert_error(&answer, 400, "invalid_type", &format!("{what} REST form"));
        }
        // A subscriber never sees a forged `connected` or `reset`, nor the batch's good half.
        next_good_event_arrives(&mut client, "channel:t", &mut [&mut stream]).await;
    }
}

#[tokio::test]
async fn malformed_event_types_are_400_invalid_type() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for t in [
            "a b".to_owned(),
            "a".repeat(65),
            "chat\n".to_owned(),
            "chat\r\ndata: x".to_owned(),
            "é".to_owned(),
            "a/b".to_owned(),
            " ".to_owned(),
            "chat\u{0}".to_owned(),
        ] {
            let body = json!({"channel": "channel:t", "type": t});
            assert_error(&publish_json(&mut client, &body).await, 400, "invalid_type", &format!("{proto:?} {t:?}"));
        }
        // The longest allowed type and every allowed character are fine.
        client.publish(&json!({"channel": "channel:t", "type": "a".repeat(64)})).await;
        client.publish(&json!({"channel": "channel:t", "type": "incident.created:v2_x-Y"})).await;
    }
}

// ---------------------------------------------------------------------------------------
// routes

#[tokio::test]
async fn wrong_methods_are_405_method_not_allowed_json() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for (method, path, body) in [
            ("DELETE", "/api/publish", ""),
            ("GET", "/api/publish", ""),
            ("PUT", "/api/publish", r#"{"channel":"channel:x","type":"chat"}"#),
            ("POST", "/api/events?channel=channel:x", r#"{"channel":"channel:x","type":"chat"}"#),
            ("DELETE", "/api/events?channel=channel:x", ""),
            ("PUT", "/healthz", ""),
            ("POST", "/readyz", ""),
            ("PATCH", "/api/status", "{}"),
            ("GET", "/api/channels/channel:x/events", ""),
            ("GET", "/api/tickets", ""),
        ] {
            let answer = call(&mut client, method, path, body).await;
            assert_error(&answer, 405, "method_not_allowed", &format!("{proto:?} {method} {path}"));
        }
    }
}

#[tokio::test]
async fn unknown_paths_are_404_not_found_json() {
    let server = TestServer::start().await;
    for proto in ALL_PLAIN {
        let mut client = server.client(proto);
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/api"),
            ("GET", "/api/nope"),
            ("POST", "/api/publish/extra"),
            ("GET", "/API/EVENTS?channel=channel:x"),
            ("POST", "/api/channels/channel:x/nope"),
            ("DELETE", "/definitely/not/here"),
            ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
        ] {
            let answer = call(&mut client, method, path, Bytes::new()).await;
            assert_error(&answer, 404, "not_found", &format!("{proto:?} {method} {path}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// credentials

#[tokio::test]
async fn malformed_credentials_are_401_and_never_fall_back_to_anonymous() {
    let server = TestServer::secured(|_| {}).await;
    let event = json!({"channel": "channel:x", "type": "chat"}).to_string();
    for proto in ALL_PLAIN {
        for (header, value, code) in [
            ("authorization", "Bearer not-a-jwt", "invalid_token"),
            ("authorization", "Bearer ", "unauthorized"),
            ("authorization", "Basic dXNlcjpwYXNz", "unauthorized"),
            ("authorization", "garbage", "unauthorized"),
            ("authorization", "apikey wrong-key-0123456789", "invalid_api_key"),
            ("x-api-key", "wrong-key-0123456789", "invalid_api_key"),
            ("cookie", "herald_token=not-a-jwt", "invalid_token"),
        ] {
            let what = format!("{proto:?} {header}: {value}");
            let mut client = server.client(proto).with_header(header, value);
            assert_error(&call(&mut client, "POST", "/api/publish", event.clone()).await, 401, code, &what);
            assert_error(&subscribe_refused(&mut client, "channel=channel:x").await, 401, code, &what);
        }
        let mut client = server.client(proto);
        let answer = subscribe_refused(&mut client, "channel=channel:x&ticket=forged").await;
        assert_error(&answer, 401, "invalid_ticket", &format!("{proto:?} forged ticket"));
        // A good key still works afterwards.
        let mut backend = server.client(proto).with_header("x-api-key", API_KEY);
        backend.publish(&json!({"channel": "channel:x", "type": "chat"})).await;
    }
}

// ---------------------------------------------------------------------------------------
// slow clients

fn short_header_timeout(c: &mut herald::Config) {
    c.header_read_timeout = Duration::from_millis(300);
}

#[tokio::test]
async fn slowloris_headers_are_closed_after_header_read_timeout_while_other_streams_go_on() {
    let server = TestServer::with(short_header_timeout).await;
    let mut publisher = server.client(Proto::H1);
    let mut h1 = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
    let mut h2 = server.client(Proto::H2c).subscribe("channel=channel:x", &[]).await;

    let started = Instant::now();
    let mut slow = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    within("the partial request", slow.write_all(b"GET /api/events?channel=channel:x HTTP/1.1\r\nHost: x\r\n"))
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));

    // While the slow client hangs, the others are served.
    next_good_event_arrives(&mut publisher, "channel:x", &mut [&mut h1, &mut h2]).await;

    let sent = within("the server to close the slow connection", until_closed(&mut slow)).await;
    assert!(started.elapsed() >= Duration::from_millis(300), "closed by the timeout, not before it");
    let text = String::from_utf8_lossy(&sent);
    assert!(!text.contains("text/event-stream"), "the unfinished request was not served: {text}");

    // The streams outlived the header timeout and still deliver.
    next_good_event_arrives(&mut publisher, "channel:x", &mut [&mut h1, &mut h2]).await;
    assert_eq!(server.herald.connection_count(), 2);
}

#[tokio::test]
async fn many_slowloris_connections_do_not_starve_real_clients() {
    let server = TestServer::with(short_header_timeout).await;
    let mut stream = server.client(Proto::H1).subscribe("channel=channel:x", &[]).await;
    let mut slow = Vec::new();
    for i in 0..50 {
        let mut tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
        let partial = format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1{i}\r\n");
        within("a partial request", tcp.write_all(partial.as_bytes())).await.unwrap_or_else(|e| panic!("{e}"));
        slow.push(tcp);
    }
    let mut publisher = server.client(Proto::H2c);
    next_good_event_arrives(&mut publisher, "channel:x", &mut [&mut stream]).await;
    for tcp in &mut slow {
        within("a slow connection to be closed", until_closed(tcp)).await;
    }
    next_good_event_arrives(&mut publisher, "channel:x", &mut [&mut stream]).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let server = TestServer::with(short_header_timeout).await;
    let mut silent = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    within("the server to close a silent connection", until_closed(&mut silent)).await;
}

#[tokio::test]
async fn a_connection_stalled_in_the_http2_preface_is_closed_after_header_read_timeout() {
    let server = TestServer::with(short_header_timeout).await;
    let mut slow = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    within("half a preface", slow.write_all(b"PRI * HTTP/2.0\r\n")).await.unwrap_or_else(|e| panic!("{e}"));
    within("the server to close a stalled preface", until_closed(&mut slow)).await;
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_header_read_timeout() {
    let server = TestServer::with(short_header_timeout).await;
    let mut tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    within("a request", tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = within("the server to close the idle connection", until_closed(&mut tcp)).await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"), "the request itself was served");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed by the timeout, not before it");
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_request_is_closed_after_header_read_timeout() {
    let server = TestServer::with(short_header_timeout).await;
    let mut tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    // The client preface and an empty SETTINGS frame, then silence.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    within("the preface", tcp.write_all(preface)).await.unwrap_or_else(|e| panic!("{e}"));
    within("the server to close an HTTP/2 connection with no request", until_closed(&mut tcp)).await;
}

/// Idle connections are closed after 300 ms; header deadlines are long enough not to be
/// what closes them.
fn short_idle_timeout(c: &mut herald::Config) {
    c.header_read_timeout = Duration::from_secs(60);
    c.idle_timeout = Duration::from_millis(300);
}

#[tokio::test]
async fn a_connection_whose_stream_request_was_refused_is_closed_after_the_idle_timeout() {
    let server = TestServer::with(short_idle_timeout).await;
    let mut tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    // No channel: refused with a complete answer on a keep-alive connection.
    within("a request", tcp.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = within("the server to close the connection", until_closed(&mut tcp)).await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&seen));
    assert!(started.elapsed() >= Duration::from_millis(300), "closed by the idle timeout, not before it");
}

#[tokio::test]
async fn an_http2_connection_with_no_open_stream_is_closed_after_the_idle_timeout_and_one_with_a_stream_is_not() {
    let server = TestServer::with(short_idle_timeout).await;
    let mut publisher = server.client(Proto::H1);
    let mut stream = server.client(Proto::H2c).subscribe("channel=channel:x", &[]).await;

    let tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, conn) =
        within("the HTTP/2 handshake", hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let req = hyper::Request::get(format!("http://{}/healthz", server.addr))
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, _) =
        read_json(within("a request", sender.send_request(req)).await.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(status, StatusCode::OK);
    // The connection ends when the server closes it (after a GOAWAY).
    let ended = within("the server to close the idle HTTP/2 connection", conn).await;
    assert!(matches!(ended, Ok(Ok(()))), "closed cleanly: {ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed by the idle timeout, not before it");

    // The stream's connection had a request in flight all along: it is still open.
    next_good_event_arrives(&mut publisher, "channel:x", &mut [&mut stream]).await;
}

#[tokio::test]
async fn a_request_body_that_trickles_in_is_cut_with_408_after_body_read_timeout() {
    let server = TestServer::with(|c| {
        c.header_read_timeout = Duration::from_secs(60);
        c.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let tcp = within("connect", TcpStream::connect(server.addr)).await.unwrap_or_else(|e| panic!("{e}"));
    let (mut read, mut write) = tcp.into_split();
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n";
    within("the head", write.write_all(head.as_bytes())).await.unwrap_or_else(|e| panic!("{e}"));
    // One byte every 50 ms: the whole body would take 10 s; a per-read timeout would never fire.
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    within("the server to answer and close", async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    trickle.abort();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"body_timeout""#), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut by the deadline, not by the end of the body");
}

// ---------------------------------------------------------------------------------------
// nobody else is disturbed

#[tokio::test]
async fn a_burst_of_bad_requests_does_not_disturb_healthy_subscribers() {
    let server = TestServer::with(|c| {
        small_limits(c);
        c.max_channels_per_connection = 2;
        c.max_query_bytes = 512;
    })
    .await;
    let mut h1 = server.client(Proto::H1).subscribe("channel=channel:calm", &[]).await;
    let mut h2 = server.client(Proto::H2c).subscribe("channel=channel:calm&channel=system", &[]).await;

    let calm = |extra: Value| {
        let mut event = json!({"channel": "channel:calm", "type": "chat"});
        if let (Some(e), Value::Object(extra)) = (event.as_object_mut(), extra) {
            e.extend(extra);
        }
        event.to_string().into_bytes()
    };
    let batch = |events: Vec<Vec<u8>>| [&b"["[..], &events.join(&b","[..]), b"]"].concat();
    let publish = "/api/publish";
    let bad: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("POST", publish.into(), b"{".to_vec(), 400, "invalid_json"),
        ("POST", publish.into(), b"42".to_vec(), 400, "invalid_event"),
        ("POST", publish.into(), b"[]".to_vec(), 400, "empty_batch"),
        ("POST", publish.into(), b"{\"channel\":\"channel:calm\",\"type\":\"\xff\"}".to_vec(), 400, "invalid_json"),
        ("POST", publish.into(), calm(json!({"type": "connected"})), 400, "invalid_type"),
        ("POST", publish.into(), calm(json!({"type": "a b"})), 400, "invalid_type"),
        ("POST", publish.into(), calm(json!({"type": 5})), 400, "invalid_type"),
        ("POST", publish.into(), calm(json!({"text": long(2000)})), 413, "payload_too_large"),
        ("POST", publish.into(), calm(json!({"text": long(5000)})), 413, "body_too_large"),
        ("POST", publish.into(), calm(json!({"channels": ["channel:calm"]})), 400, "invalid_event"),
        (
            "POST",
            publish.into(),
            json!({"channels": ["channel:calm", "bogus"], "type": "chat"}).to_string().into_bytes(),
            400,
            "invalid_channel",
        ),
        (
            "POST",
            publish.into(),
            batch(vec![calm(json!({})), br#"{"channel":"channel:calm"}"#.to_vec()]),
            400,
            "missing_type",
        ),
        ("POST", publish.into(), batch(vec![calm(json!({})); 4]), 413, "batch_too_large"),
        ("POST", "/api/channels/channel:calm/events".into(), br#"{"type":"reset"}"#.to_vec(), 400, "invalid_type"),
        ("GET", "/api/events?channel=channel:calm&chanel=x".into(), Vec::new(), 400, "invalid_parameter"),
        ("GET", "/api/events?channel=channel:calm&events=bogus".into(), Vec::new(), 400, "invalid_parameter"),
        ("GET", "/api/events?channel=general".into(), Vec::new(), 400, "invalid_channel"),
        ("GET", "/api/events?events=named".into(), Vec::new(), 400, "missing_channel"),
        (
            "GET",
            "/api/events?channel=channel:calm&channel=channel:b&channel=system".into(),
            Vec::new(),
            400,
            "too_many_channels",
        ),
        (
            "GET",
            format!("/api/events?channel=channel:calm&lastEventId={}", long(600)),
            Vec::new(),
            414,
            "query_too_long",
        ),
        ("DELETE", publish.into(), Vec::new(), 405, "method_not_allowed"),
        ("POST", "/api/events".into(), calm(json!({})), 405, "method_not_allowed"),
        ("GET", "/nowhere".into(), Vec::new(), 404, "not_found"),
    ];
    let mut tasks = Vec::new();
    for proto in ALL_PLAIN {
        for round in 0..3 {
            for (method, path, body, status, code) in bad.clone() {
                let mut client = server.client(proto);
                tasks.push(tokio::spawn(async move {
                    let answer = call(&mut client, method, &path, body).await;
                    assert_error(&answer, status, code, &format!("{proto:?} #{round} {method} {path}"));
                }));
            }
        }
    }
    for task in tasks {
        within("a bad request", task).await.unwrap_or_else(|e| panic!("{e}"));
    }

    let mut status_client = server.client(Proto::H1);
    let (status, body) = status_client.get_json("/api/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["connections"].as_u64(), body["channels"].as_u64()), (Some(2), Some(2)), "{body}");

    let mut publisher = server.client(Proto::H2c);
    next_good_event_arrives(&mut publisher, "channel:calm", &mut [&mut h1, &mut h2]).await;
    assert_eq!(status_client.get_json("/healthz").await.0, 200);
}

// ---------------------------------------------------------------------------------------
// property tests

/// Strings that reach the interesting branches: channel names, types, reserved values.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("channel:fuzz".to_owned()),
        Just("system".to_owned()),
        Just("user:1".to_owned()),
        Just("chat".to_owned()),
        Just("connected".to_owned()),
        Just("reset".to_owned()),
        Just(String::new()),
        "[a-z:_. \\-]{0,20}",
        any::<String>(),
        (0usize..1500).prop_map(long),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![
            Just("channel".to_owned()),
            Just("channels".to_owned()),
            Just("type".to_owned()),
            Just("id".to_owned()),
            Just("userId".to_owned()),
            Just("timestamp".to_owned()),
        ],
        1 => any::<String>(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects shaped like events: mostly well-formed, with hostile values in every slot.
fn event_like() -> impl Strategy<Value = Value> {
    let channel = prop_oneof![
        4 => Just(json!("channel:fuzz")),
        1 => Just(json!("system")),
        2 => interesting_string().prop_map(Value::String),
        1 => json_value(),
    ];
    let event_type = prop_oneof![
        4 => "[a-z_.:-]{1,12}".prop_map(Value::String),
        1 => prop_oneof![Just(json!("connected")), Just(json!("reset"))],
        2 => interesting_string().prop_map(Value::String),
        1 => json_value(),
    ];
    let payload_key = prop_oneof![
        4 => "[a-zA-Z]{1,8}",
        1 => prop_oneof![Just("id".to_owned()), Just("userId".to_owned()), Just("timestamp".to_owned())],
        1 => json_key(),
    ];
    (channel, event_type, 0u8..8, prop::collection::btree_map(payload_key, json_value(), 0..4)).prop_map(
        |(channel, event_type, shape, payload)| {
            let mut m: Map<String, Value> = payload.into_iter().collect();
            match shape {
                0 => {
                    m.insert("channels".into(), Value::Array(vec![channel]));
                }
                1 => {}
                _ => {
                    m.insert("channel".into(), channel);
                }
            }
            if shape != 2 {
                m.insert("type".into(), event_type);
            }
            Value::Object(m)
        },
    )
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => json_value(),
        3 => event_like(),
        2 => prop::collection::vec(event_like(), 0..6).prop_map(Value::Array),
    ]
    .prop_map(|v| v.to_string().into_bytes())
}

fn byte_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), 3000..6000),
        // Valid JSON with a few bytes overwritten.
        3 => (json_body(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(
            |(mut body, edits)| {
                if !body.is_empty() {
                    for (at, byte) in edits {
                        let i = at.index(body.len());
                        body[i] = byte;
                    }
                }
                body
            }
        ),
        // Valid JSON cut short.
        1 => (json_body(), any::<prop::sample::Index>()).prop_map(|(body, at)| {
            let cut = if body.is_empty() { 0 } else { at.index(body.len()) };
            body[..cut].to_vec()
        }),
    ]
}

/// Posts every generated body to `POST /api/publish` on one server, over HTTP/1.1 and h2c:
/// the answer is always 200 or a 4xx with the JSON error shape, never a 5xx; afterwards the
/// server answers `/healthz` and a subscriber that watched it all gets the next good event.
fn fuzz_publish(strategy: impl Strategy<Value = Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let server = rt.block_on(TestServer::with(|c| {
        small_limits(c);
        c.max_payload_bytes = 512;
    }));
    let mut watcher = rt.block_on(server.client(Proto::H1).subscribe("channel=channel:watch-0", &[]));

    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&(strategy, any::<bool>()), |(body, h2)| {
        let proto = if h2 { Proto::H2c } else { Proto::H1 };
        let answer = rt.block_on(async {
            let mut client = server.client(proto);
            within("a publish answer", publish_raw(&mut client, body.clone())).await
        });
        let shown = String::from_utf8_lossy(&body).chars().take(300).collect::<String>();
        let status = answer.status;
        prop_assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{proto:?} {shown:?} → {status} {}",
            answer.body
        );
        if status == StatusCode::OK {
            prop_assert!(answer.body.get("id").is_some() || answer.body.get("ids").is_some(), "{}", answer.body);
        } else {
            let shape = error_shape(&answer.body);
            prop_assert!(shape.is_ok(), "{proto:?} {shown:?} → {status}: {shape:?}: {}", answer.body);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    rt.block_on(async {
        let mut client = server.client(Proto::H1);
        assert_eq!(client.get_json("/healthz").await.0, 200);
        next_good_event_arrives(&mut client, "channel:watch-0", &mut [&mut watcher]).await;
    });
    drop(watcher);
    drop(server);
}

#[test]
fn arbitrary_bytes_posted_to_publish_never_cause_a_5xx() {
    fuzz_publish(byte_body());
}

#[test]
fn arbitrary_json_posted_to_publish_never_causes_a_5xx() {
    fuzz_publish(json_body());
}

/// An independent statement of the channel grammar of the built-in namespaces.
fn is_valid_builtin_channel(s: &str) -> bool {
    if s.is_empty() || s.len() > herald::channel::MAX_CHANNEL_LEN {
        return false;
    }
    if s == "system" {
        return true;
    }
    match s.split_once(':') {
        Some(("user" | "channel", name)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '=' | '+'))
        }
        _ => false,
    }
}

fn channel_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(user|channel|system|[a-z_]{0,6}|[A-Z]{1,3})(:)?[A-Za-z0-9_.@=+ :*/\\-]{0,170}",
        "(user|channel):[A-Za-z0-9_.@=+\\-]{1,170}",
        "(user|channel):[\\x00-\\xff]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn channel_name_parse_never_panics_and_accepts_exactly_the_grammar(raw in channel_candidate()) {
        let parsed = herald::ChannelName::parse(&raw);
        prop_assert_eq!(parsed.is_ok(), is_valid_builtin_channel(&raw), "{:?} → {:?}", raw, parsed);
        if let Ok(name) = parsed {
            prop_assert_eq!(name.to_string(), raw.clone());
            prop_assert_eq!(name.as_str(), raw.as_str());
            prop_assert!(raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@=+:".contains(&b)), "{:?}", raw);
            let ns = name.namespace();
            prop_assert!(["user", "channel", "system"].contains(&ns), "{:?} has namespace {:?}", raw, ns);
        }
    }
}
