// Centrifugo's unidirectional transports on Herald, read with raw HTTP and WebSocket
// clients as an application without an SDK would: the connect request with a token whose
// `channels` claim subscribes server-side, then pushes framed as Centrifugo frames them
// (`data: <push>` events on uni_sse, one JSON a line on uni_http_stream, one a frame on
// uni_websocket), live subscribe/unsubscribe from the server API, and the disconnect push.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import WebSocket from 'ws';

import { API_KEY, api, backend, hookApp, startHerald, token } from './support.mjs';

let herald;
before(async () => {
  herald = await startHerald({ config: '[centrifugo]\nuni = true\n' });
});
after(async () => {
  await herald?.stop();
});

/** Pushes as they arrive: `deliver(push)`, and `next(pred)` resolves to the first unread
 * push that satisfies `pred` (now, or when it comes). */
function inbox() {
  const unread = [];
  const waiters = [];
  return {
    deliver(p) {
      const w = waiters.find((x) => x.pred(p));
      if (w) {
        waiters.splice(waiters.indexOf(w), 1);
        w.ok(p);
      } else unread.push(p);
    },
    next(pred = () => true) {
      const found = unread.find(pred);
      if (found) {
        unread.splice(unread.indexOf(found), 1);
        return Promise.resolve(found);
      }
      return new Promise((ok) => waiters.push({ pred, ok }));
    },
  };
}

/** Reads a streaming response as pushes (`sse`: `data:` events, else lines): `next(pred)`
 * as [`inbox`], `ended` once the body ends, `raw()` what came so far. */
function pushes(resp, sse) {
  const box = inbox();
  let raw = '';
  const ended = (async () => {
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of resp.body) {
      const text = decoder.decode(chunk, { stream: true });
      raw += text;
      buf += text;
      const sep = sse ? '\n\n' : '\n';
      let at;
      while ((at = buf.indexOf(sep)) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + sep.length);
        const data = sse ? block.replace(/^\r\n/, '').split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('') : block;
        if (data) box.deliver(JSON.parse(data));
      }
    }
  })();
  return { ended, raw: () => raw, next: box.next };
}

test('uni_sse: connect push with the token channels, publications, live subscribe and unsubscribe, disconnect', async () => {
  const connect = JSON.stringify({ token: token('uma', { channels: ['news', 'chat:x'] }) });
  const resp = await fetch(`${herald.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`);
  assert.equal(resp.status, 200);
  assert.match(resp.headers.get('content-type'), /^text\/event-stream/);
  const s = pushes(resp, true);
  const { connect: hello } = await s.next((p) => p.connect);
  assert.deepEqual(Object.keys(hello.subs).sort(), ['chat:x', 'news']);
  assert.equal(hello.subs.news.epoch, 'herald');
  assert.ok(hello.client && hello.ping > 0, JSON.stringify(hello));

  await herald.publish({ channel: 'channel:news', type: 'note', text: 'hi' });
  const pub = await s.next((p) => p.pub);
  assert.equal(pub.channel, 'news');
  assert.deepEqual([pub.pub.data.text, pub.pub.data.channel], ['hi', 'channel:news']);
  assert.ok(pub.pub.offset > hello.subs.news.offset, 'the offset moves on from the connect one');

  await api(herald, 'subscribe', { channel: 'late', user: 'uma' });
  assert.deepEqual(await s.next((p) => p.subscribe), { channel: 'late', subscribe: { epoch: 'herald' } });
  await api(herald, 'publish', { channel: 'late', data: { n: 1 } });
  assert.equal((await s.next((p) => p.channel === 'late' && p.pub)).pub.data.n, 1);
  await api(herald, 'unsubscribe', { channel: 'late', user: 'uma' });
  assert.equal((await s.next((p) => p.unsubscribe)).channel, 'late');

  await api(herald, 'disconnect', { user: 'uma' });
  assert.deepEqual(await s.next((p) => p.disconnect), { disconnect: { code: 3503, reason: 'force disconnect' } });
  await s.ended;
  assert.ok(s.raw().startsWith('\r\n'), 'the stream opens with a line break, as Centrifugo writes');
});

