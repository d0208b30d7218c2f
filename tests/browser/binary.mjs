// The debug `herald` binary for tests that run the real server (these browser tests, and the
// TypeScript client's in clients/js), built with cargo when missing or older than the
// sources. No dependencies, so the client's tests use it without this folder's packages.

import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BINARY = join(ROOT, 'target/debug/herald');

function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** The debug binary; built with `cargo build` when missing or older than the sources. */
export function heraldBinary() {
  let stale = true;
  try {
    const sources = Math.max(newestMtime(join(ROOT, 'src')), newestMtime(join(ROOT, 'server/src')));
    stale = statSync(BINARY).mtimeMs < sources;
  } catch {
    stale = true;
  }
  if (stale) {
    const built = spawnSync('cargo', ['build', '--bin', 'herald'], { cwd: ROOT, stdio: 'inherit' });
    if (built.status !== 0) throw new Error('cargo build failed');
  }
  return BINARY;
}
