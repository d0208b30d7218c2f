// The Herald client: subscriptions that reconnect and resume, and the HTTP calls around
// them (publish, tickets, presence, live rooms). No framework needed; the React hook in
// `react.ts` is a thin layer over `HeraldClient.subscribe`.
//
// A subscription owns its reconnect loop. Whatever the transport, a lost stream is closed
// and opened again after a full-jitter backoff delay, with the last SSE id seen (so the
// server replays exactly what was missed) and the channel list as it is now (after live
// joins and leaves), and, for ticket auth, a new single-use ticket. A stream the server
// ends because its token expired (`token_expired`) is opened again at once, with a fresh
// token, and resumes from the notice's id: nothing is lost and the app does nothing.

import { Backoff, type BackoffOptions } from './backoff.js';
import type { DisconnectEvent, EventMap, PresenceStatus, ResetEvent, StreamEvent } from './events.js';
import { HeraldError } from './errors.js';
import { SseParser } from './sse.js';
import { Socket, type WebSocketConstructor } from './websocket.js';

export { HeraldError };

/** A token, or a function that returns a fresh one (called before every connect, and so
 * when the server ends a stream because its token expired: see `token_expired`). */
export type TokenSource = string | (() => string | Promise<string>);

/** How the client proves who it is.
 *
 * - `none`: anonymous (a dev-mode server, or public channels).
 * - `cookie`: the browser sends the token cookie (`EventSource` with credentials).
 * - `ticket`: a user token is traded for a single-use ticket (`POST /api/tickets`) before
 *   each connect, for `EventSource`, which cannot send headers.
 * - `header`: `Authorization: Bearer <token>` on a fetch-based stream.
 * - `apiKey`: a backend's key (`X-Api-Key`), for Node services; streams use fetch. */
export type Auth =
  | { mode: 'none' }
  | { mode: 'cookie' }
  | { mode: 'ticket'; token: TokenSource }
  | { mode: 'header'; token: TokenSource }
  | { mode: 'apiKey'; key: string };

/** The subset of the `EventSource` constructor the client uses. */
export interface EventSourceLike {
  onopen: ((this: any, ev: any) => any) | null;
  onmessage: ((this: any, ev: { data: string; lastEventId: string }) => any) | null;
  onerror: ((this: any, ev: any) => any) | null;
  close(): void;
}
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

export interface HeraldClientOptions {
  /** Base URL of the Herald server, like `https://events.example.com`. Default: this page's
   * origin (relative URLs). Required outside a browser. */
  url?: string;
  auth?: Auth;
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  /** Defaults to the global `EventSource`, when there is one. */
  EventSource?: EventSourceConstructor;
  /** Defaults to the global `WebSocket`, when there is one. In Node, the `ws` package's
   * (which also carries an `apiKey` in the upgrade's headers). */
  WebSocket?: WebSocketConstructor;
  /** The transport of every subscription (each may override it). Default `sse`. */
  transport?: Transport;
  /** Reconnect timing for every subscription (each may override it). */
  backoff?: BackoffOptions;
  /** Fetch streams: reconnect when nothing, not even a heartbeat, arrives for this long.
   * Herald sends a heartbeat every 30 s by default. Default 75000; 0 disables. */
  idleTimeoutMs?: number;
}

/** How a subscription reaches the server.
 *
 * - `sse` (default): Server-Sent Events, over `fetch` for `header`/`apiKey` auth or where
 *   there is no `EventSource`, over `EventSource` otherwise.
 * - `eventsource`, `fetch`: Server-Sent Events over that one.
 * - `websocket`: `GET /api/ws` (the server needs `websocket = true`; see docs/websocket.md).
 * - `auto`: a WebSocket, and SSE for the rest of the subscription's life once a socket
 *   cannot be opened (the server has WebSocket off, or a proxy refuses the upgrade).
 *
 * Events, ids and resume are the same over each: a subscription that moves from one to
 * another resumes with the id it has. */
export type Transport = 'sse' | 'eventsource' | 'fetch' | 'websocket' | 'auto';

export type SubscriptionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StateInfo {
  /** Failed attempts in a row (0 once a healthy connection ends). */
  attempt: number;
  /** For `reconnecting`: how long until the next attempt. */
  delayMs?: number;
  /** What ended the previous connection, or what closed the subscription for good. */
  error?: Error;
}

