// Two pages in one room, one on Herald's WebSocket and one on SSE (`herald serve
// --websocket`): both see the same events with the same ids; a publish over the socket
// reaches the SSE page; and the socket page, cut off mid-stream, resumes from its last id
// with nothing lost or repeated.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { cleanup, launchBrowser, post, startHerald, startProxy, waitFor, withScreenshots } from '../harness.mjs';

after(cleanup);

const ROOM = 'channel:lobby';
/** Backoff grows while the proxy refuses connections: a reconnect may take a while. */
const RECONNECT = 60_000;

/** Opens a page at `origin` whose client subscribes to the room over `transport`, with a dev
 * token (in the socket's first message, or traded for a ticket for EventSource), and keeps
 * every chat message with the id it came with in `window.chats`. `requests` collects the
 * paths of the page's requests and sockets. */
async function roomPage(browser, origin, transport, user, requests = []) {
  const page = await (await browser.newContext()).newPage();
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  page.on('websocket', (ws) => requests.push(new URL(ws.url()).pathname));
  await page.goto(`${origin}/healthz`);
  await page.evaluate(
    async ({ room, transport, user }) => {
      const { HeraldClient, devToken } = await import('/demo/herald-client.js');
      const mode = transport === 'websocket' ? 'header' : 'ticket';
      const client = new HeraldClient({ auth: { mode, token: () => devToken(location.origin, user) } });
      window.chats = [];
      window.sub = client.subscribe(room, {
        transport,
        onEvent: (e) => {
          if (e.type === 'chat') window.chats.push([e.content, window.sub.lastEventId]);
        },
      });
    },
    { room: ROOM, transport, user },
  );
  await waitFor(() => page.evaluate(() => window.sub.state === 'open'), `the ${transport} page to be live`);
  return page;
}

const chats = (page) => page.evaluate(() => window.chats);
const texts = async (page) => (await chats(page)).map(([text]) => text);

async function publishRange(base, from, to) {
  for (let i = from; i <= to; i++) {
    const [status, body] = await post(base, '/api/publish', { channel: ROOM, type: 'chat', content: `m${i}` });
    assert.equal(status, 200, JSON.stringify(body));
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => `m${from + i}`);

test('a WebSocket page and an SSE page share a room: same ids, a socket publish reaches SSE, a cut socket resumes', async () => {
  const herald = await startHerald(['--websocket']);
  const proxy = await startProxy(herald.port);
  const browser = await launchBrowser();
  await withScreenshots('websocket', browser, async () => {
    const wsRequests = [];
    const onSocket = await roomPage(browser, proxy.url, 'websocket', 'wendy', wsRequests);
    const onSse = await roomPage(browser, herald.url, 'eventsource', 'sam');

    await publishRange(herald.url, 1, 5);
    await waitFor(async () => (await chats(onSocket)).length === 5 && (await chats(onSse)).length === 5, 'five on each');
    assert.deepEqual(await chats(onSocket), await chats(onSse), 'the same events with the same ids');

    // A publish over the socket: its reply's id is the id the SSE page gets the event with.
    const id = await onSocket.evaluate(async (room) => (await window.sub.publish(room, 'chat', { content: 'from-ws' })).id, ROOM);
    assert.ok(id, 'the socket replied with the id');
    await waitFor(async () => (await texts(onSse)).includes('from-ws'), 'the socket publish on the SSE page');
    assert.ok(!wsRequests.includes('/api/publish'), 'published over the socket, not over HTTP');
    assert.ok(wsRequests.includes('/api/ws'), 'the page opened a socket');
    assert.ok(!wsRequests.includes('/api/events'), 'and no event stream');

    // The socket page is cut off; what is published meanwhile comes from history.
    await proxy.cut();
    await waitFor(() => onSocket.evaluate(() => window.sub.state === 'reconnecting'), 'the socket page to notice');
    await publishRange(herald.url, 6, 10);
    await proxy.resume();
    await waitFor(async () => (await chats(onSocket)).length >= 11, 'the missed messages', RECONNECT);
    await waitFor(() => onSocket.evaluate(() => window.sub.state === 'open'), 'live again');
    await publishRange(herald.url, 11, 12);
    await waitFor(async () => (await chats(onSocket)).length >= 13 && (await chats(onSse)).length >= 13, 'live after');

    const expected = [...range(1, 5), 'from-ws', ...range(6, 12)];
    assert.deepEqual(await texts(onSocket), expected, 'nothing lost or repeated on the socket page');
    assert.deepEqual(await texts(onSse), expected);
    assert.deepEqual(await chats(onSocket), await chats(onSse), 'the same ids after the resume');
  });
});
