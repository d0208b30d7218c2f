// The demo page embeds a built copy of this client in the Rust tree
// (src/demo/assets/herald-client.js) so `herald serve` needs no node. This test builds it
// afresh and compares: a client change without `npm run bundle:demo` fails here.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { build, type Rolldown } from 'vite';
import { describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '..');
const committed = resolve(root, '../../src/demo/assets/herald-client.js');

describe('the demo bundle', () => {
  it('is what `npm run bundle:demo` builds from the sources today', async () => {
    const out = await build({
      root,
      configFile: resolve(root, 'vite.config.ts'),
      mode: 'demo',
      logLevel: 'silent',
      build: { write: false },
    });
    const outputs = (Array.isArray(out) ? out : [out]) as Rolldown.RolldownOutput[];
    const chunk = outputs.flatMap((o) => o.output).find((c) => c.fileName === 'herald-client.js');
    expect(chunk && 'code' in chunk).toBe(true);
    const fresh = chunk && 'code' in chunk ? chunk.code : '';
    const onDisk = readFileSync(committed, 'utf8');
    expect(fresh.length).toBeGreaterThan(1000);
    expect(onDisk === fresh, 'src/demo/assets/herald-client.js is stale: run `npm run bundle:demo` in clients/js').toBe(
      true,
    );
  });
});
