/**
 * The start-up grace: when the reaper may not reclaim because VMs could not renew. Pure; the
 * registry feeds it what the store says, in the transaction that acts on the answer, so every
 * instance and every part of one (its beat, its sweep) decides alike.
 */

/**
 * How long the service may go without any instance beating before it counts as having been
 * down (every instance stopped or frozen, the database unreachable). Instances beat every
 * second, so this is a few missed beats, not a slow one.
 */
export const SERVICE_GAP_MS = 2500;

/** What an instance sees when it checks in (a beat, a sweep, joining the service). */
export interface CheckIn {
  /** Registry time of the check-in's transaction. */
  readonly now: number;
  /** The latest beat any instance wrote (joining: any other instance), or null if none. */
  readonly lastBeatAt: number | null;
  /**
   * The store may have lost writes it had acknowledged since the last check-in looked (a crash
   * recovery or a failover of PostgreSQL: renewals are committed without waiting for the disk).
   */
  readonly storeLostWrites: boolean;
  /** Every process on the store was down whatever the beats say (the host of a SQLite file rebooted). */
  readonly serviceRestarted: boolean;
}

/**
 * Whether the start-up grace runs again from `now`: after any gap in service, whichever part of
 * the registry notices it first, and after the store may have lost acknowledged renewals. In
 * either case a VM's last renewal may be missing or may never have been possible, so its lease
 * must not be judged by it.
 */
export function graceRestarts(c: CheckIn): boolean {
  if (c.serviceRestarted || c.storeLostWrites) return true;
  return c.lastBeatAt === null || c.now - c.lastBeatAt > SERVICE_GAP_MS;
}

/**
 * When the service has been up since, as a check-in leaves it: from `now` (to be recorded) when
 * no start is recorded or the grace restarts, else the start recorded.
 */
export function serviceUpSince(recorded: number | null, c: CheckIn): { readonly upSince: number; readonly restarted: boolean } {
  return recorded === null || graceRestarts(c) ? { upSince: c.now, restarted: true } : { upSince: recorded, restarted: false };
}

/** Grace still to run at `now` for a service up since `upSince` (<= 0: over). */
export function graceLeftMs(upSince: number, now: number, graceMs: number): number {
  return upSince + graceMs - now;
}
