// Takes docs/demo.png: the demo page with two users chatting, a finished job, an AI answer
// and a notification. `npm run screenshot` (needs the debug binary and Chromium).

import { join } from 'node:path';

import { ROOT, cleanup, launchBrowser, startHerald, waitFor } from './harness.mjs';

const herald = await startHerald();
const browser = await launchBrowser();
try {
  const open = async (user, name) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    await page.goto(`${herald.url}/?user=${user}&name=${name}&rounds=300000`);
    await waitFor(() => page.$('#status[data-state="open"]'), 'live');
    return page;
  };
  const ann = await open('ada', 'Ada');
  const bob = await open('linus', 'Linus');
  await waitFor(async () => (await ann.$$('#online li')).length === 2, 'both online');
  const say = async (page, text) => {
    await page.fill('#chat-input', text);
    await page.press('#chat-input', 'Enter');
  };
  await say(bob, 'Morning! Is the deploy done?');
  await say(ann, 'Yes, and the job below just finished on the server.');
  await say(bob, 'Nice, I saw the badge light up.');
  await ann.click('#job-start');
  await waitFor(() => ann.$('#job-progress[aria-valuenow="100"]'), 'job done');
  await bob.click('#online li[data-user="ada"] button');
  await ann.fill('#ai-input', 'How does a client resume after a reconnect?');
  await ann.press('#ai-input', 'Enter');
  await waitFor(() => ann.$('.ai-stream[data-done="true"]'), 'AI answer', 60_000);
  await waitFor(async () => (await ann.textContent('#badge')) === '2', 'badge');
  await ann.screenshot({ path: join(ROOT, 'docs/demo.png') });
  console.log('wrote docs/demo.png');
} finally {
  await cleanup();
}
