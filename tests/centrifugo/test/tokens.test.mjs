// Tokens and the server's hand in a socket's subscriptions, with the real `centrifuge` SDK:
// a connection token refreshed without reconnecting (`refresh`), subscription tokens for
// `$` channels and for a namespace Herald keeps to the application (`sub_refresh`, expiry),
// the `channels` claim, the application's live join and leave as server-side subscribe and
// unsubscribe pushes, and the `history` command.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { API_KEY, backend, once, startHerald, token } from './support.mjs';

// `vault` is subscribed by the application only (`api_key`): a Centrifugo client needs a
// subscription token; `team` has presence and join/leave. A second of leeway keeps the expiry
// tests short.
const EXTRA = `
[namespaces.vault]
subscribe = "api_key"

[namespaces.team]
join_leave = true
presence = true

[auth]
leeway = "1s"
`;

let herald;
before(async () => {
  herald = await startHerald(EXTRA);
});
after(async () => {
  await herald?.stop();
});

const nowSecs = () => Math.floor(Date.now() / 1000);

function client(jwt, options = {}) {
  return new Centrifuge(herald.ws, { websocket: WebSocket, token: jwt, ...options });
}

/** Resolves once an SSE stream opened with `jwt` ends: Herald ends it at the token's `exp`
 * (plus the leeway), the instant the first token of a test stops being good. */
async function streamEnds(jwt) {
  const resp = await fetch(`${herald.url}/api/events?channel=channel:witness`, {
    headers: { Authorization: `Bearer ${jwt}`, Accept: 'text/event-stream' },
  });
  assert.equal(resp.status, 200);
  let text = '';
  for await (const chunk of resp.body) text += Buffer.from(chunk).toString();
  return text;
}

test('the SDK refreshes its connection token without reconnecting, and Herald keeps the socket past the first token', async () => {
  const first = token('olga', { exp: nowSecs() + 2 });
  let calls = 0;
  const c = client(first, {
    getToken: async () => {
      calls += 1;
      return token('olga');
    },
  });
  const sub = c.newSubscription('feed');
  const subscribed = once(sub, 'subscribed');
  const connected = once(c, 'connected');
  sub.subscribe();
  c.connect();
  const { client: id } = await connected;
  await subscribed;
  const reconnects = [];
  c.on('connecting', (ctx) => reconnects.push(ctx));
  const witness = await streamEnds(first);
  assert.match(witness, /token_expired/);
  const got = once(sub, 'publication');
  await herald.publish({ channel: 'channel:feed', type: 'n', n: 1 });
  assert.equal((await got).data.n, 1);
  assert.ok(calls >= 1, 'getToken was called for the refresh');
  assert.deepEqual(reconnects, []);
  assert.equal(c.state, 'connected');
  // The same socket: the SDK kept its client id.
  assert.equal(c._client, id);
  c.disconnect();
});

test("a refresh with another user's token ends the connection with 3500 invalid token", async () => {
  const c = client(token('pia', { exp: nowSecs() + 1 }), { getToken: async () => token('mallory') });
  const disconnected = once(c, 'disconnected');
  c.connect();
  const ctx = await disconnected;
  assert.deepEqual([ctx.code, ctx.reason], [3500, 'invalid token']);
});

test('a $ channel needs a subscription token: without one 103 (and no history or presence), with one for the user and channel it subscribes', async () => {
  const c = client(token('pat'));
  const denied = c.newSubscription('$secret');
  const refused = once(denied, 'unsubscribed');
  let asked;
  const allowed = c.newSubscription('$plans', {
    getToken: async (ctx) => {
      asked = ctx;
      return token('pat', { channel: ctx.channel });
    },
  });
  const subscribed = once(allowed, 'subscribed');
  denied.subscribe();
  allowed.subscribe();
  c.connect();
  assert.equal((await refused).code, 103);
  await subscribed;
  assert.equal(asked.channel, '$plans');
  const got = once(allowed, 'publication');
  await herald.publish({ channel: 'channel:plans', type: 'plan', text: 'q3' });
  const pub = await got;
  assert.deepEqual([pub.channel, pub.data.text], ['$plans', 'q3']);
  // A $ channel's history is its subscribers' only.
  assert.equal((await allowed.history({ limit: 0 })).epoch, 'herald');
  await assert.rejects(c.history('$secret', { limit: 0 }), (e) => e.code === 103);
  // So is its presence.
  await assert.rejects(c.presence('$secret'), (e) => e.code === 103);
  await assert.rejects(c.presenceStats('$secret'), (e) => e.code === 103);
  assert.equal((await allowed.presenceStats()).numUsers, 1, 'its subscriber reads it');
  c.disconnect();
});

