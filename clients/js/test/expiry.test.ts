// Against a real Herald: a stream whose token expires ends with `token_expired`, and the
// subscription comes back at once with a fresh token from its `token()` function, resuming
// from the notice's id: the app sees every event once, in order, and no error.

import { EventSource } from 'eventsource';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { HeraldClient, type StateInfo, type StreamEvent, type SubscriptionState } from '../src/index.js';
import { waitFor } from './support/server.js';
import { expiringTokens, startHerald, type RunningHerald } from './support/herald.js';

let herald: RunningHerald;

beforeAll(async () => {
  // No clock skew allowed: the stream ends at the token's `exp`.
  herald = await startHerald('[auth]\nleeway = "0s"\n');
}, 600_000);

afterAll(async () => {
  await herald?.stop();
});

describe.each([
  ['header', 'fetch'],
  ['ticket', 'eventsource'],
] as const)('with %s auth (%s)', (mode, transport) => {
  it('refreshes the token and resumes when the server ends the stream at its expiry', async () => {
    const user = `u-${mode}`;
    const channel = `user:${user}`;
    let sent = 0;
    const tokens = expiringTokens(herald, user, () => sent === 3);
    const client = new HeraldClient({ url: herald.url, EventSource: EventSource as never, auth: { mode, token: tokens.token } });
    const events: StreamEvent[] = [];
    const errors: Error[] = [];
    const states: Array<[SubscriptionState, StateInfo]> = [];
    const sub = client.subscribe(channel, {
      transport,
      onEvent: (e) => events.push(e),
      onError: (e) => errors.push(e),
      onStateChange: (s, info) => states.push([s, info]),
    });
    try {
      const notes = () => events.flatMap((e) => (e.type === 'note' ? [(e as { n?: number }).n] : []));
      await waitFor(() => sub.state === 'open', 'open');
      const first = sub.connectionId;
      for (const n of [1, 2, 3]) {
        await herald.publish(channel, 'note', { n });
        sent = n;
      }
      await waitFor(() => notes().length === 3, 'three notes');
      await waitFor(() => events.some((e) => e.type === 'token_expired'), 'token_expired', 10_000);
      await waitFor(() => sub.state === 'open' && sub.connectionId !== first, 'the second connection');
      for (const n of [5, 6]) await herald.publish(channel, 'note', { n });
      await waitFor(() => notes().length >= 6, 'six notes');

      expect(notes()).toEqual([1, 2, 3, 4, 5, 6]);
      expect(tokens.calls()).toBe(2);
      expect(errors).toEqual([]);
      const renewal = states.find(([s]) => s === 'reconnecting');
      expect(renewal?.[1].delayMs).toBe(0);
      expect((renewal?.[1].error as { code?: string } | undefined)?.code).toBe('token_expired');
      expect(events.filter((e) => e.type === 'reset')).toEqual([]);
    } finally {
      sub.close();
    }
  }, 30_000);
});
