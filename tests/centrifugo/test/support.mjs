// A real Herald for the Centrifugo SDK tests: `herald serve` (the debug binary of this
// repository, built when stale by tests/browser/binary.mjs) on a free loopback port, with
// Centrifugo's protocol on, an HS256 secret and an API key; tokens are signed here, and an SSE
// reader speaks Herald's own protocol beside the SDK.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { heraldBinary } from '../../browser/binary.mjs';

const ROOT = resolve(import.meta.dirname, '../../..');
export const SECRET = 'centrifugo-test-secret-long-enough';
export const API_KEY = 'centrifugo-test-api-key-0123456789';

const CONFIG = `
centrifugo = true

[namespaces.channel]
publish = "authenticated"

[namespaces.chat]

[namespaces.room]
join_leave = true

[namespaces.nohist]
history_size = 0
`;

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** An HS256 JWT for `sub`, valid for an hour unless `claims` say otherwise (a Centrifugo
 * subscription token is one with a `channel` claim). */
export function token(sub, claims = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** Starts `herald serve`; resolves once it listens. `opts`: `port` (to come back on the port
 * of a stopped one), `config` (a `[centrifugo]` table of the test's own, in place of
 * `centrifugo = true`), `extra` (more configuration lines), `args` (more command-line
 * arguments, e.g. `--redis-url`); a string is taken as `extra`. */
export async function startHerald(opts = {}) {
  if (typeof opts === 'string') opts = { extra: opts };
  const port = opts.port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'herald-centrifugo-'));
  const config = join(dir, 'herald.toml');
  const base = opts.config ? `${opts.config}\n${CONFIG.replace('centrifugo = true\n', '')}` : CONFIG;
  writeFileSync(config, base + (opts.extra ?? ''));
  const child = spawn(
    heraldBinary(),
    [
      'serve', '--listen', `127.0.0.1:${port}`, '--log', 'warn', '--config', config,
      '--jwt-secret', SECRET, '--api-key', API_KEY, ...(opts.args ?? []),
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stderr.on('data', (d) => (log += d.toString()));
  await new Promise((ok, fail) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d.toString();
      if (out.includes('herald listening on')) ok();
    });
    child.on('exit', (code) => fail(new Error(`herald exited (${code}) before listening:\n${log}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    /** What the process wrote to stderr so far (its logs). */
    log: () => log,
    ws: `ws://127.0.0.1:${port}/connection/websocket`,
    /** `POST /api/publish` with the API key; resolves to the event's id. */
    async publish(event) {
      const resp = await fetch(`${url}/api/publish`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
        body: JSON.stringify(event),
      });
      if (!resp.ok) throw new Error(`publish: HTTP ${resp.status} ${await resp.text()}`);
      return (await resp.json()).id;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An application's backend for Herald's hooks: an HTTP server on a free loopback port that
 * records each request (`asked`: its path, JSON body and headers) and answers with
 * `answer(path, body, headers)`, an object sent as JSON (`{status, body}` for another status
 * or a body that is not JSON). */
export async function hookApp(answer) {
  const asked = [];
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (d) => (raw += d));
    req.on('end', () => {
      const body = JSON.parse(raw);
      asked.push({ path: req.url, body, headers: req.headers });
      const out = answer(req.url, body, req.headers);
      if (out && typeof out.status === 'number') {
        res.statusCode = out.status;
        res.end(out.body);
      } else {
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify(out));
      }
    });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, asked, close: () => new Promise((ok) => server.close(ok)) };
}

/** A `redis-server` of the test's own on a free loopback port, without persistence;
 * `stop()` ends it. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise((ok, fail) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d.toString();
      if (out.includes('Ready to accept connections')) ok();
    });
    child.on('exit', (code) => fail(new Error(`redis-server exited (${code}):\n${out}`)));
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** Calls Centrifugo's server API of `herald` (`POST /centrifugo/api/<method>`) with the API
 * key; resolves to the status and, on `200`, the JSON answer. */
export async function api(herald, method, body, headers = { 'X-API-Key': API_KEY }) {
  const resp = await fetch(`${herald.url}/centrifugo/api/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: resp.status, json: resp.status === 200 ? await resp.json() : null };
}

/** An SSE stream of Herald's own (`GET /api/events`) as `user`: `next(pred)` resolves to the
 * first event (parsed `data:`) that satisfies `pred`, `ready` once the stream is open. */
export function sse(herald, channels, user) {
  const ctrl = new AbortController();
  const seen = [];
  const waiters = [];
  const deliver = (ev) => {
    seen.push(ev);
    for (const w of [...waiters]) {
      if (w.pred(ev)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.ok(ev);
      }
    }
  };
  let markReady;
  let failReady;
  let failed;
  const ready = new Promise((ok, fail) => {
    markReady = ok;
    failReady = fail;
  });
  waiters.push({ pred: () => false, ok: () => {}, fail: (e) => failReady(e) });
  (async () => {
    const query = channels.map((c) => `channel=${encodeURIComponent(c)}`).join('&');
    const resp = await fetch(`${herald.url}/api/events?${query}`, {
      headers: { Authorization: `Bearer ${token(user)}`, Accept: 'text/event-stream' },
      signal: ctrl.signal,
    });
    if (!resp.ok) throw new Error(`SSE: HTTP ${resp.status}`);
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of resp.body) {
      buf += decoder.decode(chunk, { stream: true });
      let at;
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (!data) continue;
        const ev = JSON.parse(data);
        if (ev.type === 'connected') markReady();
        deliver(ev);
      }
    }
  })().catch((e) => {
    // An abort is the test's own close; anything else fails the waiting test loudly.
    if (!ctrl.signal.aborted) for (const w of waiters.splice(0)) w.fail(e);
    failed = e;
  });
  return {
    ready,
    next(pred) {
      const found = seen.find(pred);
      if (found) return Promise.resolve(found);
      if (failed) return Promise.reject(failed);
      return new Promise((ok, fail) => waiters.push({ pred, ok, fail }));
    },
    close: () => ctrl.abort(),
  };
}

/** Resolves with the arguments of the first `event` that `emitter` emits. */
export function once(emitter, event) {
  return new Promise((ok) => emitter.once(event, ok));
}

/** A subscription of `client` to `channel` that collects each publication's `data.n` in
 * `got`, subscribing now: `subscribed` resolves to its first `subscribed` context. */
export function collecting(client, channel) {
  const sub = client.newSubscription(channel);
  const got = [];
  sub.on('publication', (ctx) => got.push(ctx.data.n));
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  return { sub, got, subscribed };
}

/** A call of Herald's API with the API key; resolves to the JSON answer. */
export async function backend(herald, path, body) {
  const resp = await fetch(`${herald.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
    body: JSON.stringify(body),
  });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status} ${await resp.text()}`);
  return resp.json();
}
