// @vitest-environment happy-dom
// The hook against a real Herald: when the stream's token expires, the hook's subscription
// renews it and resumes, so the component keeps every event once and never resubscribes,
// over an SSE stream and over a WebSocket alike.

import { createRoot } from 'react-dom/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WS from 'ws';

import { HeraldClient, type StreamEvent, type Subscription, type WebSocketConstructor } from '../src/index.js';
import { useEventChannel } from '../src/react.js';
import { expiringTokens, startHerald, type RunningHerald } from './support/herald.js';
import { waitFor } from './support/server.js';

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

let herald: RunningHerald;
beforeAll(async () => {
  // The page here has another origin than Herald: let any origin in (without cookies).
  herald = await startHerald('websocket = true\ncors_origins = ["*"]\n[auth]\nleeway = "0s"\n');
}, 600_000);
afterAll(async () => {
  await herald?.stop();
});

function Notes(props: {
  client: HeraldClient;
  user: string;
  transport: 'fetch' | 'websocket';
  seen: number[];
  onRender: (state: string, sub?: Subscription) => void;
}) {
  const { state, subscription } = useEventChannel(`user:${props.user}`, {
    client: props.client,
    transport: props.transport,
    onEvent: (event: StreamEvent) => {
      if (event.type === 'note') props.seen.push(Number(event.n));
    },
  });
  props.onRender(state, subscription);
  return <p>{state}</p>;
}

describe.each(['fetch', 'websocket'] as const)('useEventChannel over %s', (transport) => {
  it('keeps its subscription and every event across an expired token', async () => {
    let sent = 0;
    const user = `rea-${transport}`;
    const tokens = expiringTokens(herald, user, () => sent === 3);
    const client = new HeraldClient({
      url: herald.url,
      auth: { mode: 'header', token: tokens.token },
      WebSocket: WS as unknown as WebSocketConstructor,
    });
    const seen: number[] = [];
    const states: string[] = [];
    const subs = new Set<Subscription>();
    const root = createRoot(document.createElement('div'));
    root.render(
      <Notes
        client={client}
        user={user}
        transport={transport}
        seen={seen}
        onRender={(state, sub) => {
          states.push(state);
          if (sub) subs.add(sub);
        }}
      />,
    );
    try {
      await waitFor(() => states.at(-1) === 'open', 'open');
      for (const n of [1, 2, 3]) {
        await herald.publish(`user:${user}`, 'note', { n });
        sent = n;
      }
      await waitFor(() => states.includes('reconnecting') && states.at(-1) === 'open', 'renewed and open again');
      for (const n of [5, 6]) await herald.publish(`user:${user}`, 'note', { n });
      await waitFor(() => seen.length >= 6, 'six notes');
      expect(seen).toEqual([1, 2, 3, 4, 5, 6]);
      expect(subs.size).toBe(1);
      expect(tokens.calls()).toBe(2);
    } finally {
      root.unmount();
    }
  }, 30_000);
});