export interface SubscribeOptions {
  /** Every event, in order (control events such as `connected` and `reset` included). */
  onEvent?: (event: StreamEvent) => void;
  /** The server could not resume a channel: refetch that channel's state. */
  onReset?: (event: ResetEvent) => void;
  /** The application cut the stream (`POST /api/disconnect`). With `reconnect: false` the
   * subscription then closes for good (state `closed`, `error.code` the event's `reason`:
   * `disconnected` or `banned`); otherwise it reconnects and resumes as after any cut. */
  onDisconnect?: (event: DisconnectEvent) => void;
  onStateChange?: (state: SubscriptionState, info: StateInfo) => void;
  /** A connection attempt failed or a stream broke (the subscription retries), or a fatal
   * error closed the subscription (state `closed`). */
  onError?: (error: Error) => void;
  /** Server-side filters, `field:value` (e.g. `severity:SEV-1`). */
  filters?: string[];
  /** Resume from this SSE id on the first connect. */
  lastEventId?: string;
  /** State on subscribe: each channel's last `N` events come before the live ones (a number
   * for every channel, or a count per channel: `{ 'channel:prices': 1 }`; at most 100). A
   * reconnect resumes from the last id instead, so nothing comes twice. `0` turns a
   * namespace's `deliver_last` off. */
  last?: number | Record<string, number>;
  /** Default: the client's `transport`, `sse` if unset (see `Transport`). */
  transport?: Transport;
  backoff?: BackoffOptions;
}

/** What `history` asks for: at most `limit` events (default 100, at most 1000) strictly
 * after `after` and strictly before `before` (positions from a page or SSE ids), from the
 * newest end of that range (`order: 'newest'`, the default) or the oldest. */
export interface HistoryQuery {
  limit?: number;
  after?: string;
  before?: string;
  order?: 'newest' | 'oldest';
}

/** A page of a channel's history. */
export interface HistoryPage {
  channel: string;
  order: 'newest' | 'oldest';
  /** The channel's last position: subscribe with `lastEventId: head` to follow on from it. */
  head: string;
  /** The range holds more events than the page. */
  more: boolean;
  /** Each event as a stream delivers it, with its position (an SSE id of the channel). */
  events: Array<{ position: string; event: StreamEvent }>;
}

export interface PresenceUser {
  userId: string;
  userName?: string;
  status: Exclude<PresenceStatus, 'offline'>;
}

export interface ChannelPresence {
  channel: string;
  users: PresenceUser[];
}

export interface UserPresence {
  userId: string;
  online: boolean;
  status: PresenceStatus;
}

export interface ChannelInfo {
  channel: string;
  subscribers: number;
  users: number;
}

/** How a publish is retried. A retry carries the same `Idempotency-Key` as the first try, so
 * a publish whose answer was lost (a network error, `503` after a timeout) is published once
 * however often it is retried. */
export interface PublishOptions {
  /** The key of this logical publish. Default: a new random key per call, reused by its
   * retries. Pass your own (an order id, say) to make retries of your own safe too. */
  idempotencyKey?: string;
  /** Retries after a network error, `408`, `429`, `502`, `503` or `504`. Default 2. */
  retries?: number;
}

const DEFAULT_PUBLISH_RETRIES = 2;

/** Answers after which a publish may be retried: the network, timeouts, overload. */
function retryable(e: HeraldError): boolean {
  return e.status === 0 || [408, 429, 502, 503, 504].includes(e.status);
}

/** A random idempotency key: a UUID where the platform has one. */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** An event to publish: a channel (or several), a type, and flat payload fields. */
export interface OutgoingEvent {
  channel?: string;
  channels?: string[];
  type: string;
  [field: string]: unknown;
}

const DEFAULT_IDLE_TIMEOUT_MS = 75_000;

export class HeraldClient {
  readonly url: string;
  readonly auth: Auth;
  readonly backoff: BackoffOptions;
  readonly idleTimeoutMs: number;
  readonly transport: Transport;
  private readonly fetchImpl: typeof fetch;
  private readonly eventSource?: EventSourceConstructor;
  private readonly webSocket?: WebSocketConstructor;

