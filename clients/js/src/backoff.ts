// Reconnect delays: exponential backoff with FULL jitter, capped (start at
// 1 s, double per failed attempt, at most 30 s). Full jitter draws the delay uniformly from
// [0, min(cap, base * 2^attempt)), so clients that lost the same server at the same moment
// come back spread over the whole window instead of in synchronized waves.

export interface BackoffOptions {
  /** Ceiling of the first retry's window, in ms. Default 1000. */
  baseMs?: number;
  /** Largest ceiling, in ms. Default 30000. */
  capMs?: number;
  /** A connection that stayed open this long was healthy: the next failure starts over
   * at attempt 0. Default 5000. */
  healthyAfterMs?: number;
  /** Random source in [0, 1); replaceable for tests. Default `Math.random`. */
  random?: () => number;
}

export const DEFAULT_BASE_MS = 1000;
export const DEFAULT_CAP_MS = 30_000;
export const DEFAULT_HEALTHY_AFTER_MS = 5000;

/** The window's upper bound for `attempt` (0-based): `min(cap, base * 2^attempt)`. */
export function backoffCeiling(attempt: number, baseMs = DEFAULT_BASE_MS, capMs = DEFAULT_CAP_MS): number {
  if (!(attempt >= 0)) attempt = 0;
  // 2^attempt overflows to Infinity for huge attempts, which min() turns into the cap.
  return Math.min(capMs, baseMs * 2 ** attempt);
}

/** A full-jitter delay for `attempt` (0-based): uniform in [0, ceiling). */
export function backoffDelay(
  attempt: number,
  baseMs = DEFAULT_BASE_MS,
  capMs = DEFAULT_CAP_MS,
  random: () => number = Math.random,
): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, baseMs, capMs));
}

/** The attempt counter of one subscription. */
export class Backoff {
  attempt = 0;
  private readonly capMs: number;
  private readonly random: () => number;
  readonly healthyAfterMs: number;
  baseMs: number;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? DEFAULT_BASE_MS;
    this.capMs = options.capMs ?? DEFAULT_CAP_MS;
    this.healthyAfterMs = options.healthyAfterMs ?? DEFAULT_HEALTHY_AFTER_MS;
    this.random = options.random ?? Math.random;
  }

  /** The delay before the next attempt; counts the attempt. */
  next(): number {
    const delay = backoffDelay(this.attempt, this.baseMs, this.capMs, this.random);
    this.attempt += 1;
    return delay;
  }

  /** After a healthy connection: the next failure waits as little as the first one. */
  reset(): void {
    this.attempt = 0;
  }
}
