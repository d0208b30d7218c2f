// The real `centrifuge` SDK (npm, v5, JSON protocol, in Node over `ws`) against a real
// Herald: it connects with a JWT, subscribes, receives what Herald's own API publishes (and
// an SSE client of the same channel gets the same event), publishes to an SSE client, and is
// refused with the disconnect code it knows for a bad token.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { backend, collecting, hookApp, once, sse, startHerald, token } from './support.mjs';

let herald;
before(async () => {
  herald = await startHerald();
});
after(async () => {
  await herald?.stop();
});

function client(jwt) {
  return new Centrifuge(herald.ws, { websocket: WebSocket, token: jwt });
}

test('the SDK connects with a JWT and gets a client id', async () => {
  const c = client(token('alice'));
  const connected = once(c, 'connected');
  c.connect();
  const ctx = await connected;
  assert.equal(typeof ctx.client, 'string');
  assert.ok(ctx.client.length > 0);
  assert.equal(ctx.transport, 'websocket');
  c.disconnect();
});

test('a publication from POST /api/publish reaches the SDK and an SSE client of the same channel alike', async () => {
  const stream = sse(herald, ['channel:news'], 'bob');
  const c = client(token('alice'));
  const sub = c.newSubscription('news');
  const subscribed = once(sub, 'subscribed');
  const publication = once(sub, 'publication');
  sub.subscribe();
  c.connect();
  await subscribed;
  await stream.ready;
  const id = await herald.publish({ channel: 'channel:news', type: 'incident.created', title: 'Disk full' });
  const ctx = await publication;
  const seen = await stream.next((ev) => ev.id === id);
  assert.equal(ctx.channel, 'news');
  assert.deepEqual(ctx.data, seen);
  assert.equal(ctx.data.title, 'Disk full');
  assert.equal(ctx.data.channel, 'channel:news');
  assert.equal(typeof ctx.offset, 'number');
  stream.close();
  c.disconnect();
});

test('a namespaced channel and a user channel keep their Centrifugo names on the SDK side', async () => {
  const c = client(token('42'));
  const chat = c.newSubscription('chat:index');
  const personal = c.newSubscription('personal:#42');
  const got = Promise.all([once(chat, 'publication'), once(personal, 'publication')]);
  const subscribed = Promise.all([once(chat, 'subscribed'), once(personal, 'subscribed')]);
  chat.subscribe();
  personal.subscribe();
  c.connect();
  await subscribed;
  await herald.publish({ channel: 'chat:index', type: 'message', text: 'hi room' });
  await herald.publish({ channel: 'user:42', type: 'note', text: 'hi you' });
  const [room, mine] = await got;
  assert.deepEqual([room.channel, room.data.text], ['chat:index', 'hi room']);
  assert.deepEqual([mine.channel, mine.data.text, mine.data.channel], ['personal:#42', 'hi you', 'user:42']);
  c.disconnect();
});

test("another user's personal channel is refused with Centrifugo's permission error, its history and presence too", async () => {
  const c = client(token('42'));
  const sub = c.newSubscription('personal:#43');
  // A permanent refusal (not temporary, not `109`) ends the subscription with its code.
  const refused = once(sub, 'unsubscribed');
  sub.subscribe();
  c.connect();
  const ctx = await refused;
  assert.equal(ctx.code, 103);
  assert.equal(sub.state, 'unsubscribed');
  // Nor can its history or presence be read.
  await herald.publish({ channel: 'user:43', type: 'note', text: 'private' });
  await assert.rejects(c.history('#43', { limit: 10 }), (e) => e.code === 103);
  await assert.rejects(c.presence('#43'), (e) => e.code === 103);
  c.disconnect();
});

test('a publication from the SDK reaches an SSE client through Herald', async () => {
  const stream = sse(herald, ['channel:ops'], 'bob');
  await stream.ready;
  const c = client(token('alice'));
  const connected = once(c, 'connected');
  c.connect();
  await connected;
  await c.publish('ops', { type: 'deploy', version: '1.2.3' });
  const ev = await stream.next((e) => e.type === 'deploy');
  assert.equal(ev.version, '1.2.3');
  assert.equal(ev.channel, 'channel:ops');
  stream.close();
  c.disconnect();
});