test('uni_sse: a bad token gets 200 and a 3500 disconnect push; an unreadable cf_connect is 400', async () => {
  const connect = JSON.stringify({ token: 'not.a.token' });
  const resp = await fetch(`${herald.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`);
  assert.equal(resp.status, 200);
  const s = pushes(resp, true);
  assert.deepEqual(await s.next(), { disconnect: { code: 3500, reason: 'invalid token' } });
  await s.ended;
  const bad = await fetch(`${herald.url}/connection/uni_sse?cf_connect=${encodeURIComponent('{nope')}`);
  assert.equal(bad.status, 400);
});

test('uni_http_stream: the connect request as the POST body, one push a line', async () => {
  const resp = await fetch(`${herald.url}/connection/uni_http_stream`, {
    method: 'POST',
    body: JSON.stringify({ token: token('vic', { channels: ['stream'] }) }),
  });
  assert.equal(resp.status, 200);
  const s = pushes(resp, false);
  const hello = (await s.next((p) => p.connect)).connect;
  assert.deepEqual(Object.keys(hello.subs), ['stream']);
  await api(herald, 'publish', { channel: 'stream', data: { n: 7 } });
  const pub = await s.next((p) => p.pub);
  assert.deepEqual([pub.channel, pub.pub.data.n], ['stream', 7]);
  // The server API's `client` names this one connection.
  assert.deepEqual((await api(herald, 'subscribe', { channel: 'solo', user: 'vic', client: hello.client })).json, { result: {} });
  assert.equal((await s.next((p) => p.subscribe)).channel, 'solo');
  const absent = await api(herald, 'subscribe', { channel: 'solo', user: 'vic', client: 'c0000000000000000000000000' });
  assert.deepEqual(absent.json, { result: {} }, 'a client that is not connected is no error');
  await api(herald, 'disconnect', { user: 'vic', disconnect: { code: 3000, reason: 'again' } });
  assert.deepEqual(await s.next((p) => p.disconnect), { disconnect: { code: 3011, reason: 'force reconnect' } });
  await s.ended;
  const wrongMethod = await fetch(`${herald.url}/connection/uni_http_stream`);
  assert.equal(wrongMethod.status, 405);
});

/** A raw WebSocket to uni_websocket: its text frames, parsed, and how it closed. */
function uniSocket(url, first) {
  const ws = new WebSocket(url);
  const box = inbox();
  ws.on('open', () => first && ws.send(first));
  ws.on('message', (data) => box.deliver(JSON.parse(data.toString())));
  const closed = new Promise((ok) => ws.on('close', (code, reason) => ok({ code, reason: reason.toString() })));
  return { ws, closed, next: box.next };
}

test('uni_websocket: the connect request as the first message, one push a frame, the disconnect push and close code', async () => {
  const url = herald.url.replace('http', 'ws');
  const s = uniSocket(`${url}/connection/uni_websocket`, JSON.stringify({ token: token('wes', { channels: ['wsnews'] }) }));
  assert.deepEqual(Object.keys((await s.next((p) => p.connect)).connect.subs), ['wsnews']);
  await api(herald, 'publish', { channel: 'wsnews', data: { n: 1 } });
  assert.equal((await s.next((p) => p.pub)).pub.data.n, 1);
  await api(herald, 'disconnect', { user: 'wes' });
  assert.deepEqual(await s.next((p) => p.disconnect), { disconnect: { code: 3503, reason: 'force disconnect' } });
  assert.deepEqual(await s.closed, { code: 3503, reason: 'force disconnect' });

  const q = encodeURIComponent(JSON.stringify({ token: 'bad' }));
  const refused = uniSocket(`${url}/connection/uni_websocket?cf_connect=${q}`);
  assert.deepEqual(await refused.next(), { disconnect: { code: 3500, reason: 'invalid token' } });
  assert.equal((await refused.closed).code, 3500);
});

