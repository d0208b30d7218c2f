// Assembles AI token streams (`ai_chat_chunk` events) by `streamId`. A chunk appends its
// text; a `snapshot` chunk, which a subscriber gets when it joins or resumes mid-stream,
// carries the whole text so far and replaces it. So a page reloaded mid-answer shows the
// answer so far, then keeps appending.

import type { AiChatChunkEvent, StreamEvent } from './events.js';

/** One stream's state. */
export interface AiStream {
  streamId: string;
  channel?: string;
  text: string;
  done: boolean;
  provider?: string;
  /** Chunks applied, snapshots included. */
  chunks: number;
}

export class AiStreams {
  private readonly streams = new Map<string, AiStream>();

  /** Applies an event if it is an `ai_chat_chunk`; returns the stream it changed. */
  apply(event: StreamEvent): AiStream | undefined {
    if (event.type !== 'ai_chat_chunk') return undefined;
    const chunk = event as AiChatChunkEvent;
    if (typeof chunk.streamId !== 'string') return undefined;
    const text = typeof chunk.text === 'string' ? chunk.text : '';
    let stream = this.streams.get(chunk.streamId);
    if (!stream) {
      stream = { streamId: chunk.streamId, channel: chunk.channel, text: '', done: false, chunks: 0 };
      this.streams.set(chunk.streamId, stream);
    }
    stream.text = chunk.snapshot === true ? text : stream.text + text;
    stream.done = chunk.done === true;
    if (chunk.provider !== undefined) stream.provider = chunk.provider;
    stream.chunks += 1;
    return stream;
  }

  get(streamId: string): AiStream | undefined {
    return this.streams.get(streamId);
  }

  /** Every stream, in the order they started. */
  all(): AiStream[] {
    return [...this.streams.values()];
  }

  /** Forgets a stream (or all of a channel's, after a `reset` of that channel). */
  delete(streamId: string): void {
    this.streams.delete(streamId);
  }

  clearChannel(channel: string): void {
    for (const [id, s] of this.streams) if (s.channel === channel) this.streams.delete(id);
  }
}