test('an unknown namespace is an unknown channel', async () => {
  const c = client(token('alice'));
  const connected = once(c, 'connected');
  c.connect();
  await connected;
  await assert.rejects(c.publish('nowhere:x', { text: 'x' }), (e) => e.code === 102);
  c.disconnect();
});

test('a token that does not verify is refused with disconnect 3500 and the SDK does not reconnect', async () => {
  const [head, claims] = token('mallory').split('.');
  const bad = `${head}.${claims}.${'x'.repeat(43)}`;
  const c = client(bad);
  const disconnected = once(c, 'disconnected');
  c.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 3500);
  assert.equal(ctx.reason, 'invalid token');
  assert.equal(c.state, 'disconnected');
});

test('a connect without a token is refused with 3500 where Herald requires authentication', async () => {
  const c = new Centrifuge(herald.ws, { websocket: WebSocket });
  const disconnected = once(c, 'disconnected');
  c.connect();
  const ctx = await disconnected;
  assert.deepEqual([ctx.code, ctx.reason, c.state], [3500, 'invalid token', 'disconnected']);
});

test('presence and presence stats list the users subscribed, by user id', async () => {
  const c = client(token('carol'));
  const sub = c.newSubscription('lobby');
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await subscribed;
  const presence = await sub.presence();
  assert.deepEqual(Object.keys(presence.clients), ['carol']);
  assert.equal(presence.clients.carol.user, 'carol');
  const stats = await sub.presenceStats();
  assert.deepEqual([stats.numUsers, stats.numClients], [1, 1]);
  c.disconnect();
});

test('an unsubscribed channel delivers nothing and subscribed again recovers what it missed (no `105 already subscribed`)', async () => {
  const c = client(token('dave'));
  const quiet = c.newSubscription('quiet');
  const loud = c.newSubscription('loud');
  const subscribed = Promise.all([once(quiet, 'subscribed'), once(loud, 'subscribed')]);
  const seen = [];
  quiet.on('publication', (ctx) => seen.push(ctx.data.n));
  quiet.subscribe();
  loud.subscribe();
  c.connect();
  await subscribed;
  const unsubscribed = once(quiet, 'unsubscribed');
  quiet.unsubscribe();
  await unsubscribed;
  // Pushes come in publication order on one socket: once `loud` has the marker published
  // after `quiet`'s event, that event would have come already.
  await herald.publish({ channel: 'channel:quiet', type: 'n', n: 1 });
  const marker = once(loud, 'publication');
  await herald.publish({ channel: 'channel:loud', type: 'n', n: 2 });
  await marker;
  assert.deepEqual(seen, []);
  // The SDK subscribes again from the position it kept (`recover`), as it would against
  // Centrifugo: the event published while it was away comes first, then the live one.
  const resubscribed = once(quiet, 'subscribed');
  quiet.subscribe();
  const ctx = await resubscribed;
  assert.equal(ctx.recovered, true);
  await herald.publish({ channel: 'channel:quiet', type: 'n', n: 3 });
  while (seen.length < 2) await once(quiet, 'publication');
  assert.deepEqual(seen, [1, 3]);
  c.disconnect();
});

test('after a reconnect the SDK recovers exactly what was published meanwhile (recovered: true)', async () => {
  const c = client(token('erin'));
  const { sub, got, subscribed } = collecting(c, 'incidents');
  c.connect();
  const ctx = await subscribed;
  assert.equal(ctx.recoverable, true);
  const one = once(sub, 'publication');
  await herald.publish({ channel: 'channel:incidents', type: 'n', n: 1 });
  await one;
  // Herald cuts the socket (`3011 force reconnect`); what is published before the SDK is
  // back comes in the subscribe reply of its new socket, what comes after, live.
  const cut = once(c, 'connecting');
  await backend(herald, '/api/disconnect', { user: 'erin' });
  await cut;
  const resubscribed = once(sub, 'subscribed');
  await herald.publish({ channel: 'channel:incidents', type: 'n', n: 2 });
  await herald.publish({ channel: 'channel:incidents', type: 'n', n: 3 });
  const again = await resubscribed;
  assert.equal(again.wasRecovering, true);
  assert.equal(again.recovered, true);
  await herald.publish({ channel: 'channel:incidents', type: 'n', n: 4 });
  while (got.length < 4) await once(sub, 'publication');
  assert.deepEqual(got, [1, 2, 3, 4]);
  c.disconnect();
});

