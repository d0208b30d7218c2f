// The client against a real HTTP server on a local socket: reconnects, resume ids, tickets,
// live rooms, refusals. Backoff delays are made 0 with `random: () => 0` where a test is
// about what happens, not when.

import { EventSource } from 'eventsource';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  type DisconnectEvent,
  HeraldClient,
  HeraldError,
  is,
  PresenceTracker,
  type StreamEvent,
  type Subscription,
  type SubscriptionState,
} from '../src/index.js';
import { TestServer, waitFor } from './support/server.js';

let server: TestServer;
const subs: Subscription[] = [];

beforeEach(async () => {
  server = await new TestServer().start();
});

afterEach(async () => {
  for (const s of subs.splice(0)) s.close();
  await server.stop();
});

function collect(client: HeraldClient, channels: string[], extra: Parameters<HeraldClient['subscribe']>[1] = {}) {
  const events: StreamEvent[] = [];
  const states: SubscriptionState[] = [];
  const errors: Error[] = [];
  const sub = client.subscribe(channels, {
    backoff: { random: () => 0 },
    ...extra,
    onEvent: (e) => events.push(e),
    onStateChange: (s, info) => {
      states.push(s);
      extra.onStateChange?.(s, info);
    },
    onError: (e) => errors.push(e),
  });
  subs.push(sub);
  const chats = () => events.flatMap((e) => (is(e, 'chat') ? [e.content] : []));
  return { sub, events, states, errors, chats };
}

describe.each(['fetch', 'eventsource'] as const)('over %s', (transport) => {
  const client = () =>
    new HeraldClient({ url: server.url, EventSource: EventSource as never, auth: { mode: 'none' } });

  it('resumes after a cut with the last id, losing and repeating nothing', async () => {
    const { sub, chats } = collect(client(), ['channel:a'], { transport });
    await waitFor(() => sub.state === 'open', 'open');
    for (let i = 1; i <= 5; i++) server.publish('channel:a', { type: 'chat', content: `m${i}` });
    await waitFor(() => chats().length === 5, 'five messages');
    server.cut();
    // Published while the client is away: must come from the replay.
    for (let i = 6; i <= 10; i++) server.publish('channel:a', { type: 'chat', content: `m${i}` });
    await waitFor(() => server.streamRequests.length === 2 && sub.state === 'open', 'reconnect');
    for (let i = 11; i <= 12; i++) server.publish('channel:a', { type: 'chat', content: `m${i}` });
    await waitFor(() => chats().length >= 12, 'twelve messages');
    expect(chats()).toEqual(Array.from({ length: 12 }, (_, i) => `m${i + 1}`));
    expect(server.streamRequests[1]?.lastEventId).toBe('s5');
    const second = server.streamRequests[1];
    if (transport === 'fetch') expect(second?.headers['last-event-id']).toBe('s5');
    else expect(second?.url.searchParams.get('lastEventId')).toBe('s5');
  });

  it('surfaces the refetch-state reset event', async () => {
    const resets: string[] = [];
    server.resetNext = 'channel:a';
    const { sub } = collect(client(), ['channel:a'], { transport, onReset: (e) => resets.push(e.channel) });
    await waitFor(() => resets.length === 1, 'reset');
    expect(resets).toEqual(['channel:a']);
    expect(sub.state).toBe('open');
  });

  it('closes cleanly: the server sees the stream end and no reconnect follows', async () => {
    const { sub, states } = collect(client(), ['channel:a'], { transport });
    await waitFor(() => server.openStreams() === 1, 'stream');
    sub.close();
    await waitFor(() => server.openStreams() === 0, 'server-side close');
    expect(sub.state).toBe('closed');
    expect(states.at(-1)).toBe('closed');
    // A reconnect (its delay is 0 here) would come before a new subscription is open.
    const other = collect(client(), ['channel:b'], { transport });
    await waitFor(() => other.sub.state === 'open', 'another subscription');
    expect(server.streamRequests.map((r) => r.channels[0])).toEqual(['channel:a', 'channel:b']);
  });

  it('stops for good on a disconnect without reconnect, and tells the app why', async () => {
    const cuts: DisconnectEvent[] = [];
    const { sub, states, errors } = collect(client(), ['channel:a'], { transport, onDisconnect: (e) => cuts.push(e) });
    await waitFor(() => sub.state === 'open', 'open');
    server.disconnect(false, 'banned');
    await waitFor(() => sub.state === 'closed', 'closed for good');
    expect(cuts).toEqual([{ type: 'disconnect', reason: 'banned', reconnect: false }]);
    expect(sub.disconnect).toEqual(cuts[0]);
    expect((sub.error as HeraldError).code).toBe('banned');
    expect(errors.map((e) => (e as HeraldError).code)).toEqual(['banned']);
    expect(states).not.toContain('reconnecting');
    // A reconnect (its delay is 0 here) would come before a new subscription is open.
    const other = collect(client(), ['channel:b'], { transport });
    await waitFor(() => other.sub.state === 'open', 'another subscription');
    expect(server.streamRequests.map((r) => r.channels[0])).toEqual(['channel:a', 'channel:b']);
  });

  it('comes back and resumes after a disconnect that allows it', async () => {
    const cuts: DisconnectEvent[] = [];
    const { sub, chats } = collect(client(), ['channel:a'], { transport, onDisconnect: (e) => cuts.push(e) });
    await waitFor(() => sub.state === 'open', 'open');
    server.publish('channel:a', { type: 'chat', content: 'm1' });
    await waitFor(() => chats().length === 1, 'first message');
    server.disconnect(true);
    server.publish('channel:a', { type: 'chat', content: 'm2' });
    await waitFor(() => server.streamRequests.length === 2 && sub.state === 'open', 'reconnect');
    await waitFor(() => chats().length === 2, 'the missed message');
    expect(chats()).toEqual(['m1', 'm2']);
    expect(cuts.map((c) => c.reconnect)).toEqual([true]);
    expect(server.streamRequests[1]?.lastEventId).toBe('s1');
  });
});

