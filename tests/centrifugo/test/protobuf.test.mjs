// Centrifugo's Protobuf protocol with the real `centrifuge` SDK's Protobuf build (the
// protocol its Swift, Java and Dart SDKs speak): the socket asks for the
// `centrifuge-protobuf` subprotocol, and every command and reply is a Protobuf message in a
// binary frame. Data travels as bytes: Herald's event JSON down, JSON bytes up.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

import { backend, hookApp, once, sse, startHerald, token } from './support.mjs';

let herald;
before(async () => {
  herald = await startHerald();
});
after(async () => {
  await herald?.stop();
});

const text = new TextDecoder();
const bytes = (v) => new TextEncoder().encode(JSON.stringify(v));
const json = (data) => JSON.parse(text.decode(data));

function client(jwt, opts = {}) {
  return new Centrifuge(herald.ws, { websocket: WebSocket, token: jwt, ...opts });
}

test('over Protobuf the SDK connects, subscribes, receives what Herald publishes, publishes to an SSE client, reads history and presence', async () => {
  const c = client(token('pia'));
  const reader = sse(herald, ['channel:proto'], 'sse-reader');
  try {
    const connected = once(c, 'connected');
    c.connect();
    const ctx = await connected;
    assert.ok(ctx.client, 'a client id');
    const sub = c.newSubscription('proto');
    const got = [];
    sub.on('publication', (p) => got.push([json(p.data).n, p.offset]));
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    const subCtx = await subscribed;
    assert.equal(subCtx.recoverable, true);
    await reader.ready;
    await herald.publish({ channel: 'channel:proto', type: 'n', n: 1 });
    while (got.length < 1) await once(sub, 'publication');
    // A publish of the SDK: JSON bytes, which Herald reads as the event.
    await sub.publish(bytes({ type: 'n', n: 2 }));
    assert.equal((await reader.next((e) => e.n === 2)).channel, 'channel:proto');
    while (got.length < 2) await once(sub, 'publication');
    assert.deepEqual(got.map(([n]) => n), [1, 2]);
    assert.ok(got[1][1] > got[0][1], 'offsets grow');
    const history = await sub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => json(p.data).n), [1, 2]);
    const since = await sub.history({ limit: 10, since: { offset: got[0][1], epoch: 'herald' } });
    assert.deepEqual(since.publications.map((p) => json(p.data).n), [2]);
    const presence = await sub.presence();
    assert.deepEqual(Object.keys(presence.clients).sort(), ['pia', 'sse-reader']);
    assert.deepEqual(await sub.presenceStats(), { numClients: 2, numUsers: 2 });
  } finally {
    c.disconnect();
    reader.close();
  }
});

test('over Protobuf a reconnect recovers exactly what was published meanwhile, and a refusal keeps its code', async () => {
  const c = client(token('pol'), { minReconnectDelay: 50, maxReconnectDelay: 200 });
  try {
    const connected = once(c, 'connected');
    c.connect();
    await connected;
    const sub = c.newSubscription('proto-recover');
    const got = [];
    sub.on('publication', (p) => got.push(json(p.data).n));
    const first = once(sub, 'subscribed');
    sub.subscribe();
    await first;
    await herald.publish({ channel: 'channel:proto-recover', type: 'n', n: 1 });
    while (got.length < 1) await once(sub, 'publication');
    const cut = once(c, 'connecting');
    await backend(herald, '/api/disconnect', { user: 'pol', reconnect: true });
    assert.equal((await cut).code, 3011);
    for (const n of [2, 3]) await herald.publish({ channel: 'channel:proto-recover', type: 'n', n });
    const back = await once(sub, 'subscribed');
    assert.deepEqual([back.wasRecovering, back.recovered], [true, true]);
    await herald.publish({ channel: 'channel:proto-recover', type: 'n', n: 4 });
    while (got.length < 4) await once(sub, 'publication');
    assert.deepEqual(got, [1, 2, 3, 4]);

    // Another user's personal channel: Centrifugo's permission error, in a Protobuf reply.
    const other = c.newSubscription('#someone-else');
    const refused = once(other, 'unsubscribed');
    other.subscribe();
    const why = await refused;
    assert.equal(why.code, 103);
  } finally {
    c.disconnect();
  }
});

test('over Protobuf a bad token is disconnect 3500, and the RPC hook answers an rpc with its data as bytes', async () => {
  const bad = client('not.a.token');
  const gone = once(bad, 'disconnected');
  bad.connect();
  assert.deepEqual(await gone, { code: 3500, reason: 'invalid token' });

  const app = await hookApp((path, r) => ({ result: { data: { sum: r.data.a + r.data.b } } }));
  const own = await startHerald({ extra: `\n[hooks]\nrpc_url = "${app.url}/rpc"\n` });
  const c = new Centrifuge(own.ws, { websocket: WebSocket, token: token('pam') });
  try {
    const connected = once(c, 'connected');
    c.connect();
    await connected;
    const answer = await c.rpc('sum', bytes({ a: 2, b: 3 }));
    assert.deepEqual(json(answer.data), { sum: 5 });
    assert.deepEqual(app.asked[0].body.data, { a: 2, b: 3 });
  } finally {
    c.disconnect();
    await own.stop();
    await app.close();
  }
});