test("a subscription token grants a channel Herald's policy keeps to the application; without one it is refused", async () => {
  const c = client(token('quin'));
  const without = c.newSubscription('vault:ops');
  const refused = once(without, 'unsubscribed');
  without.subscribe();
  c.connect();
  assert.equal((await refused).code, 103);
  without.removeAllListeners();
  c.removeSubscription(without);
  const granted = c.newSubscription('vault:ops', { token: token('quin', { channel: 'vault:ops' }) });
  const subscribed = once(granted, 'subscribed');
  granted.subscribe();
  await subscribed;
  const got = once(granted, 'publication');
  await herald.publish({ channel: 'vault:ops', type: 'secret', text: 'rotate keys' });
  assert.equal((await got).data.text, 'rotate keys');
  c.disconnect();
});

test('a subscription token of another channel or another user ends the connection with 3500', async () => {
  for (const bad of [token('rita', { channel: 'vault:b' }), token('someone', { channel: 'vault:a' })]) {
    const c = client(token('rita'));
    const sub = c.newSubscription('vault:a', { token: bad });
    const disconnected = once(c, 'disconnected');
    sub.subscribe();
    c.connect();
    assert.equal((await disconnected).code, 3500);
  }
});

test('a subscription token is not a connection token: connecting with one is 3500', async () => {
  const c = client(token('rita', { channel: 'vault:a' }));
  const disconnected = once(c, 'disconnected');
  c.connect();
  assert.deepEqual([(await disconnected).code, c.state], [3500, 'disconnected']);
});

test('an expired subscription token is 109: the SDK subscribes with the one its getToken gives', async () => {
  let calls = 0;
  const c = client(token('sam'));
  const sub = c.newSubscription('vault:late', {
    token: token('sam', { channel: 'vault:late', exp: nowSecs() - 3600 }),
    getToken: async () => {
      calls += 1;
      return token('sam', { channel: 'vault:late' });
    },
  });
  const error = once(sub, 'error');
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  assert.equal((await error).error.code, 109);
  await subscribed;
  assert.equal(calls, 1);
  c.disconnect();
});

test('a subscription refreshed with sub_refresh stays past its first token; one not refreshed is unsubscribed with 2501', async () => {
  const exp = nowSecs() + 2;
  let refreshed = 0;
  const c = client(token('tess'));
  const kept = c.newSubscription('vault:kept', {
    token: token('tess', { channel: 'vault:kept', exp }),
    getToken: async () => {
      refreshed += 1;
      return token('tess', { channel: 'vault:kept' });
    },
  });
  // Its application never answers the refresh: Herald ends the subscription at its exp.
  const lapsed = c.newSubscription('vault:lapsed', {
    token: token('tess', { channel: 'vault:lapsed', exp }),
    getToken: () => new Promise(() => {}),
  });
  const subscribed = Promise.all([once(kept, 'subscribed'), once(lapsed, 'subscribed')]);
  kept.subscribe();
  lapsed.subscribe();
  c.connect();
  await subscribed;
  const keptStates = [];
  kept.on('subscribing', (ctx) => keptStates.push(ctx));
  const expired = await once(lapsed, 'subscribing');
  assert.deepEqual([expired.code, expired.reason], [2501, 'subscription expired']);
  const got = once(kept, 'publication');
  await herald.publish({ channel: 'vault:kept', type: 'n', n: 1 });
  assert.equal((await got).data.n, 1);
  assert.ok(refreshed >= 1);
  assert.deepEqual(keptStates, []);
  c.disconnect();
});

test("the token's channels are server-side subscriptions: subscribed at connect, publications on the client", async () => {
  const c = client(token('uma', { channels: ['alerts', 'chat:ops'] }));
  const subscribed = [];
  c.on('subscribed', (ctx) => subscribed.push(ctx.channel));
  const connected = once(c, 'connected');
  const got = once(c, 'publication');
  c.connect();
  await connected;
  assert.deepEqual(subscribed.sort(), ['alerts', 'chat:ops']);
  await herald.publish({ channel: 'channel:alerts', type: 'alert', text: 'cpu' });
  const pub = await got;
  assert.deepEqual([pub.channel, pub.data.text], ['alerts', 'cpu']);
  c.disconnect();
});

