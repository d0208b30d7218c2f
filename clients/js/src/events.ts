// The event catalogue as TypeScript types: what Herald's streams carry (docs/channels.md).
// Published events are flat JSON objects: the envelope fields below plus the payload
// fields of their type. Unknown types still arrive, typed as `HeraldEvent`.

/** Fields every published event carries. `userId`/`userName` come from the publisher's
 * verified credential, never from the payload. */
export interface EventEnvelope {
  /** The event's unique id (not the SSE id used for resume). */
  id: string;
  channel: string;
  type: string;
  /** RFC 3339 time of publication. */
  timestamp: string;
  userId?: string;
  userName?: string;
}

/** Any event, known type or not. */
export interface HeraldEvent extends Partial<EventEnvelope> {
  type: string;
  [field: string]: unknown;
}

// --- Stream control (written by the server for one connection) ------------------------

export interface ConnectedEvent {
  type: 'connected';
  connectionId: string;
  nodeId: string;
  channels: string[];
  timestamp: string;
}

/** The server cannot resume `channel` from the id the client sent: refetch its state. */
export interface ResetEvent {
  type: 'reset';
  channel: string;
  reason: 'history_expired' | 'unknown_position' | (string & {});
  timestamp?: string;
}

/** The client read so slowly that the server dropped the oldest events it had queued for it
 * (a namespace with `slow_consumer = "drop_oldest"`); the stream goes on. `firstId` and
 * `lastId` are the ids of the first and last dropped events on `channel`, as a stream of that
 * one channel shows them; `missed` counts them. Refetch them from history if they matter. */
export interface GapEvent {
  type: 'gap';
  channel: string;
  reason: 'slow_consumer' | (string & {});
  firstId: string;
  lastId: string;
  missed: number;
  timestamp?: string;
}

/** The application cut this stream (`POST /api/disconnect`); it is the stream's last event.
 * With `reconnect: false` the client must not come back (the client closes the
 * subscription); `reason` is `disconnected`, or `banned` when the user was banned with it. */
export interface DisconnectEvent {
  type: 'disconnect';
  reason: 'disconnected' | 'banned' | (string & {});
  reconnect: boolean;
}

/** A live room was added to this connection (`POST /api/connections/{id}/channels`). */
export interface SubscribedEvent {
  type: 'subscribed';
  channel: string;
}

/** A live room was removed from this connection. */
export interface UnsubscribedEvent {
  type: 'unsubscribed';
  channel: string;
}

/** The token this stream was opened with expired: the server ends the stream, and the
 * subscription reconnects at once with a fresh token (from the `token` function of its
 * `auth`) and resumes from this event's id. */
export interface TokenExpiredEvent {
  type: 'token_expired';
  connectionId: string;
  timestamp: string;
}

// --- The catalogue ---------------------------------------------------------------------

export interface ChatEvent extends EventEnvelope {
  type: 'chat';
  content: string;
}

export interface NotificationEvent extends EventEnvelope {
  type: 'notification';
  kind?: string;
  title?: string;
  message?: string;
  data?: unknown;
}

export interface BadgeUpdateEvent extends EventEnvelope {
  type: 'badge_update';
  count: number;
}

export interface NewItemEvent extends EventEnvelope {
  type: 'new_item';
  itemType: string;
  itemId: string;
  data?: unknown;
}

export interface UpdateEvent extends EventEnvelope {
  type: 'update';
  [field: string]: unknown;
}

export interface AlertEvent extends EventEnvelope {
  type: 'alert';
  severity: string;
  message: string;
}

export type PresenceStatus = 'online' | 'offline' | 'away';

export interface PresenceEvent extends EventEnvelope {
  type: 'presence';
  userId: string;
  userName?: string;
  status: PresenceStatus;
}

export interface JoinEvent extends EventEnvelope {
  type: 'join';
  room: string;
  userId: string;
}

