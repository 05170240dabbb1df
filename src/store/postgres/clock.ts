/**
 * Registry time on PostgreSQL is the database server's clock, so instances on hosts whose
 * clocks disagree still agree on every expiry and cool-down. Transactions read it on the
 * server; this is the local estimate for everything outside one (uptime, logs, the reaper's
 * schedule, reads): the server time of the latest round trip plus the local monotonic time
 * elapsed since that round trip was *sent*. The server read its clock after the send, so the
 * estimate is never behind the server (it may be ahead by one round trip), and a renewal
 * stamped with it is never shorter than the TTL it promises.
 */
import type { Clock } from '../../clock.js';

export class ServerClock implements Clock {
  private serverMs: number;
  private sentAt: number;
  private last = 0;

  constructor(private readonly monotonic: () => number, serverMs: number, sentAt: number) {
    this.serverMs = serverMs;
    this.sentAt = sentAt;
  }

  /** A server time read by a query sent at local monotonic `sentAt`. */
  anchor(serverMs: number, sentAt: number): void {
    this.serverMs = serverMs;
    this.sentAt = sentAt;
  }

  now(): number {
    const t = Math.floor(this.serverMs + (this.monotonic() - this.sentAt));
    // The server's clock may be stepped back, and a fresh anchor may be tighter than the last:
    // the estimate still never goes back.
    if (t > this.last) this.last = t;
    return this.last;
  }
}
