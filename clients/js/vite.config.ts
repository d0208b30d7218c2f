// Two builds: the npm package (`vite build`: ESM entries `index` and `react` in dist/, types
// by tsc), and the browser bundle the demo page embeds (`vite build --mode demo`: one ESM
// file, src/demo/assets/herald-client.js in the Rust tree, so `herald serve` needs no node).
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

export const DEMO_BUNDLE = resolve(import.meta.dirname, '../../src/demo/assets/herald-client.js');

export default defineConfig(({ mode }) =>
  mode === 'demo'
    ? {
        build: {
          outDir: resolve(import.meta.dirname, '../../src/demo/assets'),
          emptyOutDir: false,
          minify: false,
          sourcemap: false,
          lib: { entry: resolve(import.meta.dirname, 'src/index.ts'), formats: ['es'], fileName: () => 'herald-client.js' },
        },
      }
    : {
        build: {
          outDir: 'dist',
          minify: false,
          sourcemap: true,
          lib: {
            entry: { index: resolve(import.meta.dirname, 'src/index.ts'), react: resolve(import.meta.dirname, 'src/react.ts') },
            formats: ['es'],
          },
          rollupOptions: { external: ['react', 'react/jsx-runtime'] },
        },
        test: { include: ['test/**/*.test.ts', 'test/**/*.test.tsx'], testTimeout: 20_000 },
      },
);