  constructor(options: HeraldClientOptions = {}) {
    this.url = (options.url ?? '').replace(/\/+$/, '');
    this.auth = options.auth ?? { mode: 'none' };
    this.backoff = options.backoff ?? {};
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    const f = options.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (!f) throw new Error('no fetch: pass `fetch` in the options');
    // A bare reference to window.fetch must be called with the global as `this`.
    this.fetchImpl = options.fetch ?? ((input, init) => f(input, init));
    this.eventSource =
      options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    this.webSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.transport = options.transport ?? 'sse';
  }

  /** Opens a subscription to one or more channels. It connects at once and keeps
   * reconnecting until `close()`. */
  subscribe(channels: string | string[], options: SubscribeOptions = {}): Subscription {
    const list = Array.isArray(channels) ? channels : [channels];
    const sub = new Subscription(this, list, options);
    sub.start();
    return sub;
  }

  /** Publishes one event (`POST /api/publish`); resolves to its id. Retried on failures
   * that may hide a stored event, under one idempotency key (see `PublishOptions`). */
  publish(
    channel: string | string[],
    type: string,
    payload: Record<string, unknown> = {},
    options: PublishOptions = {},
  ): Promise<{ id: string }> {
    const target = Array.isArray(channel) ? { channels: channel } : { channel };
    return this.publishRetried({ ...payload, ...target, type }, options);
  }

  /** Publishes several events in order, all or none; resolves to their ids. Retried like
   * `publish`: the key covers each event by its place in the batch. */
  publishBatch(events: OutgoingEvent[], options: PublishOptions = {}): Promise<{ ids: string[] }> {
    return this.publishRetried(events, options);
  }

