// The client against a real Herald whose rooms drop the oldest events of slow readers
// (`slow_consumer = "drop_oldest"`): a subscription that stops reading (its fetch body or its
// socket held back by the test) stays open, and when it reads again `onGap` says exactly
// which events it missed, between the events it got, over SSE and the WebSocket alike.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WS from 'ws';

import { type GapEvent, HeraldClient, type StreamEvent, type WebSocketConstructor } from '../src/index.js';
import { API_KEY, startHerald, token, type RunningHerald } from './support/herald.js';
import { waitFor } from './support/server.js';

let herald: RunningHerald;

beforeAll(async () => {
  herald = await startHerald(
    'websocket = true\nbuffer_size = 8\n[namespaces.channel]\npresence = false\nslow_consumer = "drop_oldest"\n',
  );
}, 600_000);

afterAll(async () => {
  await herald?.stop();
});

/** A counter of the node's `/metrics`. */
async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${herald.url}/metrics`, { headers: { 'X-Api-Key': API_KEY } })).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

/** A `fetch` whose event streams the test can stop reading (`hold`) and read again
 * (`release`): a held body pulls nothing more from the socket, so the server's writes back up. */
function holdableFetch() {
  let held = false;
  let release = () => {};
  let released = Promise.resolve();
  const f: typeof fetch = async (input, init) => {
    const resp = await fetch(input, init);
    if (!resp.body || !String(input).includes('/api/events')) return resp;
    const reader = resp.body.getReader();
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          if (held) await released;
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel: (reason) => reader.cancel(reason),
      },
      { highWaterMark: 0 },
    );
    return new Response(body, { status: resp.status, statusText: resp.statusText, headers: resp.headers });
  };
  return {
    fetch: f,
    hold() {
      held = true;
      released = new Promise<void>((r) => (release = r));
    },
    release() {
      held = false;
      release();
    },
  };
}

/** The `ws` constructor, keeping its sockets so that the test can pause one. */
function pausable() {
  const sockets: WS[] = [];
  class Kept extends WS {
    constructor(url: string, protocols?: string | string[], options?: WS.ClientOptions) {
      super(url, protocols, options);
      sockets.push(this);
    }
  }
  return { WebSocket: Kept as unknown as WebSocketConstructor, sockets };
}

const PAD = 'x'.repeat(32 * 1024);

/** Publishes padded events `n = 0, 1, ...` until the node has dropped events of a slow reader,
 * then three small ones; returns how many were published. */
async function floodUntilDropped(channel: string): Promise<number> {
  const before = await metric('herald_slow_consumer_dropped_events_total');
  let n = 0;
  while ((await metric('herald_slow_consumer_dropped_events_total')) === before) {
    if (n >= 2000) throw new Error('the held subscription never lost an event');
    await herald.publish(channel, 'update', { n, pad: PAD });
    n += 1;
  }
  for (let i = 0; i < 3; i++) await herald.publish(channel, 'update', { n: n++ });
  return n;
}

/** What a subscription saw: events by `n` and gaps, in order, each with the id it came with. */
type Seen = { n: number; id?: string } | { gap: GapEvent; id?: string };

/** Checks that `seen` accounts for the `total` events once each: in order, with every gap
 * where the missing ones would have been, naming their first and last ids (`ids`, by n). */
function accountsForEveryEvent(seen: Seen[], gaps: GapEvent[], total: number, ids: Map<number, string>, channel: string) {
  let next = 0;
  for (const item of seen) {
    if ('n' in item) {
      expect(item.n).toBe(next);
      next += 1;
    } else {
      const last = next + item.gap.missed - 1;
      expect(item.gap).toMatchObject({ type: 'gap', channel, reason: 'slow_consumer', firstId: ids.get(next), lastId: ids.get(last) });
      expect(item.id).toBe(item.gap.lastId);
      next = last + 1;
    }
  }
  expect(next).toBe(total);
  expect(gaps.length).toBeGreaterThan(0);
  expect(gaps).toEqual(seen.flatMap((s) => ('gap' in s ? [s.gap] : [])));
}

describe.each(['fetch', 'websocket'] as const)('a real Herald over %s', (transport) => {
  it('tells a subscription that read too slowly exactly which events it missed, and keeps it open', async () => {
    const channel = `channel:flood-${transport}`;
    const holdable = holdableFetch();
    const sockets = pausable();
    const client = new HeraldClient({
      url: herald.url,
      auth: { mode: 'header', token: token('slow') },
      fetch: holdable.fetch,
      WebSocket: sockets.WebSocket,
    });
    // A healthy subscription (of a client that reads everything) says which id each event has.
    const reader = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('fast') } });
    const ids = new Map<number, string>();
    const healthy = reader.subscribe(channel, {
      transport: 'fetch',
      onEvent: (e: StreamEvent) => {
        const { n } = e as { n?: unknown };
        if (typeof n === 'number') ids.set(n, healthy.lastEventId ?? '');
      },
    });
    const seen: Seen[] = [];
    const gaps: GapEvent[] = [];
    const states: string[] = [];
    const slow = client.subscribe(channel, {
      transport,
      onEvent: (e: StreamEvent) => {
        const { n } = e as { n?: unknown };
        if (e.type === 'gap') seen.push({ gap: e as GapEvent, id: slow.lastEventId });
        else if (typeof n === 'number') seen.push({ n, id: slow.lastEventId });
      },
      onGap: (e) => gaps.push(e),
      onStateChange: (s) => states.push(s),
    });
    try {
      await waitFor(() => healthy.state === 'open' && slow.state === 'open', 'both open');
      if (transport === 'fetch') holdable.hold();
      else sockets.sockets.forEach((s) => s.pause());

      const total = await floodUntilDropped(channel);

      if (transport === 'fetch') holdable.release();
      else sockets.sockets.forEach((s) => s.resume());
      await waitFor(() => ids.size === total, 'the healthy subscription got every event', 30_000);
      await waitFor(() => seen.some((s) => 'n' in s && s.n === total - 1), 'the slow one caught up', 30_000);
      accountsForEveryEvent(seen, gaps, total, ids, channel);
      expect(states).not.toContain('reconnecting');
      expect(await metric('herald_slow_consumer_disconnects_total')).toBe(0);
    } finally {
      healthy.close();
      slow.close();
    }
  }, 120_000);
});
