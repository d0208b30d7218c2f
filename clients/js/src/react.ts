// React binding: `useEventChannel(channel, { onEvent })`, a hook over one `Subscription` of
// the core client. React is a peer dependency of this entry point only; `@herald/client`
// itself does not need it.

import { createContext, createElement, useContext, useEffect, useRef, useState, type ReactNode } from 'react';

import type { HeraldClient, SubscribeOptions, Subscription, SubscriptionState } from './client.js';
import type { DisconnectEvent, GapEvent, ResetEvent, StreamEvent } from './events.js';

const ClientContext = createContext<HeraldClient | null>(null);

/** Makes a client available to `useEventChannel` below it. */
export function HeraldProvider(props: { client: HeraldClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

export interface EventChannelConfig
  extends Omit<SubscribeOptions, 'onEvent' | 'onReset' | 'onGap' | 'onStateChange'> {
  onEvent: (event: StreamEvent) => void;
  onReset?: (event: ResetEvent) => void;
  /** Events this slow reader had queued were dropped (`slow_consumer = "drop_oldest"`). */
  onGap?: (event: GapEvent) => void;
  /** The client to use; default: the one of the nearest `HeraldProvider`. */
  client?: HeraldClient;
  /** `false` holds the subscription closed (e.g. until a user id is known). */
  enabled?: boolean;
}

export interface EventChannelState {
  state: SubscriptionState;
  /** Failed attempts in a row, while reconnecting. */
  attempt: number;
  lastEventId?: string;
  subscription?: Subscription;
  /** What closed the subscription for good (state `closed`), if not the component: a
   * refusal, or a disconnect without reconnect (`code` `disconnected` or `banned`). */
  error?: Error;
  /** The server's last `disconnect` event, if the application cut the stream. */
  disconnect?: DisconnectEvent;
}

/** Subscribes while mounted; reconnects and resumes by itself. Changing `onEvent` does not
 * resubscribe; changing the channel(s) does. */
export function useEventChannel(channel: string | string[], config: EventChannelConfig): EventChannelState {
  const fromContext = useContext(ClientContext);
  const client = config.client ?? fromContext;
  if (!client) throw new Error('useEventChannel needs a `client` option or a <HeraldProvider>');
  const configRef = useRef(config);
  configRef.current = config;
  const key = (Array.isArray(channel) ? channel : [channel]).join('\n');
  const enabled = config.enabled ?? true;
  const [status, setStatus] = useState<EventChannelState>({ state: 'connecting', attempt: 0 });

  useEffect(() => {
    if (!enabled) {
      setStatus({ state: 'closed', attempt: 0 });
      return undefined;
    }
    const { filters, lastEventId, transport, backoff } = configRef.current;
    let sub: Subscription | undefined = undefined;
    sub = client.subscribe(key.split('\n'), {
      filters,
      lastEventId,
      transport,
      backoff,
      onEvent: (e) => configRef.current.onEvent(e),
      onReset: (e) => configRef.current.onReset?.(e),
      onGap: (e) => configRef.current.onGap?.(e),
      onError: (e) => configRef.current.onError?.(e),
      onDisconnect: (e) => configRef.current.onDisconnect?.(e),
      onStateChange: (state, info) =>
        setStatus({
          state,
          attempt: info.attempt,
          lastEventId: sub?.lastEventId,
          subscription: sub,
          error: state === 'closed' ? info.error : undefined,
          disconnect: sub?.disconnect,
        }),
    });
    const opened = sub;
    setStatus({ state: opened.state, attempt: opened.attempt, subscription: opened });
    return () => opened.close();
  }, [client, key, enabled]);

  return status;
}
