// History and state against a real `herald serve`: with `last`, each channel's last events
// come before the live ones over every transport, and a reconnect resumes from its id instead
// of asking for them again, so nothing comes twice; `history` pages back and hands over to a
// subscription at its head.

import { EventSource } from 'eventsource';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WS from 'ws';

import {
  HeraldClient,
  type HeraldError,
  is,
  type StreamEvent,
  type Transport,
  type WebSocketConstructor,
} from '../src/index.js';
import { backend, type RunningHerald, startHerald, token } from './support/herald.js';
import { waitFor } from './support/server.js';

let herald: RunningHerald;

beforeAll(async () => {
  herald = await startHerald('websocket = true\n[namespaces.prices]\ndeliver_last = 1\n');
}, 300_000);

afterAll(async () => {
  await herald?.stop();
});

/** A client for `user`; `EventSource` cannot send a header, so it trades the token for tickets. */
function client(user: string, transport: Transport) {
  return new HeraldClient({
    url: herald.url,
    EventSource: EventSource as never,
    WebSocket: WS as unknown as WebSocketConstructor,
    auth: { mode: transport === 'eventsource' ? 'ticket' : 'header', token: token(user) },
  });
}

function chats(events: StreamEvent[]): string[] {
  return events.flatMap((e) => (is(e, 'chat') ? [e.content] : []));
}

describe.each(['fetch', 'eventsource', 'websocket'] as const)('over %s', (transport: Transport) => {
  it('writes each channel its own count of last events before the live ones', async () => {
    const [a, b] = [`channel:last-a-${transport}`, `channel:last-b-${transport}`];
    for (let i = 1; i <= 4; i++) await herald.publish(a, 'chat', { content: `a${i}` });
    for (let i = 1; i <= 3; i++) await herald.publish(b, 'chat', { content: `b${i}` });
    const events: StreamEvent[] = [];
    const sub = client('ann', transport).subscribe([a, b], {
      transport,
      last: { [a]: 2, [b]: 1 },
      onEvent: (e) => events.push(e),
    });
    try {
      await waitFor(() => chats(events).length === 3, 'the last events');
      expect([...chats(events)].sort()).toEqual(['a3', 'a4', 'b3']);
      await herald.publish(a, 'chat', { content: 'a5' });
      await waitFor(() => chats(events).length === 4, 'a live event');
      expect(chats(events).at(-1)).toBe('a5');
    } finally {
      sub.close();
    }
  });

  it('gives a deliver_last channel its current state, and a reconnect no repeat of it', async () => {
    const channel = `prices:eur-${transport}`;
    await herald.publish(channel, 'chat', { content: 'p1' });
    await herald.publish(channel, 'chat', { content: 'p2' });
    const user = `bob-${transport}`;
    const events: StreamEvent[] = [];
    const sub = client(user, transport).subscribe(channel, {
      transport,
      backoff: { random: () => 0 },
      onEvent: (e) => events.push(e),
    });
    try {
      await waitFor(() => chats(events).length === 1, 'the state');
      expect(chats(events)).toEqual(['p2']);
      // A reconnect resumes from the last id: what came since, and not the state again.
      const firstConnection = sub.connectionId;
      const { status } = await backend(herald.url, '/api/disconnect', { user, reconnect: true });
      expect(status).toBe(200);
      await herald.publish(channel, 'chat', { content: 'p3' });
      await waitFor(() => sub.state === 'open' && sub.connectionId !== firstConnection, 'the reconnect');
      // Anything the new stream wrote before its live events has come by the time this has.
      await herald.publish(channel, 'chat', { content: 'p4' });
      await waitFor(() => chats(events).includes('p4'), 'a live price');
      expect(chats(events)).toEqual(['p2', 'p3', 'p4']);
    } finally {
      sub.close();
    }
  });
});

describe('history', () => {
  it('pages back newest first and hands over to a subscription at its head', async () => {
    const channel = 'channel:history';
    for (let i = 1; i <= 5; i++) await herald.publish(channel, 'chat', { content: `h${i}` });
    const c = client('cat', 'fetch');
    const first = await c.history(channel, { limit: 2 });
    expect(first.events.map((e) => (is(e.event, 'chat') ? e.event.content : '?'))).toEqual(['h5', 'h4']);
    expect(first.more).toBe(true);
    const back = await c.history(channel, { limit: 10, before: first.events[1]?.position });
    expect(back.events.map((e) => (is(e.event, 'chat') ? e.event.content : '?'))).toEqual(['h3', 'h2', 'h1']);
    expect(back.more).toBe(false);

    const events: StreamEvent[] = [];
    const sub = c.subscribe(channel, { lastEventId: first.head, onEvent: (e) => events.push(e) });
    try {
      await waitFor(() => sub.state === 'open', 'open');
      await herald.publish(channel, 'chat', { content: 'h6' });
      await waitFor(() => chats(events).length === 1, 'the next event');
      expect(chats(events)).toEqual(['h6']);
    } finally {
      sub.close();
    }
  });

  it("is refused with the server's code for a channel the user may not read", async () => {
    const refused = await client('cat', 'fetch').history('user:dog').catch((e: HeraldError) => e);
    expect((refused as HeraldError).code).toBe('forbidden');
    expect((refused as HeraldError).status).toBe(403);
  });
});
