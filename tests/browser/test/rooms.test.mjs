// Live rooms from the browser client: join and leave on an open stream, and a reconnect
// that keeps the joined room (and resumes it) because the client tracks its channel list.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { cleanup, launchBrowser, post, startHerald, startProxy, waitFor, withScreenshots } from '../harness.mjs';

after(cleanup);

test('a joined room is followed live, kept across a reconnect, and a left one is not', async () => {
  const herald = await startHerald();
  const proxy = await startProxy(herald.port);
  const browser = await launchBrowser();
  await withScreenshots('live-rooms', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${proxy.url}/healthz`);
    await page.evaluate(async () => {
      const { HeraldClient, devToken } = await import('/demo/herald-client.js');
      const token = await devToken('', 'frank', 'Frank');
      const client = new HeraldClient({ auth: { mode: 'header', token } });
      window.got = [];
      window.sub = client.subscribe('channel:a', {
        onEvent: (e) => {
          if (e.type === 'chat') window.got.push(`${e.channel} ${e.content}`);
        },
      });
    });
    const got = () => page.evaluate(() => window.got);
    const say = async (channel, content) => {
      const [status] = await post(herald.url, '/api/publish', { channel, type: 'chat', content });
      assert.equal(status, 200);
    };
    await waitFor(() => page.evaluate(() => window.sub.state === 'open'), 'open');
    await page.evaluate(() => window.sub.join('channel:b'));
    await say('channel:b', 'one');
    await waitFor(async () => (await got()).length === 1, 'the joined room');

    await proxy.cut();
    await waitFor(() => page.evaluate(() => window.sub.state === 'reconnecting'), 'reconnecting');
    await say('channel:b', 'two (while away)');
    await proxy.resume();
    // Generous: the fetch stream's backoff starts from the server's 3 s retry hint.
    await waitFor(async () => (await got()).length === 2, 'the room resumed after the reconnect', 60_000);
    assert.deepEqual(await page.evaluate(() => window.sub.channels), ['channel:a', 'channel:b']);

    await waitFor(() => page.evaluate(() => window.sub.state === 'open'), 'open again');
    await page.evaluate(() => window.sub.leave('channel:a'));
    await say('channel:a', 'not for me');
    await say('channel:b', 'three');
    await waitFor(async () => (await got()).length >= 3, 'the next event of b');
    assert.deepEqual(await got(), ['channel:b one', 'channel:b two (while away)', 'channel:b three']);
  });
});