export interface LeaveEvent extends EventEnvelope {
  type: 'leave';
  room: string;
  userId: string;
}

export interface SystemEvent extends EventEnvelope {
  type: 'system';
  kind?: string;
  message?: string;
  data?: unknown;
}

export interface ErrorEvent extends EventEnvelope {
  type: 'error';
  code: string;
  message: string;
}

export interface GenerationResult {
  url: string;
  provider: string;
  latencyMs: number;
  [field: string]: unknown;
}

export interface GenerationStartedEvent extends EventEnvelope {
  type: 'generation_started';
  jobId: string;
}

export interface GenerationProgressEvent extends EventEnvelope {
  type: 'generation_progress';
  jobId: string;
  /** 0 to 100. */
  progress: number;
  message?: string;
}

export interface GenerationCompleteEvent extends EventEnvelope {
  type: 'generation_complete';
  jobId: string;
  result: GenerationResult;
}

export interface GenerationFailedEvent extends EventEnvelope {
  type: 'generation_failed';
  jobId: string;
  error: string;
}

export interface UploadResult {
  id: string;
  original: string;
  optimized: string;
  thumbnail: string;
}

export interface UploadStartedEvent extends EventEnvelope {
  type: 'upload_started';
  jobId: string;
}

export interface UploadProgressEvent extends EventEnvelope {
  type: 'upload_progress';
  jobId: string;
  progress: number;
  message?: string;
}

export interface UploadCompleteEvent extends EventEnvelope {
  type: 'upload_complete';
  jobId: string;
  result: UploadResult;
}

export interface UploadFailedEvent extends EventEnvelope {
  type: 'upload_failed';
  jobId: string;
  error: string;
}

export interface AiChatEvent extends EventEnvelope {
  type: 'ai_chat';
  content: string;
  provider?: string;
}

/** One piece of an AI token stream. A `snapshot` chunk carries the WHOLE text so far
 * (sent to a subscriber that joins or resumes mid-stream): replace, do not append. */
export interface AiChatChunkEvent extends EventEnvelope {
  type: 'ai_chat_chunk';
  streamId: string;
  text: string;
  done: boolean;
  provider?: string;
  snapshot?: boolean;
}

/** Event type name → event shape, for typed listeners (`subscription.on('chat', ...)`). */
export interface EventMap {
  connected: ConnectedEvent;
  reset: ResetEvent;
  gap: GapEvent;
  disconnect: DisconnectEvent;
  subscribed: SubscribedEvent;
  unsubscribed: UnsubscribedEvent;
  token_expired: TokenExpiredEvent;
  chat: ChatEvent;
  notification: NotificationEvent;
  badge_update: BadgeUpdateEvent;
  new_item: NewItemEvent;
  update: UpdateEvent;
  alert: AlertEvent;
  presence: PresenceEvent;
  join: JoinEvent;
  leave: LeaveEvent;
  system: SystemEvent;
  error: ErrorEvent;
  generation_started: GenerationStartedEvent;
  generation_progress: GenerationProgressEvent;
  generation_complete: GenerationCompleteEvent;
  generation_failed: GenerationFailedEvent;
  upload_started: UploadStartedEvent;
  upload_progress: UploadProgressEvent;
  upload_complete: UploadCompleteEvent;
  upload_failed: UploadFailedEvent;
  ai_chat: AiChatEvent;
  ai_chat_chunk: AiChatChunkEvent;
}

/** Every event of the catalogue, discriminated by `type`. */
export type KnownEvent = EventMap[keyof EventMap];

/** What a subscription hands to `onEvent`: a catalogue event, or any other type. */
export type StreamEvent = KnownEvent | HeraldEvent;

/** Narrows an event to a catalogue type: `if (is(e, 'chat')) e.content`. */
export function is<K extends keyof EventMap>(event: StreamEvent, type: K): event is EventMap[K] {
  return event.type === type;
}
