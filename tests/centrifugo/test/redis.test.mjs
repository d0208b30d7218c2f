// Herald behind a real `redis-server` of the test's own: the server API on two nodes (info
// from each, a subscribe asked of one node for a connection on the other, history and
// history_remove on the Redis engine), and the real `centrifuge` SDK recovering after a
// Herald restart, with nothing lost or repeated.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { api, collecting, once, sse, startHerald, startRedis, token } from './support.mjs';

let redis;
let a;
let b;
const node = (id) => ['--redis-url', redis.url, '--node-id', id];

before(async () => {
  redis = await startRedis();
  a = await startHerald({ args: node('node-a') });
  b = await startHerald({ args: node('node-b') });
});
after(async () => {
  await a?.stop();
  await b?.stop();
  await redis?.stop();
});

test('info lists every node behind Redis, each with its own counts', async () => {
  const stream = sse(b, ['channel:counted'], 'nina');
  await stream.ready;
  const { nodes } = (await api(a, 'info', {})).json.result;
  assert.deepEqual(nodes.map((n) => n.uid).sort(), ['node-a', 'node-b']);
  assert.equal(nodes[0].uid, 'node-a', 'the asked node first');
  const onB = nodes.find((n) => n.uid === 'node-b');
  assert.ok(onB.num_clients >= 1 && onB.num_subs >= 1, JSON.stringify(onB));
  stream.close();
});

test("a subscribe asked of one node reaches the user's connection on another; channels sums both nodes", async () => {
  const onB = sse(b, ['channel:home'], 'omar');
  const onA = sse(a, ['channel:home'], 'pia');
  await Promise.all([onB.ready, onA.ready]);
  assert.deepEqual((await api(a, 'subscribe', { channel: 'moved', user: 'omar' })).json, { result: {} });
  await api(a, 'publish', { channel: 'moved', data: { n: 1 } });
  assert.equal((await onB.next((e) => e.n === 1)).channel, 'channel:moved');
  const { channels } = (await api(a, 'channels', {})).json.result;
  assert.deepEqual([channels.home, channels.moved], [{ num_clients: 2 }, { num_clients: 1 }]);
  const some = (await api(b, 'channels', { pattern: 'mo*' })).json.result.channels;
  assert.deepEqual(some, { moved: { num_clients: 1 } });
  onA.close();
  onB.close();
});

test('history and history_remove work on the Redis engine, from either node', async () => {
  for (const n of [1, 2, 3]) await api(a, 'publish', { channel: 'rhist', data: { n } });
  const all = (await api(b, 'history', { channel: 'rhist', limit: -1 })).json.result;
  assert.deepEqual(all.publications.map((p) => p.data.n), [1, 2, 3]);
  const last = (await api(b, 'history', { channel: 'rhist', limit: 1, reverse: true })).json.result;
  assert.deepEqual(last.publications.map((p) => p.data.n), [3]);
  const since = { offset: all.publications[1].offset, epoch: 'herald' };
  assert.deepEqual((await api(a, 'history', { channel: 'rhist', limit: 5, since })).json.result.publications.map((p) => p.data.n), [3]);
  assert.deepEqual((await api(b, 'history_remove', { channel: 'rhist' })).json, { result: {} });
  const emptied = (await api(a, 'history', { channel: 'rhist', limit: -1 })).json.result;
  assert.deepEqual([emptied.publications, emptied.offset], [[], all.offset]);
  assert.equal((await api(a, 'history', { channel: 'rhist', limit: 5, since })).json.error.code, 112);
  await api(a, 'publish', { channel: 'rhist', data: { n: 4 } });
  const later = (await api(b, 'history', { channel: 'rhist', limit: -1 })).json.result;
  assert.deepEqual(later.publications.map((p) => p.data.n), [4]);
});

test('after a Herald restart behind Redis the SDK recovers (recovered: true), nothing lost or repeated', async () => {
  const c = new Centrifuge(a.ws, { websocket: WebSocket, token: token('rita'), minReconnectDelay: 50, maxReconnectDelay: 200 });
  const { sub, got, subscribed } = collecting(c, 'restart');
  c.connect();
  assert.equal((await subscribed).recoverable, true);
  const two = new Promise((ok) => sub.on('publication', () => got.length === 2 && ok()));
  for (const n of [1, 2]) await api(b, 'publish', { channel: 'restart', data: { n } });
  await two;

  // Node A dies; what is published meanwhile goes through node B into Redis.
  const cut = once(c, 'connecting');
  const port = a.port;
  await a.stop();
  await cut;
  for (const n of [3, 4]) await api(b, 'publish', { channel: 'restart', data: { n } });
  const resubscribed = once(sub, 'subscribed');
  a = await startHerald({ port, args: node('node-a') });
  const ctx = await resubscribed;
  assert.deepEqual([ctx.wasRecovering, ctx.recovered], [true, true]);
  const five = new Promise((ok) => sub.on('publication', () => got.length === 5 && ok()));
  await api(b, 'publish', { channel: 'restart', data: { n: 5 } });
  await five;
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  c.disconnect();
});
