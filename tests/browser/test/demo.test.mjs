// The demo page in Chromium against a real `herald serve`: in dev mode, chat between two
// users, who is online, going offline when a tab closes, and a real job's progress, with a
// clean console (no error, no failed request); with auth configured, the page's way in with
// a pasted token.

import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';

import {
  assertClean,
  chatTexts,
  cleanup,
  launchBrowser,
  onlineUsers,
  openDemo,
  post,
  startHerald,
  waitFor,
  withScreenshots,
} from '../harness.mjs';

let herald;
let browser;

before(async () => {
  herald = await startHerald();
  browser = await launchBrowser();
});
after(cleanup);

const openAs = (user, name, query = '') => openDemo(browser, `${herald.url}/?user=${user}&name=${name}${query}`);

test('two users chat, see each other online, and a closed tab goes offline', async () => {
  await withScreenshots('chat-and-presence', browser, async () => {
    const ann = await openAs('ann', 'Ann');
    const bob = await openAs('bob', 'Bob');
    for (const page of [ann, bob]) {
      await waitFor(async () => (await onlineUsers(page)).join() === 'ann,bob', 'both users online on both pages');
    }

    await ann.fill('#chat-input', 'Hello from Ann');
    await ann.press('#chat-input', 'Enter');
    await bob.fill('#chat-input', 'Hi Ann, Bob here');
    await bob.click('#chat-form button');
    for (const page of [ann, bob]) {
      await waitFor(async () => (await chatTexts(page)).length === 2, 'both messages on both pages');
      const texts = await chatTexts(page);
      assert.deepEqual([...texts].sort(), ['Hello from Ann', 'Hi Ann, Bob here']);
    }
    const annSees = await ann.$$eval('#messages .msg', (els) => els.map((e) => [e.className, e.querySelector('.who').textContent]));
    assert.ok(annSees.some(([cls, who]) => cls.includes('mine') && who.startsWith('Ann')), 'Ann sees her message as hers');
    assert.ok(annSees.some(([cls, who]) => !cls.includes('mine') && who.startsWith('Bob')), 'Bob is named from his token');

    // Neither page logged a console error or had a request fail (the favicon included).
    assertClean(ann);
    assertClean(bob);

    // Closing Bob's tab: after the grace period Ann's list and the server's agree he is gone.
    await bob.context().close();
    await waitFor(async () => (await onlineUsers(ann)).join() === 'ann', 'Bob offline on Ann\'s page');
    const resp = await fetch(`${herald.url}/api/channels/${encodeURIComponent('channel:lobby')}/presence`);
    const { users } = await resp.json();
    assert.deepEqual(users.map((u) => u.userId), ['ann']);
    await ann.context().close();
  });
});

test('a job does real work and its progress bar reaches 100%', async () => {
  await withScreenshots('job-progress', browser, async () => {
    const rounds = 200_000;
    const page = await openAs('carol', 'Carol', `&rounds=${rounds}`);
    const seen = [];
    let complete = null;
    await page.exposeFunction('recordProgress', (p) => seen.push(p));
    await page.exposeFunction('recordComplete', (e) => (complete = e));
    await page.evaluate(() => {
      window.heraldDemo.sub.on('generation_progress', (e) => window.recordProgress(e.progress));
      window.heraldDemo.sub.on('generation_complete', (e) => window.recordComplete(e));
    });
    await page.click('#job-start');
    await waitFor(() => page.$('#job-progress[aria-valuenow="100"]'), 'the progress bar at 100%');
    await waitFor(() => complete, 'generation_complete');

    // Progress went up in steps to 100, and the digest is the real SHA-256 chain.
    assert.ok(seen.length >= 10, `progress events: ${seen}`);
    assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
    assert.equal(seen.at(-1), 100);
    let d = Buffer.from(complete.jobId);
    for (let i = 0; i < rounds; i++) d = createHash('sha256').update(d).digest();
    assert.equal(complete.result.digest, d.toString('hex'));
    assert.equal(await page.textContent('#job-result'), `sha256^${rounds} = ${d.toString('hex')}`);
    // The job's notification and unread badge arrive on user:carol.
    await waitFor(() => page.$('#badge:not([hidden])'), 'the notification badge');
    assert.ok(Number(await page.textContent('#badge')) >= 1);
    assertClean(page);
    await page.context().close();
  });
});

test('with auth configured and the demo asked for, the page explains how to get a token, and a pasted one works', async () => {
  const secret = 'browser-test-secret-0123456789';
  const secured = await startHerald(['--jwt-secret', secret, '--demo']);
  await withScreenshots('auth-configured', browser, async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${secured.url}/`);
    await waitFor(() => page.isVisible('#auth'), 'the token explanation');
    assert.equal(await page.isVisible('#app'), false);
    const [status] = await post(secured.url, '/api/dev/token', { userId: 'x' });
    assert.equal(status, 404, 'no dev tokens with auth configured');

    // A token the server refuses sends the page back to the explanation, saying why.
    await page.fill('#auth-token', 'not.a.token');
    await page.click('#auth-form button');
    await waitFor(async () => (await page.textContent('#auth-error')).includes('refused'), 'the refusal');
    assert.equal(await page.isVisible('#app'), false);

    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = b64({ alg: 'HS256', typ: 'JWT' });
    const body = b64({ sub: 'gina', name: 'Gina', exp: Math.floor(Date.now() / 1000) + 600 });
    const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
    await page.fill('#auth-token', `${head}.${body}.${sig}`);
    await page.click('#auth-form button');
    await waitFor(() => page.$('#status[data-state="open"]'), 'live with the pasted token');
    assert.equal(await page.textContent('#me-name'), 'Gina');
    await page.fill('#chat-input', 'signed in');
    await page.press('#chat-input', 'Enter');
    await waitFor(async () => (await chatTexts(page)).includes('signed in'), 'a message as Gina');
  });
});
