//! The Redis engine against a real `redis-server` of the test's own, delivering into a
//! recording sink: what the publish script writes is what the Rust side reads.

use std::time::Duration;

use super::{RedisEngine, RedisOptions};
use crate::channel::ChannelName;
use crate::engine::sink::testing::RecordingSink;
use crate::engine::{Broker, Engine};
use crate::event::{Event, Prepared, Publisher};

/// A `redis-server` on a free port, stopped when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server could not start (is it installed?): {e}"));
        let server = Self { child, port };
        // Ready once it accepts a connection; bounded, so a server that never comes up fails.
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not accept connections on {port}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One node's options on the test's Redis.
fn options(server: &Server, node_id: &str) -> RedisOptions {
    RedisOptions {
        url: format!("redis://127.0.0.1:{}", server.port),
        tls_ca: None,
        cluster: false,
        batch_messages: false,
        sentinel: None,
        prefix: "realtime".to_owned(),
        slot_lease: Duration::from_secs(30),
        node_id: node_id.to_owned(),
    }
}

#[tokio::test]
async fn what_the_publish_script_writes_reaches_the_sink_as_the_event_that_was_published() {
    let server = Server::start().await;
    let opts = options(&server, "sink-test");
    let engine = RedisEngine::connect(opts).await.unwrap_or_else(|e| panic!("{e}"));
    let sink = RecordingSink::new(100);
    let (a, b) = (ch("channel:a"), ch("channel:b"));
    sink.subscribed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend([a.clone(), b.clone()]);
    engine.attach(sink.clone());
    engine.watch(&[a.clone(), b.clone()]).await.unwrap_or_else(|e| panic!("{e}"));

    let prepare = |channels: Vec<ChannelName>, text: &str| {
        let event = Event::new("chat").with("text", text);
        Prepared::new(channels, event, &Publisher::default(), 1 << 16).unwrap_or_else(|e| panic!("{e}"))
    };
    let one = prepare(vec![a.clone()], "one channel");
    let two = prepare(vec![a.clone(), b.clone()], "two channels, with a \"quote\" and a\nnewline");
    let expected = [one.clone(), two.clone()];
    let acks = engine.publish(vec![one, two]).await.unwrap_or_else(|e| panic!("{e}"));

    // One message per channel: the first event once, the second on each of its channels.
    sink.delivered_at_least(3).await;
    let delivered = sink.delivered();
    assert_eq!(delivered.len(), 3);
    let ids: Vec<&str> = delivered.iter().map(|e| &*e.id).collect();
    assert_eq!(ids, [&*acks[0].id, &*acks[1].id, &*acks[1].id]);
    for (event, (ack, prepared)) in
        delivered.iter().zip([(0, 0), (1, 1), (1, 1)].map(|(i, j)| (&acks[i], &expected[j])))
    {
        assert_eq!(event.event_type, prepared.event_type);
        assert_eq!(usize::from(event.fanout), prepared.channels.len());
        assert_eq!(event.copies.len(), ack.positions.len(), "a copy on every channel of the event");
        for (channel, position) in &ack.positions {
            let copy = event.copy_on(channel.as_str()).unwrap_or_else(|| panic!("a copy on {channel}"));
            assert_eq!(copy.position, *position, "the position the publish answered");
            assert_eq!(copy.frame.json(), &prepared.json_for(channel)[..], "the JSON that was published");
        }
    }
    assert!(sink.resynced.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty());
}

/// A channel with no Stream yet reports a head; the first event published there must come
/// after it, even when the publish falls in the same millisecond as the read (Redis gives
/// a new Stream's first entry `<now>-0`). A head equal to that id made a stream opened on a
/// fresh channel skip its first event as already seen. Many fresh channels, each read then
/// published at once, put reads and publishes in the same millisecond again and again.
#[tokio::test]
async fn the_first_event_of_a_fresh_channel_comes_after_the_head_read_before_it() {
    let server = Server::start().await;
    let opts = options(&server, "head-test");
    let engine = RedisEngine::connect(opts).await.unwrap_or_else(|e| panic!("{e}"));
    engine.attach(RecordingSink::new(100));
    for i in 0..200 {
        let channel = ch(&format!("channel:fresh{i}"));
        let head = engine.history(&channel, None).await.unwrap_or_else(|e| panic!("{e}")).head;
        let event = Event::new("chat").with("n", i);
        let prepared = Prepared::new(vec![channel.clone()], event, &Publisher::default(), 1 << 16)
            .unwrap_or_else(|e| panic!("{e}"));
        let acks = engine.publish(vec![prepared]).await.unwrap_or_else(|e| panic!("{e}"));
        let first = acks[0].positions[0].1;
        assert!(first > head, "{channel}: first event at {first:?}, head read before it {head:?}");
    }
}

