/**
 * The reaper's sweep (see domain decideSweep) and the pruning of ownership history. A sweep
 * decides and takes its first batch in one transaction under the store's sweep lock, so there
 * is one guard decision per sweep across instances; the guard's memory, the last step of a
 * clock and the sweep's report are kept in the store (registry/meta.ts) for every instance.
 */
import { StepDetector } from '../clock.js';
import type { TimeSource } from '../clock.js';
import { GUARD_AT_REST, RATE_WINDOW_MS, decideSweep, expiryCutoff, guardCountFrom, historyKeptMs } from '../domain/lease.js';
import type { SweepDecision } from '../domain/lease.js';
import type { IdentifierRecord, ReaperState } from '../domain/types.js';
import type { Reader, Store, Tx } from '../store/types.js';
import type { Beats } from './beats.js';
import { CLOCK_STEP_AT, GUARD_MEMORY, NO_SWEEP, REAPER_STATE, numberOrNull, parseGuardMemory, parseReaperState } from './meta.js';
import type { ReapResult, RegistryObserver, RegistryRules, Wait } from './types.js';

/** History entries one pruning transaction deletes at most: a few milliseconds of work. */
const PRUNE_BATCH = 1000;
/** Pruning transactions one pruneHistory call runs at most. */
const PRUNE_MAX_BATCHES = 100;
/** A step of the wall clock against registry time larger than this is a sign of lost time. */
const CLOCK_STEP_MS = 1000;
/** A forced sweep that finds another instance sweeping looks again this often, this many times. */
const SWEEP_LOCK_WAIT_MS = 50;
const SWEEP_LOCK_TRIES = 100;

export interface SweeperDeps {
  readonly store: Store;
  readonly rules: RegistryRules;
  readonly observe: RegistryObserver;
  /** This instance's check-in: a sweep reads the grace in its own transaction. */
  readonly beats: Beats;
  readonly source?: TimeSource | undefined;
  readonly wait: Wait;
}

type FirstBatch = {
  readonly decision: SweepDecision; readonly cutoff: number; readonly expired: number; readonly leased: number;
  readonly reclaimed: IdentifierRecord[]; readonly limit: number;
};

export class Sweeper {
  private readonly store: Store;
  private readonly rules: RegistryRules;
  private readonly observe: RegistryObserver;
  private readonly beats: Beats;
  private readonly wait: Wait;
  private readonly steps: StepDetector | null;
  /** A step of the wall clock this process saw and has not yet written to the store. */
  private stepSeenAt: number | null = null;
  /** The sweep running now, and the one queued behind it (forced or not). */
  private running: { readonly force: boolean; readonly done: Promise<ReapResult> } | null = null;
  private queued: { readonly force: boolean; readonly done: Promise<ReapResult> } | null = null;
  private last: ReaperState = NO_SWEEP;

  constructor(deps: SweeperDeps) {
    this.store = deps.store;
    this.rules = deps.rules;
    this.observe = deps.observe;
    this.beats = deps.beats;
    this.wait = deps.wait;
    this.steps = deps.source ? new StepDetector(deps.source, deps.store.clock) : null;
    this.steps?.check();
  }

  /**
   * One reaper sweep (see domain decideSweep). Concurrent calls of the same kind share one
   * sweep; a forced call is never answered with a sweep that was not forced.
   */
  reap(opts: { force?: boolean } = {}): Promise<ReapResult> {
    const force = opts.force ?? false;
    if (this.running?.force === force) return this.running.done;
    // A queued sweep is always of the other kind than the running one, so of this call's kind.
    if (this.queued) return this.queued.done;
    const after = this.running?.done ?? Promise.resolve(null);
    const entry = {
      force,
      done: after.catch(() => null).then(() => {
        this.running = entry;
        if (this.queued === entry) this.queued = null;
        return this.sweep(force);
      }).finally(() => {
        if (this.running === entry) this.running = null;
      }),
    };
    if (this.running) this.queued = entry;
    else this.running = entry;
    return entry.done;
  }

