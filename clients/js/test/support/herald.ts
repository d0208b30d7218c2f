// A real Herald for the tests that need the server's own behaviour: `herald serve` (the
// debug binary of this repository, built when missing or stale by tests/browser/binary.mjs)
// on a free loopback port, with an HS256 secret and an API key, and tokens signed here.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { heraldBinary } from '../../../../tests/browser/binary.mjs';
import { waitFor } from './server.js';

const ROOT = resolve(import.meta.dirname, '../../../..');
export const SECRET = 'vitest-secret-that-is-long-enough';
export const API_KEY = 'vitest-api-key-0123456789';

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => ok(port));
    });
  });
}

/** An HS256 JWT signed with `SECRET`. */
export function sign(claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

export interface RunningHerald {
  url: string;
  /** Publishes with the API key; resolves to the event's id. */
  publish(channel: string, type: string, payload?: Record<string, unknown>): Promise<string>;
  stop(): Promise<void>;
  /** SIGTERM: the node drains its streams and sockets, then exits. */
  drain(): Promise<void>;
}

/** Starts `herald serve` with `toml` as its configuration file (auth is added by flags). */
export async function startHerald(toml = ''): Promise<RunningHerald> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-vitest-'));
  const config = join(dir, 'herald.toml');
  writeFileSync(config, toml);
  const child: ChildProcess = spawn(
    heraldBinary(),
    ['serve', '--listen', `127.0.0.1:${port}`, '--log', 'warn', '--config', config, '--jwt-secret', SECRET, '--api-key', API_KEY],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  await new Promise<void>((ok, fail) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('herald listening on')) ok();
    });
    child.on('exit', (code) => fail(new Error(`herald exited (${code}) before listening:\n${log}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    async publish(channel, type, payload = {}) {
      const resp = await fetch(`${url}/api/publish`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
        body: JSON.stringify({ ...payload, channel, type }),
      });
      if (!resp.ok) throw new Error(`publish: HTTP ${resp.status} ${await resp.text()}`);
      return ((await resp.json()) as { id: string }).id;
    },
    async drain() {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
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

/** A `token()` function for `user`: its first token expires within 2 s, later ones in an
 * hour. Before it hands out the second, once `sentThree()` holds, it publishes
 * `{type: 'note', n: 4}` on `user:<user>`: an event published while the subscription is
 * between its two streams, which only a resume from the `token_expired` id delivers. */
export function expiringTokens(herald: RunningHerald, user: string, sentThree: () => boolean) {
  let calls = 0;
  let away: Promise<unknown> | undefined;
  const now = () => Math.floor(Date.now() / 1000);
  const token = async () => {
    calls += 1;
    if (calls === 1) return sign({ sub: user, exp: now() + 2 });
    away ??= waitFor(sentThree, 'event 3').then(() => herald.publish(`user:${user}`, 'note', { n: 4 }));
    await away;
    return sign({ sub: user, exp: now() + 3600 });
  };
  return { token, calls: () => calls };
}

/** The shape the disconnect tests name the running server by. */
export type Herald = RunningHerald;

/** An HS256 JWT for `sub`, valid for an hour. */
export function token(sub: string): string {
  return sign({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });
}

/** A call with the API key; returns the status and the JSON answer. */
export async function backend(url: string, path: string, body: unknown): Promise<{ status: number; json: any }> {
  const resp = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
    body: JSON.stringify(body),
  });
  return { status: resp.status, json: await resp.json() };
}
