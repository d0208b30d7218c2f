// A small SSE server on a real socket (node:http), speaking the parts of Herald's HTTP API
// the client uses: streams with `connected`, ids, replay after `Last-Event-ID` or
// `?lastEventId=`, tickets, publish, live rooms and presence. Tests drive it (publish, cut
// every stream, disconnect them as the application would, refuse the next requests) and
// read what the client sent.

import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StreamRequest {
  url: URL;
  headers: http.IncomingHttpHeaders;
  channels: string[];
  lastEventId: string | undefined;
  ticket: string | undefined;
  connectionId: string;
}

interface Stream {
  res: http.ServerResponse;
  connectionId: string;
  channels: string[];
}

export interface Stored {
  seq: number;
  channel: string;
  json: Record<string, unknown>;
}

export class TestServer {
  readonly streams = new Set<Stream>();
  readonly streamRequests: StreamRequest[] = [];
  readonly requests: Array<{ method: string; path: string; headers: http.IncomingHttpHeaders; body: string }> = [];
  readonly tickets = new Set<string>();
  readonly log: Stored[] = [];
  /** Bearer token streams and tickets require; unset: no auth. */
  token: string | undefined;
  /** `retry:` sent at the start of each stream. */
  retryMs: number | undefined;
  /** Answers for the next stream requests, used up in order. */
  refusals: Array<{ status: number; code: string; retryAfter?: number }> = [];
  presence: Array<{ userId: string; userName?: string; status: string }> = [];
  /** While set, streams are answered only once it resolves. */
  hold: Promise<void> | undefined;
  /** Send a `reset` for this channel on the next connect. */
  resetNext: string | undefined;
  /** The next publishes are stored, but answered `503` as if the answer were lost. */
  lostAnswers = 0;
  /** Idempotency keys seen, with the id of the event each published. */
  readonly keys = new Map<string, string>();
  private server: http.Server;
  private nextConn = 1;
  url = '';

