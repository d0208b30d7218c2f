// @herald/client: subscribe to Herald's Server-Sent Events (or its WebSocket) with resume and jittered
// reconnects, publish, presence and live rooms. The React hook is in `@herald/client/react`.

export { AiStreams, type AiStream } from './ai.js';
export {
  Backoff,
  backoffCeiling,
  backoffDelay,
  DEFAULT_BASE_MS,
  DEFAULT_CAP_MS,
  DEFAULT_HEALTHY_AFTER_MS,
  type BackoffOptions,
} from './backoff.js';
export {
  devToken,
  HeraldClient,
  HeraldError,
  newIdempotencyKey,
  Subscription,
  type Auth,
  type ChannelInfo,
  type ChannelPresence,
  type EventSourceConstructor,
  type EventSourceLike,
  type HeraldClientOptions,
  type HistoryPage,
  type HistoryQuery,
  type OutgoingEvent,
  type PresenceUser,
  type PublishOptions,
  type StateInfo,
  type SubscribeOptions,
  type SubscriptionState,
  type TokenSource,
  type Transport,
  type UserPresence,
} from './client.js';
export * from './events.js';
export { PresenceTracker } from './presence.js';
export { SseParser, type SseHandlers, type SseMessage } from './sse.js';
export { type WebSocketConstructor, type WebSocketLike } from './websocket.js';
