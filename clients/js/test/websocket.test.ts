// The client's WebSocket transport against a real Herald (`herald serve` with
// `websocket = true`) and the `ws` package: the same events with the same ids as over SSE,
// resume after a cut (and from one transport to the other) with nothing lost or repeated,
// `auto` falling back to SSE on a server without sockets, token renewal, the application's
// disconnect, and a publish over the socket.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WS from 'ws';

import {
  type DisconnectEvent,
  HeraldClient,
  type HeraldError,
  type StreamEvent,
  type SubscribeOptions,
  type WebSocketConstructor,
} from '../src/index.js';
import { API_KEY, backend, expiringTokens, startHerald, token, type RunningHerald } from './support/herald.js';
import { waitFor } from './support/server.js';

let herald: RunningHerald;
let plain: RunningHerald;

beforeAll(async () => {
  // No clock skew allowed: a socket ends at its token's `exp`.
  [herald, plain] = await Promise.all([startHerald('websocket = true\n[auth]\nleeway = "0s"\n'), startHerald()]);
}, 600_000);

afterAll(async () => {
  await Promise.all([herald?.stop(), plain?.stop()]);
});

/** The `ws` constructor, keeping every socket it made and every frame sent on it, so that a
 * test can cut one (`terminate()`: the TCP connection drops, no close frame). */
function tracked() {
  const sockets: Array<{ ws: WS; url: string; sent: Array<Record<string, unknown>> }> = [];
  class Tracked extends WS {
    constructor(url: string, protocols?: string | string[], options?: WS.ClientOptions) {
      super(url, protocols, options);
      const entry = { ws: this as WS, url, sent: [] as Array<Record<string, unknown>> };
      sockets.push(entry);
      const send = this.send.bind(this);
      this.send = ((data: string) => {
        entry.sent.push(JSON.parse(data) as Record<string, unknown>);
        send(data);
      }) as typeof this.send;
    }
  }
  return { WebSocket: Tracked as unknown as WebSocketConstructor, sockets };
}

/** A subscription collecting its events with the id each came with. */
function collect(client: HeraldClient, channel: string, options: SubscribeOptions = {}) {
  const seen: Array<{ event: StreamEvent; id: string | undefined }> = [];
  const errors: Error[] = [];
  const sub = client.subscribe(channel, {
    ...options,
    onEvent: (event) => seen.push({ event, id: sub.lastEventId }),
    onError: (e) => errors.push(e),
  });
  const notes = () => seen.flatMap(({ event, id }) => (event.type === 'note' ? [{ n: (event as { n?: number }).n, id }] : []));
  return { sub, seen, errors, notes };
}

const ns = (list: Array<{ n?: number }>) => list.map((x) => x.n);

async function publishNotes(channel: string, from: number, to: number, on = herald): Promise<string[]> {
  const ids = [];
  for (let n = from; n <= to; n++) ids.push(await on.publish(channel, 'note', { n }));
  return ids;
}