test('after 1,500 events of a channel in one millisecond the SDK recovers what came after them, not that millisecond again', async () => {
  // One batch is published at one instant: a millisecond holds 1,000 offsets of a channel,
  // and the batch's last 500 events take the next millisecond's, so the offset the SDK
  // recovers from is the last event's alone (past 999, every event had the same one).
  const own = await startHerald({ config: 'max_batch = 2000\ncentrifugo = true', args: ['--history-size', '2000', '--buffer-size', '4096'] });
  const c = new Centrifuge(own.ws, { websocket: WebSocket, token: token('mia') });
  try {
    const { sub, got, subscribed } = collecting(c, 'burst');
    c.connect();
    assert.equal((await subscribed).recoverable, true);
    const until = (n) => new Promise((ok) => {
      const check = () => got.length >= n && (sub.off('publication', check), ok());
      sub.on('publication', check);
      check();
    });
    const burst = Array.from({ length: 1500 }, (_, n) => ({ channel: 'channel:burst', type: 'n', n }));
    await backend(own, '/api/publish', burst);
    await until(1500);
    const cut = once(c, 'connecting');
    await backend(own, '/api/disconnect', { user: 'mia' });
    await cut;
    const resubscribed = once(sub, 'subscribed');
    for (const n of [1500, 1501]) await own.publish({ channel: 'channel:burst', type: 'n', n });
    const again = await resubscribed;
    assert.deepEqual([again.wasRecovering, again.recovered], [true, true]);
    await own.publish({ channel: 'channel:burst', type: 'n', n: 1502 });
    await until(1503);
    assert.deepEqual(got, Array.from({ length: 1503 }, (_, n) => n));
  } finally {
    c.disconnect();
    await own.stop();
  }
});

test("an rpc is answered by the application's RPC hook as Centrifugo's RPC proxy is, and is 104 without one", async () => {
  // The application's backend: Centrifugo's RPC proxy requests in, its answers out.
  const app = await hookApp((path, r) => {
    if (r.method === 'sum') return { result: { data: { sum: r.data.a + r.data.b } } };
    if (r.method === 'secret') return { error: { code: 1001, message: 'not for you' } };
    if (r.method === 'broken') return { status: 500, body: 'oops' };
    return { result: {} };
  });
  const own = await startHerald({ extra: `\n[hooks]\nrpc_url = "${app.url}/rpc"\n` });
  const c = new Centrifuge(own.ws, { websocket: WebSocket, token: token('rpc-user') });
  const plain = client(token('rpc-user'));
  try {
    const connected = once(c, 'connected');
    c.connect();
    const { client: id } = await connected;
    assert.deepEqual(await c.rpc('sum', { a: 2, b: 3 }), { data: { sum: 5 } });
    assert.deepEqual(app.asked[0].body, {
      client: id, transport: 'websocket', protocol: 'json', encoding: 'json', user: 'rpc-user', ip: '127.0.0.1',
      method: 'sum', data: { a: 2, b: 3 },
    });
    await assert.rejects(c.rpc('secret', {}), (e) => e.code === 1001 && e.message === 'not for you');
    await assert.rejects(c.rpc('broken', {}), (e) => e.code === 100 && e.temporary === true);
    assert.deepEqual(await c.rpc('empty', [1, 2]), { data: null });
    assert.deepEqual(app.asked.map((a) => [a.path, a.body.method]), [['/rpc', 'sum'], ['/rpc', 'secret'], ['/rpc', 'broken'], ['/rpc', 'empty']]);
    // A node without an RPC hook: Centrifugo's answer to a method it does not serve.
    plain.connect();
    await assert.rejects(plain.rpc('sum', { a: 1, b: 1 }), (e) => e.code === 104);
  } finally {
    c.disconnect();
    plain.disconnect();
    await own.stop();
    await app.close();
  }
});

