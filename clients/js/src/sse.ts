// The Server-Sent Events wire format, parsed incrementally as the WHATWG HTML standard
// says (section "Interpreting an event stream"). Used by the fetch transport, which cannot
// lean on the browser's EventSource. Chunks may split the stream anywhere: inside a line,
// between a CR and its LF, or inside a multi-byte UTF-8 character.

/** One dispatched event. */
export interface SseMessage {
  /** The `event:` field, `message` when absent. */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The last event id seen on the stream so far (the `id:` field persists). */
  id: string;
}

export interface SseHandlers {
  onMessage(message: SseMessage): void;
  /** A `retry:` field: the server's reconnection delay, in milliseconds. */
  onRetry?(ms: number): void;
  /** A comment line (`: heartbeat`), without the colon. */
  onComment?(text: string): void;
}

/** An incremental SSE parser: feed it text or bytes as they arrive. */
export class SseParser {
  private buffer = '';
  /** The previous chunk ended with CR: a LF at the start of the next one ends nothing. */
  private skipLeadingLf = false;
  private firstChunk = true;
  private data = '';
  private hasData = false;
  private eventType = '';
  private lastEventId = '';
  private decoder: TextDecoder | null = null;

  constructor(private readonly handlers: SseHandlers) {}

  /** The last event id seen (what a reconnect sends as `Last-Event-ID`). */
  get lastId(): string {
    return this.lastEventId;
  }

  /** Feeds raw bytes; UTF-8 characters split across chunks are decoded whole. */
  feedBytes(bytes: Uint8Array): void {
    this.decoder ??= new TextDecoder('utf-8');
    this.feed(this.decoder.decode(bytes, { stream: true }));
  }

  /** Feeds decoded text. */
  feed(chunk: string): void {
    if (chunk.length === 0) return;
    if (this.firstChunk) {
      this.firstChunk = false;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    if (this.skipLeadingLf) {
      this.skipLeadingLf = false;
      if (chunk.charCodeAt(0) === 0x0a) chunk = chunk.slice(1);
    }
    const text = this.buffer + chunk;
    let start = 0;
    for (;;) {
      const cr = text.indexOf('\r', start);
      const lf = text.indexOf('\n', start);
      let end: number;
      if (cr === -1 && lf === -1) break;
      if (cr === -1) end = lf;
      else if (lf === -1) end = cr;
      else end = Math.min(cr, lf);
      this.line(text.slice(start, end));
      if (text.charCodeAt(end) === 0x0d) {
        if (end + 1 === text.length) {
          this.skipLeadingLf = true;
          start = end + 1;
          break;
        }
        if (text.charCodeAt(end + 1) === 0x0a) {
          start = end + 2;
          continue;
        }
      }
      start = end + 1;
    }
    this.buffer = text.slice(start);
  }

  /** The stream ended: an event without its closing blank line is discarded. */
  end(): void {
    if (this.decoder) {
      const rest = this.decoder.decode();
      if (rest) this.feed(rest);
    }
    this.buffer = '';
    this.data = '';
    this.hasData = false;
    this.eventType = '';
  }

  private line(line: string): void {
    if (line.length === 0) {
      this.dispatch();
      return;
    }
    const colon = line.indexOf(':');
    if (colon === 0) {
      this.handlers.onComment?.(line.slice(1).replace(/^ /, ''));
      return;
    }
    let field: string;
    let value: string;
    if (colon === -1) {
      field = line;
      value = '';
    } else {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this.eventType = value;
        break;
      case 'data':
        this.data += value + '\n';
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.handlers.onRetry?.(Number.parseInt(value, 10));
        break;
      default:
        // Unknown fields are ignored, as the standard says.
        break;
    }
  }

  private dispatch(): void {
    if (!this.hasData) {
      this.eventType = '';
      return;
    }
    const message: SseMessage = {
      event: this.eventType || 'message',
      data: this.data.endsWith('\n') ? this.data.slice(0, -1) : this.data,
      id: this.lastEventId,
    };
    this.data = '';
    this.hasData = false;
    this.eventType = '';
    this.handlers.onMessage(message);
  }
}