describe('over a WebSocket', () => {
  it('delivers the same events with the same ids as an SSE stream on the same channel', async () => {
    const channel = 'user:same-ids';
    const { WebSocket, sockets } = tracked();
    const auth = { mode: 'header', token: token('same-ids') } as const;
    const ws = collect(new HeraldClient({ url: herald.url, auth, WebSocket, transport: 'websocket' }), channel);
    const sse = collect(new HeraldClient({ url: herald.url, auth }), channel);
    try {
      await waitFor(() => ws.sub.state === 'open' && sse.sub.state === 'open', 'both open');
      await publishNotes(channel, 1, 5);
      await waitFor(() => ws.notes().length === 5 && sse.notes().length === 5, 'five notes on each');
      expect(ns(ws.notes())).toEqual([1, 2, 3, 4, 5]);
      expect(ws.notes()).toEqual(sse.notes());
      expect(ws.seen[0]?.event.type).toBe('connected');
      // Authenticated by the first message, as a browser must: nothing in the URL.
      expect(sockets).toHaveLength(1);
      expect(new URL(sockets[0]?.url ?? '').search).toBe('');
      expect(sockets[0]?.sent.map((f) => f.type).slice(0, 2)).toEqual(['auth', 'subscribe']);
      expect([...ws.errors, ...sse.errors]).toEqual([]);
    } finally {
      ws.sub.close();
      sse.sub.close();
    }
  });

  it('resumes after a cut connection with the last id, losing and repeating nothing', async () => {
    const channel = 'user:cut';
    const { WebSocket, sockets } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('cut') }, WebSocket });
    // A fixed half-second before the reconnect: the notes published meanwhile come from history.
    const c = collect(client, channel, { transport: 'websocket', backoff: { baseMs: 500, capMs: 500, random: () => 1 } });
    try {
      await waitFor(() => c.sub.state === 'open', 'open');
      const first = await publishNotes(channel, 1, 5);
      await waitFor(() => c.notes().length === 5, 'five notes');
      sockets[0]?.ws.terminate();
      await waitFor(() => c.sub.state === 'reconnecting', 'the cut noticed');
      await publishNotes(channel, 6, 10);
      await waitFor(() => c.sub.state === 'open' && sockets.length === 2, 'a second socket');
      await publishNotes(channel, 11, 12);
      await waitFor(() => c.notes().length >= 12, 'twelve notes');
      expect(ns(c.notes())).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      const resumedFrom = sockets[1]?.sent.find((f) => f.type === 'subscribe')?.lastEventId;
      expect(resumedFrom).toBe(c.notes()[4]?.id);
      expect(first).toHaveLength(5);
      expect(c.seen.filter((e) => e.event.type === 'reset')).toEqual([]);
    } finally {
      c.sub.close();
    }
  });

  it('moves to SSE and back with the id it has, losing and repeating nothing', async () => {
    const channel = 'user:mover';
    const { WebSocket } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('mover') }, WebSocket });
    const onSocket = collect(client, channel, { transport: 'websocket' });
    await waitFor(() => onSocket.sub.state === 'open', 'socket open');
    await publishNotes(channel, 1, 3);
    await waitFor(() => onSocket.notes().length === 3, 'three notes');
    onSocket.sub.close();
    await publishNotes(channel, 4, 6);
    const onSse = collect(client, channel, { transport: 'fetch', lastEventId: onSocket.sub.lastEventId });
    await waitFor(() => onSse.notes().length === 3, 'the missed notes over SSE');
    onSse.sub.close();
    await publishNotes(channel, 7, 8);
    const back = collect(client, channel, { transport: 'websocket', lastEventId: onSse.sub.lastEventId });
    await waitFor(() => back.notes().length === 2, 'the missed notes over a socket');
    back.sub.close();
    expect([...ns(onSocket.notes()), ...ns(onSse.notes()), ...ns(back.notes())]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it.each(['header', 'ticket'] as const)(
    'with %s auth, renews an expired token through `token()` and resumes from the `token_expired` id',
    async (mode) => {
      const user = `ws-expiry-${mode}`;
      const channel = `user:${user}`;
      let sent = 0;
      const tokens = expiringTokens(herald, user, () => sent === 3);
      const { WebSocket, sockets } = tracked();
      const client = new HeraldClient({ url: herald.url, auth: { mode, token: tokens.token }, WebSocket });
      const c = collect(client, channel, { transport: 'websocket' });
      try {
        await waitFor(() => c.sub.state === 'open', 'open');
        for (const n of [1, 2, 3]) {
          await herald.publish(channel, 'note', { n });
          sent = n;
        }
        await waitFor(() => c.seen.some((e) => e.event.type === 'token_expired'), 'token_expired', 10_000);
        await waitFor(() => c.sub.state === 'open' && sockets.length === 2, 'the second socket');
        await publishNotes(channel, 5, 6);
        await waitFor(() => c.notes().length >= 6, 'six notes');
        expect(ns(c.notes())).toEqual([1, 2, 3, 4, 5, 6]);
        expect(tokens.calls()).toBe(2);
        expect(c.errors).toEqual([]);
        // A token in the first message (nothing in the URL), or a new single-use ticket each time.
        const tickets = sockets.map((s) => new URL(s.url).searchParams.get('ticket'));
        if (mode === 'header') expect(tickets).toEqual([null, null]);
        else expect(tickets[0] && tickets[1] && tickets[0] !== tickets[1]).toBe(true);
      } finally {
        c.sub.close();
      }
    },
    30_000,
  );

  it('stops for good when the application disconnects the user without reconnect', async () => {
    const user = 'ws-cut';
    const { WebSocket } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token(user) }, WebSocket });
    const cuts: DisconnectEvent[] = [];
    const c = collect(client, `user:${user}`, {
      transport: 'websocket',
      backoff: { random: () => 0 },
      onDisconnect: (e) => cuts.push(e),
    });
    await waitFor(() => c.sub.state === 'open', 'open');
    expect((await backend(herald.url, '/api/disconnect', { user, reconnect: false })).json).toEqual({ disconnected: 1 });
    await waitFor(() => c.sub.state === 'closed', 'closed for good');
    expect(cuts).toEqual([{ type: 'disconnect', reason: 'disconnected', reconnect: false }]);
    expect((c.sub.error as HeraldError).code).toBe('disconnected');
  });

  it('refuses a forbidden channel for good, as SSE does', async () => {
    const { WebSocket } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('nosy') }, WebSocket });
    const c = collect(client, 'user:someone-else', { transport: 'websocket' });
    await waitFor(() => c.sub.state === 'closed', 'closed');
    expect([(c.sub.error as HeraldError).status, (c.sub.error as HeraldError).code]).toEqual([403, 'forbidden']);
  });

  it('publishes over the socket: the reply has the id an SSE subscriber gets the event with', async () => {
    const channel = 'channel:ws-publish';
    const { WebSocket, sockets } = tracked();
    const api = new HeraldClient({ url: herald.url, auth: { mode: 'apiKey', key: API_KEY }, WebSocket });
    const ws = collect(api, channel, { transport: 'websocket' });
    const sse = collect(api, channel, { transport: 'fetch' });
    try {
      await waitFor(() => ws.sub.state === 'open' && sse.sub.state === 'open', 'both open');
      const { id } = await ws.sub.publish(channel, 'note', { n: 1 });
      await waitFor(() => sse.notes().length === 1 && ws.notes().length === 1, 'the note on both');
      expect((sse.seen.find((e) => e.event.type === 'note')?.event as { id?: string }).id).toBe(id);
      expect(sockets[0]?.sent.some((f) => f.type === 'publish')).toBe(true);
    } finally {
      ws.sub.close();
      sse.sub.close();
    }
  });
});

