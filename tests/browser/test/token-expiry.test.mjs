// A token that expires mid-stream: Herald ends the stream with `token_expired`, and the page's
// client fetches a fresh token, reconnects and resumes from its last id, so the page keeps
// every event, none lost or repeated, without the app doing anything. Both transports:
// EventSource with tickets, and fetch with an Authorization header.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { cleanup, launchBrowser, post, ROOT, startHerald, waitFor, withScreenshots } from '../harness.mjs';

const SECRET = 'browser-test-secret-long-enough';
const API_KEY = 'browser-test-api-key-0123456789';
const dirs = [];

after(async () => {
  await cleanup();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** An HS256 JWT signed with `SECRET`. */
function sign(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);

test('a token that expires mid-stream is renewed and the page keeps every event once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-expiry-'));
  dirs.push(dir);
  const config = join(dir, 'herald.toml');
  // No clock skew allowed: streams end at their token's `exp`.
  writeFileSync(config, '[auth]\nleeway = "0s"\n');
  const herald = await startHerald(['--config', config, '--jwt-secret', SECRET, '--api-key', API_KEY]);
  const sent = {};
  const publish = async (channel, n) => {
    const [status, body] = await post(herald.url, '/api/publish', { channel, type: 'note', n }, { 'x-api-key': API_KEY });
    assert.equal(status, 200, JSON.stringify(body));
    sent[channel] = n;
  };
  const users = { ticket: 'tia', header: 'hal' };
  const tokens = { tia: 0, hal: 0 };
  const away = {};

  const browser = await launchBrowser();
  await withScreenshots('token-expiry', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    // The token function of the page's app: a token that expires within 3 s first, then
    // long-lived ones. Event 4 is published after the first stream ended and before the
    // second opens, so only a resume from the last id delivers it.
    await page.exposeFunction('nextToken', async (user) => {
      tokens[user] += 1;
      if (tokens[user] === 1) return sign({ sub: user, exp: now() + 3 });
      // After 3, however early the token expired.
      away[user] ??= waitFor(() => sent[`user:${user}`] === 3, 'event 3').then(() => publish(`user:${user}`, 4));
      await away[user];
      return sign({ sub: user, exp: now() + 3600 });
    });
    await page.goto(`${herald.url}/healthz`);
    const bundle = readFileSync(join(ROOT, 'src/demo/assets/herald-client.js'), 'utf8');
    await page.evaluate(
      async ({ bundle, users }) => {
        const { HeraldClient } = await import(URL.createObjectURL(new Blob([bundle], { type: 'text/javascript' })));
        window.got = {};
        window.errors = [];
        window.subs = {};
        for (const [mode, user] of Object.entries(users)) {
          const client = new HeraldClient({ auth: { mode, token: () => window.nextToken(user) } });
          window.got[mode] = [];
          window.subs[mode] = client.subscribe(`user:${user}`, {
            onEvent: (e) => window.got[mode].push(e.type === 'note' ? e.n : e.type),
            // The renewal is no failure: the app's error handler hears nothing of it.
            onError: (e) => window.errors.push(`${mode}: ${e.code ?? e.message}`),
          });
        }
      },
      { bundle, users },
    );
    const got = () => page.evaluate(() => window.got);
    const notes = (list) => list.filter((x) => typeof x === 'number');
    await waitFor(
      () => page.evaluate(() => Object.values(window.subs).every((s) => s.state === 'open')),
      'both subscriptions open',
    );
    for (const user of Object.values(users)) for (const n of [1, 2, 3]) await publish(`user:${user}`, n);
    await waitFor(async () => Object.values(await got()).every((l) => l.includes('token_expired')), 'token_expired');
    await waitFor(
      async () => Object.values(await got()).every((l) => l.filter((x) => x === 'connected').length === 2),
      'the second connections',
    );
    for (const user of Object.values(users)) for (const n of [5, 6]) await publish(`user:${user}`, n);
    await waitFor(async () => Object.values(await got()).every((l) => notes(l).length >= 6), 'six notes each');

    for (const [mode, list] of Object.entries(await got())) {
      assert.deepEqual(notes(list), [1, 2, 3, 4, 5, 6], `${mode}: ${JSON.stringify(list)}`);
      assert.deepEqual(
        list.filter((x) => typeof x !== 'number'),
        ['connected', 'token_expired', 'connected'],
        `${mode}: ${JSON.stringify(list)}`,
      );
    }
    assert.deepEqual(tokens, { tia: 2, hal: 2 });
    assert.deepEqual(await page.evaluate(() => window.errors), []);
    await page.evaluate(() => Object.values(window.subs).forEach((s) => s.close()));
  });
});
