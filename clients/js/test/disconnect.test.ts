// The client against a real Herald (`herald serve`): a `POST /api/disconnect` without
// reconnect stops it for good over both transports, and a ban keeps it out.

import { EventSource } from 'eventsource';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type DisconnectEvent, HeraldClient, type HeraldError, type SubscriptionState } from '../src/index.js';
import { API_KEY, backend, type Herald, startHerald, token } from './support/herald.js';
import { waitFor } from './support/server.js';

let herald: Herald;

beforeAll(async () => {
  herald = await startHerald();
}, 300_000);

afterAll(async () => {
  await herald?.stop();
});

/** Open streams of user `user` on the node, from `GET /api/channels/user:<id>`. */
async function streamsOf(user: string): Promise<number> {
  const resp = await fetch(`${herald.url}/api/channels/user:${user}`, { headers: { 'X-Api-Key': API_KEY } });
  return ((await resp.json()) as { subscribers: number }).subscribers;
}

describe.each([
  ['fetch', 'header'],
  ['eventsource', 'ticket'],
] as const)('a real Herald over %s', (transport, mode) => {
  it('stops for good when the application disconnects the user without reconnect', async () => {
    const user = `u-${transport}`;
    const client = new HeraldClient({ url: herald.url, EventSource: EventSource as never, auth: { mode, token: token(user) } });
    const cuts: DisconnectEvent[] = [];
    const states: SubscriptionState[] = [];
    const sub = client.subscribe(`user:${user}`, {
      transport,
      backoff: { random: () => 0 },
      onDisconnect: (e) => cuts.push(e),
      onStateChange: (s) => states.push(s),
    });
    try {
      await waitFor(() => sub.state === 'open', 'open');
      const { status, json } = await backend(herald.url, '/api/disconnect', { user, reconnect: false });
      expect([status, json]).toEqual([200, { disconnected: 1 }]);
      await waitFor(() => sub.state === 'closed', 'closed for good');
      expect(cuts).toEqual([{ type: 'disconnect', reason: 'disconnected', reconnect: false }]);
      expect((sub.error as HeraldError).code).toBe('disconnected');
      expect(states).not.toContain('reconnecting');
      // A reconnect (its delay is 0 here) would be open before this second subscription.
      const other = client.subscribe(`user:${user}`, { transport });
      await waitFor(() => other.state === 'open', 'another subscription');
      expect(await streamsOf(user)).toBe(1);
      other.close();
    } finally {
      sub.close();
    }
  });
});

it('a banned user is cut and refused on reconnect: the fetch stream closes with `banned`', async () => {
  const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('banned-1') } });
  const sub = client.subscribe('user:banned-1', { backoff: { random: () => 0 } });
  try {
    await waitFor(() => sub.state === 'open', 'open');
    const body = { user: 'banned-1', ban: { ttl: '1h' } };
    expect((await backend(herald.url, '/api/disconnect', body)).json).toEqual({ disconnected: 1 });
    await waitFor(() => sub.state === 'closed', 'refused on reconnect');
    expect(sub.disconnect).toEqual({ type: 'disconnect', reason: 'banned', reconnect: true });
    expect([(sub.error as HeraldError).status, (sub.error as HeraldError).code]).toEqual([403, 'banned']);
  } finally {
    sub.close();
  }
});