/// On a single Redis, a publisher delivers its events to its own node once Redis answers,
/// before the publish returns, when the node has delivered the entry before them
/// (`RedisEngine::deliver_own`): the pub/sub loop would deliver them later, behind the
/// subscribers' writers (it may deliver the first ones, if their messages came in a read
/// before the answer; the publisher then delivers the rest). Their messages, when they come,
/// are not delivered again. One worker, so that the loop cannot run meanwhile on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn on_a_single_redis_a_publish_reaches_its_own_node_before_it_returns_and_once() {
    let server = Server::start().await;
    let engine = RedisEngine::connect(options(&server, "own-test")).await.unwrap_or_else(|e| panic!("{e}"));
    let sink = RecordingSink::new(100);
    let channel = ch("channel:own");
    sink.subscribed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(channel.clone());
    engine.attach(sink.clone());
    engine.watch(std::slice::from_ref(&channel)).await.unwrap_or_else(|e| panic!("{e}"));
    let prepare = |n: usize| {
        let event = Event::new("chat").with("n", n);
        Prepared::new(vec![channel.clone()], event, &Publisher::default(), 1 << 16).unwrap_or_else(|e| panic!("{e}"))
    };
    // The first event of a channel new to Redis has no entry before it: the loop delivers it.
    let first = engine.publish(vec![prepare(0)]).await.unwrap_or_else(|e| panic!("{e}"));
    sink.delivered_at_least(1).await;
    let mut ids = vec![first[0].id.clone()];
    for n in 1..20 {
        // One event (its own script), then batches of three (the batch script).
        let batch: Vec<Prepared> =
            if n % 2 == 1 { vec![prepare(n)] } else { (0..3).map(|k| prepare(100 * n + k)).collect() };
        let acks = engine.publish(batch).await.unwrap_or_else(|e| panic!("{e}"));
        ids.extend(acks.iter().map(|a| a.id.clone()));
        assert_eq!(sink.delivered_ids(), ids, "publish {n}: delivered before it returned, in order");
    }
    // Their messages come too, before another node's event after them, which the loop
    // delivers: by then it has passed every one of them without delivering it again.
    let other = RedisEngine::connect(options(&server, "other-test")).await.unwrap_or_else(|e| panic!("{e}"));
    let theirs = other.publish(vec![prepare(999)]).await.unwrap_or_else(|e| panic!("{e}"));
    ids.push(theirs[0].id.clone());
    sink.delivered_at_least(ids.len()).await;
    assert_eq!(sink.delivered_ids(), ids, "each event once, in order");
}

/// A channel's events get at most 1000 sequences a millisecond on Redis as in memory
/// (`Position::MAX_SEQ`): a Centrifugo offset is milliseconds × 1000 + the sequence, and past
/// 999 offsets repeated. Each publish script is driven across a full millisecond: the
/// single-event one on one channel and on two, the batch one on one channel and on two. The
/// Streams start in a millisecond of the future, near its end (as a clock stepped back, or a
/// burst, leaves them), so that every append lands in a full millisecond whatever the clock.
/// History resumes from the first position with every event in order and no gap.
#[tokio::test]
async fn a_channels_positions_hold_at_most_1000_sequences_a_millisecond_in_every_publish_script() {
    use crate::cursor::Position;

    let server = Server::start().await;
    let engine = RedisEngine::connect(options(&server, "seq-test")).await.unwrap_or_else(|e| panic!("{e}"));
    engine.attach(RecordingSink::new(100));
    let (a, b) = (ch("channel:seq-a"), ch("channel:seq-b"));
    let future = crate::ids::now_ms() + 3_600_000;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", server.port)).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("{e}"));
    for (channel, seq) in [(&a, 980), (&b, 998)] {
        let _: String = redis::cmd("XADD")
            .arg(engine.stream_key(channel))
            .arg(format!("{future}-{seq}"))
            .arg(&["i", "seed", "t", "seed", "b", "{}", "n", "1"])
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let prepare = |channels: &[&ChannelName], n: usize| {
        let channels = channels.iter().map(|c| (*c).clone()).collect();
        Prepared::new(channels, Event::new("chat").with("n", n), &Publisher::default(), 1 << 16)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut got: Vec<(ChannelName, Position)> = Vec::new();
    let mut publish = async |batch: Vec<Prepared>| {
        let acks = engine.publish(batch).await.unwrap_or_else(|e| panic!("{e}"));
        got.extend(acks.into_iter().flat_map(|ack| ack.positions));
    };
    // publish.lua on one channel: a's 981st to 995th sequences.
    for n in 0..15 {
        publish(vec![prepare(&[&a], n)]).await;
    }
    // publish.lua on two: b's 999th, the last of its millisecond.
    publish(vec![prepare(&[&a, &b], 15)]).await;
    let head = engine.history(&b, None).await.unwrap_or_else(|e| panic!("{e}")).head;
    assert_eq!(head, Position::new(future, u64::MAX), "a full millisecond's head is its end");
    publish(vec![prepare(&[&b], 16)]).await;
    // publish_batch.lua on one channel, then on two.
    publish((17..20).map(|n| prepare(&[&a], n)).collect()).await;
    publish((20..30).map(|n| prepare(&[if n % 4 == 0 { &b } else { &a }], n)).collect()).await;

    let on = |channel: &ChannelName| -> Vec<Position> {
        got.iter().filter(|(c, _)| c == channel).map(|(_, p)| *p).collect()
    };
    let expected = |first: u64, count: u64| -> Vec<Position> {
        (first..first + count).map(|k| Position::new(future + k / 1000, k % 1000)).collect()
    };
    assert_eq!(on(&a), expected(981, 26), "a: 981 to 999, then the next millisecond's 0 to 6");
    assert_eq!(on(&b), expected(999, 5), "b: 999, then the next millisecond's 0 to 3");
    for (channel, seed) in [(&a, 980), (&b, 998)] {
        let read = engine.history(channel, Some(Position::new(future, seed))).await.unwrap_or_else(|e| panic!("{e}"));
        let events = read.events.unwrap_or_else(|gap| panic!("{channel}: a gap ({gap:?}) where none was trimmed"));
        let positions: Vec<Position> = events
            .iter()
            .map(|e| e.copy_on(channel.as_str()).unwrap_or_else(|| panic!("a copy on {channel}")).position)
            .collect();
        assert_eq!(positions, on(channel), "{channel}: history resumes with every event, in order");
    }
}
