import { describe, expect, it } from 'vitest';

import { AiStreams } from '../src/ai.js';
import type { AiChatChunkEvent } from '../src/events.js';

const chunk = (streamId: string, text: string, extra: Partial<AiChatChunkEvent> = {}) =>
  ({ type: 'ai_chat_chunk', streamId, text, done: false, channel: 'channel:ai', ...extra }) as AiChatChunkEvent;

describe('AI stream assembly', () => {
  it('appends chunks per stream and marks the last one done', () => {
    const s = new AiStreams();
    s.apply(chunk('a', 'The '));
    s.apply(chunk('b', 'Other'));
    s.apply(chunk('a', 'answer'));
    const a = s.apply(chunk('a', ' is 42.', { done: true, provider: 'markov' }));
    expect(a).toMatchObject({ text: 'The answer is 42.', done: true, provider: 'markov', chunks: 3 });
    expect(s.get('b')?.text).toBe('Other');
    expect(s.all().map((x) => x.streamId)).toEqual(['a', 'b']);
  });

  it('replaces the text with a snapshot, then appends what follows', () => {
    const s = new AiStreams();
    s.apply(chunk('a', 'stale text from before a reload'));
    s.apply(chunk('a', 'The answer so far', { snapshot: true }));
    s.apply(chunk('a', ', and more.', { done: true }));
    expect(s.get('a')?.text).toBe('The answer so far, and more.');
  });

  it('ignores other events and forgets a reset channel', () => {
    const s = new AiStreams();
    expect(s.apply({ type: 'chat', content: 'hi' })).toBeUndefined();
    s.apply(chunk('a', 'x'));
    s.apply(chunk('b', 'y', { channel: 'channel:other' }));
    s.clearChannel('channel:ai');
    expect(s.all().map((x) => x.streamId)).toEqual(['b']);
  });
});
