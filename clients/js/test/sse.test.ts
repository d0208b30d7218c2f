import { describe, expect, it } from 'vitest';

import { SseParser, type SseMessage } from '../src/sse.js';

function parse(chunks: Array<string | Uint8Array>) {
  const messages: SseMessage[] = [];
  const retries: number[] = [];
  const comments: string[] = [];
  const p = new SseParser({
    onMessage: (m) => messages.push(m),
    onRetry: (ms) => retries.push(ms),
    onComment: (c) => comments.push(c),
  });
  for (const c of chunks) {
    if (typeof c === 'string') p.feed(c);
    else p.feedBytes(c);
  }
  p.end();
  return { messages, retries, comments };
}

const STREAM =
  '\ufeffretry: 3000\n\n' +
  ': heartbeat\n\n' +
  'id: abc:1\ndata: {"type":"connected"}\n\n' +
  'event: chat\r\nid: abc:2\r\ndata: line one\r\ndata: line two\r\n\r\n' +
  'data:no space\rdata:  two spaces\r\r' +
  'id: abc:3\ndata: {"text":"héllo ✓ 🎉"}\n\n' +
  'data: incomplete at the end';

const EXPECTED: SseMessage[] = [
  { event: 'message', data: '{"type":"connected"}', id: 'abc:1' },
  { event: 'chat', data: 'line one\nline two', id: 'abc:2' },
  { event: 'message', data: 'no space\n two spaces', id: 'abc:2' },
  { event: 'message', data: '{"text":"héllo ✓ 🎉"}', id: 'abc:3' },
];

describe('SSE parser', () => {
  it('parses LF, CRLF and CR line ends, multi-line data, comments and retry', () => {
    const { messages, retries, comments } = parse([STREAM]);
    expect(messages).toEqual(EXPECTED);
    expect(retries).toEqual([3000]);
    expect(comments).toEqual(['heartbeat']);
  });

  it('gives the same events whatever string boundary splits the stream', () => {
    for (let i = 0; i <= STREAM.length; i++) {
      for (const j of [i, Math.min(STREAM.length, i + 1), Math.min(STREAM.length, i + 7)]) {
        const { messages, retries } = parse([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]);
        expect(messages, `split at ${i} and ${j}`).toEqual(EXPECTED);
        expect(retries).toEqual([3000]);
      }
    }
  });

  it('gives the same events when bytes are split inside UTF-8 characters', () => {
    const bytes = new TextEncoder().encode(STREAM);
    for (let i = 0; i <= bytes.length; i++) {
      const { messages } = parse([bytes.slice(0, i), bytes.slice(i)]);
      expect(messages, `split at byte ${i}`).toEqual(EXPECTED);
    }
    const oneByOne = parse(Array.from(bytes, (b) => new Uint8Array([b])));
    expect(oneByOne.messages).toEqual(EXPECTED);
  });

  it('keeps a CR at the end of a chunk from doubling as a blank line with the next LF', () => {
    const { messages } = parse(['data: a\r', '\ndata: b\r', '\n\r', '\n']);
    expect(messages).toEqual([{ event: 'message', data: 'a\nb', id: '' }]);
  });

  it('follows the standard on odd fields', () => {
    const { messages, retries } = parse([
      'retry: soon\nretry: 12x\nretry: 250\n\n' + // only digits count
        'id: ok\n\n' + // an id alone dispatches nothing but is kept
        'data\n\n' + // a field name alone: empty data, still dispatched
        'id: bad\0id\ndata: x\n\n' + // an id with NUL is ignored
        'unknown: field\ndata: y\n\n' +
        'event: named\n\n' + // no data: nothing dispatched, the type is dropped
        'data: z\n\n',
    ]);
    expect(retries).toEqual([250]);
    expect(messages).toEqual([
      { event: 'message', data: '', id: 'ok' },
      { event: 'message', data: 'x', id: 'ok' },
      { event: 'message', data: 'y', id: 'ok' },
      { event: 'message', data: 'z', id: 'ok' },
    ]);
  });

  it('strips only a leading byte order mark', () => {
    const { messages } = parse(['\ufeffdata: a\n\n', '\ufeffdata: b\n\n']);
    expect(messages.map((m) => m.data)).toEqual(['a']);
  });
});