  private async publishRetried<T>(body: unknown, options: PublishOptions): Promise<T> {
    const headers = { 'Idempotency-Key': options.idempotencyKey ?? newIdempotencyKey() };
    const retries = options.retries ?? DEFAULT_PUBLISH_RETRIES;
    const backoff = new Backoff(this.backoff);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request<T>('POST', '/api/publish', body, headers);
      } catch (e) {
        if (!(e instanceof HeraldError) || !retryable(e) || attempt >= retries) throw e;
        const delay = e.retryAfterMs ?? backoff.next();
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /** A page of a channel's history (`GET /api/channels/{channel}/history`), for whoever may
   * subscribe to it. */
  history(channel: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const q = new URLSearchParams();
    if (query.limit !== undefined) q.set('limit', String(query.limit));
    if (query.after !== undefined) q.set('after', query.after);
    if (query.before !== undefined) q.set('before', query.before);
    if (query.order !== undefined) q.set('order', query.order);
    const tail = q.size > 0 ? `?${q.toString()}` : '';
    return this.request('GET', `/api/channels/${encodeURIComponent(channel)}/history${tail}`);
  }

  /** Who is in a channel now (`GET /api/channels/{channel}/presence`). */
  presence(channel: string): Promise<ChannelPresence> {
    return this.request('GET', `/api/channels/${encodeURIComponent(channel)}/presence`);
  }

  /** Whether a user is online anywhere. */
  userPresence(userId: string): Promise<UserPresence> {
    return this.request('GET', `/api/users/${encodeURIComponent(userId)}/presence`);
  }

  /** Sets this user's status (`away` or `online`) in every channel they are in. */
  setStatus(status: 'online' | 'away'): Promise<{ status: string }> {
    return this.request('POST', '/api/presence', { status });
  }

  /** Subscribers and users of a channel, across every node. */
  channelInfo(channel: string): Promise<ChannelInfo> {
    return this.request('GET', `/api/channels/${encodeURIComponent(channel)}`);
  }

  /** A single-use ticket for `GET /api/events?ticket=` (needs a user token). */
  async ticket(): Promise<string> {
    const answer = await this.request<{ ticket: string }>('POST', '/api/tickets');
    return answer.ticket;
  }

  /** The URL of a stream on `channels`, with extra query parameters. */
  streamUrl(channels: string[], extra: Array<[string, string]> = []): string {
    const q = new URLSearchParams();
    for (const c of channels) q.append('channel', c);
    for (const [k, v] of extra) q.append(k, v);
    return `${this.url}/api/events?${q.toString()}`;
  }

  /** The `ws:`/`wss:` URL of `GET /api/ws` (relative to the page when `url` is unset). */
  socketUrl(extra: Array<[string, string]> = []): string {
    const base = (globalThis as { location?: { href: string } }).location?.href;
    const u = new URL(`${this.url}/api/ws`, base);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    for (const [k, v] of extra) u.searchParams.append(k, v);
    return u.toString();
  }

  /** The headers that carry this client's credential (none for `none`/`cookie`). */
  async authHeaders(): Promise<Record<string, string>> {
    switch (this.auth.mode) {
      case 'ticket':
      case 'header':
        return { Authorization: `Bearer ${await resolveToken(this.auth.token)}` };
      case 'apiKey':
        return { 'X-Api-Key': this.auth.key };
      default:
        return {};
    }
  }

  get credentials(): RequestCredentials {
    return this.auth.mode === 'cookie' ? 'include' : 'same-origin';
  }

  /** One JSON call to Herald's API; throws `HeraldError` on an error answer. */
  async request<T>(method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json', ...(await this.authHeaders()), ...extra };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp: Response;
    try {
      resp = await this.fetchImpl(`${this.url}${path}`, {
        method,
        headers,
        credentials: this.credentials,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new HeraldError(`${method} ${path}: ${(e as Error).message}`, 0, 'network_error');
    }
    if (!resp.ok) throw await errorFrom(resp);
    const text = await resp.text();
    return (text ? JSON.parse(text) : {}) as T;
  }

  /** @internal */
  get fetcher(): typeof fetch {
    return this.fetchImpl;
  }

  /** @internal */
  get eventSourceConstructor(): EventSourceConstructor | undefined {
    return this.eventSource;
  }

  /** @internal */
  get webSocketConstructor(): WebSocketConstructor | undefined {
    return this.webSocket;
  }
}

/** Mints a token for `userId` on a dev-mode server (`POST /api/dev/token`); refused
 * (404) by a server with authentication configured. */
export async function devToken(
  url: string,
  userId: string,
  userName?: string,
  fetchImpl: typeof fetch = (i, o) => fetch(i, o),
): Promise<string> {
  const resp = await fetchImpl(`${url.replace(/\/+$/, '')}/api/dev/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ userId, userName }),
  });
  if (!resp.ok) throw await errorFrom(resp);
  return ((await resp.json()) as { token: string }).token;
}

async function resolveToken(token: TokenSource): Promise<string> {
  return typeof token === 'function' ? await token() : token;
}

async function errorFrom(resp: Response): Promise<HeraldError> {
  let code = 'http_error';
  let message = `HTTP ${resp.status}`;
  try {
    const body = (await resp.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = body.error.message;
  } catch {
    // Not Herald's JSON error (a proxy's page, say): keep the status.
  }
  const retryAfter = Number.parseInt(resp.headers.get('retry-after') ?? '', 10);
  return new HeraldError(message, resp.status, code, Number.isFinite(retryAfter) ? retryAfter * 1000 : undefined);
}

type Listener = (event: any) => void;

interface Connection {
  close(): void;
  /** Set when the connection is a WebSocket: commands go over it. */
  socket?: Socket;
}

/** A live subscription: events in order, reconnecting and resuming until closed. */
export class Subscription {
  /** The channels followed; updated by live joins and leaves, and used by reconnects. */
  readonly channels: string[];
  state: SubscriptionState = 'connecting';
  /** The last SSE id received: where a reconnect resumes. */
  lastEventId: string | undefined;
  /** The server's id of the current connection (from `connected`), for live rooms. */
  connectionId: string | undefined;
  /** What closed the subscription, if an error did. */
  error: Error | undefined;
  /** The server's last `disconnect` event, if the application cut the stream. */
  disconnect: DisconnectEvent | undefined;

  private readonly backoff: Backoff;
  private readonly fixedBase: boolean;
  private readonly listeners = new Map<string, Set<Listener>>();
  private connection: Connection | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped on every connect and on close; callbacks of an older connection are ignored. */
  private generation = 0;
  private connectedAt = 0;
  /** `auto`: a socket could not be opened, so this subscription stays on SSE. */
  private socketFailed = false;
  /** Per channel not followed now, the last id that named it (kept when it was left, or
   * given to `join`): where a later `subscribe` on a socket resumes it. */
  private readonly positions = new Map<string, string>();

  constructor(
    private readonly client: HeraldClient,
    channels: string[],
    private readonly options: SubscribeOptions,
  ) {
    this.channels = [...new Set(channels)];
    if (this.channels.length === 0) throw new Error('subscribe to at least one channel');
    this.lastEventId = options.lastEventId;
    const backoff = { ...client.backoff, ...options.backoff };
    this.fixedBase = backoff.baseMs !== undefined;
    this.backoff = new Backoff(backoff);
  }

  /** Failed attempts in a row. */
  get attempt(): number {
    return this.backoff.attempt;
  }

  /** Listens to one event type; returns a function that stops listening. */
  on<K extends keyof EventMap>(type: K, listener: (event: EventMap[K]) => void): () => void;
  on(type: string, listener: (event: StreamEvent) => void): () => void;
  on(type: string, listener: Listener): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Adds a live room to this connection (`POST /api/connections/{id}/channels`, or a
   * `subscribe` command over an open WebSocket); a reconnect then subscribes to it too.
   * While disconnected, it is only added to the list the next connect uses.
   *
   * Over a WebSocket the channel resumes where this subscription left it (the last id it
   * had of it, kept when it left), or after `options.lastEventId` (an id of an event of
   * that channel the application kept): the events since come first, from history, then
   * the live ones, or a `reset` when history no longer covers them. Over SSE, and without
   * a position, it starts at the channel's head. */
  async join(channel: string, options: { lastEventId?: string } = {}): Promise<void> {
    if (this.state === 'closed') throw new Error('the subscription is closed');
    if (options.lastEventId) this.positions.set(channel, options.lastEventId);
    const socket = this.connection?.socket;
    if (this.state === 'open' && socket && !this.channels.includes(channel)) {
      try {
        await this.subscribeOn(socket, channel);
      } catch (e) {
        // The socket is gone (it is reconnecting): the next connect includes the room.
        if (!(e instanceof HeraldError && e.status === 0)) throw e;
      }
    } else if (this.state === 'open' && this.connectionId) {
      try {
        await this.client.request('POST', `/api/connections/${encodeURIComponent(this.connectionId)}/channels`, {
          channel,
        });
      } catch (e) {
        // The connection is gone (it is reconnecting): the next connect includes the room.
        if (!(e instanceof HeraldError && e.status === 404)) throw e;
      }
    }
    if (!this.channels.includes(channel)) this.channels.push(channel);
  }

  /** Subscribes the open socket to `channel`, resuming it from the position this
   * subscription keeps for it, if any. */
  private async subscribeOn(socket: Socket, channel: string): Promise<void> {
    const from = this.positions.get(channel);
    await socket.request('subscribe', from ? { channels: [channel], positions: { [channel]: from } } : { channels: [channel] });
  }

  /** Removes a channel from this connection; reconnects no longer include it. */
  async leave(channel: string): Promise<void> {
    if (this.state === 'closed') throw new Error('the subscription is closed');
    if (this.channels.length === 1 && this.channels[0] === channel) {
      throw new Error('cannot leave the last channel: close the subscription instead');
    }
    if (this.state === 'open' && this.connectionId) {
      try {
        await this.client.request(
          'DELETE',
          `/api/connections/${encodeURIComponent(this.connectionId)}/channels/${encodeURIComponent(channel)}`,
        );
      } catch (e) {
        if (!(e instanceof HeraldError && e.status === 404)) throw e;
      }
    }
    this.removeChannel(channel);
  }

  /** Publishes one event: over this subscription's socket while it is an open WebSocket
   * (the reply carries the id), over `POST /api/publish` (`HeraldClient.publish`)
   * otherwise, or when the socket closes before the reply, under the same idempotency key. */
  async publish(
    channel: string | string[],
    type: string,
    payload: Record<string, unknown> = {},
    options: PublishOptions = {},
  ): Promise<{ id: string }> {
    const socket = this.connection?.socket;
    const idempotencyKey = options.idempotencyKey ?? newIdempotencyKey();
    if (socket && this.state === 'open') {
      const target = Array.isArray(channel) ? { channels: channel } : { channel };
      try {
        return await socket.request<{ id: string }>('publish', { event: { ...payload, ...target, type }, idempotencyKey });
      } catch (e) {
        if (!(e instanceof HeraldError && e.status === 0)) throw e;
      }
    }
    return this.client.publish(channel, type, payload, { ...options, idempotencyKey });
  }

  /** Closes the stream for good. */
  close(): void {
    this.shutdown(undefined);
  }

  /** @internal */
  start(): void {
    void this.connect();
  }

  private setState(state: SubscriptionState, info: Partial<StateInfo> = {}): void {
    this.state = state;
    this.options.onStateChange?.(state, { attempt: this.backoff.attempt, ...info });
  }

  /** The transport of the next connect. */
  private transport(): 'eventsource' | 'fetch' | 'websocket' {
    let wanted = this.options.transport ?? this.client.transport;
    if (wanted === 'auto') wanted = this.socketFailed || !this.client.webSocketConstructor ? 'sse' : 'websocket';
    if (wanted !== 'sse') return wanted;
    const mode = this.client.auth.mode;
    if (mode === 'header' || mode === 'apiKey' || !this.client.eventSourceConstructor) return 'fetch';
    return 'eventsource';
  }

  private async connect(): Promise<void> {
    const gen = ++this.generation;
    this.connectionId = undefined;
    this.connectedAt = 0;
    const last = lastParams(this.options.last);
    const extra: Array<[string, string]> = [...(this.options.filters ?? []).map((f): [string, string] => ['filter', f]), ...last];
    try {
      const transport = this.transport();
      if (transport === 'websocket') {
        const WS = this.client.webSocketConstructor;
        if (!WS) throw new HeraldError('no WebSocket here: pass `WebSocket` in the options', 0, 'no_websocket');
        // As for EventSource, which cannot send headers either: a ticket in the query. A
        // bearer token goes in the first message; an API key in the upgrade's headers.
        const auth = this.client.auth;
        // The socket's first `subscribe` opens the stream with the query's `last`.
        const query: Array<[string, string]> = [...last];
        if (auth.mode === 'ticket') query.push(['ticket', await this.client.ticket()]);
        const token = auth.mode === 'header' ? await resolveToken(auth.token) : undefined;
        const headers = auth.mode === 'apiKey' ? { 'X-Api-Key': auth.key } : undefined;
        if (gen !== this.generation) return;
        this.connection = this.openSocket(WS, this.client.socketUrl(query), token, headers, gen);
      } else if (transport === 'eventsource') {
        const ES = this.client.eventSourceConstructor;
        if (!ES) throw new HeraldError('no EventSource here: use transport `fetch`', 0, 'no_event_source');
        if (this.client.auth.mode === 'ticket') extra.push(['ticket', await this.client.ticket()]);
        // A new EventSource sends no Last-Event-ID header: the query carries it.
        if (this.lastEventId) extra.push(['lastEventId', this.lastEventId]);
        if (gen !== this.generation) return;
        this.connection = this.openEventSource(ES, this.client.streamUrl(this.channels, extra), gen);
      } else {
        const headers: Record<string, string> = {
          Accept: 'text/event-stream',
          ...(await this.client.authHeaders()),
        };
        if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
        if (gen !== this.generation) return;
        this.connection = this.openFetch(this.client.streamUrl(this.channels, extra), headers, gen);
      }
    } catch (e) {
      if (gen === this.generation) this.lost(asError(e));
    }
  }

  private openSocket(
    WS: WebSocketConstructor,
    url: string,
    token: string | undefined,
    headers: Record<string, string> | undefined,
    gen: number,
  ): Connection {
    const auto = (this.options.transport ?? this.client.transport) === 'auto';
    const socket = new Socket(WS, {
      url,
      token,
      headers,
      // A channel with a kept position joins after `connected`, from that position
      // (`reconcile`): the first subscribe resumes from one id only.
      subscribe: { channels: this.openingChannels(), lastEventId: this.lastEventId, filters: this.options.filters },
      idleMs: this.client.idleTimeoutMs,
      onEvent: (id, event) => {
        if (gen === this.generation) this.message(id, event);
      },
      onLost: (error, opened) => {
        if (gen !== this.generation) return;
        if (auto && !opened) {
          // The upgrade failed: no sockets here (or a proxy in the way). SSE, at once.
          this.socketFailed = true;
          this.connection = undefined;
          void this.connect();
          return;
        }
        this.lost(error);
      },
    });
    return { close: () => socket.close(), socket };
  }

  /** The channels a socket's first `subscribe` names: all but those waiting to resume
   * from a kept position (unless that would leave none). */
  private openingChannels(): string[] {
    const fresh = this.channels.filter((c) => !this.positions.has(c));
    return fresh.length > 0 ? fresh : [...this.channels];
  }

  private openEventSource(ES: EventSourceConstructor, url: string, gen: number): Connection {
    const es = new ES(url, { withCredentials: this.client.auth.mode === 'cookie' });
    es.onmessage = (ev) => {
      if (gen === this.generation) this.sseMessage(ev.lastEventId, ev.data);
    };
    es.onerror = () => {
      // EventSource would reconnect by itself, but with the same URL (a spent ticket, the
      // old channel list): close it and reconnect here instead.
      es.close();
      if (gen === this.generation) this.lost(new HeraldError('the event stream failed', 0, 'stream_error'));
    };
    return { close: () => es.close() };
  }

  private openFetch(url: string, headers: Record<string, string>, gen: number): Connection {
    const abort = new AbortController();
    let idle: ReturnType<typeof setTimeout> | undefined;
    const idleMs = this.client.idleTimeoutMs;
    const touch = () => {
      if (idleMs <= 0) return;
      if (idle) clearTimeout(idle);
      idle = setTimeout(() => {
        abort.abort();
        if (gen === this.generation) this.lost(new HeraldError(`no data for ${idleMs} ms`, 0, 'idle_timeout'));
      }, idleMs);
    };
    const run = async () => {
      touch();
      const resp = await this.client.fetcher(url, {
        headers,
        credentials: this.client.credentials,
        cache: 'no-store',
        signal: abort.signal,
      });
      if (!resp.ok) throw await errorFrom(resp);
      const type = resp.headers.get('content-type') ?? '';
      if (!type.startsWith('text/event-stream') || !resp.body) {
        throw new HeraldError(`not an event stream (${type || 'no content type'})`, resp.status, 'not_event_stream');
      }
      const parser = new SseParser({
        onMessage: (m) => {
          if (gen === this.generation) this.sseMessage(m.id, m.data);
        },
        onRetry: (ms) => {
          if (!this.fixedBase && ms > 0) this.backoff.baseMs = ms;
        },
      });
      const reader = resp.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (gen !== this.generation) return;
        if (done) break;
        touch();
        parser.feedBytes(value);
      }
      parser.end();
      throw new HeraldError('the server ended the stream', 0, 'stream_ended');
    };
    run()
      .catch((e) => {
        if (gen === this.generation && !abort.signal.aborted) this.lost(asError(e));
      })
      .finally(() => {
        if (idle) clearTimeout(idle);
      });
    return {
      close: () => {
        abort.abort();
        if (idle) clearTimeout(idle);
      },
    };
  }

  private sseMessage(id: string, data: string): void {
    let event: unknown;
    try {
      event = JSON.parse(data);
    } catch {
      if (id) this.lastEventId = id;
      this.options.onError?.(new HeraldError('an event is not JSON', 0, 'bad_event'));
      return;
    }
    this.message(id, event);
  }

  /** One event, whatever carried it: the SSE `id:` and `data:`, or a socket frame's. */
  private message(id: string, data: unknown): void {
    const before = this.lastEventId;
    if (id) this.lastEventId = id;
    const event = data as StreamEvent;
    if (!event || typeof event !== 'object' || typeof event.type !== 'string') return;
    let stop: HeraldError | undefined;
    switch (event.type) {
      case 'connected': {
        const connected = event as EventMap['connected'];
        this.connectionId = typeof connected.connectionId === 'string' ? connected.connectionId : undefined;
        this.connectedAt = Date.now();
        this.setState('open');
        if (Array.isArray(connected.channels)) this.reconcile(connected.channels);
        break;
      }
      case 'reset':
        this.options.onReset?.(event as ResetEvent);
        break;
      case 'disconnect': {
        // EventSource would come back after `retry:` whatever the server says: only the
        // client can honour `reconnect: false`.
        const cut = event as DisconnectEvent;
        this.disconnect = cut;
        this.options.onDisconnect?.(cut);
        if (cut.reconnect === false) {
          const reason = typeof cut.reason === 'string' ? cut.reason : 'disconnected';
          stop = new HeraldError(`the server ended the session (${reason})`, 0, reason);
        }
        break;
      }
      case 'subscribed': {
        const ch = (event as EventMap['subscribed']).channel;
        if (typeof ch === 'string' && !this.channels.includes(ch)) this.channels.push(ch);
        // From here its position is in the connection's ids.
        if (typeof ch === 'string') this.positions.delete(ch);
        break;
      }
      case 'unsubscribed': {
        const ch = (event as EventMap['unsubscribed']).channel;
        if (typeof ch === 'string') {
          this.removeChannel(ch);
          // The id before this notice was the last to name the channel.
          if (before) this.positions.set(ch, before);
        }
        break;
      }
      default:
        break;
    }
    this.options.onEvent?.(event);
    for (const key of [event.type, '*']) {
      const set = this.listeners.get(key);
      if (set) for (const l of [...set]) l(event);
    }
    if (stop) this.shutdown(stop);
    else if (event.type === 'token_expired' && this.state !== 'closed') this.renew();
  }

  /** The server ends this stream because its token expired: reconnect now (a fresh token
   * is asked for on the way), not after a backoff delay, since nothing failed. */
  private renew(): void {
    this.connection?.close();
    this.connection = undefined;
    this.setState('reconnecting', {
      delayMs: 0,
      error: new HeraldError('the token expired', 0, 'token_expired'),
    });
    void this.connect();
  }

  /** Joins and leaves made while this connection was being opened apply to it now; over
   * a socket, a channel with a kept position joins from there. */
  private reconcile(opened: string[]): void {
    const wanted = [...this.channels];
    const socket = this.connection?.socket;
    const apply = (method: 'POST' | 'DELETE', channel: string) => {
      if (method === 'POST' && socket) {
        this.subscribeOn(socket, channel).catch((e: unknown) => this.options.onError?.(asError(e)));
        return;
      }
      const base = `/api/connections/${encodeURIComponent(this.connectionId ?? '')}/channels`;
      const call =
        method === 'POST'
          ? this.client.request(method, base, { channel })
          : this.client.request(method, `${base}/${encodeURIComponent(channel)}`);
      call.catch((e: unknown) => this.options.onError?.(asError(e)));
    };
    for (const c of wanted) if (!opened.includes(c)) apply('POST', c);
    for (const c of opened) if (!wanted.includes(c)) apply('DELETE', c);
  }

  private removeChannel(channel: string): void {
    const i = this.channels.indexOf(channel);
    if (i >= 0 && this.channels.length > 1) this.channels.splice(i, 1);
  }

  /** The current connection ended or could not be made: retry, or give up if fatal. */
  private lost(error: Error): void {
    this.connection?.close();
    this.connection = undefined;
    this.generation++;
    if (error instanceof HeraldError && error.fatal) {
      this.shutdown(error);
      return;
    }
    this.options.onError?.(error);
    if (this.connectedAt > 0 && Date.now() - this.connectedAt >= this.backoff.healthyAfterMs) {
      this.backoff.reset();
    }
    this.connectedAt = 0;
    let delay = this.backoff.next();
    if (error instanceof HeraldError && error.retryAfterMs !== undefined) delay = Math.max(delay, error.retryAfterMs);
    this.setState('reconnecting', { delayMs: delay, error });
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.state !== 'closed') void this.connect();
    }, delay);
  }

  private shutdown(error: Error | undefined): void {
    if (this.state === 'closed') return;
    this.generation++;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.connection?.close();
    this.connection = undefined;
    this.error = error;
    if (error) this.options.onError?.(error);
    this.setState('closed', error ? { error } : {});
  }
}

function asError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new Error(String(e));
}

/** `last` as query parameters: `last=N` for every channel, `last=<channel>:N` for one. */
function lastParams(last: SubscribeOptions['last']): Array<[string, string]> {
  if (last === undefined) return [];
  if (typeof last === 'number') return [['last', String(last)]];
  return Object.entries(last).map(([channel, n]): [string, string] => ['last', `${channel}:${n}`]);
}
