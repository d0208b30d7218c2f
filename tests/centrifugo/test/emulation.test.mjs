// Centrifugo's bidirectional emulation with the real `centrifuge` SDK, for clients where a
// WebSocket cannot be had: its `http_stream` transport (Node's own fetch and streams; JSON,
// and Protobuf with the SDK's Protobuf build) and its `sse` transport (the `eventsource` npm
// package), each command after `connect` a POST to `/emulation`; on one node, and across two nodes behind a real `redis-server` where the
// commands go to the node that does not hold the stream.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import { EventSource } from 'eventsource';

import { API_KEY, backend, collecting, once, sse, startHerald, startRedis, token } from './support.mjs';

const EMULATION = '[centrifugo]\nemulation = true\n';

let herald;
before(async () => {
  herald = await startHerald({ config: EMULATION });
});
after(async () => {
  await herald?.stop();
});

/** An SDK client of `user` over one emulation transport (`http_stream` or `sse`) of
 * `streams`, its commands sent to `commands`' `/emulation`. */
function emulated(transport, user, streams = herald, commands = streams, claims = {}) {
  return new Centrifuge([{ transport, endpoint: `${streams.url}/connection/${transport}` }], {
    token: token(user, claims),
    emulationEndpoint: `${commands.url}/emulation`,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
    eventsource: EventSource,
  });
}

/** Connects `c`; resolves to its `connected` context. */
async function connect(c) {
  const connected = once(c, 'connected');
  c.connect();
  return connected;
}

for (const transport of ['http_stream', 'sse']) {
  test(`over ${transport}, the SDK connects, subscribes, receives what Herald publishes, publishes, and reads history and presence`, async () => {
    const c = emulated(transport, 'emma');
    const reader = sse(herald, [`channel:emu-${transport}`], 'sse-reader');
    try {
      assert.equal((await connect(c)).transport, transport);
      const { sub, got, subscribed } = collecting(c, `emu-${transport}`);
      await subscribed;
      await reader.ready;
      await herald.publish({ channel: `channel:emu-${transport}`, type: 'n', n: 1 });
      while (got.length < 1) await once(sub, 'publication');
      // A publish of the SDK reaches Herald's own SSE client, and comes back to the SDK.
      await sub.publish({ type: 'n', n: 2 });
      assert.equal((await reader.next((e) => e.n === 2)).channel, `channel:emu-${transport}`);
      while (got.length < 2) await once(sub, 'publication');
      assert.deepEqual(got, [1, 2]);
      const history = await sub.history({ limit: 10 });
      assert.deepEqual(history.publications.map((p) => p.data.n), [1, 2]);
      // Herald's presence is per user: the SDK's and the SSE reader's.
      const presence = await sub.presence();
      assert.deepEqual(Object.keys(presence.clients).sort(), ['emma', 'sse-reader']);
      // The SDK's disconnect aborts its stream: the node lets the session go with it.
      assert.equal((await connectionsOf(herald, 'emma')).length, 1);
      c.disconnect();
      await until(async () => (await connectionsOf(herald, 'emma')).length === 0);
    } finally {
      c.disconnect();
      reader.close();
    }
  });
}

/** The open connections of `user` on every node, as `GET /api/users/{id}/connections` lists them. */
async function connectionsOf(node, user) {
  const resp = await fetch(`${node.url}/api/users/${user}/connections`, { headers: { 'X-Api-Key': API_KEY } });
  return (await resp.json()).connections;
}

/** Resolves once `check()` holds, asking again as each answer comes (at most 200 times). */
async function until(check) {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((ok) => setImmediate(ok));
  }
  assert.fail('the condition never held');
}

