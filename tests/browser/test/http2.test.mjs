// Over TLS Herald speaks HTTP/2, so one page can hold more than the six connections per host
// that HTTP/1.1 allows: here ten live streams (EventSource and fetch) from one page.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { cleanup, launchBrowser, startHerald, testCertificate, waitFor, withScreenshots } from '../harness.mjs';

after(cleanup);

const STREAMS = 10;

test('one page holds ten simultaneous streams over HTTP/2 with TLS', async () => {
  const { cert, key } = testCertificate();
  const herald = await startHerald(['--tls-cert', cert, '--tls-key', key]);
  const browser = await launchBrowser(['--ignore-certificate-errors']);
  await withScreenshots('http2-streams', browser, async () => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const origin = `https://localhost:${herald.port}`;
    await page.goto(`${origin}/healthz`);
    const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(protocol, 'h2');

    // Half EventSource, half fetch streams, each on its own channel, all anonymous (dev mode).
    await page.evaluate(async (n) => {
      const { HeraldClient } = await import('/demo/herald-client.js');
      const client = new HeraldClient();
      window.received = Array(n).fill(0);
      window.subs = Array.from({ length: n }, (_, i) =>
        client.subscribe(`channel:h2-${i}`, {
          transport: i % 2 ? 'fetch' : 'eventsource',
          onEvent: (e) => {
            if (e.type === 'chat') window.received[i] += 1;
          },
        }),
      );
    }, STREAMS);
    await waitFor(
      () => page.evaluate(() => window.subs.every((s) => s.state === 'open')),
      `all ${STREAMS} streams open at once`,
    );

    // Every stream is live: an event on each channel reaches its stream.
    await page.evaluate(async (n) => {
      const { HeraldClient } = await import('/demo/herald-client.js');
      const client = new HeraldClient();
      for (let i = 0; i < n; i++) await client.publish(`channel:h2-${i}`, 'chat', { content: `to ${i}` });
    }, STREAMS);
    await waitFor(() => page.evaluate(() => window.received.every((c) => c === 1)), 'one event on every stream');

    const status = await (await page.request.get(`${origin}/api/status`)).json();
    assert.ok(status.connections >= STREAMS, `server-side connections: ${JSON.stringify(status)}`);
    await page.evaluate(() => window.subs.forEach((s) => s.close()));
  });
});
