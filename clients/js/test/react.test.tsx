// @vitest-environment happy-dom
// The hook in a real React tree (react-dom in happy-dom), against the real test server.

import { createRoot } from 'react-dom/client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { HeraldClient, type HeraldError, type StreamEvent } from '../src/index.js';
import { type EventChannelState, HeraldProvider, useEventChannel } from '../src/react.js';
import { TestServer, waitFor } from './support/server.js';

// Updates come from the network, not from act(): React schedules them as in a browser.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

let server: TestServer;
beforeEach(async () => {
  server = await new TestServer().start();
});
afterEach(async () => {
  await server.stop();
});

function Chat(props: { channel: string; seen: string[]; onRender: (state: string) => void }) {
  const { state } = useEventChannel(props.channel, {
    transport: 'fetch',
    onEvent: (event: StreamEvent) => {
      if (event.type === 'chat') props.seen.push(String(event.content));
    },
  });
  props.onRender(state);
  return <p>{state}</p>;
}

describe('useEventChannel', () => {
  it('subscribes while mounted, follows channel changes, and closes on unmount', async () => {
    const client = new HeraldClient({ url: server.url });
    const seen: string[] = [];
    const states: string[] = [];
    const root = createRoot(document.createElement('div'));
    let renders = 0;
    const render = async (channel: string) => {
      const before = renders;
      root.render(
        <HeraldProvider client={client}>
          <Chat channel={channel} seen={seen} onRender={(s) => { renders++; states.push(s); }} />
        </HeraldProvider>,
      );
      await waitFor(() => renders > before, 'a render');
    };
    await render('channel:a');
    await waitFor(() => server.openStreams() === 1 && states.at(-1) === 'open', 'subscribed and open');
    server.publish('channel:a', { type: 'chat', content: 'hello' });
    await waitFor(() => seen.length === 1, 'the event');

    // A re-render with new callbacks keeps the stream; a new channel replaces it.
    await render('channel:a');
    expect(server.streamRequests).toHaveLength(1);
    await render('channel:b');
    await waitFor(() => server.streamRequests.length === 2 && server.openStreams() === 1, 'resubscribed');
    expect(server.streamRequests[1]?.channels).toEqual(['channel:b']);
    server.publish('channel:b', { type: 'chat', content: 'in b' });
    await waitFor(() => seen.length === 2, 'the event of b');

    root.unmount();
    await waitFor(() => server.openStreams() === 0, 'closed on unmount');
    expect(seen).toEqual(['hello', 'in b']);
  });

  it('shows a disconnect without reconnect as closed, with the reason', async () => {
    const client = new HeraldClient({ url: server.url });
    const seen: EventChannelState[] = [];
    function Probe() {
      seen.push(useEventChannel('channel:a', { transport: 'fetch', onEvent: () => {} }));
      return null;
    }
    const root = createRoot(document.createElement('div'));
    root.render(
      <HeraldProvider client={client}>
        <Probe />
      </HeraldProvider>,
    );
    await waitFor(() => seen.at(-1)?.state === 'open', 'open');
    server.disconnect(false);
    await waitFor(() => seen.at(-1)?.state === 'closed', 'closed');
    const last = seen.at(-1);
    expect(last?.disconnect).toEqual({ type: 'disconnect', reason: 'disconnected', reconnect: false });
    expect((last?.error as HeraldError | undefined)?.code).toBe('disconnected');
    expect(server.streamRequests).toHaveLength(1);
    root.unmount();
  });
});