test("the connect and subscribe hooks are asked for a Centrifugo client as for a stream: a refusal holds, a cookie names the user, the subscribe hook's data is the reply's", async () => {
  const app = await hookApp((path, r, headers) => {
    if (path === '/connect') {
      if (r.user?.id === 'mallory') return { error: { code: 'blocked', message: 'go away' } };
      if (!r.user && headers.cookie === 'sid=s3cret') return { result: { user: { id: 'carol' } } };
      return { result: {} };
    }
    if (r.channel === 'channel:vault') return { error: { code: 'not_member', message: 'members only' } };
    if (r.channel === 'channel:lobby') return { result: { data: { topic: 'general' } } };
    return { result: {} };
  });
  const own = await startHerald({ extra: `\n[hooks]\nconnect_url = "${app.url}/connect"\nsubscribe_url = "${app.url}/subscribe"\ncookies = ["sid"]\n` });
  // A WebSocket that sends the session cookie of a browser logged in to the application.
  class WithCookie extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: 'sid=s3cret' } });
    }
  }
  const clients = [];
  const open = (opts) => {
    const c = new Centrifuge(own.ws, { websocket: WebSocket, ...opts });
    clients.push(c);
    return c;
  };
  try {
    // Refused at connect: the SDK is told why and does not come back.
    const mallory = open({ token: token('mallory') });
    const gone = once(mallory, 'disconnected');
    mallory.connect();
    assert.deepEqual(await gone, { code: 103, reason: 'go away' });
    assert.deepEqual(app.asked[0], { path: '/connect', body: { transport: 'centrifugo', ip: '127.0.0.1', user: { id: 'mallory', name: null }, channels: [] }, headers: app.asked[0].headers });

    // No token, but the application's session cookie: the hook names the user, and is told
    // what the client's connect carried.
    const carol = open({ websocket: WithCookie, data: { device: 'kiosk' } });
    const connected = once(carol, 'connected');
    carol.connect();
    await connected;
    assert.deepEqual(app.asked.find((a) => a.path === '/connect' && !a.body.user).body.data, { device: 'kiosk' });
    const lobby = carol.newSubscription('lobby', { data: { seat: 7 } });
    const subscribed = once(lobby, 'subscribed');
    lobby.subscribe();
    // The hook's data is the subscribe reply's, as Centrifugo's subscribe proxy's is, and the
    // subscription's own data is told to the hook.
    assert.deepEqual((await subscribed).data, { topic: 'general' });
    const asked = app.asked.find((a) => a.path === '/subscribe' && a.body.channel === 'channel:lobby');
    assert.equal(asked.body.user.id, 'carol');
    assert.deepEqual(asked.body.data, { seat: 7 });

    // A channel the subscribe hook refuses stays refused, with the application's message.
    const vault = carol.newSubscription('vault');
    const refused = once(vault, 'unsubscribed');
    vault.subscribe();
    const ctx = await refused;
    assert.deepEqual([ctx.code, ctx.reason], [103, 'members only']);
    // And its history with it.
    await assert.rejects(carol.history('vault', { limit: 1 }), (e) => e.code === 103);
  } finally {
    for (const c of clients) c.disconnect();
    await own.stop();
    await app.close();
  }
});

