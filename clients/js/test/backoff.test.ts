import { describe, expect, it } from 'vitest';

import { Backoff, backoffCeiling, backoffDelay } from '../src/backoff.js';

describe('backoff with full jitter', () => {
  it('doubles the window from the base and caps it at 30 s', () => {
    expect([0, 1, 2, 3, 4, 5, 6].map((n) => backoffCeiling(n))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000,
    ]);
    expect(backoffCeiling(3, 500, 10_000)).toBe(4000);
    expect(backoffCeiling(5, 500, 10_000)).toBe(10_000);
  });

  it('stays at the cap for attempts whose power of two overflows', () => {
    expect(backoffCeiling(5000)).toBe(30_000);
    expect(backoffDelay(5000, 1000, 30_000, () => 0.999999)).toBeLessThan(30_000);
    expect(backoffCeiling(-3)).toBe(1000);
  });

  it('draws the delay from the whole window, zero included (full, not equal, jitter)', () => {
    expect(backoffDelay(3, 1000, 30_000, () => 0)).toBe(0);
    expect(backoffDelay(3, 1000, 30_000, () => 0.5)).toBe(4000);
    expect(backoffDelay(3, 1000, 30_000, () => 0.999999)).toBe(7999);
  });

  it('never leaves [0, ceiling) and spreads over it with the real random source', () => {
    for (const attempt of [0, 2, 4, 8]) {
      const ceiling = backoffCeiling(attempt);
      const samples = Array.from({ length: 4000 }, () => backoffDelay(attempt));
      expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...samples)).toBeLessThan(ceiling);
      const lowHalf = samples.filter((d) => d < ceiling / 2).length;
      // Uniform: about half below the middle (4000 draws: 2000 ± 4.7 sigma).
      expect(lowHalf).toBeGreaterThan(1850);
      expect(lowHalf).toBeLessThan(2150);
    }
  });

  it('counts attempts and starts over after reset', () => {
    const b = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.999 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([99, 199, 399, 799, 999]);
    expect(b.attempt).toBe(5);
    b.reset();
    expect(b.next()).toBe(99);
  });
});
