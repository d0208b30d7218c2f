// The real `centrifuge` SDK (npm, its browser bundle) in Chromium against two Herald nodes on
// one Redis: the page connects with a short-lived JWT and refreshes it without reconnecting,
// subscribes a `$` channel with a subscription token, reads history since a position, is
// present with its token's info on the other node, and after its node is killed and
// restarted recovers exactly what the other node published meanwhile (`recovered: true`);
// the other node's live join of its connection is a server-side subscription. Where the
// WebSocket fails, the SDK falls back to Centrifugo's emulation over Chromium's own
// EventSource; the SDK's Protobuf bundle speaks binary frames over Chromium's WebSocket.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';

import { cleanup, launchBrowser, post, startHerald, startRedis, waitFor, withScreenshots } from '../harness.mjs';

after(cleanup);

const SECRET = 'centrifugo-browser-secret-long-enough';
const API_KEY = 'centrifugo-browser-api-key-0123456789';
const SDK = resolve(import.meta.dirname, '../node_modules/centrifuge/dist/centrifuge.js');
const SDK_PROTOBUF = resolve(import.meta.dirname, '../node_modules/centrifuge/dist/centrifuge.protobuf.js');

/** An HS256 JWT for `sub`, valid for an hour unless `claims` say otherwise. */
function token(sub, claims = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

function config(centrifugo = 'centrifugo = true\n') {
  const dir = mkdtempSync(join(tmpdir(), 'herald-centrifugo-browser-'));
  const path = join(dir, 'herald.toml');
  writeFileSync(path, `${centrifugo}\n[auth]\nleeway = "1s"\n`);
  return path;
}

test('the SDK in Chromium refreshes its token in place, subscribes a $ channel with a token, reads history, is present with its info, recovers after its node restarts behind Redis, and is joined live from the other node', async () => {
  const redis = await startRedis();
  const args = ['--config', config(), '--jwt-secret', SECRET, '--api-key', API_KEY, '--redis-url', redis.url];
  let first = await startHerald(args);
  const other = await startHerald(args);
  const publish = async (base, n) => {
    const [status, body] = await post(base, '/api/publish', { channel: 'channel:plans', type: 'n', n }, { 'X-Api-Key': API_KEY });
    assert.equal(status, 200, JSON.stringify(body));
  };
  const browser = await launchBrowser();
  await withScreenshots('centrifugo', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    await page.exposeFunction('mintToken', (sub, claims) => token(sub, claims));
    await page.goto(`${first.url}/healthz`);
    await page.addScriptTag({ path: SDK });
    const short = token('zoe', { exp: Math.floor(Date.now() / 1000) + 2, info: { device: 'chromium' } });
    await page.evaluate(
      ({ ws, short }) => {
        window.seen = { pubs: [], subscribed: [], connecting: 0, connected: 0, tokens: 0 };
        const c = new Centrifuge(ws, {
          token: short,
          getToken: () => {
            window.seen.tokens += 1;
            return window.mintToken('zoe', {});
          },
          minReconnectDelay: 100,
          maxReconnectDelay: 500,
        });
        const sub = c.newSubscription('$plans', { getToken: (ctx) => window.mintToken('zoe', { channel: ctx.channel }) });
        sub.on('publication', (ctx) => window.seen.pubs.push([ctx.data.n, ctx.offset]));
        sub.on('subscribed', (ctx) => window.seen.subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
        c.on('connecting', () => (window.seen.connecting += 1));
        c.on('connected', (ctx) => {
          window.seen.connected += 1;
          window.seen.client = ctx.client;
        });
        c.on('subscribed', (ctx) => (window.seen.serverSide = ctx.channel));
        c.on('publication', (ctx) => (window.seen.serverPub = [ctx.channel, ctx.data.n]));
        sub.subscribe();
        c.connect();
        window.sub = sub;
      },
      { ws: `ws://127.0.0.1:${first.port}/connection/websocket`, short },
    );
    const seen = () => page.evaluate(() => window.seen);
    await waitFor(async () => (await seen()).subscribed.length === 1, 'the page to subscribe');

    // Herald ends an SSE stream opened with the page's first token at its expiry: the page's
    // socket, refreshed in place, outlives it.
    const witness = await fetch(`${first.url}/api/events?channel=channel:witness`, {
      headers: { Authorization: `Bearer ${short}` },
    });
    assert.equal(witness.status, 200);
    for await (const _ of witness.body);
    await publish(first.url, 1);
    await publish(first.url, 2);
    await waitFor(async () => (await seen()).pubs.length === 2, 'two publications');
    const before = await seen();
    assert.deepEqual([before.connected, before.connecting, before.tokens >= 1], [1, 1, true]);

    // History since the first publication, from Redis.
    const history = await page.evaluate(
      async (offset) => (await window.sub.history({ since: { offset, epoch: 'herald' }, limit: 10 })).publications.map((p) => p.data.n),
      before.pubs[0][1],
    );
    assert.deepEqual(history, [2]);

    // The token's info is the page's presence, kept in Redis: the other node reads it.
    const presence = await fetch(`${other.url}/api/channels/channel:plans/presence`, { headers: { 'X-Api-Key': API_KEY } });
    assert.equal(presence.status, 200);
    const { users } = await presence.json();
    assert.deepEqual(users.map((u) => [u.userId, u.info]), [['zoe', { device: 'chromium' }]]);

    // The page's node dies; the other node publishes meanwhile; the node comes back.
    await first.stop('SIGKILL');
    await waitFor(async () => (await seen()).connecting === 2, 'the page to notice');
    await publish(other.url, 3);
    await publish(other.url, 4);
    first = await startHerald(args, { port: first.port });
    await waitFor(async () => (await seen()).subscribed.length === 2, 'the page to resubscribe');
    assert.deepEqual((await seen()).subscribed[1], { recovered: true, wasRecovering: true });
    await publish(first.url, 5);
    await waitFor(async () => (await seen()).pubs.length >= 5, 'five publications');
    assert.deepEqual((await seen()).pubs.map(([n]) => n), [1, 2, 3, 4, 5]);

    // The other node's live join of the page's connection (its `client` id) reaches the
    // page's node through Redis: a server-side subscription in the SDK.
    const { client } = await seen();
    const [status, body] = await post(other.url, `/api/connections/${client}/channels`, { channel: 'channel:ops' }, { 'X-Api-Key': API_KEY });
    assert.equal(status, 200, JSON.stringify(body));
    await waitFor(async () => (await seen()).serverSide === 'ops', 'the server-side subscription');
    const [sent] = await post(other.url, '/api/publish', { channel: 'channel:ops', type: 'n', n: 6 }, { 'X-Api-Key': API_KEY });
    assert.equal(sent, 200);
    await waitFor(async () => (await seen()).serverPub?.[1] === 6, 'its publication');
    assert.deepEqual((await seen()).serverPub, ['ops', 6]);
  });
});

test("where the WebSocket fails, the SDK in Chromium falls back to the sse emulation over the browser's EventSource and subscribes, receives and publishes", async () => {
  const herald = await startHerald(['--config', config('[centrifugo]\nemulation = true\n'), '--jwt-secret', SECRET, '--api-key', API_KEY]);
  const browser = await launchBrowser();
  await withScreenshots('centrifugo-emulation', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${herald.url}/healthz`);
    await page.addScriptTag({ path: SDK });
    await page.evaluate(
      ({ base, port, jwt }) => {
        window.seen = { pubs: [], transport: null, subscribed: 0 };
        const c = new Centrifuge(
          [
            // No WebSocket endpoint here: the upgrade is refused, as a proxy that drops it would.
            { transport: 'websocket', endpoint: `ws://127.0.0.1:${port}/no-websocket-here` },
            { transport: 'sse', endpoint: `${base}/connection/sse` },
          ],
          { token: jwt, emulationEndpoint: `${base}/emulation` },
        );
        c.on('connected', (ctx) => (window.seen.transport = ctx.transport));
        const sub = c.newSubscription('fallback');
        sub.on('publication', (ctx) => window.seen.pubs.push(ctx.data.n));
        sub.on('subscribed', () => (window.seen.subscribed += 1));
        sub.subscribe();
        c.connect();
        window.sub = sub;
      },
      { base: herald.url, port: herald.port, jwt: token('yui') },
    );
    const seen = () => page.evaluate(() => window.seen);
    await waitFor(async () => (await seen()).subscribed === 1, 'the page to subscribe over the emulation');
    assert.equal((await seen()).transport, 'sse');
    const [status] = await post(herald.url, '/api/publish', { channel: 'channel:fallback', type: 'n', n: 1 }, { 'X-Api-Key': API_KEY });
    assert.equal(status, 200);
    await page.evaluate(() => window.sub.publish({ type: 'n', n: 2 }));
    await waitFor(async () => (await seen()).pubs.length === 2, 'both publications');
    assert.deepEqual((await seen()).pubs, [1, 2]);
  });
});