describe('a channel joined later on a socket', () => {
  /** A subscription on `home` over a socket (API key), collecting the notes of `room`. */
  function onRoom(home: string, room: string, backoff: SubscribeOptions['backoff'] = {}) {
    const { WebSocket, sockets } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'apiKey', key: API_KEY }, WebSocket });
    const c = collect(client, home, { transport: 'websocket', backoff });
    const roomNotes = () =>
      ns(c.seen.filter((e) => e.event.type === 'note' && (e.event as { channel?: string }).channel === room).map((e) => e.event as { n?: number }));
    const said = (type: string) => c.seen.filter((e) => e.event.type === type && (e.event as { channel?: string }).channel === room).length;
    return { c, sockets, roomNotes, said };
  }

  it('resumes a channel it left where it left it, losing and repeating nothing', async () => {
    const room = 'channel:rejoin-room';
    const { c, sockets, roomNotes, said } = onRoom('channel:rejoin-home', room);
    try {
      await waitFor(() => c.sub.state === 'open', 'open');
      await c.sub.join(room);
      await waitFor(() => said('subscribed') === 1, 'subscribed');
      await publishNotes(room, 1, 3);
      await waitFor(() => roomNotes().length === 3, 'three notes');
      await c.sub.leave(room);
      await waitFor(() => said('unsubscribed') === 1, 'unsubscribed');
      await publishNotes(room, 4, 6);
      await c.sub.join(room);
      await waitFor(() => roomNotes().length === 6, 'the missed notes');
      await publishNotes(room, 7, 7);
      await waitFor(() => roomNotes().length === 7, 'a live note');
      expect(roomNotes()).toEqual([1, 2, 3, 4, 5, 6, 7]);
      const joins = sockets[0]?.sent.filter((f) => f.type === 'subscribe').slice(1) ?? [];
      expect(joins.map((f) => f.positions)).toEqual([undefined, { [room]: c.notes()[2]?.id }]);
      expect(c.seen.filter((e) => e.event.type === 'reset')).toEqual([]);
    } finally {
      c.sub.close();
    }
  });

  it('joins from an id the application kept, and after a reconnect from the position it kept', async () => {
    const room = 'channel:kept-room';
    const { c, sockets, roomNotes, said } = onRoom('channel:kept-home', room, { baseMs: 300, capMs: 300, random: () => 1 });
    const elsewhere = collect(new HeraldClient({ url: herald.url, auth: { mode: 'apiKey', key: API_KEY } }), room, {
      transport: 'fetch',
    });
    try {
      await waitFor(() => c.sub.state === 'open' && elsewhere.sub.state === 'open', 'open');
      await publishNotes(room, 1, 4);
      await waitFor(() => elsewhere.notes().length === 4, 'four notes elsewhere');
      elsewhere.sub.close();
      // An id of note 2 from another stream: notes 3 and 4 come from history.
      await c.sub.join(room, { lastEventId: elsewhere.notes()[1]?.id });
      await waitFor(() => roomNotes().length === 2, 'notes 3 and 4');
      await c.sub.leave(room);
      // The `unsubscribed` notice (which keeps the room's position) comes over the socket,
      // apart from the DELETE's answer: the cut waits for it.
      await waitFor(() => !c.sub.channels.includes(room) && said('unsubscribed') === 1, 'left');
      // Cut while the room is left; joined again while reconnecting, from the kept position.
      sockets[0]?.ws.terminate();
      await waitFor(() => c.sub.state === 'reconnecting', 'the cut noticed');
      await publishNotes(room, 5, 6);
      await c.sub.join(room);
      await waitFor(() => c.sub.state === 'open' && sockets.length === 2, 'a second socket');
      await waitFor(() => roomNotes().length === 4, 'notes 5 and 6 after the reconnect');
      expect(roomNotes()).toEqual([3, 4, 5, 6]);
      const sent = sockets[1]?.sent.filter((f) => f.type === 'subscribe') ?? [];
      expect(sent.map((f) => f.channels)).toEqual([['channel:kept-home'], [room]]);
      expect(sent[1]?.positions).toBeDefined();
    } finally {
      c.sub.close();
    }
  });
});

