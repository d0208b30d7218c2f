// Centrifugo's server HTTP API on Herald, called with the request bodies of Centrifugo's
// documentation: what a backend publishes there reaches the real `centrifuge` SDK and an SSE
// client alike.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { API_KEY, api as callApi, once, sse, startHerald, token } from './support.mjs';

let herald;
before(async () => {
  herald = await startHerald();
});
after(async () => {
  await herald?.stop();
});

function api(method, body, headers) {
  return callApi(herald, method, body, headers);
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

test('block_user cuts a user for good (3503) and refuses their connect and streams until unblock_user', async () => {
  const { c } = await subscribed('ops', 'blocked');
  const gone = once(c, 'disconnected');
  const block = await api('block_user', { user: 'blocked', expire_at: Math.floor(Date.now() / 1000) + 3600 });
  assert.deepEqual(block.json, { result: {} });
  assert.equal((await gone).code, 3503);
  const again = new Centrifuge(herald.ws, { websocket: WebSocket, token: token('blocked') });
  const refused = once(again, 'disconnected');
  again.connect();
  assert.deepEqual([(await refused).code, again.state], [3503, 'disconnected']);
  const stream = await fetch(`${herald.url}/api/events?channel=user:blocked`, {
    headers: { authorization: `Bearer ${token('blocked')}` },
  });
  assert.equal(stream.status, 403);
  await stream.body?.cancel();
  assert.deepEqual((await api('unblock_user', { user: 'blocked' })).json, { result: {} });
  const back = await subscribed('ops', 'blocked');
  back.c.disconnect();
  // A block that has ended already, or no user: 107.
  const past = await api('block_user', { user: 'blocked', expire_at: Math.floor(Date.now() / 1000) - 10 });
  assert.equal(past.json.error.code, 107);
  assert.equal((await api('unblock_user', {})).json.error.code, 107);
});

test("connections lists a user's clients by id: the SDK's with its channels, an idle one, an SSE stream", async () => {
  const { c } = await subscribed('ops', 'lister');
  const idle = new Centrifuge(herald.ws, { websocket: WebSocket, token: token('lister') });
  const idleUp = once(idle, 'connected');
  idle.connect();
  const idleId = (await idleUp).client;
  const stream = sse(herald, ['user:lister'], 'lister');
  await stream.ready;
  const other = await subscribed('ops', 'not-listed');
  const { json } = await api('connections', { user: 'lister' });
  const listed = json.result.connections;
  const byId = Object.fromEntries(
    Object.entries(listed).map(([id, conn]) => [id, [conn.transport, conn.user, conn.protocol, Object.keys(conn.state.channels)]]),
  );
  const sdk = Object.keys(listed).find((id) => 'ops' in listed[id].state.channels);
  assert.deepEqual(byId[sdk], ['centrifugo', 'lister', 'json', ['ops']]);
  assert.deepEqual(byId[idleId], ['centrifugo', 'lister', 'json', []]);
  assert.equal(Object.values(byId).filter(([transport]) => transport === 'sse').length, 1, JSON.stringify(json));
  assert.equal(Object.keys(listed).length, 3, JSON.stringify(json));
  assert.ok(Object.values(listed).every((conn) => conn.connected_at_ms > 0));
  assert.equal((await api('connections', {})).json.error.code, 107);
  assert.equal((await api('connections', { expression: 'user == "x"' })).json.error.code, 107);
  c.disconnect();
  idle.disconnect();
  other.c.disconnect();
  stream.close();
});

test('subscribe adds a channel to every live connection of the user, unsubscribe removes it', async () => {
  const stream = sse(herald, ['channel:base'], 'dave');
  await stream.ready;
  const sub = await api('subscribe', { channel: 'extra', user: 'dave' });
  assert.deepEqual(sub.json, { result: {} });
  await api('publish', { channel: 'extra', data: { n: 1 } });
  assert.equal((await stream.next((e) => e.n === 1)).channel, 'channel:extra');

  const unsub = await api('unsubscribe', { channel: 'extra', user: 'dave' });
  assert.deepEqual(unsub.json, { result: {} });
  // In order on one connection: once the later event on the channel it keeps arrives, the
  // one on the channel it left would have.
  await api('publish', { channel: 'extra', data: { n: 2 } });
  await api('publish', { channel: 'base', data: { n: 3 } });
  await stream.next((e) => e.n === 3);
  assert.equal(await Promise.race([stream.next((e) => e.n === 2), Promise.resolve('not delivered')]), 'not delivered');
  stream.close();
});

test('subscribe without a user is 107, to an unknown namespace 102; a user with no connection is fine', async () => {
  assert.equal((await api('subscribe', { channel: 'extra' })).json.error.code, 107);
  assert.equal((await api('subscribe', { channel: 'nowhere:x', user: 'dave' })).json.error.code, 102);
  assert.deepEqual((await api('subscribe', { channel: 'extra', user: 'nobody-here' })).json, { result: {} });
});

test('history reads forward, with limit, since and reverse, in publication order', async () => {
  for (const n of [1, 2, 3]) await api('publish', { channel: 'hist', data: { n } });
  const all = (await api('history', { channel: 'hist', limit: -1 })).json.result;
  assert.deepEqual(all.publications.map((p) => p.data.n), [1, 2, 3]);
  assert.equal(all.epoch, 'herald');
  const offsets = all.publications.map((p) => p.offset);
  assert.ok(offsets[0] < offsets[1] && offsets[1] < offsets[2], `offsets increase: ${offsets}`);
  assert.equal(all.offset, offsets[2], 'the result offset is the channel top');

  const first2 = (await api('history', { channel: 'hist', limit: 2 })).json.result;
  assert.deepEqual(first2.publications.map((p) => p.data.n), [1, 2]);
  const last2 = (await api('history', { channel: 'hist', limit: 2, reverse: true })).json.result;
  assert.deepEqual(last2.publications.map((p) => p.data.n), [3, 2]);
  const since = { offset: offsets[0], epoch: all.epoch };
  const after = (await api('history', { channel: 'hist', limit: 10, since })).json.result;
  assert.deepEqual(after.publications.map((p) => p.data.n), [2, 3]);
  const before = (await api('history', { channel: 'hist', limit: 10, since: { offset: offsets[2], epoch: 'herald' }, reverse: true })).json.result;
  assert.deepEqual(before.publications.map((p) => p.data.n), [2, 1]);
  const top = (await api('history', { channel: 'hist' })).json.result;
  assert.deepEqual([top.publications, top.offset], [[], offsets[2]], 'no limit: the position alone');
  // What history holds is what subscribers got: the same event JSON as an SSE client's.
  assert.equal(all.publications[0].data.channel, 'channel:hist');
  assert.equal(all.publications[0].data.type, 'publication');
});

test('history refuses another epoch (112), a namespace without history (108), no channel (107)', async () => {
  await api('publish', { channel: 'hist2', data: { n: 1 } });
  const epoch = await api('history', { channel: 'hist2', limit: 1, since: { offset: 1, epoch: 'xyz' } });
  assert.equal(epoch.json.error.code, 112);
  assert.equal((await api('history', { channel: 'nohist:a', limit: 1 })).json.error.code, 108);
  assert.equal((await api('history', { limit: 1 })).json.error.code, 107);
  assert.equal((await api('history_remove', { channel: 'nohist:a' })).json.error.code, 108);
});

test('history_remove forgets the kept events; the channel position goes on', async () => {
  for (const n of [1, 2]) await api('publish', { channel: 'gone', data: { n } });
  const before = (await api('history', { channel: 'gone', limit: -1 })).json.result;
  assert.equal(before.publications.length, 2);
  assert.deepEqual((await api('history_remove', { channel: 'gone' })).json, { result: {} });
  const after = (await api('history', { channel: 'gone', limit: -1 })).json.result;
  assert.deepEqual([after.publications, after.offset], [[], before.offset]);
  const stale = await api('history', { channel: 'gone', limit: 5, since: { offset: before.publications[0].offset, epoch: 'herald' } });
  assert.equal(stale.json.error.code, 112, 'a position from before the removal is no longer covered');
  await api('publish', { channel: 'gone', data: { n: 3 } });
  const later = (await api('history', { channel: 'gone', limit: -1 })).json.result;
  assert.deepEqual(later.publications.map((p) => p.data.n), [3]);
  assert.ok(later.offset > before.offset);
});

test('channels lists channels with subscribers and their counts, filtered by pattern', async () => {
  const a = await subscribed('lobby.one', 'ann');
  const b = await subscribed('lobby.one', 'ben');
  const c = await subscribed('lobby.two', 'ann');
  const stream = sse(herald, ['chat:side'], 'cid');
  await stream.ready;
  const all = (await api('channels', {})).json.result.channels;
  assert.deepEqual(all['lobby.one'], { num_clients: 2 });
  assert.deepEqual(all['chat:side'], { num_clients: 1 });
  const some = (await api('channels', { pattern: 'lobby.*' })).json.result.channels;
  assert.deepEqual(some, { 'lobby.one': { num_clients: 2 }, 'lobby.two': { num_clients: 1 } });
  for (const s of [a, b, c]) s.c.disconnect();
  stream.close();
});

test('info describes the node', async () => {
  const { c } = await subscribed('info', 'ivy');
  const { nodes } = (await api('info', {})).json.result;
  assert.equal(nodes.length, 1);
  const [node] = nodes;
  assert.match(node.version, /^herald /);
  assert.ok(node.uid && node.name, 'a node id');
  assert.ok(node.num_clients >= 1 && node.num_users >= 1 && node.num_channels >= 1 && node.num_subs >= 1, JSON.stringify(node));
  assert.equal(typeof node.uptime, 'number');
  c.disconnect();
});

test('batch runs its commands in order and answers one reply each; parallel too', async () => {
  const { c, sub } = await subscribed('batch', 'bob');
  const seen = [];
  const three = new Promise((ok) => sub.on('publication', (ctx) => seen.push(ctx.data.n) === 3 && ok()));
  const body = {
    commands: [
      { publish: { channel: 'batch', data: { n: 1 } } },
      { publish: { channel: 'batch', data: { n: 2 } } },
      { publish: { channel: 'nowhere:x', data: {} } },
      { shout: {} },
      { publish: { channel: 'batch', data: { n: 3 } } },
      { history: { channel: 'batch', limit: -1 } },
    ],
  };
  const { json } = await api('batch', body);
  const replies = json.result.replies;
  assert.deepEqual(replies.slice(0, 2), [{ publish: {} }, { publish: {} }]);
  assert.deepEqual([replies[2].error.code, replies[3].error.code], [102, 104]);
  assert.deepEqual(replies[4], { publish: {} });
  assert.deepEqual(replies[5].history.publications.map((p) => p.data.n), [1, 2, 3], 'each command ran after the last');
  await three;
  assert.deepEqual(seen, [1, 2, 3]);

  const parallel = await api('batch', {
    commands: [{ presence_stats: { channel: 'batch' } }, { info: {} }, { publish: { channel: 'batch', data: { n: 4 } } }],
    parallel: true,
  });
  const [stats, info, pub] = parallel.json.result.replies;
  assert.deepEqual(stats.presence_stats, { num_clients: 1, num_users: 1 });
  assert.equal(info.info.nodes.length, 1);
  assert.deepEqual(pub, { publish: {} });
  c.disconnect();
});

test('X-Centrifugo-Error-Mode: transport answers an error with its HTTP status and the error alone', async () => {
  const headers = { 'X-API-Key': API_KEY, 'X-Centrifugo-Error-Mode': 'transport' };
  const resp = await fetch(`${herald.url}/centrifugo/api/publish`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ channel: 'nowhere:x', data: {} }),
  });
  assert.equal(resp.status, 404);
  assert.equal((await resp.json()).code, 102);
  const range = await fetch(`${herald.url}/centrifugo/api/history`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ channel: 'hist', limit: 1, since: { offset: 1, epoch: 'other' } }),
  });
  assert.deepEqual([range.status, (await range.json()).code], [416, 112]);
  const ok = await api('publish', { channel: 'news', data: { n: 1 } }, headers);
  assert.deepEqual(ok.json, { result: {} }, 'a success is as always');
});
