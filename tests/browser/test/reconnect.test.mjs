// A page that loses its server mid-stream comes back and resumes from its last SSE id:
// every message published while it was away arrives once, in order, none lost.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import {
  chatTexts,
  cleanup,
  launchBrowser,
  openDemo,
  post,
  startHerald,
  startProxy,
  startRedis,
  waitFor,
  withScreenshots,
} from '../harness.mjs';

after(cleanup);

const ROOM = 'channel:lobby';

/** Backoff windows grow while the server is away (1, 2, 4, 8 s... for EventSource; from the
 * server's 3 s `retry:` for fetch streams): a reconnect may take a while on a slow machine. */
const RECONNECT = 60_000;

/** Publishes chat messages `from..to` to `base` (dev mode: rooms are open). */
async function publishRange(base, from, to) {
  for (let i = from; i <= to; i++) {
    const [status, body] = await post(base, '/api/publish', { channel: ROOM, type: 'chat', content: `m${i}` });
    assert.equal(status, 200, JSON.stringify(body));
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => `m${from + i}`);

/** Opens the demo page; `requests` collects the URLs of its streams and token requests. */
function livePage(browser, url, requests = []) {
  return openDemo(browser, url, {
    before: (page) =>
      page.on('request', (r) => {
        const u = new URL(r.url());
        if (u.pathname === '/api/events' || u.pathname === '/api/dev/token') requests.push(u);
      }),
  });
}

test('a restarted server (Redis behind it) is rejoined with nothing lost or repeated, over EventSource and tickets', async () => {
  const browser = await launchBrowser();
  await withScreenshots('restart-resume', browser, async () => {
    const redis = await startRedis();
    const first = await startHerald(['--redis-url', redis.url]);
    const proxy = await startProxy(first.port);
    const requests = [];
    const page = await livePage(browser, `${proxy.url}/?user=ann&name=Ann`, requests);

    await publishRange(first.url, 1, 10);
    await waitFor(async () => (await chatTexts(page)).length === 10, 'the first ten messages');

    // The server dies mid-stream; a new process takes over the same Redis. The page cannot
    // reach either until the proxy lets it through again, to the new one.
    await proxy.cut();
    await first.stop('SIGKILL');
    await waitFor(() => page.$('#status[data-state="reconnecting"]'), 'the page to notice');
    const second = await startHerald(['--redis-url', redis.url]);
    await publishRange(second.url, 11, 20);
    await proxy.resume(second.port);

    // The old dev token means nothing to the new process: the page gets a new one, a new
    // ticket, and resumes with lastEventId.
    await waitFor(async () => (await chatTexts(page)).length >= 20, 'the ten missed messages', RECONNECT);
    await waitFor(() => page.$('#status[data-state="open"]'), 'live again');
    await publishRange(second.url, 21, 25);
    await waitFor(async () => (await chatTexts(page)).length >= 25, 'live messages after the resume');
    assert.deepEqual(await chatTexts(page), range(1, 25));
    const streams = requests.filter((u) => u.pathname === '/api/events');
    const resumed = streams.at(-1);
    assert.ok(resumed.searchParams.get('lastEventId'), `resumed with lastEventId: ${resumed}`);
    assert.notEqual(resumed.searchParams.get('ticket'), streams[0].searchParams.get('ticket'), 'a new ticket');
    assert.equal(requests.filter((u) => u.pathname === '/api/dev/token').length, 2, 'a new dev token');
  });
});

test('a cut connection is resumed with nothing lost or repeated, over a fetch stream with a bearer token', async () => {
  const browser = await launchBrowser();
  await withScreenshots('cut-resume', browser, async () => {
    const herald = await startHerald();
    const proxy = await startProxy(herald.port);
    const page = await livePage(browser, `${proxy.url}/?user=bob&name=Bob&transport=fetch`);

    await publishRange(herald.url, 1, 5);
    await waitFor(async () => (await chatTexts(page)).length === 5, 'the first five messages');
    await proxy.cut();
    await waitFor(() => page.$('#status[data-state="reconnecting"]'), 'the page to notice');
    await publishRange(herald.url, 6, 15);
    await proxy.resume();
    await waitFor(async () => (await chatTexts(page)).length >= 15, 'the missed messages', RECONNECT);
    await publishRange(herald.url, 16, 18);
    await waitFor(async () => (await chatTexts(page)).length >= 18, 'live messages after the resume');
    assert.deepEqual(await chatTexts(page), range(1, 18));
  });
});