test('a uni client that comes back with subs {recover, offset, epoch} gets what it missed in the connect push', async () => {
  const open = (subs) =>
    fetch(`${herald.url}/connection/uni_http_stream`, {
      method: 'POST',
      body: JSON.stringify({ token: token('xia', { channels: ['comeback', 'other'] }), subs }),
    });
  const first = pushes(await open(), false);
  const hello = (await first.next((p) => p.connect)).connect;
  assert.equal(hello.subs.comeback.recoverable, true);
  await api(herald, 'publish', { channel: 'comeback', data: { n: 1 } });
  const seen = (await first.next((p) => p.pub)).pub;
  await api(herald, 'disconnect', { user: 'xia' });
  await first.ended;

  for (const n of [2, 3]) await api(herald, 'publish', { channel: 'comeback', data: { n } });
  const subs = { comeback: { recover: true, offset: seen.offset, epoch: 'herald' } };
  const again = pushes(await open(subs), false);
  const back = (await again.next((p) => p.connect)).connect.subs;
  assert.deepEqual([back.comeback.was_recovering, back.comeback.recovered], [true, true]);
  assert.deepEqual(back.comeback.publications.map((p) => p.data.n), [2, 3]);
  assert.equal(back.comeback.offset, back.comeback.publications[1].offset);
  assert.equal(back.other.was_recovering, undefined, 'a channel not in subs is not recovering');
  await api(herald, 'publish', { channel: 'comeback', data: { n: 4 } });
  assert.equal((await again.next((p) => p.pub)).pub.data.n, 4);

  const gone = pushes(await open({ comeback: { recover: true, offset: 1000, epoch: 'herald' } }), false);
  const stale = (await gone.next((p) => p.connect)).connect.subs.comeback;
  assert.deepEqual([stale.was_recovering, stale.recovered], [true, false], 'history does not reach back that far');
  await api(herald, 'disconnect', { user: 'xia' });
  await Promise.all([again.ended, gone.ended]);
});

test('uni_sse: a client whose token names no channel holds one of its user\'s connections for as long as it stays', async () => {
  const limited = await startHerald({ config: '[centrifugo]\nuni = true\n', args: ['--max-connections-per-user', '1'] });
  const open = (signal) => {
    const connect = JSON.stringify({ token: token('una') });
    return fetch(`${limited.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`, { signal });
  };
  const holder = new AbortController();
  let s;
  try {
    s = pushes(await open(holder.signal), true);
    const { connect: hello } = await s.next((p) => p.connect);
    assert.deepEqual(hello.subs, {});
    const second = pushes(await open(), true);
    assert.deepEqual(await second.next(), { disconnect: { code: 3504, reason: 'connection limit' } });
    await second.ended;
    const stream = await fetch(`${limited.url}/api/events?channel=user:una`, {
      headers: { authorization: `Bearer ${token('una')}` },
    });
    assert.equal(stream.status, 429);
    await stream.body?.cancel();
    // Once it goes, its place is given back (as its session ends, a moment after).
    holder.abort();
    await s.ended.catch(() => {});
    let hello2;
    for (let attempt = 0; attempt < 200 && !hello2; attempt++) {
      const ctrl = new AbortController();
      const next = pushes(await open(ctrl.signal), true);
      const push = await next.next();
      hello2 = push.connect;
      ctrl.abort();
      await next.ended.catch(() => {});
      if (!hello2) await new Promise((ok) => setTimeout(ok, 10));
    }
    assert.ok(hello2, 'the place was given back');
  } finally {
    holder.abort();
    await s?.ended.catch(() => {});
    await limited.stop();
  }
});

test('uni_sse: a client whose token names no channel is cut with 3005 when its token expires', async () => {
  const short = await startHerald({ config: '[centrifugo]\nuni = true\n', extra: '[auth]\nleeway = "0s"\n' });
  try {
    const connect = JSON.stringify({ token: token('ula', { exp: Math.floor(Date.now() / 1000) + 1 }) });
    const resp = await fetch(`${short.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`);
    const s = pushes(resp, true);
    assert.deepEqual((await s.next((p) => p.connect)).connect.subs, {});
    assert.deepEqual(await s.next((p) => p.disconnect), { disconnect: { code: 3005, reason: 'connection expired' } });
    await s.ended;
  } finally {
    await short.stop();
  }
});