describe('authentication', () => {
  it('sends the bearer token on a fetch stream and on publish', async () => {
    server.token = 'tok-1';
    const c = new HeraldClient({ url: server.url, auth: { mode: 'header', token: () => 'tok-1' } });
    const { sub, chats } = collect(c, ['user:1']);
    await waitFor(() => sub.state === 'open', 'open');
    expect(server.streamRequests[0]?.headers.authorization).toBe('Bearer tok-1');
    const { id } = await c.publish('user:1', 'chat', { content: 'hi' });
    expect(id).toBe('ev1');
    await waitFor(() => chats().length === 1, 'message');
    const body = JSON.parse(server.requests.find((r) => r.path === '/api/publish')?.body ?? '{}');
    expect(body).toEqual({ channel: 'user:1', type: 'chat', content: 'hi' });
  });

  it('trades the token for a new single-use ticket before every EventSource connect', async () => {
    server.token = 'tok-2';
    const c = new HeraldClient({
      url: server.url,
      EventSource: EventSource as never,
      auth: { mode: 'ticket', token: 'tok-2' },
    });
    const { sub, chats } = collect(c, ['user:2']);
    await waitFor(() => sub.state === 'open', 'open');
    server.publish('user:2', { type: 'chat', content: 'one' });
    await waitFor(() => chats().length === 1, 'first');
    server.cut();
    server.publish('user:2', { type: 'chat', content: 'two' });
    await waitFor(() => chats().length === 2, 'second, replayed');
    const [first, second] = server.streamRequests;
    expect(first?.ticket).toBeTruthy();
    expect(second?.ticket).toBeTruthy();
    expect(second?.ticket).not.toBe(first?.ticket);
    expect(second?.url.searchParams.get('lastEventId')).toBe('s1');
    expect(server.requests.filter((r) => r.path === '/api/tickets')).toHaveLength(2);
    expect(chats()).toEqual(['one', 'two']);
  });

  it('asks the token function again after a 401, and keeps trying', async () => {
    server.token = 'fresh';
    let calls = 0;
    const c = new HeraldClient({
      url: server.url,
      auth: { mode: 'header', token: () => (++calls === 1 ? 'expired' : 'fresh') },
    });
    const { sub, errors } = collect(c, ['user:3']);
    await waitFor(() => sub.state === 'open', 'open with the fresh token');
    expect(errors[0]).toBeInstanceOf(HeraldError);
    expect((errors[0] as HeraldError).status).toBe(401);
    expect(server.streamRequests.map((r) => r.headers.authorization)).toEqual(['Bearer expired', 'Bearer fresh']);
  });
});