test("the SDK's Protobuf bundle in Chromium speaks binary frames over the browser's WebSocket: subscribes, receives, publishes and reads history", async () => {
  const herald = await startHerald(['--config', config(), '--jwt-secret', SECRET, '--api-key', API_KEY]);
  const browser = await launchBrowser();
  await withScreenshots('centrifugo-protobuf', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${herald.url}/healthz`);
    await page.addScriptTag({ path: SDK_PROTOBUF });
    await page.evaluate(
      ({ ws, jwt }) => {
        window.seen = { pubs: [], subscribed: 0 };
        const c = new Centrifuge(ws, { token: jwt });
        const sub = c.newSubscription('binary');
        const text = new TextDecoder();
        sub.on('publication', (ctx) => window.seen.pubs.push(JSON.parse(text.decode(ctx.data)).n));
        sub.on('subscribed', () => (window.seen.subscribed += 1));
        sub.subscribe();
        c.connect();
        window.sub = sub;
        window.protocol = () => c._transport._transport.protocol;
      },
      { ws: `ws://127.0.0.1:${herald.port}/connection/websocket`, jwt: token('kai') },
    );
    const seen = () => page.evaluate(() => window.seen);
    await waitFor(async () => (await seen()).subscribed === 1, 'the page to subscribe over Protobuf');
    assert.equal(await page.evaluate(() => window.protocol()), 'centrifuge-protobuf');
    const [status] = await post(herald.url, '/api/publish', { channel: 'channel:binary', type: 'n', n: 1 }, { 'X-Api-Key': API_KEY });
    assert.equal(status, 200);
    await page.evaluate(() => window.sub.publish(new TextEncoder().encode(JSON.stringify({ type: 'n', n: 2 }))));
    await waitFor(async () => (await seen()).pubs.length === 2, 'both publications');
    assert.deepEqual((await seen()).pubs, [1, 2]);
    const history = await page.evaluate(async () =>
      (await window.sub.history({ limit: 10 })).publications.map((p) => JSON.parse(new TextDecoder().decode(p.data)).n),
    );
    assert.deepEqual(history, [1, 2]);
  });
});