  /** Resolves once no sweep of this process runs or waits to. */
  async settled(): Promise<void> {
    await Promise.allSettled([this.running?.done, this.queued?.done]);
  }

  /** The reaper's last sweep by any instance, as last read (for when the store cannot be read). */
  state(): ReaperState {
    return this.last;
  }

  /** The reaper's last sweep by any instance, read in `r` (and remembered for `state`). */
  async readState(r: Reader): Promise<ReaperState> {
    return this.last = parseReaperState(await r.meta(REAPER_STATE));
  }

  private async sweep(force: boolean): Promise<ReapResult> {
    const started = this.store.clock.now();
    this.noticeClockStep(started);
    let first: FirstBatch | null = null;
    // Another instance sweeping holds the sweep lock; a forced sweep waits for it.
    // The batches need not each wait for the disk: the sweep's last write below is durable, and
    // a commit on disk brings every earlier one with it (SQLite's WAL and PostgreSQL's are
    // appended in order). A crash before that loses reclaims, never grants: a lost reclaim
    // leaves the lease with its dead holder, to be reclaimed again; and nothing can grant a
    // reclaimed identifier without a durable commit of its own after it.
    for (let attempt = 0; first === null; attempt++) {
      first = await this.store.write((tx) => this.decideAndReclaim(tx, force), { durable: false });
      if (first === null && (!force || attempt >= SWEEP_LOCK_TRIES)) {
        return { reclaimed: 0, held: false, reason: 'another instance is sweeping' };
      }
      if (first === null) await this.wait(SWEEP_LOCK_WAIT_MS);
    }
    const { decision, cutoff } = first;
    let reclaimed = first.reclaimed.length;
    this.emitReclaimed(first.reclaimed);
    // A batch that came back full may have left expired leases behind.
    let more = first.reclaimed.length === first.limit;
    // Further batches, each its own transaction, so the event loop gets a turn between them.
    while (more && reclaimed < decision.allowance) {
      const limit = Math.min(this.rules.reapBatchSize, decision.allowance - reclaimed);
      const batch = await this.store.write(async (tx) => {
        // The service may have stopped between two batches (this process frozen, the database
        // recovering from a crash): checked in again, a sweep in a grace that started meanwhile stops.
        if ((await this.beats.checkIn(tx, false)) > 0 && !force) return null;
        return tx.reclaimExpired(cutoff, limit, tx.now, this.rules.cooldownMs);
      }, { durable: false });
      if (batch === null) break;
      this.emitReclaimed(batch);
      reclaimed += batch.length;
      more = batch.length === limit;
    }
    const finished = this.store.clock.now();
    const state: ReaperState = { lastRunAt: finished, lastReclaimed: reclaimed, held: decision.held, reason: decision.reason };
    this.last = state;
    // Durable: the sweep is answered (and logged as done) once all of its reclaims are on disk.
    await this.store.write((tx) => tx.setMeta(REAPER_STATE, JSON.stringify(state)), { durable: true });
    this.observe({
      type: 'sweep', reclaimed, expired: first.expired, leased: first.leased, held: decision.held, reason: decision.reason,
      forced: force, durationMs: finished - started,
    });
    return { reclaimed, held: decision.held, reason: decision.reason };
  }

