// A page on another origin uses Herald only when Herald lists that origin in `cors_origins`:
// http://localhost:P and http://127.0.0.1:P are two origins to the browser, though one server.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { cleanup, freePort, launchBrowser, startHerald, waitFor, withScreenshots } from '../harness.mjs';

const dirs = [];
after(async () => {
  await cleanup();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** Starts Herald with `cors_origins` allowing the page origin `http://localhost:<its port>`. */
async function heraldAllowingLocalhost() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-cors-'));
  dirs.push(dir);
  const config = join(dir, 'herald.toml');
  writeFileSync(config, `cors_origins = ["http://localhost:${port}"]\n`);
  return startHerald(['--config', config], { port });
}

test('a page on a listed origin subscribes and publishes across origins; an unlisted one cannot', async () => {
  const allowing = await heraldAllowingLocalhost();
  const closed = await startHerald();
  const browser = await launchBrowser();
  await withScreenshots('cors', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    // The page's origin is http://localhost:P; Herald is called as http://127.0.0.1:P.
    await page.goto(`http://localhost:${allowing.port}/healthz`);
    await page.evaluate(async (url) => {
      const { HeraldClient } = await import('/demo/herald-client.js');
      const client = new HeraldClient({ url });
      window.received = { eventsource: [], fetch: [] };
      window.subs = ['eventsource', 'fetch'].map((transport) =>
        client.subscribe('channel:cors', {
          transport,
          onEvent: (e) => {
            if (e.type === 'chat') window.received[transport].push(e.content);
          },
        }),
      );
      window.client = client;
    }, allowing.url);
    await waitFor(() => page.evaluate(() => window.subs.every((s) => s.state === 'open')), 'both streams open');
    // A JSON POST needs a preflight, which Herald answers for the listed origin.
    await page.evaluate(() => window.client.publish('channel:cors', 'chat', { content: 'across origins' }));
    await waitFor(
      () => page.evaluate(() => window.received.eventsource.length === 1 && window.received.fetch.length === 1),
      'the event on both streams',
    );
    assert.deepEqual(await page.evaluate(() => window.received), {
      eventsource: ['across origins'],
      fetch: ['across origins'],
    });
    await page.evaluate(() => window.subs.forEach((s) => s.close()));

    // The same call to a Herald without cors_origins: the browser refuses to hand over the answer.
    const refused = await page.evaluate(async (url) => {
      try {
        await fetch(`${url}/api/status`);
        return 'read';
      } catch (e) {
        return `refused: ${e.name}`;
      }
    }, closed.url);
    assert.equal(refused, 'refused: TypeError');
  });
});