it('waits out the drain hint of a closing node (1012 with `retryMs`) before it reconnects', async () => {
  const draining = await startHerald('websocket = true\nretry = "2s"\ndrain_reconnect_window = "1s"\n');
  try {
    const { WebSocket } = tracked();
    const client = new HeraldClient({ url: draining.url, auth: { mode: 'header', token: token('drained') }, WebSocket });
    const delays: Array<number | undefined> = [];
    const c = collect(client, 'user:drained', {
      transport: 'websocket',
      backoff: { random: () => 0 },
      onStateChange: (s, info) => {
        if (s === 'reconnecting') delays.push(info.delayMs);
      },
    });
    await waitFor(() => c.sub.state === 'open', 'open');
    await draining.drain();
    await waitFor(() => delays.length > 0, 'reconnecting');
    c.sub.close();
    const drained = c.errors[0] as HeraldError;
    expect(drained.code).toBe('server_draining');
    expect(drained.retryAfterMs).toBeGreaterThanOrEqual(2000);
    expect(drained.retryAfterMs).toBeLessThan(3000);
    expect(delays[0]).toBe(drained.retryAfterMs);
  } finally {
    await draining.stop();
  }
}, 30_000);

describe("transport 'auto'", () => {
  it('uses a socket where the server has them', async () => {
    const { WebSocket, sockets } = tracked();
    const client = new HeraldClient({ url: herald.url, auth: { mode: 'header', token: token('auto-ws') }, WebSocket });
    const c = collect(client, 'user:auto-ws', { transport: 'auto' });
    try {
      await waitFor(() => c.sub.state === 'open', 'open');
      await publishNotes('user:auto-ws', 1, 2);
      await waitFor(() => c.notes().length === 2, 'two notes');
      expect(sockets).toHaveLength(1);
      expect(sockets[0]?.ws.readyState).toBe(WS.OPEN);
    } finally {
      c.sub.close();
    }
  });

  it('falls back to SSE at once where the server has WebSocket off', async () => {
    const { WebSocket, sockets } = tracked();
    const client = new HeraldClient({
      url: plain.url,
      auth: { mode: 'header', token: token('auto-sse') },
      WebSocket,
      transport: 'auto',
    });
    const states: string[] = [];
    const c = collect(client, 'user:auto-sse', { onStateChange: (s) => states.push(s) });
    try {
      await waitFor(() => c.sub.state === 'open', 'open over SSE');
      await publishNotes('user:auto-sse', 1, 3, plain);
      await waitFor(() => c.notes().length === 3, 'three notes');
      expect(ns(c.notes())).toEqual([1, 2, 3]);
      expect(sockets).toHaveLength(1);
      expect(states).not.toContain('reconnecting');
      expect(c.errors).toEqual([]);
    } finally {
      c.sub.close();
    }
  });
});