test("the connect hook's channels are server-side subscriptions beside the token's, its info the connection's and its data the connect's, as Centrifugo's connect proxy's are", async () => {
  const app = await hookApp(() => ({
    result: { channels: ['hooked', 'chat:team', 'alerts-h', 'nowhere:x'], info: { role: 'lead' }, data: { motd: 'welcome' } },
  }));
  const own = await startHerald({ extra: `\n[hooks]\nconnect_url = "${app.url}/connect"\n` });
  const c = new Centrifuge(own.ws, { websocket: WebSocket, token: token('hana', { channels: ['alerts-h'] }) });
  try {
    const subscribed = [];
    c.on('subscribed', (ctx) => subscribed.push(ctx.channel));
    const connected = once(c, 'connected');
    const got = once(c, 'publication');
    c.connect();
    const ctx = await connected;
    assert.deepEqual(ctx.data, { motd: 'welcome' });
    // The hook was told the token's channels; what it added joined them, each once, and a
    // name Herald cannot map was left out.
    assert.deepEqual(app.asked[0].body.channels, ['channel:alerts-h']);
    assert.deepEqual(subscribed.sort(), ['alerts-h', 'chat:team', 'hooked']);
    await own.publish({ channel: 'chat:team', type: 'note', text: 'standup' });
    const pub = await got;
    assert.deepEqual([pub.channel, pub.data.text], ['chat:team', 'standup']);
    // The hook's info is what presence says of the connection.
    const presence = await c.presence('hooked');
    assert.deepEqual(presence.clients.hana.connInfo, { role: 'lead' });
  } finally {
    c.disconnect();
    await own.stop();
    await app.close();
  }
});

test("a send is answered as Centrifugo answers it without a handler: disconnect 3508, and the SDK stays disconnected", async () => {
  const c = client(token('sam'));
  const connected = once(c, 'connected');
  c.connect();
  await connected;
  const gone = once(c, 'disconnected');
  await c.send({ text: 'to nobody' });
  assert.deepEqual(await gone, { code: 3508, reason: 'not available' });
  assert.equal(c.state, 'disconnected');
});

test('every subscription of a socket recovers after a reconnect, not only the one that opens it', async () => {
  const c = client(token('erik'));
  const names = ['rec-a', 'rec-b', 'rec-c'];
  const got = Object.fromEntries(names.map((n) => [n, []]));
  const subs = names.map((name) => {
    const sub = c.newSubscription(name);
    sub.on('publication', (ctx) => got[name].push(ctx.data.n));
    return sub;
  });
  const first = subs.map((sub) => once(sub, 'subscribed'));
  c.connect();
  subs.forEach((sub) => sub.subscribe());
  for (const ctx of await Promise.all(first)) assert.equal(ctx.recoverable, true);
  for (const name of names) await herald.publish({ channel: `channel:${name}`, type: 'n', n: 1 });
  for (const name of names) while (got[name].length < 1) await once(subs[names.indexOf(name)], 'publication');
  const cut = once(c, 'connecting');
  await backend(herald, '/api/disconnect', { user: 'erik' });
  await cut;
  const again = subs.map((sub) => once(sub, 'subscribed'));
  for (const n of [2, 3]) {
    for (const name of names) await herald.publish({ channel: `channel:${name}`, type: 'n', n });
  }
  for (const ctx of await Promise.all(again)) {
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, true);
  }
  for (const name of names) await herald.publish({ channel: `channel:${name}`, type: 'n', n: 4 });
  for (const [i, name] of names.entries()) {
    while (got[name].length < 4) await once(subs[i], 'publication');
  }
  for (const name of names) assert.deepEqual(got[name], [1, 2, 3, 4], name);
  c.disconnect();
});

test('the history command reads the oldest kept, the newest with reverse, and back from a position', async () => {
  const c = client(token('hana'));
  const sub = c.newSubscription('hist-sdk');
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await subscribed;
  for (const n of [1, 2, 3, 4]) await herald.publish({ channel: 'channel:hist-sdk', type: 'n', n });
  const oldest = await sub.history({ limit: 2 });
  assert.deepEqual(oldest.publications.map((p) => p.data.n), [1, 2]);
  const newest = await sub.history({ limit: 2, reverse: true });
  assert.deepEqual(newest.publications.map((p) => p.data.n), [4, 3]);
  const all = await sub.history({ limit: -1 });
  assert.deepEqual(all.publications.map((p) => p.data.n), [1, 2, 3, 4]);
  const back = await sub.history({ limit: 10, reverse: true, since: { offset: all.publications[2].offset, epoch: 'herald' } });
  assert.deepEqual(back.publications.map((p) => p.data.n), [2, 1]);
  c.disconnect();
});