  constructor() {
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.cut();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Publishes an event on `channel` to the log and to every stream following it. */
  publish(channel: string, json: Record<string, unknown>): Stored {
    const stored: Stored = { seq: this.log.length + 1, channel, json: { ...json, channel, id: `ev${this.log.length + 1}` } };
    this.log.push(stored);
    for (const s of this.streams) if (s.channels.includes(channel)) this.write(s.res, stored);
    return stored;
  }

  /** Sends a raw text chunk to every open stream (to test framing). */
  raw(text: string): void {
    for (const s of this.streams) s.res.write(text);
  }

  /** Drops every open stream's socket, as a crashed server or a broken network would. */
  cut(): void {
    for (const s of this.streams) s.res.socket?.destroy();
    this.streams.clear();
  }

  /** Ends every open stream as Herald's `POST /api/disconnect` does: a last `disconnect`
   * event (with the stream's current id), then the end of the response. */
  disconnect(reconnect: boolean, reason = 'disconnected'): void {
    const notice = JSON.stringify({ type: 'disconnect', reason, reconnect });
    for (const s of this.streams) s.res.end(`id: s${this.log.length}\ndata: ${notice}\n\n`);
    this.streams.clear();
  }

  openStreams(): number {
    return this.streams.size;
  }

  private write(res: http.ServerResponse, e: Stored): void {
    res.write(`id: s${e.seq}\ndata: ${JSON.stringify(e.json)}\n\n`);
  }

  private bearer(req: http.IncomingMessage): boolean {
    return this.token === undefined || req.headers.authorization === `Bearer ${this.token}`;
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private error(res: http.ServerResponse, status: number, code: string, headers: Record<string, string> = {}): void {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify({ error: { code, message: `refused: ${code}` } }));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', this.url);
    // For the tests that run in a simulated browser page of another origin.
    res.setHeader('access-control-allow-origin', '*');
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-headers': 'authorization, content-type, idempotency-key, last-event-id, x-api-key',
        'access-control-allow-methods': 'GET, POST, DELETE',
      });
      res.end();
      return;
    }
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      this.requests.push({ method: req.method ?? '', path: url.pathname, headers: req.headers, body });
      this.route(req, res, url, body);
    });
  }

  private route(req: http.IncomingMessage, res: http.ServerResponse, url: URL, body: string): void {
    const path = url.pathname;
    if (req.method === 'GET' && path === '/api/events') {
      if (this.hold) {
        void this.hold.then(() => this.stream(req, res, url));
        return;
      }
      return this.stream(req, res, url);
    }
    if (req.method === 'POST' && path === '/api/tickets') {
      if (!this.bearer(req) || this.token === undefined) return this.error(res, 401, 'unauthorized');
      const ticket = randomBytes(16).toString('hex');
      this.tickets.add(ticket);
      return this.json(res, 201, { ticket, expiresIn: 30 });
    }
    if (req.method === 'POST' && path === '/api/publish') {
      if (!this.bearer(req)) return this.error(res, 401, 'unauthorized');
      const ev = JSON.parse(body) as Record<string, unknown>;
      if (typeof ev.channel !== 'string') return this.error(res, 400, 'missing_channel');
      const key = req.headers['idempotency-key'];
      const seen = typeof key === 'string' ? this.keys.get(key) : undefined;
      const id = seen ?? (this.publish(ev.channel, ev).json.id as string);
      if (typeof key === 'string') this.keys.set(key, id);
      if (this.lostAnswers > 0) {
        this.lostAnswers -= 1;
        return this.error(res, 503, 'engine_unavailable');
      }
      return this.json(res, 200, { id });
    }
    const join = /^\/api\/connections\/([^/]+)\/channels(?:\/([^/]+))?$/.exec(path);
    if (join) {
      const conn = decodeURIComponent(join[1] ?? '');
      const stream = [...this.streams].find((s) => s.connectionId === conn);
      if (!stream) return this.error(res, 404, 'connection_not_found');
      const channel = req.method === 'POST' ? (JSON.parse(body) as { channel: string }).channel : decodeURIComponent(join[2] ?? '');
      if (req.method === 'POST') stream.channels.push(channel);
      else stream.channels = stream.channels.filter((c) => c !== channel);
      const type = req.method === 'POST' ? 'subscribed' : 'unsubscribed';
      stream.res.write(`data: ${JSON.stringify({ type, channel })}\n\n`);
      return this.json(res, 200, { connectionId: conn, channel });
    }
    const presence = /^\/api\/channels\/([^/]+)\/presence$/.exec(path);
    if (req.method === 'GET' && presence) {
      return this.json(res, 200, { channel: decodeURIComponent(presence[1] ?? ''), users: this.presence });
    }
    this.error(res, 404, 'not_found');
  }

  private stream(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    const channels = url.searchParams.getAll('channel');
    const header = req.headers['last-event-id'];
    const lastEventId = (typeof header === 'string' && header) || url.searchParams.get('lastEventId') || undefined;
    const ticket = url.searchParams.get('ticket') ?? undefined;
    const connectionId = `c${this.nextConn++}`;
    this.streamRequests.push({ url, headers: req.headers, channels, lastEventId, ticket, connectionId });
    const refusal = this.refusals.shift();
    if (refusal) {
      const headers: Record<string, string> = refusal.retryAfter ? { 'retry-after': String(refusal.retryAfter) } : {};
      return this.error(res, refusal.status, refusal.code, headers);
    }
    if (this.token !== undefined) {
      const byTicket = ticket !== undefined && this.tickets.delete(ticket);
      if (!byTicket && !this.bearer(req)) return this.error(res, 401, 'unauthorized');
    }
    if (channels.length === 0) return this.error(res, 400, 'no_channel');
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    if (this.retryMs !== undefined) res.write(`retry: ${this.retryMs}\n\n`);
    const head = `s${this.log.length}`;
    res.write(`id: ${head}\ndata: ${JSON.stringify({ type: 'connected', connectionId, nodeId: 'test', channels })}\n\n`);
    if (this.resetNext) {
      res.write(`id: ${head}\ndata: ${JSON.stringify({ type: 'reset', channel: this.resetNext, reason: 'history_expired' })}\n\n`);
      this.resetNext = undefined;
    }
    const after = lastEventId ? Number.parseInt(lastEventId.slice(1), 10) : this.log.length;
    for (const e of this.log.slice(Number.isFinite(after) ? after : this.log.length)) {
      if (channels.includes(e.channel)) this.write(res, e);
    }
    const stream: Stream = { res, connectionId, channels };
    this.streams.add(stream);
    res.on('close', () => this.streams.delete(stream));
  }
}

/** Waits until `cond()` holds, checking every few milliseconds, or fails after `ms`. */
export async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
