// A real `herald serve` for the tests that need Herald itself rather than the small test
// server: the debug binary that `cargo test` builds, on a free loopback port, with an HS256
// secret and an API key.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../../../..');
const BINARY = join(ROOT, 'target/debug/herald');
export const SECRET = 'js-client-test-secret-long-enough';
export const API_KEY = 'js-client-test-api-key-0123';

/** The debug binary, brought up to date by cargo (a no-op when `cargo test` just built it). */
function binary(): string {
  const built = spawnSync('cargo', ['build', '--bin', 'herald'], { cwd: ROOT, stdio: 'inherit' });
  if (built.status !== 0) throw new Error('cargo build failed');
  return BINARY;
}

export interface Herald {
  url: string;
  stop(): Promise<void>;
}

/** Starts `herald serve`; resolves once it listens. */
export async function startHerald(): Promise<Herald> {
  const args = ['serve', '--listen', '127.0.0.1:0', '--log', 'warn', '--jwt-secret', SECRET, '--api-key', API_KEY];
  const child: ChildProcess = spawn(binary(), args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const url = await new Promise<string>((ok, fail) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /herald listening on (\S+)/.exec(out);
      if (m?.[1]) ok(m[1]);
    });
    child.on('exit', (code) => fail(new Error(`herald exited (${code}) before listening:\n${log}`)));
  });
  return {
    url,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** An HS256 token for user `sub`, valid for an hour. */
export function token(sub: string): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
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
