// Centrifugo's server HTTP API on Herald, called with the request bodies of Centrifugo's
// documentation: what a backend publishes there reaches the real `centrifuge` SDK and an SSE
// client alike.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { API_KEY, once, sse, startHerald, token } from './support.mjs';

let herald;
before(async () => {
  herald = await startHerald();
});
after(async () => {
  await herald?.stop();
});

async function api(method, body, headers = { 'X-API-Key': API_KEY }) {
  const resp = await fetch(`${herald.url}/centrifugo/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: resp.status, json: resp.status === 200 ? await resp.json() : null };
}

async function subscribed(channel, user) {
  const c = new Centrifuge(herald.ws, { websocket: WebSocket, token: token(user) });
  const sub = c.newSubscription(channel);
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await ready;
  return { c, sub };
}

test('publish reaches the SDK and an SSE client of the same channel', async () => {
  const { c, sub } = await subscribed('news', 'alice');
  const stream = sse(herald, ['channel:news'], 'bob');
  await stream.ready;
  const got = once(sub, 'publication');
  const { status, json } = await api('publish', { channel: 'news', data: { text: 'hello' } });
  assert.deepEqual([status, json], [200, { result: {} }]);
  const ctx = await got;
  assert.equal(ctx.data.text, 'hello');
  assert.equal(ctx.data.type, 'publication');
  const seen = await stream.next((e) => e.text === 'hello');
  assert.deepEqual(seen, ctx.data);
  stream.close();
  c.disconnect();
});

test('broadcast publishes to every channel and answers per channel, an unknown one with 102', async () => {
  const a = await subscribed('alpha', 'alice');
  const b = await subscribed('beta', 'alice');
  const got = Promise.all([once(a.sub, 'publication'), once(b.sub, 'publication')]);
  const { json } = await api('broadcast', { channels: ['alpha', 'beta', 'nowhere:x'], data: { text: 'all' } });
  assert.deepEqual(json.result.responses.slice(0, 2), [{ result: {} }, { result: {} }]);
  assert.equal(json.result.responses[2].error.code, 102);
  const [pa, pb] = await got;
  assert.deepEqual([pa.data.text, pb.data.text], ['all', 'all']);
  a.c.disconnect();
  b.c.disconnect();
});

test('Authorization: apikey works, a wrong key is 401, an unknown method is 104', async () => {
  const ok = await api('publish', { channel: 'news', data: { n: 1 } }, { Authorization: `apikey ${API_KEY}` });
  assert.deepEqual(ok.json, { result: {} });
  const wrong = await api('publish', { channel: 'news', data: { n: 1 } }, { 'X-API-Key': 'not-the-key' });
  assert.equal(wrong.status, 401);
  const unknown = await api('shout', {});
  assert.equal(unknown.json.error.code, 104);
});

test('presence_stats counts the users of a channel', async () => {
  const { c } = await subscribed('stats', 'carol');
  const { json } = await api('presence_stats', { channel: 'stats' });
  assert.deepEqual(json.result, { num_clients: 1, num_users: 1 });
  c.disconnect();
});

test('disconnect cuts a user: by default for good (3503), with a code below 3500 to come back', async () => {
  const { c } = await subscribed('ops', 'jane');
  const gone = once(c, 'disconnected');
  const { json } = await api('disconnect', { user: 'jane' });
  assert.deepEqual(json, { result: {} });
  const ctx = await gone;
  assert.equal(ctx.code, 3503);
  assert.equal(c.state, 'disconnected');

  const again = await subscribed('ops', 'kate');
  const back = once(again.c, 'connecting');
  await api('disconnect', { user: 'kate', disconnect: { code: 3000, reason: 'bye' } });
  const cut = await back;
  assert.equal(cut.code, 3011);
  await once(again.c, 'connected');
  again.c.disconnect();
});