  /** The sweep's decision and its first batch, in one transaction: one guard decision per sweep across instances. */
  private async decideAndReclaim(tx: Tx, force: boolean): Promise<FirstBatch | null> {
    if (!(await tx.trySweepLock())) return null;
    const now = tx.now;
    // Checked in before deciding: a sweep that runs first after a gap in service starts the grace itself.
    const graceLeft = await this.beats.checkIn(tx, false);
    if (this.stepSeenAt !== null) {
      // Never over a newer step another process recorded.
      const stored = numberOrNull(await tx.meta(CLOCK_STEP_AT));
      if (stored === null || stored < this.stepSeenAt) await tx.setMeta(CLOCK_STEP_AT, String(this.stepSeenAt));
    }
    const { ttlMs } = this.rules;
    const cutoff = expiryCutoff(now, ttlMs);
    const storedGuard = await tx.meta(GUARD_MEMORY);
    const guard = parseGuardMemory(storedGuard);
    const [expired, leased, reclaimedInTtl, reclaimedInMinute, refused, fleetSeenAt, stepAt] = [
      await tx.countExpired(cutoff),
      await tx.countLeased(),
      await tx.countEvents('reclaimed', guardCountFrom(now, ttlMs, guard)),
      await tx.countEvents('reclaimed', now - RATE_WINDOW_MS),
      await tx.countRefusedClients(now - RATE_WINDOW_MS),
      await tx.fleetSeenAt(),
      numberOrNull(await tx.meta(CLOCK_STEP_AT)),
    ];
    const decision = decideSweep({
      force, now, guard,
      graceLeftMs: graceLeft,
      expired, leased, reclaimedInTtl, reclaimedInMinute,
      refusedClientsInMinute: refused,
      fleetSilentMs: fleetSeenAt === null ? null : now - fleetSeenAt,
      clockStepAgoMs: stepAt === null ? null : now - stepAt,
      ttlMs,
    }, this.rules);
    // Kept with the decision, under the sweep lock: every instance's next sweep starts from it.
    const keep = JSON.stringify(decision.guard);
    if (keep !== (storedGuard ?? JSON.stringify(GUARD_AT_REST))) await tx.setMeta(GUARD_MEMORY, keep);
    await tx.pruneRefusals(now - 2 * RATE_WINDOW_MS);
    // The first batch is a quarter of the others: it shares its turn of the event loop with the
    // counting above and the commit of both, and a full batch on top measured 50-60 ms of stall.
    const limit = Math.min(Math.ceil(this.rules.reapBatchSize / 4), decision.allowance);
    const reclaimed = expired > 0 && limit > 0
      ? await tx.reclaimExpired(cutoff, limit, now, this.rules.cooldownMs)
      : [];
    return { decision, cutoff, expired, leased, reclaimed, limit };
  }

  private noticeClockStep(now: number): void {
    const step = this.steps?.check() ?? 0;
    if (Math.abs(step) <= CLOCK_STEP_MS) return;
    this.stepSeenAt = now;
    this.observe({ type: 'clock_step', stepMs: step });
  }

  private emitReclaimed(recs: readonly IdentifierRecord[]): void {
    for (const rec of recs) this.observe({ type: 'ownership', event: 'reclaimed', identifier: rec.name, clientId: rec.holder?.clientId ?? null, epoch: rec.epoch });
  }

  /**
   * Deletes ownership history older than `retentionMs` (0: keeps it all), in transactions of
   * `batch` entries each (the event loop gets a turn between them, and no transaction is long),
   * at most `maxBatches` of them a call: a backlog (a first pruning of years of history) is
   * worked off over several calls. Never what the guard still counts: entries within the last
   * TTL (and minute) are kept whatever the retention. Returns how many entries were deleted.
   */
  async pruneHistory(opts: { readonly retentionMs: number; readonly batch?: number; readonly maxBatches?: number }): Promise<number> {
    if (opts.retentionMs <= 0) return 0;
    const keepMs = historyKeptMs(opts.retentionMs, this.rules.ttlMs);
    const batch = opts.batch ?? PRUNE_BATCH;
    const maxBatches = opts.maxBatches ?? PRUNE_MAX_BATCHES;
    let pruned = 0;
    for (let i = 0; i < maxBatches; i++) {
      const n = await this.store.write((tx) => tx.pruneHistory(tx.now - keepMs, batch), { durable: false });
      pruned += n;
      // Until a batch finds nothing due (not merely fewer than a batch: an entry written out of
      // time order, a recent one before old ones, leaves a batch short without ending the work).
      if (n === 0) break;
    }
    return pruned;
  }
}