test('uni_sse: a client whose token names no channel is cut by a disconnect of its user, or of its client id', async () => {
  const open = async (user) => {
    const connect = JSON.stringify({ token: token(user) });
    const s = pushes(await fetch(`${herald.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`), true);
    return { s, client: (await s.next((p) => p.connect)).connect.client };
  };
  const byUser = await open('uda');
  assert.deepEqual(await backend(herald, '/api/disconnect', { user: 'uda', reconnect: false }), { disconnected: 1 });
  assert.deepEqual(await byUser.s.next((p) => p.disconnect), { disconnect: { code: 3503, reason: 'force disconnect' } });
  await byUser.s.ended;
  const byId = await open('udb');
  assert.deepEqual(await backend(herald, '/api/disconnect', { connectionId: byId.client }), { disconnected: 1 });
  assert.deepEqual(await byId.s.next((p) => p.disconnect), { disconnect: { code: 3011, reason: 'force reconnect' } });
  await byId.s.ended;
});

test('uni_sse: a banned user is refused with 3507 whether the token names channels or none, and connects once the ban is lifted', async () => {
  const open = (claims, signal) => {
    const connect = JSON.stringify({ token: token('ubn', claims) });
    return fetch(`${herald.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`, { signal }).then((r) => pushes(r, true));
  };
  assert.deepEqual(await backend(herald, '/api/bans', { user: 'ubn', ttl: '1h' }), { user: 'ubn', expiresIn: 3600 });
  for (const claims of [{}, { channels: ['news'] }]) {
    const s = await open(claims);
    assert.deepEqual(await s.next(), { disconnect: { code: 3507, reason: 'permission denied' } }, JSON.stringify(claims));
    await s.ended;
  }
  const lifted = await fetch(`${herald.url}/api/bans/ubn`, { method: 'DELETE', headers: { 'X-Api-Key': API_KEY } });
  assert.deepEqual(await lifted.json(), { user: 'ubn', lifted: true });
  const ctrl = new AbortController();
  const s = await open({}, ctrl.signal);
  try {
    assert.ok((await s.next()).connect, 'connected once lifted');
  } finally {
    ctrl.abort();
    await s.ended.catch(() => {});
  }
});

test("uni_sse: the connect hook is asked as for a stream: a refusal is 3507, a cookie names the user of a client without a token, its channels are followed and its data told", async () => {
  const app = await hookApp((path, r, headers) => {
    if (r.user?.id === 'mallory') return { error: { code: 'blocked', message: 'go away' } };
    if (!r.user && headers.cookie === 'sid=s3cret') return { result: { user: { id: 'dave' }, channels: ['hooked'], data: { motd: 'hi' } } };
    return { result: {} };
  });
  const own = await startHerald({ config: '[centrifugo]\nuni = true\n', extra: `\n[hooks]\nconnect_url = "${app.url}/connect"\ncookies = ["sid"]\n` });
  const open = (connect, headers, signal) =>
    fetch(`${own.url}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify(connect))}`, { headers, signal }).then((r) => pushes(r, true));
  const ctrl = new AbortController();
  let dave;
  try {
    const refused = await open({ token: token('mallory', { channels: ['news'] }) });
    assert.deepEqual(await refused.next(), { disconnect: { code: 3507, reason: 'permission denied' } });
    await refused.ended;
    assert.deepEqual(app.asked[0].body, { transport: 'centrifugo', ip: '127.0.0.1', user: { id: 'mallory', name: null }, channels: ['channel:news'] });
    // No token: refused without the cookie (the hook names nobody), connected as dave with it.
    const anonymous = await open({});
    assert.deepEqual(await anonymous.next(), { disconnect: { code: 3500, reason: 'invalid token' } });
    await anonymous.ended;
    dave = await open({}, { Cookie: 'sid=s3cret' }, ctrl.signal);
    const { connect: hello } = await dave.next();
    assert.deepEqual(Object.keys(hello.subs), ['hooked'], 'the hook\'s channel is a server-side subscription');
    assert.deepEqual(hello.data, { motd: 'hi' }, 'the hook\'s data is the connect push\'s');
    await own.publish({ channel: 'channel:hooked', type: 'note', text: 'hi dave' });
    const pub = await dave.next((p) => p.pub);
    assert.deepEqual([pub.channel, pub.pub.data.text], ['hooked', 'hi dave']);
    const listed = await fetch(`${own.url}/api/users/dave/connections`, { headers: { 'X-Api-Key': API_KEY } });
    assert.equal((await listed.json()).connections.length, 1, 'the connection is dave\'s');
  } finally {
    ctrl.abort();
    await dave?.ended.catch(() => {});
    await own.stop();
    await app.close();
  }
});