test("the SDK's Protobuf build over http_stream: binary replies down the stream, its commands as Protobuf EmulationRequests", async () => {
  const c = new CentrifugeProtobuf([{ transport: 'http_stream', endpoint: `${herald.url}/connection/http_stream` }], {
    token: token('ines'),
    emulationEndpoint: `${herald.url}/emulation`,
  });
  const text = new TextDecoder();
  try {
    assert.equal((await connect(c)).transport, 'http_stream');
    const sub = c.newSubscription('emu-proto');
    const got = [];
    sub.on('publication', (p) => got.push(JSON.parse(text.decode(p.data)).n));
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    await herald.publish({ channel: 'channel:emu-proto', type: 'n', n: 1 });
    await sub.publish(new TextEncoder().encode(JSON.stringify({ type: 'n', n: 2 })));
    while (got.length < 2) await once(sub, 'publication');
    assert.deepEqual(got, [1, 2]);
    const history = await sub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => JSON.parse(text.decode(p.data)).n), [1, 2]);
  } finally {
    c.disconnect();
  }
});

test('a reconnect over http_stream recovers exactly what was published while the client was away', async () => {
  const c = emulated('http_stream', 'eli');
  try {
    await connect(c);
    const { sub, got, subscribed } = collecting(c, 'emu-recover');
    await subscribed;
    await herald.publish({ channel: 'channel:emu-recover', type: 'n', n: 1 });
    while (got.length < 1) await once(sub, 'publication');
    // Cut by the server with a code that asks the SDK to come back.
    const cut = once(c, 'connecting');
    await backend(herald, '/api/disconnect', { user: 'eli', reconnect: true });
    const why = await cut;
    assert.equal(why.code, 3011);
    for (const n of [2, 3, 4]) await herald.publish({ channel: 'channel:emu-recover', type: 'n', n });
    const back = await once(sub, 'subscribed');
    assert.deepEqual([back.wasRecovering, back.recovered], [true, true]);
    await herald.publish({ channel: 'channel:emu-recover', type: 'n', n: 5 });
    while (got.length < 5) await once(sub, 'publication');
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
  } finally {
    c.disconnect();
  }
});

test('a bad token over http_stream ends the stream with a 3500 disconnect push and the SDK stays away', async () => {
  const c = new Centrifuge([{ transport: 'http_stream', endpoint: `${herald.url}/connection/http_stream` }], {
    token: 'not.a.token',
    emulationEndpoint: `${herald.url}/emulation`,
  });
  const gone = once(c, 'disconnected');
  c.connect();
  assert.deepEqual(await gone, { code: 3500, reason: 'invalid token' });
});

test('/emulation refuses an unknown session with 404 session_not_found and a bad body with 400, in JSON', async () => {
  const post = (body) =>
    fetch(`${herald.url}/emulation`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  const unknown = await post(JSON.stringify({ session: 'made-up', node: 'nowhere', data: '{"id":1,"presence":{"channel":"x"}}' }));
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error.code, 'session_not_found');
  const bad = await post('{"session": 1}');
  assert.equal(bad.status, 400);
  assert.equal((await bad.json()).error.code, 'invalid_json');
  // Off unless configured: a node without `emulation` has no such endpoint.
  const plain = await startHerald();
  try {
    const off = await fetch(`${plain.url}/emulation`, { method: 'POST', body: '{}' });
    assert.equal(off.status, 404);
    assert.equal((await off.json()).error.code, 'not_found');
  } finally {
    await plain.stop();
  }
});

test('behind Redis, commands posted to the node without the stream reach the session on the other node', async () => {
  const redis = await startRedis();
  const node = (id) => ['--redis-url', redis.url, '--node-id', id];
  const a = await startHerald({ config: EMULATION, args: node('emu-a') });
  const b = await startHerald({ config: EMULATION, args: node('emu-b') });
  // The stream on node a, every command through node b.
  const c = emulated('http_stream', 'nico', a, b);
  try {
    await connect(c);
    const { sub, got, subscribed } = collecting(c, 'emu-nodes');
    await subscribed;
    await b.publish({ channel: 'channel:emu-nodes', type: 'n', n: 1 });
    await sub.publish({ type: 'n', n: 2 });
    while (got.length < 2) await once(sub, 'publication');
    assert.deepEqual(got, [1, 2]);
    assert.deepEqual((await connectionsOf(b, 'nico')).map((x) => x.node), ['emu-a'], 'the session is node a\'s');
  } finally {
    c.disconnect();
    await a.stop();
    await b.stop();
    await redis.stop();
  }
});