describe('reconnect policy', () => {
  const client = () => new HeraldClient({ url: server.url });

  it('retries a 503, honouring Retry-After, and gives up on a 400', async () => {
    server.refusals.push({ status: 503, code: 'server_draining', retryAfter: 1 });
    const delays: number[] = [];
    const { sub } = collect(client(), ['channel:a'], {
      onStateChange: (s, info) => {
        if (s === 'reconnecting' && info.delayMs !== undefined) delays.push(info.delayMs);
      },
    });
    await waitFor(() => sub.state === 'open', 'open after the 503');
    expect(delays).toEqual([1000]);

    server.refusals.push({ status: 400, code: 'invalid_channel' });
    const bad = collect(client(), ['channel:a']);
    await waitFor(() => bad.sub.state === 'closed', 'closed for good');
    expect((bad.sub.error as HeraldError).code).toBe('invalid_channel');
    expect(server.streamRequests).toHaveLength(3);
  });

  it('grows the window on every failure and starts over after a healthy connection', async () => {
    const windows: number[] = [];
    const c = new HeraldClient({ url: server.url, backoff: { baseMs: 10, healthyAfterMs: 50, random: () => 0.999 } });
    for (let i = 0; i < 3; i++) server.refusals.push({ status: 503, code: 'busy' });
    const { sub } = collect(c, ['channel:a'], {
      backoff: undefined,
      onStateChange: (s, info) => {
        if (s === 'reconnecting') windows.push(info.delayMs ?? -1);
      },
    });
    await waitFor(() => sub.state === 'open', 'open after three refusals');
    expect(windows).toEqual([9, 19, 39]);
    expect(sub.attempt).toBe(3);
    // Healthy: open for longer than healthyAfterMs (50 ms), seen by a publish that arrives
    // after it.
    const opened = Date.now();
    await waitFor(() => Date.now() - opened > 60, 'the connection to count as healthy');
    server.cut();
    await waitFor(() => windows.length === 4, 'the next reconnect');
    expect(windows[3]).toBe(9);
  });

  it('takes the base delay from the server retry hint on fetch streams', async () => {
    server.retryMs = 200;
    const windows: number[] = [];
    const c = new HeraldClient({ url: server.url, backoff: { random: () => 0.5 } });
    const { sub } = collect(c, ['channel:a'], {
      backoff: undefined,
      onStateChange: (s, info) => {
        if (s === 'reconnecting') windows.push(info.delayMs ?? -1);
      },
    });
    await waitFor(() => sub.state === 'open', 'open');
    server.cut();
    await waitFor(() => windows.length === 1, 'reconnecting');
    expect(windows).toEqual([100]);
  });

  it('reconnects a fetch stream that goes silent past the idle timeout', async () => {
    const c = new HeraldClient({ url: server.url, idleTimeoutMs: 150 });
    const { sub, errors } = collect(c, ['channel:a']);
    await waitFor(() => server.streamRequests.length >= 2, 'a second connect after silence');
    expect((errors[0] as HeraldError).code).toBe('idle_timeout');
    sub.close();
  });

  it('keeps a stream with heartbeats alive past the idle timeout', async () => {
    // Heartbeats every 50 ms for more than twice the idle timeout (a wide margin for a
    // loaded machine's timers).
    const c = new HeraldClient({ url: server.url, idleTimeoutMs: 700 });
    const { sub } = collect(c, ['channel:a']);
    await waitFor(() => sub.state === 'open', 'open');
    const until = Date.now() + 1600;
    while (Date.now() < until) {
      server.raw(': heartbeat\n\n');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(server.streamRequests).toHaveLength(1);
  });
});

describe('live rooms and presence', () => {
  it('joins and leaves on the open connection, and reconnects with the new channel list', async () => {
    const c = new HeraldClient({ url: server.url });
    const { sub, chats } = collect(c, ['channel:a']);
    await waitFor(() => sub.state === 'open', 'open');
    await sub.join('channel:b');
    expect(server.requests.at(-1)).toMatchObject({ method: 'POST', path: '/api/connections/c1/channels' });
    server.publish('channel:b', { type: 'chat', content: 'in b' });
    await waitFor(() => chats().length === 1, 'event of the joined room');
    expect(sub.channels).toEqual(['channel:a', 'channel:b']);
    await sub.join('channel:c');
    await sub.leave('channel:a');
    expect(server.requests.at(-1)).toMatchObject({ method: 'DELETE', path: '/api/connections/c1/channels/channel%3Aa' });
    expect(sub.channels).toEqual(['channel:b', 'channel:c']);
    server.cut();
    await waitFor(() => server.streamRequests.length === 2 && sub.state === 'open', 'reconnect');
    expect(server.streamRequests[1]?.channels).toEqual(['channel:b', 'channel:c']);
  });

  it('applies a join and a leave made while connecting once the connection is open', async () => {
    let release = () => {};
    server.hold = new Promise((r) => (release = r));
    const c = new HeraldClient({ url: server.url });
    const { sub, chats } = collect(c, ['channel:a', 'channel:old']);
    await waitFor(() => server.requests.length === 1, 'the stream request, its channels fixed');
    await sub.join('channel:b');
    await sub.leave('channel:old');
    expect(sub.state).toBe('connecting');
    release();
    await waitFor(() => server.requests.length === 3, 'the join and the leave on the open connection');
    expect(server.requests.map((r) => `${r.method} ${r.path}`).sort()).toEqual([
      'DELETE /api/connections/c1/channels/channel%3Aold',
      'GET /api/events',
      'POST /api/connections/c1/channels',
    ]);
    server.publish('channel:old', { type: 'chat', content: 'left' });
    server.publish('channel:b', { type: 'chat', content: 'joined' });
    await waitFor(() => chats().length === 1, 'the joined room');
    expect(chats()).toEqual(['joined']);
  });

  it('keeps a live who-is-online list from the fetched list and presence events', async () => {
    server.presence = [{ userId: 'ann', userName: 'Ann', status: 'online' }];
    const c = new HeraldClient({ url: server.url });
    const { sub } = collect(c, ['channel:a']);
    let names: string[] = [];
    const tracker = new PresenceTracker(c, sub, 'channel:a', (users) => (names = users.map((u) => u.userName ?? '')));
    await waitFor(() => names.join() === 'Ann', 'the fetched list');
    server.publish('channel:a', { type: 'presence', userId: 'bob', userName: 'Bob', status: 'online' });
    await waitFor(() => names.join() === 'Ann,Bob', 'Bob online');
    server.publish('channel:a', { type: 'presence', userId: 'ann', userName: 'Ann', status: 'offline' });
    await waitFor(() => names.join() === 'Bob', 'Ann offline');
    tracker.close();
  });
});

describe('requests', () => {
  it('turns an error answer into a HeraldError with its code', async () => {
    const c = new HeraldClient({ url: server.url });
    const err = await c.publish([], 'chat').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).status).toBe(400);
    expect((err as HeraldError).code).toBe('missing_channel');
  });

  it('reports an unreachable server as a network error', async () => {
    const c = new HeraldClient({ url: 'http://127.0.0.1:9', backoff: { random: () => 0 } });
    const err = await c.publish('channel:a', 'chat').catch((e: unknown) => e);
    expect((err as HeraldError).code).toBe('network_error');
  });
});

