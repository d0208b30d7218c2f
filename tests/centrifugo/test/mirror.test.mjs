// `centrifugo.mirror_url`: a Herald that forwards what is published to it to another
// Centrifugo-compatible server API (here a second real Herald's), as a broadcaster does while
// clients move over; and a mirror that fails or hangs, which never holds a publish back.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

import { API_KEY, once, startHerald, token } from './support.mjs';

const started = [];
const servers = [];
after(async () => {
  for (const h of started) await h.stop();
  for (const s of servers) s.close();
});

async function herald(opts) {
  const h = await startHerald(opts);
  started.push(h);
  return h;
}

/** `[centrifugo]` with a mirror, before the test configuration's namespace tables. */
function mirrorConfig(url, extra = '') {
  return `[centrifugo]\nmirror_url = "${url}"\nmirror_api_key = "${API_KEY}"\n${extra}`;
}

/** The value of one sample of `GET /metrics`. */
async function metric(h, name, labels) {
  const text = await (await fetch(`${h.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').pop()) : NaN;
}

async function until(check, what) {
  for (let i = 0; i < 500; i += 1) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

let old;
let migrating;
before(async () => {
  old = await herald();
  migrating = await herald({ config: mirrorConfig(`${old.url}/centrifugo/api`) });
});

test('what is published to the migrating node reaches a client of the old server, in order', async () => {
  const c = new Centrifuge(old.ws, { websocket: WebSocket, token: token('lena') });
  const sub = c.newSubscription('news');
  const got = [];
  const three = new Promise((ok) => sub.on('publication', (ctx) => got.push(ctx.data) === 3 && ok()));
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  c.connect();
  await ready;
  for (const n of [1, 2, 3]) await migrating.publish({ channel: 'channel:news', type: 'note', n });
  await three;
  assert.deepEqual(got.map((d) => d.n), [1, 2, 3]);
  assert.deepEqual(got.map((d) => d.type), ['note', 'note', 'note']);
  await until(async () => (await metric(migrating, 'herald_centrifugo_mirror_events_total', 'result="sent"')) === 3, 'sent = 3');
  c.disconnect();
});

test('a mirror that refuses is counted and logged; publishes succeed', async () => {
  const refusing = await herald({ config: mirrorConfig(`${old.url}/not/the/api`) });
  await refusing.publish({ channel: 'channel:news', type: 'note', n: 1 });
  await until(async () => (await metric(refusing, 'herald_centrifugo_mirror_events_total', 'result="failed"')) === 1, 'failed = 1');
  await until(() => /centrifugo mirror did not take events/.test(refusing.log()), 'the warning in the log');
});

test('a mirror that never answers holds no publish back: its bounded queue drops and counts', async () => {
  const silent = net.createServer(() => {});
  servers.push(silent);
  await new Promise((ok) => silent.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${silent.address().port}/api`;
  const stuck = await herald({ config: mirrorConfig(url, 'mirror_queue = 2\n') });
  for (let n = 0; n < 20; n += 1) await stuck.publish({ channel: 'channel:news', type: 'note', n });
  const dropped = await metric(stuck, 'herald_centrifugo_mirror_events_total', 'result="dropped"');
  // One call is in flight with what was queued (two at most), two more wait; the rest
  // were dropped.
  assert.ok(dropped >= 16, `dropped ${dropped}`);
});
