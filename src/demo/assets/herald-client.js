// src/ai.ts
var AiStreams = class {
	streams = /* @__PURE__ */ new Map();
	/** Applies an event if it is an `ai_chat_chunk`; returns the stream it changed. */
	apply(event) {
		if (event.type !== "ai_chat_chunk") return void 0;
		const chunk = event;
		if (typeof chunk.streamId !== "string") return void 0;
		const text = typeof chunk.text === "string" ? chunk.text : "";
		let stream = this.streams.get(chunk.streamId);
		if (!stream) {
			stream = {
				streamId: chunk.streamId,
				channel: chunk.channel,
				text: "",
				done: false,
				chunks: 0
			};
			this.streams.set(chunk.streamId, stream);
		}
		stream.text = chunk.snapshot === true ? text : stream.text + text;
		stream.done = chunk.done === true;
		if (chunk.provider !== void 0) stream.provider = chunk.provider;
		stream.chunks += 1;
		return stream;
	}
	get(streamId) {
		return this.streams.get(streamId);
	}
	/** Every stream, in the order they started. */
	all() {
		return [...this.streams.values()];
	}
	/** Forgets a stream (or all of a channel's, after a `reset` of that channel). */
	delete(streamId) {
		this.streams.delete(streamId);
	}
	clearChannel(channel) {
		for (const [id, s] of this.streams) if (s.channel === channel) this.streams.delete(id);
	}
};
// src/backoff.ts
var DEFAULT_BASE_MS = 1e3;
var DEFAULT_CAP_MS = 3e4;
var DEFAULT_HEALTHY_AFTER_MS = 5e3;
/** The window's upper bound for `attempt` (0-based): `min(cap, base * 2^attempt)`. */
function backoffCeiling(attempt, baseMs = DEFAULT_BASE_MS, capMs = DEFAULT_CAP_MS) {
	if (!(attempt >= 0)) attempt = 0;
	return Math.min(capMs, baseMs * 2 ** attempt);
}
/** A full-jitter delay for `attempt` (0-based): uniform in [0, ceiling). */
function backoffDelay(attempt, baseMs = DEFAULT_BASE_MS, capMs = DEFAULT_CAP_MS, random = Math.random) {
	const r = Math.min(Math.max(random(), 0), 1);
	return Math.floor(r * backoffCeiling(attempt, baseMs, capMs));
}
/** The attempt counter of one subscription. */
var Backoff = class {
	attempt = 0;
	capMs;
	random;
	healthyAfterMs;
	baseMs;
	constructor(options = {}) {
		this.baseMs = options.baseMs ?? 1e3;
		this.capMs = options.capMs ?? 3e4;
		this.healthyAfterMs = options.healthyAfterMs ?? 5e3;
		this.random = options.random ?? Math.random;
	}
	/** The delay before the next attempt; counts the attempt. */
	next() {
		const delay = backoffDelay(this.attempt, this.baseMs, this.capMs, this.random);
		this.attempt += 1;
		return delay;
	}
	/** After a healthy connection: the next failure waits as little as the first one. */
	reset() {
		this.attempt = 0;
	}
};
// src/errors.ts
/** An error answer of Herald's API (`{"error":{"code","message"}}`) or of the network. */
var HeraldError = class extends Error {
	status;
	code;
	retryAfterMs;
	constructor(message, status, code, retryAfterMs) {
		super(message);
		this.status = status;
		this.code = code;
		this.retryAfterMs = retryAfterMs;
		this.name = "HeraldError";
	}
	/** Retrying cannot help: a bad request, a forbidden channel, an unknown endpoint. */
	get fatal() {
		return this.status >= 400 && this.status < 500 && ![
			401,
			408,
			425,
			429
		].includes(this.status);
	}
};
// src/sse.ts
/** An incremental SSE parser: feed it text or bytes as they arrive. */
var SseParser = class {
	handlers;
	buffer = "";
	/** The previous chunk ended with CR: a LF at the start of the next one ends nothing. */
	skipLeadingLf = false;
	firstChunk = true;
	data = "";
	hasData = false;
	eventType = "";
	lastEventId = "";
	decoder = null;
	constructor(handlers) {
		this.handlers = handlers;
	}
	/** The last event id seen (what a reconnect sends as `Last-Event-ID`). */
	get lastId() {
		return this.lastEventId;
	}
	/** Feeds raw bytes; UTF-8 characters split across chunks are decoded whole. */
	feedBytes(bytes) {
		this.decoder ??= new TextDecoder("utf-8");
		this.feed(this.decoder.decode(bytes, { stream: true }));
	}
	/** Feeds decoded text. */
	feed(chunk) {
		if (chunk.length === 0) return;
		if (this.firstChunk) {
			this.firstChunk = false;
			if (chunk.charCodeAt(0) === 65279) chunk = chunk.slice(1);
		}
		if (this.skipLeadingLf) {
			this.skipLeadingLf = false;
			if (chunk.charCodeAt(0) === 10) chunk = chunk.slice(1);
		}
		const text = this.buffer + chunk;
		let start = 0;
		for (;;) {
			const cr = text.indexOf("\r", start);
			const lf = text.indexOf("\n", start);
			let end;
			if (cr === -1 && lf === -1) break;
			if (cr === -1) end = lf;
			else if (lf === -1) end = cr;
			else end = Math.min(cr, lf);
			this.line(text.slice(start, end));
			if (text.charCodeAt(end) === 13) {
				if (end + 1 === text.length) {
					this.skipLeadingLf = true;
					start = end + 1;
					break;
				}
				if (text.charCodeAt(end + 1) === 10) {
					start = end + 2;
					continue;
				}
			}
			start = end + 1;
		}
		this.buffer = text.slice(start);
	}
	/** The stream ended: an event without its closing blank line is discarded. */
	end() {
		if (this.decoder) {
			const rest = this.decoder.decode();
			if (rest) this.feed(rest);
		}
		this.buffer = "";
		this.data = "";
		this.hasData = false;
		this.eventType = "";
	}
	line(line) {
		if (line.length === 0) {
			this.dispatch();
			return;
		}
		const colon = line.indexOf(":");
		if (colon === 0) {
			this.handlers.onComment?.(line.slice(1).replace(/^ /, ""));
			return;
		}
		let field;
		let value;
		if (colon === -1) {
			field = line;
			value = "";
		} else {
			field = line.slice(0, colon);
			value = line.slice(colon + 1);
			if (value.charCodeAt(0) === 32) value = value.slice(1);
		}
		switch (field) {
			case "event":
				this.eventType = value;
				break;
			case "data":
				this.data += value + "\n";
				this.hasData = true;
				break;
			case "id":
				if (!value.includes("\0")) this.lastEventId = value;
				break;
			case "retry": if (/^[0-9]+$/.test(value)) this.handlers.onRetry?.(Number.parseInt(value, 10));
		}
	}
	dispatch() {
		if (!this.hasData) {
			this.eventType = "";
			return;
		}
		const message = {
			event: this.eventType || "message",
			data: this.data.endsWith("\n") ? this.data.slice(0, -1) : this.data,
			id: this.lastEventId
		};
		this.data = "";
		this.hasData = false;
		this.eventType = "";
		this.handlers.onMessage(message);
	}
};
// src/websocket.ts
/** The HTTP status an error code carries on Herald's HTTP API, so that a refusal over a
* socket is as fatal (or not) as the same refusal of an SSE request. */
function statusOf(code) {
	if (/^(invalid_token|token_expired|invalid_api_key|invalid_ticket|unauthorized)$/.test(code)) return 401;
	if (/^(forbidden|banned|origin_not_allowed|hook_denied)$/.test(code)) return 403;
	if (/^(rate_limited|too_many_connections)$/.test(code)) return 429;
	if (/^(server_at_capacity|server_draining|engine_unavailable|auth_unavailable|hook_unavailable)$/.test(code)) return 503;
	if (/not_found|presence_disabled/.test(code)) return 404;
	if (/too_large/.test(code)) return 413;
	if (code === "subscribe_timeout") return 408;
	if (code === "internal_error") return 500;
	return 400;
}
/** An error frame's `error` as a `HeraldError`. */
function frameError(frame) {
	const code = frame.error?.code ?? "websocket_error";
	const retry = typeof frame.retryAfter === "number" ? frame.retryAfter * 1e3 : void 0;
	return new HeraldError(frame.error?.message ?? code, statusOf(code), code, retry);
}
/** Why a socket ended, from its close code and JSON reason (`{"code","retryMs"}`). */
function closeError(code, reason) {
	let why = {};
	try {
		why = JSON.parse(reason);
	} catch {}
	const name = why.code ?? (code === 1006 ? "websocket_lost" : "websocket_closed");
	return new HeraldError(`the socket closed (${code}${why.code ? ` ${why.code}` : ""})`, code === 1008 ? statusOf(name) : code === 1012 ? 503 : 0, name, typeof why.retryMs === "number" ? why.retryMs : void 0);
}
/** One open socket: its commands and their answers. */
var Socket = class {
	o;
	ws;
	pending = /* @__PURE__ */ new Map();
	nextId = 1;
	opened = false;
	done = false;
	idle;
	pinger;
	constructor(WS, o) {
		this.o = o;
		this.ws = o.headers ? new WS(o.url, [], { headers: o.headers }) : new WS(o.url);
		this.ws.onopen = () => {
			this.opened = true;
			this.touch();
			if (o.idleMs > 0) this.pinger = setInterval(() => void this.request("ping", {}).catch(() => {}), o.idleMs / 3);
			if (o.token !== void 0) this.request("auth", { token: o.token }).catch((e) => this.lost(e));
			const s = o.subscribe;
			const sub = { channels: s.channels };
			if (s.lastEventId) sub.lastEventId = s.lastEventId;
			if (s.filters?.length) sub.filters = s.filters;
			this.request("subscribe", sub).catch((e) => this.lost(e));
		};
		this.ws.onmessage = (ev) => this.frame(ev.data);
		this.ws.onerror = () => {};
		this.ws.onclose = (ev) => this.lost(closeError(ev.code, ev.reason));
		this.touch();
	}
	/** Sends a command; resolves to its `result`, rejects with its error frame. */
	request(type, fields) {
		if (this.done || this.ws.readyState !== 1) return Promise.reject(new HeraldError("the socket is not open", 0, "websocket_closed"));
		const id = this.nextId++;
		return new Promise((ok, fail) => {
			this.pending.set(id, {
				ok,
				fail
			});
			this.ws.send(JSON.stringify({
				type,
				id,
				...fields
			}));
		});
	}
	close() {
		this.end(new HeraldError("the socket was closed", 0, "websocket_closed"));
		try {
			this.ws.close(1e3);
		} catch {}
	}
	frame(data) {
		if (this.done) return;
		this.touch();
		let f;
		try {
			f = JSON.parse(String(data));
		} catch {
			return;
		}
		if (f.type === "reply" || f.type === "error") {
			const waiting = typeof f.id === "number" ? this.pending.get(f.id) : void 0;
			if (waiting) {
				this.pending.delete(f.id);
				if (f.type === "reply") waiting.ok(f.result);
				else waiting.fail(frameError(f));
			}
		} else if (typeof f.id === "string" && f.data !== void 0) this.o.onEvent(f.id, f.data);
	}
	touch() {
		const ms = this.o.idleMs;
		if (ms <= 0) return;
		if (this.idle) clearTimeout(this.idle);
		this.idle = setTimeout(() => {
			this.lost(new HeraldError(`no frame for ${ms} ms`, 0, "idle_timeout"));
			this.ws.close();
		}, ms);
	}
	lost(error) {
		if (this.done) return;
		const opened = this.opened;
		this.end(error);
		this.o.onLost(error, opened);
	}
	end(error) {
		this.done = true;
		if (this.idle) clearTimeout(this.idle);
		if (this.pinger) clearInterval(this.pinger);
		for (const p of this.pending.values()) p.fail(error);
		this.pending.clear();
	}
};
// src/client.ts
var DEFAULT_PUBLISH_RETRIES = 2;
/** Answers after which a publish may be retried: the network, timeouts, overload. */
function retryable(e) {
	return e.status === 0 || [
		408,
		429,
		502,
		503,
		504
	].includes(e.status);
}
/** A random idempotency key: a UUID where the platform has one. */
function newIdempotencyKey() {
	const c = globalThis.crypto;
	if (c?.randomUUID) return c.randomUUID();
	const bytes = /* @__PURE__ */ new Uint8Array(16);
	if (c?.getRandomValues) c.getRandomValues(bytes);
	else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
	return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
var DEFAULT_IDLE_TIMEOUT_MS = 75e3;
var HeraldClient = class {
	url;
	auth;
	backoff;
	idleTimeoutMs;
	transport;
	fetchImpl;
	eventSource;
	webSocket;
	constructor(options = {}) {
		this.url = (options.url ?? "").replace(/\/+$/, "");
		this.auth = options.auth ?? { mode: "none" };
		this.backoff = options.backoff ?? {};
		this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
		const f = options.fetch ?? globalThis.fetch;
		if (!f) throw new Error("no fetch: pass `fetch` in the options");
		this.fetchImpl = options.fetch ?? ((input, init) => f(input, init));
		this.eventSource = options.EventSource ?? globalThis.EventSource;
		this.webSocket = options.WebSocket ?? globalThis.WebSocket;
		this.transport = options.transport ?? "sse";
	}
	/** Opens a subscription to one or more channels. It connects at once and keeps
	* reconnecting until `close()`. */
	subscribe(channels, options = {}) {
		const list = Array.isArray(channels) ? channels : [channels];
		const sub = new Subscription(this, list, options);
		sub.start();
		return sub;
	}
	/** Publishes one event (`POST /api/publish`); resolves to its id. Retried on failures
	* that may hide a stored event, under one idempotency key (see `PublishOptions`). */
	publish(channel, type, payload = {}, options = {}) {
		const target = Array.isArray(channel) ? { channels: channel } : { channel };
		return this.publishRetried({
			...payload,
			...target,
			type
		}, options);
	}
	/** Publishes several events in order, all or none; resolves to their ids. Retried like
	* `publish`: the key covers each event by its place in the batch. */
	publishBatch(events, options = {}) {
		return this.publishRetried(events, options);
	}
	async publishRetried(body, options) {
		const headers = { "Idempotency-Key": options.idempotencyKey ?? newIdempotencyKey() };
		const retries = options.retries ?? DEFAULT_PUBLISH_RETRIES;
		const backoff = new Backoff(this.backoff);
		for (let attempt = 0;; attempt++) try {
			return await this.request("POST", "/api/publish", body, headers);
		} catch (e) {
			if (!(e instanceof HeraldError) || !retryable(e) || attempt >= retries) throw e;
			const delay = e.retryAfterMs ?? backoff.next();
			await new Promise((resolve) => setTimeout(resolve, delay));
		}
	}
	/** A page of a channel's history (`GET /api/channels/{channel}/history`), for whoever may
	* subscribe to it. */
	history(channel, query = {}) {
		const q = new URLSearchParams();
		if (query.limit !== void 0) q.set("limit", String(query.limit));
		if (query.after !== void 0) q.set("after", query.after);
		if (query.before !== void 0) q.set("before", query.before);
		if (query.order !== void 0) q.set("order", query.order);
		const tail = q.size > 0 ? `?${q.toString()}` : "";
		return this.request("GET", `/api/channels/${encodeURIComponent(channel)}/history${tail}`);
	}
	/** Who is in a channel now (`GET /api/channels/{channel}/presence`). */
	presence(channel) {
		return this.request("GET", `/api/channels/${encodeURIComponent(channel)}/presence`);
	}
	/** Whether a user is online anywhere. */
	userPresence(userId) {
		return this.request("GET", `/api/users/${encodeURIComponent(userId)}/presence`);
	}
	/** Sets this user's status (`away` or `online`) in every channel they are in. */
	setStatus(status) {
		return this.request("POST", "/api/presence", { status });
	}
	/** Subscribers and users of a channel, across every node. */
	channelInfo(channel) {
		return this.request("GET", `/api/channels/${encodeURIComponent(channel)}`);
	}
	/** A single-use ticket for `GET /api/events?ticket=` (needs a user token). */
	async ticket() {
		return (await this.request("POST", "/api/tickets")).ticket;
	}
	/** The URL of a stream on `channels`, with extra query parameters. */
	streamUrl(channels, extra = []) {
		const q = new URLSearchParams();
		for (const c of channels) q.append("channel", c);
		for (const [k, v] of extra) q.append(k, v);
		return `${this.url}/api/events?${q.toString()}`;
	}
	/** The `ws:`/`wss:` URL of `GET /api/ws` (relative to the page when `url` is unset). */
	socketUrl(extra = []) {
		const base = globalThis.location?.href;
		const u = new URL(`${this.url}/api/ws`, base);
		u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
		for (const [k, v] of extra) u.searchParams.append(k, v);
		return u.toString();
	}
	/** The headers that carry this client's credential (none for `none`/`cookie`). */
	async authHeaders() {
		switch (this.auth.mode) {
			case "ticket":
			case "header": return { Authorization: `Bearer ${await resolveToken(this.auth.token)}` };
			case "apiKey": return { "X-Api-Key": this.auth.key };
			default: return {};
		}
	}
	get credentials() {
		return this.auth.mode === "cookie" ? "include" : "same-origin";
	}
	/** One JSON call to Herald's API; throws `HeraldError` on an error answer. */
	async request(method, path, body, extra = {}) {
		const headers = {
			Accept: "application/json",
			...await this.authHeaders(),
			...extra
		};
		if (body !== void 0) headers["Content-Type"] = "application/json";
		let resp;
		try {
			resp = await this.fetchImpl(`${this.url}${path}`, {
				method,
				headers,
				credentials: this.credentials,
				body: body === void 0 ? void 0 : JSON.stringify(body)
			});
		} catch (e) {
			throw new HeraldError(`${method} ${path}: ${e.message}`, 0, "network_error");
		}
		if (!resp.ok) throw await errorFrom(resp);
		const text = await resp.text();
		return text ? JSON.parse(text) : {};
	}
	/** @internal */
	get fetcher() {
		return this.fetchImpl;
	}
	/** @internal */
	get eventSourceConstructor() {
		return this.eventSource;
	}
	/** @internal */
	get webSocketConstructor() {
		return this.webSocket;
	}
};
/** Mints a token for `userId` on a dev-mode server (`POST /api/dev/token`); refused
* (404) by a server with authentication configured. */
async function devToken(url, userId, userName, fetchImpl = (i, o) => fetch(i, o)) {
	const resp = await fetchImpl(`${url.replace(/\/+$/, "")}/api/dev/token`, {
		method: "POST",
		headers: {
			"Content-Type": "application/json",
			Accept: "application/json"
		},
		body: JSON.stringify({
			userId,
			userName
		})
	});
	if (!resp.ok) throw await errorFrom(resp);
	return (await resp.json()).token;
}
async function resolveToken(token) {
	return typeof token === "function" ? await token() : token;
}
async function errorFrom(resp) {
	let code = "http_error";
	let message = `HTTP ${resp.status}`;
	try {
		const body = await resp.json();
		if (body.error?.code) code = body.error.code;
		if (body.error?.message) message = body.error.message;
	} catch {}
	const retryAfter = Number.parseInt(resp.headers.get("retry-after") ?? "", 10);
	return new HeraldError(message, resp.status, code, Number.isFinite(retryAfter) ? retryAfter * 1e3 : void 0);
}
/** A live subscription: events in order, reconnecting and resuming until closed. */
var Subscription = class {
	client;
	options;
	/** The channels followed; updated by live joins and leaves, and used by reconnects. */
	channels;
	state = "connecting";
	/** The last SSE id received: where a reconnect resumes. */
	lastEventId;
	/** The server's id of the current connection (from `connected`), for live rooms. */
	connectionId;
	/** What closed the subscription, if an error did. */
	error;
	/** The server's last `disconnect` event, if the application cut the stream. */
	disconnect;
	backoff;
	fixedBase;
	listeners = /* @__PURE__ */ new Map();
	connection;
	timer;
	/** Bumped on every connect and on close; callbacks of an older connection are ignored. */
	generation = 0;
	connectedAt = 0;
	/** `auto`: a socket could not be opened, so this subscription stays on SSE. */
	socketFailed = false;
	/** Per channel not followed now, the last id that named it (kept when it was left, or
	* given to `join`): where a later `subscribe` on a socket resumes it. */
	positions = /* @__PURE__ */ new Map();
	constructor(client, channels, options) {
		this.client = client;
		this.options = options;
		this.channels = [...new Set(channels)];
		if (this.channels.length === 0) throw new Error("subscribe to at least one channel");
		this.lastEventId = options.lastEventId;
		const backoff = {
			...client.backoff,
			...options.backoff
		};
		this.fixedBase = backoff.baseMs !== void 0;
		this.backoff = new Backoff(backoff);
	}
	/** Failed attempts in a row. */
	get attempt() {
		return this.backoff.attempt;
	}
	on(type, listener) {
		let set = this.listeners.get(type);
		if (!set) {
			set = /* @__PURE__ */ new Set();
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
	async join(channel, options = {}) {
		if (this.state === "closed") throw new Error("the subscription is closed");
		if (options.lastEventId) this.positions.set(channel, options.lastEventId);
		const socket = this.connection?.socket;
		if (this.state === "open" && socket && !this.channels.includes(channel)) try {
			await this.subscribeOn(socket, channel);
		} catch (e) {
			if (!(e instanceof HeraldError && e.status === 0)) throw e;
		}
		else if (this.state === "open" && this.connectionId) try {
			await this.client.request("POST", `/api/connections/${encodeURIComponent(this.connectionId)}/channels`, { channel });
		} catch (e) {
			if (!(e instanceof HeraldError && e.status === 404)) throw e;
		}
		if (!this.channels.includes(channel)) this.channels.push(channel);
	}
	/** Subscribes the open socket to `channel`, resuming it from the position this
	* subscription keeps for it, if any. */
	async subscribeOn(socket, channel) {
		const from = this.positions.get(channel);
		await socket.request("subscribe", from ? {
			channels: [channel],
			positions: { [channel]: from }
		} : { channels: [channel] });
	}
	/** Removes a channel from this connection; reconnects no longer include it. */
	async leave(channel) {
		if (this.state === "closed") throw new Error("the subscription is closed");
		if (this.channels.length === 1 && this.channels[0] === channel) throw new Error("cannot leave the last channel: close the subscription instead");
		if (this.state === "open" && this.connectionId) try {
			await this.client.request("DELETE", `/api/connections/${encodeURIComponent(this.connectionId)}/channels/${encodeURIComponent(channel)}`);
		} catch (e) {
			if (!(e instanceof HeraldError && e.status === 404)) throw e;
		}
		this.removeChannel(channel);
	}
	/** Publishes one event: over this subscription's socket while it is an open WebSocket
	* (the reply carries the id), over `POST /api/publish` (`HeraldClient.publish`)
	* otherwise, or when the socket closes before the reply, under the same idempotency key. */
	async publish(channel, type, payload = {}, options = {}) {
		const socket = this.connection?.socket;
		const idempotencyKey = options.idempotencyKey ?? newIdempotencyKey();
		if (socket && this.state === "open") {
			const target = Array.isArray(channel) ? { channels: channel } : { channel };
			try {
				return await socket.request("publish", {
					event: {
						...payload,
						...target,
						type
					},
					idempotencyKey
				});
			} catch (e) {
				if (!(e instanceof HeraldError && e.status === 0)) throw e;
			}
		}
		return this.client.publish(channel, type, payload, {
			...options,
			idempotencyKey
		});
	}
	/** Closes the stream for good. */
	close() {
		this.shutdown(void 0);
	}
	/** @internal */
	start() {
		this.connect();
	}
	setState(state, info = {}) {
		this.state = state;
		this.options.onStateChange?.(state, {
			attempt: this.backoff.attempt,
			...info
		});
	}
	/** The transport of the next connect. */
	transport() {
		let wanted = this.options.transport ?? this.client.transport;
		if (wanted === "auto") wanted = this.socketFailed || !this.client.webSocketConstructor ? "sse" : "websocket";
		if (wanted !== "sse") return wanted;
		const mode = this.client.auth.mode;
		if (mode === "header" || mode === "apiKey" || !this.client.eventSourceConstructor) return "fetch";
		return "eventsource";
	}
	async connect() {
		const gen = ++this.generation;
		this.connectionId = void 0;
		this.connectedAt = 0;
		const last = lastParams(this.options.last);
		const extra = [...(this.options.filters ?? []).map((f) => ["filter", f]), ...last];
		try {
			const transport = this.transport();
			if (transport === "websocket") {
				const WS = this.client.webSocketConstructor;
				if (!WS) throw new HeraldError("no WebSocket here: pass `WebSocket` in the options", 0, "no_websocket");
				const auth = this.client.auth;
				const query = [...last];
				if (auth.mode === "ticket") query.push(["ticket", await this.client.ticket()]);
				const token = auth.mode === "header" ? await resolveToken(auth.token) : void 0;
				const headers = auth.mode === "apiKey" ? { "X-Api-Key": auth.key } : void 0;
				if (gen !== this.generation) return;
				this.connection = this.openSocket(WS, this.client.socketUrl(query), token, headers, gen);
			} else if (transport === "eventsource") {
				const ES = this.client.eventSourceConstructor;
				if (!ES) throw new HeraldError("no EventSource here: use transport `fetch`", 0, "no_event_source");
				if (this.client.auth.mode === "ticket") extra.push(["ticket", await this.client.ticket()]);
				if (this.lastEventId) extra.push(["lastEventId", this.lastEventId]);
				if (gen !== this.generation) return;
				this.connection = this.openEventSource(ES, this.client.streamUrl(this.channels, extra), gen);
			} else {
				const headers = {
					Accept: "text/event-stream",
					...await this.client.authHeaders()
				};
				if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
				if (gen !== this.generation) return;
				this.connection = this.openFetch(this.client.streamUrl(this.channels, extra), headers, gen);
			}
		} catch (e) {
			if (gen === this.generation) this.lost(asError(e));
		}
	}
	openSocket(WS, url, token, headers, gen) {
		const auto = (this.options.transport ?? this.client.transport) === "auto";
		const socket = new Socket(WS, {
			url,
			token,
			headers,
			subscribe: {
				channels: this.openingChannels(),
				lastEventId: this.lastEventId,
				filters: this.options.filters
			},
			idleMs: this.client.idleTimeoutMs,
			onEvent: (id, event) => {
				if (gen === this.generation) this.message(id, event);
			},
			onLost: (error, opened) => {
				if (gen !== this.generation) return;
				if (auto && !opened) {
					this.socketFailed = true;
					this.connection = void 0;
					this.connect();
					return;
				}
				this.lost(error);
			}
		});
		return {
			close: () => socket.close(),
			socket
		};
	}
	/** The channels a socket's first `subscribe` names: all but those waiting to resume
	* from a kept position (unless that would leave none). */
	openingChannels() {
		const fresh = this.channels.filter((c) => !this.positions.has(c));
		return fresh.length > 0 ? fresh : [...this.channels];
	}
	openEventSource(ES, url, gen) {
		const es = new ES(url, { withCredentials: this.client.auth.mode === "cookie" });
		es.onmessage = (ev) => {
			if (gen === this.generation) this.sseMessage(ev.lastEventId, ev.data);
		};
		es.onerror = () => {
			es.close();
			if (gen === this.generation) this.lost(new HeraldError("the event stream failed", 0, "stream_error"));
		};
		return { close: () => es.close() };
	}
	openFetch(url, headers, gen) {
		const abort = new AbortController();
		let idle;
		const idleMs = this.client.idleTimeoutMs;
		const touch = () => {
			if (idleMs <= 0) return;
			if (idle) clearTimeout(idle);
			idle = setTimeout(() => {
				abort.abort();
				if (gen === this.generation) this.lost(new HeraldError(`no data for ${idleMs} ms`, 0, "idle_timeout"));
			}, idleMs);
		};
		const run = async () => {
			touch();
			const resp = await this.client.fetcher(url, {
				headers,
				credentials: this.client.credentials,
				cache: "no-store",
				signal: abort.signal
			});
			if (!resp.ok) throw await errorFrom(resp);
			const type = resp.headers.get("content-type") ?? "";
			if (!type.startsWith("text/event-stream") || !resp.body) throw new HeraldError(`not an event stream (${type || "no content type"})`, resp.status, "not_event_stream");
			const parser = new SseParser({
				onMessage: (m) => {
					if (gen === this.generation) this.sseMessage(m.id, m.data);
				},
				onRetry: (ms) => {
					if (!this.fixedBase && ms > 0) this.backoff.baseMs = ms;
				}
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
			throw new HeraldError("the server ended the stream", 0, "stream_ended");
		};
		run().catch((e) => {
			if (gen === this.generation && !abort.signal.aborted) this.lost(asError(e));
		}).finally(() => {
			if (idle) clearTimeout(idle);
		});
		return { close: () => {
			abort.abort();
			if (idle) clearTimeout(idle);
		} };
	}
	sseMessage(id, data) {
		let event;
		try {
			event = JSON.parse(data);
		} catch {
			if (id) this.lastEventId = id;
			this.options.onError?.(new HeraldError("an event is not JSON", 0, "bad_event"));
			return;
		}
		this.message(id, event);
	}
	/** One event, whatever carried it: the SSE `id:` and `data:`, or a socket frame's. */
	message(id, data) {
		const before = this.lastEventId;
		if (id) this.lastEventId = id;
		const event = data;
		if (!event || typeof event !== "object" || typeof event.type !== "string") return;
		let stop;
		switch (event.type) {
			case "connected": {
				const connected = event;
				this.connectionId = typeof connected.connectionId === "string" ? connected.connectionId : void 0;
				this.connectedAt = Date.now();
				this.setState("open");
				if (Array.isArray(connected.channels)) this.reconcile(connected.channels);
				break;
			}
			case "reset":
				this.options.onReset?.(event);
				break;
			case "disconnect": {
				const cut = event;
				this.disconnect = cut;
				this.options.onDisconnect?.(cut);
				if (cut.reconnect === false) {
					const reason = typeof cut.reason === "string" ? cut.reason : "disconnected";
					stop = new HeraldError(`the server ended the session (${reason})`, 0, reason);
				}
				break;
			}
			case "subscribed": {
				const ch = event.channel;
				if (typeof ch === "string" && !this.channels.includes(ch)) this.channels.push(ch);
				if (typeof ch === "string") this.positions.delete(ch);
				break;
			}
			case "unsubscribed": {
				const ch = event.channel;
				if (typeof ch === "string") {
					this.removeChannel(ch);
					if (before) this.positions.set(ch, before);
				}
				break;
			}
		}
		this.options.onEvent?.(event);
		for (const key of [event.type, "*"]) {
			const set = this.listeners.get(key);
			if (set) for (const l of [...set]) l(event);
		}
		if (stop) this.shutdown(stop);
		else if (event.type === "token_expired" && this.state !== "closed") this.renew();
	}
	/** The server ends this stream because its token expired: reconnect now (a fresh token
	* is asked for on the way), not after a backoff delay, since nothing failed. */
	renew() {
		this.connection?.close();
		this.connection = void 0;
		this.setState("reconnecting", {
			delayMs: 0,
			error: new HeraldError("the token expired", 0, "token_expired")
		});
		this.connect();
	}
	/** Joins and leaves made while this connection was being opened apply to it now; over
	* a socket, a channel with a kept position joins from there. */
	reconcile(opened) {
		const wanted = [...this.channels];
		const socket = this.connection?.socket;
		const apply = (method, channel) => {
			if (method === "POST" && socket) {
				this.subscribeOn(socket, channel).catch((e) => this.options.onError?.(asError(e)));
				return;
			}
			const base = `/api/connections/${encodeURIComponent(this.connectionId ?? "")}/channels`;
			(method === "POST" ? this.client.request(method, base, { channel }) : this.client.request(method, `${base}/${encodeURIComponent(channel)}`)).catch((e) => this.options.onError?.(asError(e)));
		};
		for (const c of wanted) if (!opened.includes(c)) apply("POST", c);
		for (const c of opened) if (!wanted.includes(c)) apply("DELETE", c);
	}
	removeChannel(channel) {
		const i = this.channels.indexOf(channel);
		if (i >= 0 && this.channels.length > 1) this.channels.splice(i, 1);
	}
	/** The current connection ended or could not be made: retry, or give up if fatal. */
	lost(error) {
		this.connection?.close();
		this.connection = void 0;
		this.generation++;
		if (error instanceof HeraldError && error.fatal) {
			this.shutdown(error);
			return;
		}
		this.options.onError?.(error);
		if (this.connectedAt > 0 && Date.now() - this.connectedAt >= this.backoff.healthyAfterMs) this.backoff.reset();
		this.connectedAt = 0;
		let delay = this.backoff.next();
		if (error instanceof HeraldError && error.retryAfterMs !== void 0) delay = Math.max(delay, error.retryAfterMs);
		this.setState("reconnecting", {
			delayMs: delay,
			error
		});
		this.timer = setTimeout(() => {
			this.timer = void 0;
			if (this.state !== "closed") this.connect();
		}, delay);
	}
	shutdown(error) {
		if (this.state === "closed") return;
		this.generation++;
		if (this.timer) clearTimeout(this.timer);
		this.timer = void 0;
		this.connection?.close();
		this.connection = void 0;
		this.error = error;
		if (error) this.options.onError?.(error);
		this.setState("closed", error ? { error } : {});
	}
};
function asError(e) {
	if (e instanceof Error) return e;
	return new Error(String(e));
}
/** `last` as query parameters: `last=N` for every channel, `last=<channel>:N` for one. */
function lastParams(last) {
	if (last === void 0) return [];
	if (typeof last === "number") return [["last", String(last)]];
	return Object.entries(last).map(([channel, n]) => ["last", `${channel}:${n}`]);
}
// src/events.ts
/** Narrows an event to a catalogue type: `if (is(e, 'chat')) e.content`. */
function is(event, type) {
	return event.type === type;
}
// src/presence.ts
var PresenceTracker = class {
	client;
	channel;
	onChange;
	/** userId → the user, online or away. */
	users = /* @__PURE__ */ new Map();
	touched = null;
	stop = [];
	constructor(client, subscription, channel, onChange = () => {}) {
		this.client = client;
		this.channel = channel;
		this.onChange = onChange;
		this.stop.push(subscription.on("connected", () => void this.refresh()), subscription.on("reset", (e) => {
			if (e.channel === channel) this.refresh();
		}), subscription.on("presence", (e) => this.apply(e)));
		if (subscription.state === "open") this.refresh();
	}
	/** The users, sorted by name. */
	list() {
		return [...this.users.values()].sort((a, b) => (a.userName ?? a.userId).localeCompare(b.userName ?? b.userId));
	}
	/** Applies a `presence` event of this channel. */
	apply(event) {
		const e = event;
		if (e.type !== "presence" || e.channel !== this.channel || typeof e.userId !== "string") return;
		this.touched?.add(e.userId);
		if (e.status === "offline") this.users.delete(e.userId);
		else this.users.set(e.userId, {
			userId: e.userId,
			userName: e.userName,
			status: e.status
		});
		this.onChange(this.list());
	}
	/** Fetches the server's list and merges it under the events seen meanwhile. */
	async refresh() {
		const touched = /* @__PURE__ */ new Set();
		this.touched = touched;
		try {
			const { users } = await this.client.presence(this.channel);
			if (this.touched !== touched) return;
			for (const id of [...this.users.keys()]) if (!touched.has(id) && !users.some((u) => u.userId === id)) this.users.delete(id);
			for (const u of users) if (!touched.has(u.userId)) this.users.set(u.userId, u);
			this.onChange(this.list());
		} catch {} finally {
			if (this.touched === touched) this.touched = null;
		}
	}
	/** Stops following the subscription. */
	close() {
		for (const s of this.stop.splice(0)) s();
	}
};
export { AiStreams, Backoff, DEFAULT_BASE_MS, DEFAULT_CAP_MS, DEFAULT_HEALTHY_AFTER_MS, HeraldClient, HeraldError, PresenceTracker, SseParser, Subscription, backoffCeiling, backoffDelay, devToken, is, newIdempotencyKey };