test("the token's server-side subscriptions recover what was published while the SDK reconnected", async () => {
  const c = client(token('ulla', { channels: ['alerts-r', 'chat:ops-r'] }));
  const got = { 'alerts-r': [], 'chat:ops-r': [] };
  c.on('publication', (ctx) => got[ctx.channel].push(ctx.data.n));
  const first = [];
  c.on('subscribed', (ctx) => first.push(ctx));
  const connected = once(c, 'connected');
  c.connect();
  await connected;
  assert.ok(first.every((ctx) => ctx.recoverable === true));
  await herald.publish({ channel: 'channel:alerts-r', type: 'n', n: 1 });
  await herald.publish({ channel: 'chat:ops-r', type: 'n', n: 1 });
  while (got['alerts-r'].length < 1 || got['chat:ops-r'].length < 1) await once(c, 'publication');
  const cut = once(c, 'connecting');
  await backend(herald, '/api/disconnect', { user: 'ulla' });
  await cut;
  first.length = 0;
  const back = once(c, 'connected');
  for (const n of [2, 3]) {
    await herald.publish({ channel: 'channel:alerts-r', type: 'n', n });
    await herald.publish({ channel: 'chat:ops-r', type: 'n', n });
  }
  await back;
  assert.deepEqual(first.map((ctx) => [ctx.channel, ctx.wasRecovering, ctx.recovered]).sort(), [
    ['alerts-r', true, true],
    ['chat:ops-r', true, true],
  ]);
  await herald.publish({ channel: 'channel:alerts-r', type: 'n', n: 4 });
  await herald.publish({ channel: 'chat:ops-r', type: 'n', n: 4 });
  while (got['alerts-r'].length < 4 || got['chat:ops-r'].length < 4) await once(c, 'publication');
  assert.deepEqual(got, { 'alerts-r': [1, 2, 3, 4], 'chat:ops-r': [1, 2, 3, 4] });
  c.disconnect();
});

test("the application's live join and leave of the client's connection are server-side subscribe and unsubscribe pushes", async () => {
  const c = client(token('vic'));
  const anchor = c.newSubscription('anchor');
  const ready = once(anchor, 'subscribed');
  const connected = once(c, 'connected');
  anchor.subscribe();
  c.connect();
  const { client: id } = await connected;
  await ready;
  const joined = once(c, 'subscribed');
  await backend(herald, `/api/connections/${id}/channels`, { channel: 'channel:extra' });
  assert.equal((await joined).channel, 'extra');
  const got = once(c, 'publication');
  await herald.publish({ channel: 'channel:extra', type: 'n', n: 7 });
  const pub = await got;
  assert.deepEqual([pub.channel, pub.data.n], ['extra', 7]);
  const left = once(c, 'unsubscribed');
  await remove(id, 'channel:extra');
  assert.equal((await left).channel, 'extra');
  // A leave of a channel the client subscribed itself ends that subscription for good.
  const dropped = once(anchor, 'unsubscribed');
  await remove(id, 'channel:anchor');
  assert.deepEqual([(await dropped).code, anchor.state], [2000, 'unsubscribed']);
  c.disconnect();
});

async function remove(connection, channel) {
  const resp = await fetch(`${herald.url}/api/connections/${connection}/channels/${channel}`, {
    method: 'DELETE',
    headers: { 'X-Api-Key': API_KEY },
  });
  assert.equal(resp.status, 200, await resp.text());
}

test("the connection token's info reaches presence and the join and leave pushes of others as connInfo", async () => {
  const watcher = client(token('yan'));
  const sub = watcher.newSubscription('team:intro');
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  watcher.connect();
  await ready;
  const joined = new Promise((ok) => sub.on('join', (ctx) => ctx.info.user === 'xena' && ok(ctx.info)));
  const left = new Promise((ok) => sub.on('leave', (ctx) => ctx.info.user === 'xena' && ok(ctx.info)));
  const other = client(token('xena', { info: { name: 'Xena', role: 'sre' } }));
  const hers = other.newSubscription('team:intro');
  hers.subscribe();
  other.connect();
  assert.deepEqual((await joined).connInfo, { name: 'Xena', role: 'sre' });
  const present = await sub.presence();
  assert.deepEqual(present.clients.xena.connInfo, { name: 'Xena', role: 'sre' });
  assert.equal(present.clients.yan.connInfo, undefined);
  hers.unsubscribe();
  assert.deepEqual((await left).connInfo, { name: 'Xena', role: 'sre' });
  other.disconnect();
  watcher.disconnect();
});

test('history since a position gives the publications after it with their offsets; no limit gives the position alone', async () => {
  const c = client(token('wes'));
  const sub = c.newSubscription('log');
  const offsets = [];
  sub.on('publication', (ctx) => offsets.push(ctx.offset));
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await subscribed;
  for (const n of [1, 2, 3]) await herald.publish({ channel: 'channel:log', type: 'n', n });
  while (offsets.length < 3) await once(sub, 'publication');
  const since = await sub.history({ since: { offset: offsets[0], epoch: 'herald' }, limit: 10 });
  assert.deepEqual(since.publications.map((p) => [p.data.n, p.offset]), [[2, offsets[1]], [3, offsets[2]]]);
  assert.deepEqual([since.epoch, since.offset], ['herald', offsets[2]]);
  const one = await sub.history({ since: { offset: offsets[0], epoch: 'herald' }, limit: 1 });
  assert.deepEqual(one.publications.map((p) => p.data.n), [2]);
  const top = await sub.history();
  assert.deepEqual([top.publications, top.offset], [[], offsets[2]]);
  await assert.rejects(sub.history({ since: { offset: offsets[0], epoch: 'other' }, limit: 10 }), (e) => e.code === 112);
  c.disconnect();
});
