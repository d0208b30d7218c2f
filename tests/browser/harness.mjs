// The browser tests' harness: real processes on free loopback ports — `herald serve` (the
// debug binary that `cargo test` builds), `redis-server` when a test needs one, a TCP proxy
// that can cut connections — and Debian's Chromium driven by playwright-core (never a
// downloaded browser). Everything started here is stopped by `cleanup()`.

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, '../..');
export const ARTIFACTS = join(here, 'artifacts');
const BINARY = join(ROOT, 'target/debug/herald');

/** How long one wait may take before a test fails. */
export const WAIT = 30_000;

const stoppers = [];

/** Stops everything the harness started, newest first. */
export async function cleanup() {
  while (stoppers.length) {
    const stop = stoppers.pop();
    try {
      await stop();
    } catch {
      // Already gone.
    }
  }
}

function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** The debug binary (with the demo); built with `cargo build` when missing or older than the sources. */
export function heraldBinary() {
  let stale = true;
  try {
    stale = statSync(BINARY).mtimeMs < newestMtime(join(ROOT, 'src'));
  } catch {
    stale = true;
  }
  if (stale) {
    const built = spawnSync('cargo', ['build', '--features', 'demo', '--bin', 'herald'], { cwd: ROOT, stdio: 'inherit' });
    if (built.status !== 0) throw new Error('cargo build failed');
  }
  return BINARY;
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

/** Resolves when `cond()` is truthy (checked every 20 ms), or fails after `ms`. */
export async function waitFor(cond, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts `herald serve` with `args`; resolves once it listens. */
export async function startHerald(args = [], { port } = {}) {
  const listen = port ?? (await freePort());
  const child = spawn(heraldBinary(), ['serve', '--listen', `127.0.0.1:${listen}`, '--log', 'warn', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const scheme = args.includes('--tls-cert') ? 'https' : 'http';
  await new Promise((ok, fail) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('herald listening on')) ok();
    });
    child.on('exit', (code) => fail(new Error(`herald exited (${code}) before listening:\n${log}`)));
  });
  const herald = {
    port: listen,
    url: `${scheme}://127.0.0.1:${listen}`,
    child,
    log: () => log,
    /** Stops the process: SIGTERM drains, SIGKILL crashes it. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
  };
  stoppers.push(() => herald.stop('SIGKILL'));
  return herald;
}

/** Starts a `redis-server` of its own on a free port, keeping nothing on disk. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-redis-'));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  stoppers.push(async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await waitFor(
    () =>
      new Promise((ok) => {
        const s = net.connect(port, '127.0.0.1');
        s.on('connect', () => {
          s.write('PING\r\n');
          s.once('data', (d) => {
            s.destroy();
            ok(String(d).startsWith('+PONG'));
          });
        });
        s.on('error', () => ok(false));
      }),
    'redis-server',
  );
  return { port, url: `redis://127.0.0.1:${port}` };
}

/** A TCP proxy on a fixed port: `cut()` drops every connection and refuses new ones until
 * `resume(targetPort)`, which may name another server. */
export async function startProxy(targetPort) {
  const port = await freePort();
  let target = targetPort;
  const sockets = new Set();
  let server = null;
  const listen = () =>
    new Promise((ok) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target, '127.0.0.1');
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => {});
        }
        client.pipe(upstream).pipe(client);
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
      });
      server.listen(port, '127.0.0.1', ok);
    });
  await listen();
  const proxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    async cut() {
      const closed = new Promise((ok) => server.close(ok));
      for (const s of sockets) s.destroy();
      sockets.clear();
      await closed;
    },
    async resume(newTarget = target) {
      target = newTarget;
      await listen();
    },
  };
  stoppers.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((ok) => server.close(() => ok()));
  });
  return proxy;
}

/** A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI. */
export function testCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-tls-'));
  stoppers.push(async () => rmSync(dir, { recursive: true, force: true }));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const made = spawnSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ],
    { stdio: 'pipe' },
  );
  if (made.status !== 0) throw new Error(`openssl failed: ${made.stderr}`);
  return { cert, key };
}

/** Debian's Chromium, headless, with a fresh profile (playwright makes one per launch). */
export async function launchBrowser(extraArgs = []) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROME_BIN || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
  });
  stoppers.push(() => browser.close());
  return browser;
}

/** Runs `fn`; if it throws, saves a screenshot of every open page as a test artifact. */
export async function withScreenshots(name, browser, fn) {
  try {
    return await fn();
  } catch (err) {
    mkdirSync(ARTIFACTS, { recursive: true });
    let i = 0;
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        const file = join(ARTIFACTS, `${name.replace(/[^a-z0-9]+/gi, '-')}-${i++}.png`);
        try {
          await page.screenshot({ path: file, fullPage: true });
          writeFileSync(`${file}.txt`, `${page.url()}\n`);
        } catch {
          // The page is gone.
        }
      }
    }
    throw err;
  }
}

/** POSTs JSON to a Herald node; resolves to [status, body]. */
export async function post(base, path, body, headers = {}) {
  const resp = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return [resp.status, await resp.json()];
}

/** Opens a demo page in a new browser context and waits until it is live; `before(page)`
 * runs before it loads (to hook requests or add init scripts). */
export async function openDemo(browser, url, { before } = {}) {
  const page = await (await browser.newContext()).newPage();
  if (before) await before(page);
  await page.goto(url);
  await waitFor(() => page.$('#status[data-state="open"]'), `${url} to be live`);
  return page;
}

/** The texts of the chat messages a demo page shows. */
export function chatTexts(page) {
  return page.$$eval('#messages .msg .text', (els) => els.map((e) => e.textContent));
}

/** The users a demo page lists as online. */
export function onlineUsers(page) {
  return page.$$eval('#online li', (els) => els.map((e) => e.dataset.user).sort());
}
