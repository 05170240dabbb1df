/**
 * This instance as a member of the service: its beats, which tell the other instances it is
 * alive and when a VM last reached it, and its check-in, in whose transaction the start-up grace
 * is read (domain/grace.ts). Written to the store, never kept only here: every instance decides
 * the grace alike from what the store says.
 */
import { randomUUID } from 'node:crypto';
import { graceLeftMs, serviceUpSince } from '../domain/grace.js';
import type { Store, Tx } from '../store/types.js';
import { SERVICE_UP_SINCE, numberOrNull } from './meta.js';

/** How often an instance beats (see domain/grace.ts, SERVICE_GAP_MS, for how stale the last beat may be). */
export const BEAT_INTERVAL_MS = 1000;

export class Beats {
  readonly instanceId = randomUUID();
  readonly startedAt: number;
  /** The latest time a VM's request reached this process; written with every beat. */
  private fleetSeenAt: number | null = null;

  constructor(private readonly store: Store, private readonly graceMs: number) {
    this.startedAt = store.clock.now();
  }

  /**
   * Joins the service: when no other instance has beaten lately, the service is (re)starting
   * and the start-up grace runs from now; otherwise it has been up, and this instance restarting
   * while others serve changes nothing. `serviceRestarted`: every process on the store was down
   * whatever the beats' times say (after a reboot of the one host, registry time may have been
   * clamped to the last of them).
   */
  async join(serviceRestarted: boolean): Promise<void> {
    await this.store.write((tx) => this.checkIn(tx, serviceRestarted), { durable: false });
  }

  /**
   * Tells the others this instance is alive, and when a VM last reached it; run every
   * BEAT_INTERVAL_MS. Checks in as a sweep does (see checkIn): whichever notices a gap in
   * service first starts the grace again.
   */
  async beat(): Promise<void> {
    await this.store.write((tx) => this.checkIn(tx, false), { durable: false });
  }

  /** A VM's request reached this instance (answered or refused): the registry still reaches its fleet. */
  noteFleetRequest(): void {
    this.fleetSeenAt = this.store.clock.now();
  }

  /** Leaves the service: this instance's beat no longer counts as the service being up. */
  async leave(): Promise<void> {
    await this.store.write(async (tx) => {
      await this.beatIn(tx); // keeps when a VM last reached it
      await tx.forgetInstance(this.instanceId);
    }, { durable: false }).catch(() => {});
  }

  /**
   * Checks this instance in with the service, in the transaction that then acts on the grace
   * (a beat, a sweep, joining): the grace runs again from now after a gap in service or when
   * the store may have lost acknowledged renewals (domain/grace.ts), and this instance beats.
   * Returns the grace left. Whichever instance, and whichever part of it, looks first records
   * the restart in the store, where every other one reads it: so the store is asked whether it
   * lost writes before the grace is read (on PostgreSQL, a check-in that lost that race waits
   * for the winner's commit there, then reads the grace the winner wrote).
   */
  async checkIn(tx: Tx, serviceRestarted: boolean): Promise<number> {
    const last = await tx.latestBeat(null);
    const storeLostWrites = await tx.lostAcknowledgedWrites();
    const recorded = numberOrNull(await tx.meta(SERVICE_UP_SINCE));
    const { upSince, restarted } = serviceUpSince(recorded, { now: tx.now, lastBeatAt: last?.at ?? null, storeLostWrites, serviceRestarted });
    if (restarted) await tx.setMeta(SERVICE_UP_SINCE, String(upSince));
    await this.beatIn(tx);
    return graceLeftMs(upSince, tx.now, this.graceMs);
  }

  private async beatIn(tx: Tx): Promise<void> {
    await tx.beat({ id: this.instanceId, startedAt: this.startedAt, at: tx.now, fleetSeenAt: this.fleetSeenAt });
  }
}
