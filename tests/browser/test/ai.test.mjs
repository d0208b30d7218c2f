// The AI token stream: chunks show as they arrive, and a page reloaded mid-answer shows the
// text so far at once (one snapshot chunk), then keeps appending to the same answer.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { cleanup, launchBrowser, openDemo, startHerald, waitFor, withScreenshots } from '../harness.mjs';

let herald;
let browser;
before(async () => {
  herald = await startHerald();
  browser = await launchBrowser();
});
after(cleanup);

const answer = (page) => page.$eval('.ai-stream .a', (e) => e.textContent).catch(() => '');
const done = (page) => page.$eval('.ai-stream', (e) => e.dataset.done === 'true').catch(() => false);

test('a page reloaded mid-answer shows the text so far, then the rest', async () => {
  await withScreenshots('ai-snapshot', browser, async () => {
    // Record the first text the answer shows on each load, before any later chunk.
    const recordFirstAnswer = (page) =>
      page.addInitScript(() => {
        new MutationObserver(() => {
          const a = document.querySelector('.ai-stream .a');
          if (a && a.textContent && window.firstAnswer === undefined) window.firstAnswer = a.textContent;
        }).observe(document, { subtree: true, childList: true, characterData: true });
      });
    const open = (user) => openDemo(browser, `${herald.url}/?user=${user}&name=${user}`, { before: recordFirstAnswer });
    const asker = await open('dana');
    const reader = await open('eve');
    await asker.fill('#ai-input', 'How do clients resume after a reconnect?');
    await asker.press('#ai-input', 'Enter');

    // Tokens arrive one by one on both pages.
    await waitFor(async () => (await answer(reader)).split(' ').length >= 8, 'a few tokens');
    assert.equal(await done(reader), false, 'the answer is still streaming');
    const before = await answer(reader);
    await reader.reload();
    await waitFor(() => reader.evaluate(() => window.firstAnswer), 'the answer after the reload');
    const first = await reader.evaluate(() => window.firstAnswer);
    assert.ok(first.startsWith(before), `the snapshot holds the text so far:\n${before}\n---\n${first}`);

    await waitFor(() => done(asker), 'the end of the answer', 60_000);
    await waitFor(() => done(reader), 'the end of the answer after the reload');
    const full = await answer(asker);
    assert.ok(full.split(' ').length >= 30, full);
    assert.equal(await answer(reader), full, 'snapshot plus the chunks after it are the whole answer');
  });
});
