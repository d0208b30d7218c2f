// Herald's WebSocket protocol (docs/websocket.md) as the client speaks it: one socket per
// subscription, JSON text frames, commands with request ids and their answers, and the close
// codes turned into the same `HeraldError`s an SSE stream's failures become. The reconnect
// loop stays in `Subscription`: this module only opens a socket and reports what it carries.

import { HeraldError } from './errors.js';

/** The subset of the WebSocket constructor the client uses: the platform's `WebSocket`, or
 * the `ws` package's in Node (whose third argument carries the API key header). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: unknown }) => any) | null;
  onerror: ((ev: any) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers?: Record<string, string> },
) => WebSocketLike;

/** The HTTP status an error code carries on Herald's HTTP API, so that a refusal over a
 * socket is as fatal (or not) as the same refusal of an SSE request. */
function statusOf(code: string): number {
  if (/^(invalid_token|token_expired|invalid_api_key|invalid_ticket|unauthorized)$/.test(code)) return 401;
  if (/^(forbidden|banned|origin_not_allowed|hook_denied)$/.test(code)) return 403;
  if (/^(rate_limited|too_many_connections)$/.test(code)) return 429;
  if (/^(server_at_capacity|server_draining|engine_unavailable|auth_unavailable|hook_unavailable)$/.test(code)) return 503;
  if (/not_found|presence_disabled/.test(code)) return 404;
  if (/too_large/.test(code)) return 413;
  if (code === 'subscribe_timeout') return 408;
  if (code === 'internal_error') return 500;
  return 400;
}

/** An error frame's `error` as a `HeraldError`. */
function frameError(frame: { error?: { code?: string; message?: string }; retryAfter?: number }): HeraldError {
  const code = frame.error?.code ?? 'websocket_error';
  const retry = typeof frame.retryAfter === 'number' ? frame.retryAfter * 1000 : undefined;
  return new HeraldError(frame.error?.message ?? code, statusOf(code), code, retry);
}

/** Why a socket ended, from its close code and JSON reason (`{"code","retryMs"}`). */
function closeError(code: number, reason: string): HeraldError {
  let why: { code?: string; retryMs?: number } = {};
  try {
    why = JSON.parse(reason) as typeof why;
  } catch {
    // No reason, or not Herald's.
  }
  const name = why.code ?? (code === 1006 ? 'websocket_lost' : 'websocket_closed');
  const message = `the socket closed (${code}${why.code ? ` ${why.code}` : ''})`;
  // 1008 carries the refusal's code; every other close is a cut to recover from.
  const status = code === 1008 ? statusOf(name) : code === 1012 ? 503 : 0;
  return new HeraldError(message, status, name, typeof why.retryMs === 'number' ? why.retryMs : undefined);
}

export interface SocketOpen {
  url: string;
  /** Sent as the first message (`auth`), for a token the browser cannot put in a header. */
  token?: string;
  /** Upgrade headers, for constructors that take them (the `ws` package). */
  headers?: Record<string, string>;
  /** The first `subscribe` command, without `type` and `id`. */
  subscribe: { channels: string[]; lastEventId?: string; filters?: string[] };
  /** Send `ping` and give up on a socket with no frame for this long; 0 disables. */
  idleMs: number;
  onEvent(id: string, event: unknown): void;
  /** The socket ended or failed. `opened` is false when it never opened (the upgrade failed). */
  onLost(error: HeraldError, opened: boolean): void;
}

/** One open socket: its commands and their answers. */
export class Socket {
  private readonly ws: WebSocketLike;
  private readonly pending = new Map<number, { ok(v: unknown): void; fail(e: Error): void }>();
  private nextId = 1;
  private opened = false;
  private done = false;
  private idle: ReturnType<typeof setTimeout> | undefined;
  private pinger: ReturnType<typeof setInterval> | undefined;

  constructor(
    WS: WebSocketConstructor,
    private readonly o: SocketOpen,
  ) {
    this.ws = o.headers ? new WS(o.url, [], { headers: o.headers }) : new WS(o.url);
    this.ws.onopen = () => {
      this.opened = true;
      this.touch();
      if (o.idleMs > 0) this.pinger = setInterval(() => void this.request('ping', {}).catch(() => {}), o.idleMs / 3);
      // Commands are answered in order: a refused `auth` fails before `subscribe` runs.
      if (o.token !== undefined) this.request('auth', { token: o.token }).catch((e) => this.lost(e as HeraldError));
      const s = o.subscribe;
      const sub: Record<string, unknown> = { channels: s.channels };
      if (s.lastEventId) sub.lastEventId = s.lastEventId;
      if (s.filters?.length) sub.filters = s.filters;
      this.request('subscribe', sub).catch((e) => this.lost(e as HeraldError));
    };
    this.ws.onmessage = (ev) => this.frame(ev.data);
    this.ws.onerror = () => {};
    this.ws.onclose = (ev) => this.lost(closeError(ev.code, ev.reason));
    // An upgrade that hangs counts as silence too.
    this.touch();
  }

  /** Sends a command; resolves to its `result`, rejects with its error frame. */
  request<T = unknown>(type: string, fields: Record<string, unknown>): Promise<T> {
    if (this.done || this.ws.readyState !== 1) {
      return Promise.reject(new HeraldError('the socket is not open', 0, 'websocket_closed'));
    }
    const id = this.nextId++;
    return new Promise<T>((ok, fail) => {
      this.pending.set(id, { ok: ok as (v: unknown) => void, fail });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  close(): void {
    this.end(new HeraldError('the socket was closed', 0, 'websocket_closed'));
    try {
      this.ws.close(1000);
    } catch {
      // Still connecting in a runtime that refuses to close then.
    }
  }

  private frame(data: unknown): void {
    if (this.done) return;
    this.touch();
    let f: { id?: unknown; type?: string; data?: unknown; result?: unknown; error?: { code?: string } };
    try {
      f = JSON.parse(String(data)) as typeof f;
    } catch {
      return;
    }
    if (f.type === 'reply' || f.type === 'error') {
      const waiting = typeof f.id === 'number' ? this.pending.get(f.id) : undefined;
      if (waiting) {
        this.pending.delete(f.id as number);
        if (f.type === 'reply') waiting.ok(f.result);
        else waiting.fail(frameError(f));
      }
    } else if (typeof f.id === 'string' && f.data !== undefined) {
      this.o.onEvent(f.id, f.data);
    }
  }

  private touch(): void {
    const ms = this.o.idleMs;
    if (ms <= 0) return;
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      this.lost(new HeraldError(`no frame for ${ms} ms`, 0, 'idle_timeout'));
      this.ws.close();
    }, ms);
  }

  private lost(error: HeraldError): void {
    if (this.done) return;
    const opened = this.opened;
    this.end(error);
    this.o.onLost(error, opened);
  }

  private end(error: Error): void {
    this.done = true;
    if (this.idle) clearTimeout(this.idle);
    if (this.pinger) clearInterval(this.pinger);
    for (const p of this.pending.values()) p.fail(error);
    this.pending.clear();
  }
}