test('a recovery from a position history no longer covers is recovered: false', async () => {
  const c = new Centrifuge(herald.ws, { websocket: WebSocket, token: token('frank') });
  // A position far older than anything in history, as a client coming back after days.
  const sub = c.newSubscription('archive', { since: { offset: 1000, epoch: 'herald' } });
  await herald.publish({ channel: 'channel:archive', type: 'n', n: 1 });
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  const ctx = await subscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, false);
  c.disconnect();
});

test('an expired token is 109 at connect, and the SDK connects with the token its getToken gives', async () => {
  const expired = token('gina', { exp: Math.floor(Date.now() / 1000) - 3600 });
  let calls = 0;
  const c = new Centrifuge(herald.ws, {
    websocket: WebSocket,
    token: expired,
    getToken: async () => {
      calls += 1;
      return token('gina');
    },
  });
  const refused = once(c, 'error');
  const connected = once(c, 'connected');
  c.connect();
  const err = await refused;
  assert.deepEqual([err.type, err.error.code], ['connect', 109]);
  await connected;
  assert.equal(calls, 1);
  c.disconnect();
});

test("Herald's join and leave reach the SDK as join and leave pushes, with the user", async () => {
  const watcher = client(token('hank'));
  const sub = watcher.newSubscription('room:standup');
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  watcher.connect();
  await ready;
  const joined = new Promise((ok) => sub.on('join', (ctx) => ctx.info.user === 'ivy' && ok(ctx)));
  const left = new Promise((ok) => sub.on('leave', (ctx) => ctx.info.user === 'ivy' && ok(ctx)));
  const other = client(token('ivy'));
  const hers = other.newSubscription('room:standup');
  hers.subscribe();
  other.connect();
  const ctx = await joined;
  assert.equal(ctx.channel, 'room:standup');
  hers.unsubscribe();
  await left;
  other.disconnect();
  watcher.disconnect();
});

test('a client past its user\'s connections is disconnected with 3504 and stays so; one that never subscribes counts', async () => {
  const limited = await startHerald({ args: ['--max-connections-per-user', '1'] });
  const make = (jwt) => new Centrifuge(limited.ws, { websocket: WebSocket, token: jwt });
  try {
    // Connected without a subscription: it holds the user's one connection.
    const first = make(token('lim'));
    const connected = once(first, 'connected');
    first.connect();
    await connected;
    const second = make(token('lim'));
    const refused = once(second, 'disconnected');
    second.connect();
    const ctx = await refused;
    assert.deepEqual([ctx.code, ctx.reason], [3504, 'connection limit']);
    assert.equal(second.state, 'disconnected', 'the SDK does not come back by itself');
    // So does a stream of the same user, and another user is not held back.
    const stream = await fetch(`${limited.url}/api/events?channel=user:lim`, {
      headers: { authorization: `Bearer ${token('lim')}` },
    });
    assert.equal(stream.status, 429);
    await stream.body?.cancel();
    const other = make(token('other'));
    const otherConnected = once(other, 'connected');
    other.connect();
    await otherConnected;
    other.disconnect();
    // Once the first goes, its place is the next client's (given back as its session ends,
    // a moment after the SDK's end of the socket).
    first.disconnect();
    let taken = false;
    for (let attempt = 0; attempt < 200 && !taken; attempt++) {
      const next = make(token('lim'));
      const outcome = Promise.race([once(next, 'connected').then(() => true), once(next, 'disconnected').then(() => false)]);
      next.connect();
      taken = await outcome;
      next.disconnect();
      if (!taken) await new Promise((ok) => setTimeout(ok, 10));
    }
    assert.ok(taken, 'the place was given back');
  } finally {
    await limited.stop();
  }
});

test('a banned user\'s client is disconnected at connect with 3503 and stays so; another user connects', async () => {
  await backend(herald, '/api/bans', { user: 'banned-sdk', ttl: '1h' });
  const c = client(token('banned-sdk'));
  const refused = once(c, 'disconnected');
  c.connect();
  const ctx = await refused;
  assert.deepEqual([ctx.code, ctx.reason], [3503, 'force disconnect']);
  assert.equal(c.state, 'disconnected', 'the SDK does not come back by itself');
  const other = client(token('not-banned'));
  const connected = once(other, 'connected');
  other.connect();
  await connected;
  other.disconnect();
});
