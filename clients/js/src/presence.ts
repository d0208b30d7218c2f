// A live "who is online" list for one channel: the server's list
// (`GET /api/channels/{channel}/presence`), fetched on every (re)connect and on `reset`,
// kept current by the channel's `presence` events. Events that arrive while the list is
// being fetched win over the fetched list, which may predate them.

import type { HeraldClient, PresenceUser, Subscription } from './client.js';
import type { PresenceEvent, StreamEvent } from './events.js';

export class PresenceTracker {
  /** userId → the user, online or away. */
  readonly users = new Map<string, PresenceUser>();
  private touched: Set<string> | null = null;
  private readonly stop: Array<() => void> = [];

  constructor(
    private readonly client: HeraldClient,
    subscription: Subscription,
    readonly channel: string,
    private readonly onChange: (users: PresenceUser[]) => void = () => {},
  ) {
    this.stop.push(
      subscription.on('connected', () => void this.refresh()),
      subscription.on('reset', (e) => {
        if (e.channel === channel) void this.refresh();
      }),
      subscription.on('presence', (e) => this.apply(e)),
    );
    if (subscription.state === 'open') void this.refresh();
  }

  /** The users, sorted by name. */
  list(): PresenceUser[] {
    return [...this.users.values()].sort((a, b) => (a.userName ?? a.userId).localeCompare(b.userName ?? b.userId));
  }

  /** Applies a `presence` event of this channel. */
  apply(event: PresenceEvent | StreamEvent): void {
    const e = event as PresenceEvent;
    if (e.type !== 'presence' || e.channel !== this.channel || typeof e.userId !== 'string') return;
    this.touched?.add(e.userId);
    if (e.status === 'offline') this.users.delete(e.userId);
    else this.users.set(e.userId, { userId: e.userId, userName: e.userName, status: e.status });
    this.onChange(this.list());
  }

  /** Fetches the server's list and merges it under the events seen meanwhile. */
  async refresh(): Promise<void> {
    const touched = new Set<string>();
    this.touched = touched;
    try {
      const { users } = await this.client.presence(this.channel);
      if (this.touched !== touched) return; // a newer refresh is under way
      for (const id of [...this.users.keys()]) {
        if (!touched.has(id) && !users.some((u) => u.userId === id)) this.users.delete(id);
      }
      for (const u of users) if (!touched.has(u.userId)) this.users.set(u.userId, u);
      this.onChange(this.list());
    } catch {
      // Presence off for this channel, or the server is away: the events still apply.
    } finally {
      if (this.touched === touched) this.touched = null;
    }
  }

  /** Stops following the subscription. */
  close(): void {
    for (const s of this.stop.splice(0)) s();
  }
}