describe('publish retries', () => {
  const publishes = () => server.requests.filter((r) => r.path === '/api/publish');

  it('retries a publish whose answer was lost under the same idempotency key, publishing it once', async () => {
    server.lostAnswers = 2;
    const c = new HeraldClient({ url: server.url, backoff: { random: () => 0 } });
    const { id } = await c.publish('channel:a', 'chat', { content: 'once' });
    const keys = publishes().map((r) => r.headers['idempotency-key']);
    expect(keys).toHaveLength(3);
    expect(keys[0]).toBeTruthy();
    expect(new Set(keys).size).toBe(1);
    expect(server.log).toHaveLength(1);
    expect(id).toBe(server.log[0]?.json.id);
  });

  it('gives each logical publish its own key, or the caller\'s', async () => {
    const c = new HeraldClient({ url: server.url });
    await c.publish('channel:a', 'chat');
    await c.publish('channel:a', 'chat');
    await c.publish('channel:a', 'chat', {}, { idempotencyKey: 'order-7' });
    const keys = publishes().map((r) => r.headers['idempotency-key']);
    expect(keys[0]).not.toBe(keys[1]);
    expect(keys[2]).toBe('order-7');
  });

  it('does not retry a refusal that retrying cannot fix, nor past its retries', async () => {
    const c = new HeraldClient({ url: server.url, backoff: { random: () => 0 } });
    await c.publish([], 'chat').catch(() => undefined);
    expect(publishes()).toHaveLength(1);
    server.lostAnswers = 5;
    const err = await c.publish('channel:a', 'chat', {}, { retries: 1 }).catch((e: unknown) => e);
    expect((err as HeraldError).status).toBe(503);
    expect(publishes()).toHaveLength(3);
  });
});
