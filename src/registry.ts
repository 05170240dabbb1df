/**
 * The use cases of the registry (the etcd "lessor" analogue). Each write is one store
 * transaction that reads the current state and decides on it, so uniqueness rests on
 * SQLite's write lock, never on this process's memory: several processes may share a file.
 */
import { anchoredClock } from './clock.js';
import type { Clock, TimeSource } from './clock.js';
import { RegistryError } from './domain/errors.js';
import { assertOwner, expiryCutoff, fenceAfterMs, guardReason, infoOf, leaseOf } from './domain/lease.js';
import type { GuardRules, LeaseRules } from './domain/lease.js';
import { retirePlan, retireRefusal } from './domain/pool-sync.js';
import type {
  HistoryEntry, HistoryEvent, IdentifierInfo, IdentifierRecord, Lease, PoolCounts, ReaperState, Status, SyncResult,
} from './domain/types.js';
import type { Store } from './store/store.js';

export interface RegistryRules extends LeaseRules, GuardRules {
  /** No reclaim before the registry has been up this long. */
  readonly graceMs: number;
  /** Leases reclaimed per transaction; the event loop gets a turn between batches. */
  readonly reapBatchSize: number;
}

/** What happened, for logs and metrics. Observers must not throw. */
export type RegistryEvent =
  | { readonly type: 'ownership'; readonly event: HistoryEvent; readonly identifier: string; readonly clientId: string | null; readonly epoch: number }
  | { readonly type: 'renewed'; readonly identifier: string; readonly clientId: string }
  | { readonly type: 'sweep'; readonly reclaimed: number; readonly expired: number; readonly leased: number; readonly held: boolean; readonly reason: string | null; readonly forced: boolean; readonly durationMs: number }
  | { readonly type: 'pool_synced'; readonly result: SyncResult };

export type RegistryObserver = (e: RegistryEvent) => void;

export interface ListFilter {
  readonly status: Status | null;
  readonly after: string | null;
  readonly limit: number | null;
}

export interface ListPage {
  readonly items: IdentifierInfo[];
  /** The identifier to pass as `after` for the next page, or null on the last page. */
  readonly next: string | null;
}

export interface ReapResult {
  readonly reclaimed: number;
  readonly held: boolean;
  readonly reason: string | null;
}

export interface Health {
  readonly nowMs: number;
  readonly uptimeMs: number;
  /** The least recent liveness among leases, or null with none. */
  readonly oldestLastSeen: number | null;
  readonly pool: PoolCounts;
  readonly reaper: ReaperState;
  /** Why the last pool reload failed or was refused, until one succeeds. */
  readonly poolProblem: string | null;
}

export interface RegistryDeps {
  readonly store: Store;
  readonly clock: Clock;
  readonly rules: RegistryRules;
  readonly observe?: RegistryObserver;
}

const POOL_FINGERPRINT = 'pool_fingerprint';
/** How long an answered liveness may wait to be written with others. */
const RENEWAL_FLUSH_MS = 50;

export class Registry {
  readonly startedAt: number;
  private readonly store: Store;
  private readonly clock: Clock;
  private readonly rules: RegistryRules;
  private readonly observe: RegistryObserver;
  private reaper: ReaperState = { lastRunAt: null, lastReclaimed: 0, held: false, reason: null };
  /** Why the last pool reload failed or was refused; null once one succeeds. */
  private poolProblem: string | null = null;
  private sweeping: Promise<ReapResult> | null = null;
  /**
   * Renewals answered but not yet written: a liveness is checked against the database and
   * answered at once, and its last_seen is written with the others of the next RENEWAL_FLUSH_MS
   * (SPEC.md: "a liveness may ride on the next sync"). Every other write goes after them, and
   * every read sees them.
   */
  private readonly pending = new Map<number, { readonly clientId: string; readonly at: number }>();
  private pendingTimer: NodeJS.Timeout | null = null;

  constructor(deps: RegistryDeps) {
    this.store = deps.store;
    this.clock = deps.clock;
    this.rules = deps.rules;
    this.observe = deps.observe ?? (() => {});
    this.startedAt = deps.clock.now();
  }

  now(): number {
    return this.clock.now();
  }

  /**
   * Grants `clientId` an identifier: the one it already holds (renewed, same epoch), or the
   * allocatable one free the longest, under a new epoch.
   * Errors: pool_exhausted when nothing is allocatable.
   */
  async allocate(clientId: string): Promise<Lease> {
    const lease = await this.write(() => {
      const now = this.clock.now();
      const found = this.store.byClient(clientId);
      const held = found ? this.current(found) : null;
      if (held) {
        this.store.renew(held.rowId, clientId, now);
        return { lease: this.leaseAfterRenew(held, now), granted: false };
      }
      const next = this.store.nextAllocatable(now);
      if (!next) throw new RegistryError('pool_exhausted', 'no identifier is free: every one is leased, cooling down or retired');
      const epoch = next.epoch + 1;
      this.store.grant(next.rowId, clientId, epoch, now);
      this.store.appendHistory(next.rowId, now, 'allocated', clientId, epoch);
      const lease: Lease = {
        identifier: next.name, clientId, epoch, allocatedAt: now, lastSeen: now, expiresAt: now + this.rules.ttlMs,
        fenceAfterMs: fenceAfterMs(this.rules),
      };
      return { lease, granted: true };
    }, true);
    if (lease.granted) this.emitOwnership('allocated', lease.lease.identifier, clientId, lease.lease.epoch);
    return lease.lease;
  }

  /**
   * Liveness: renews the owner's lease. A lease past its expiry that the reaper has not yet
   * reclaimed is still the owner's.
   * Errors: identifier_not_found, not_owner, stale_epoch.
   */
  async renew(clientId: string, identifier: string, epoch?: number): Promise<Lease> {
    const lease = await this.store.readBatched(() => {
      const now = this.clock.now();
      const rec = this.current(this.mustFind(identifier));
      assertOwner(rec, clientId, epoch);
      this.pending.set(rec.rowId, { clientId, at: Math.max(now, rec.holder?.lastSeen ?? now) });
      this.scheduleRenewalFlush();
      return this.leaseAfterRenew(rec, now);
    });
    this.observe({ type: 'renewed', identifier, clientId });
    return lease;
  }

  /**
   * The owner gives its identifier back. It is allocatable at once: the owner knows it has
   * stopped using it, so there is nothing to wait for.
   * Errors: identifier_not_found, not_owner, stale_epoch.
   */
  async release(clientId: string, identifier: string, epoch?: number): Promise<IdentifierInfo> {
    const info = await this.write(() => {
      const now = this.clock.now();
      const rec = this.mustFind(identifier);
      assertOwner(rec, clientId, epoch);
      return this.freeRecord(rec, now, now, 'released');
    }, true);
    this.emitOwnership('released', identifier, clientId, info.epoch);
    return info;
  }

  /**
   * An operator takes an identifier from its holder. Its holder may still be running, so the
   * identifier cools down before anyone else gets it. Freeing a free identifier changes nothing.
   * Errors: identifier_not_found.
   */
  async forceRelease(identifier: string): Promise<IdentifierInfo> {
    const { info, holder } = await this.write(() => {
      const now = this.clock.now();
      const rec = this.mustFind(identifier);
      if (!rec.holder) return { info: infoOf(rec, now, this.rules), holder: null };
      return { info: this.freeRecord(rec, now, now + this.rules.cooldownMs, 'force_released'), holder: rec.holder.clientId };
    }, true);
    if (holder !== null) this.emitOwnership('force_released', identifier, holder, info.epoch);
    return info;
  }

  /**
   * One reaper sweep: leases whose last liveness is a full TTL old are reclaimed into
   * cooling, in bounded batches. Nothing is reclaimed during the start-up grace, nor when the
   * mass-expiry guard holds, unless `force`. Concurrent calls share one sweep.
   */
  reap(opts: { force?: boolean } = {}): Promise<ReapResult> {
    if (this.sweeping) return this.sweeping;
    this.sweeping = this.sweep(opts.force ?? false).finally(() => {
      this.sweeping = null;
    });
    return this.sweeping;
  }

  private async sweep(force: boolean): Promise<ReapResult> {
    await this.flushRenewals(); // expiry is judged on every liveness answered so far
    const started = this.clock.now();
    const cutoff = expiryCutoff(started, this.rules.ttlMs);
    const { expired, leased } = await this.store.read(() => ({
      expired: this.store.countExpired(cutoff),
      leased: this.store.countLeased(),
    }));
    let reason: string | null = null;
    let held = false;
    const graceLeftMs = this.startedAt + this.rules.graceMs - started;
    if (!force && graceLeftMs > 0) {
      reason = `startup grace: no reclaim for another ${Math.ceil(graceLeftMs / 1000)}s`;
    } else if (!force) {
      reason = guardReason(expired, leased, this.rules);
      held = reason !== null;
    }
    let reclaimed = 0;
    if (reason === null && expired > 0) reclaimed = await this.reclaimExpired(cutoff);
    const finished = this.clock.now();
    this.reaper = { lastRunAt: finished, lastReclaimed: reclaimed, held, reason };
    this.observe({ type: 'sweep', reclaimed, expired, leased, held, reason, forced: force, durationMs: finished - started });
    return { reclaimed, held, reason };
  }

  /** Reclaims in batches, each its own transaction, re-checking expiry inside it. */
  private async reclaimExpired(cutoff: number): Promise<number> {
    let total = 0;
    for (;;) {
      const batch = await this.write(() => {
        const now = this.clock.now();
        return this.store.reclaimExpired(cutoff, this.rules.reapBatchSize, now, now + this.rules.cooldownMs);
      }, true);
      for (const rec of batch) this.emitOwnership('reclaimed', rec.name, rec.holder?.clientId ?? null, rec.epoch);
      total += batch.length;
      if (batch.length < this.rules.reapBatchSize) return total;
    }
  }

  /**
   * After a restart. The registry cannot know how much real time passed while it was down
   * (the wall clock may have been stepped forward), so a cool-down that was running at the
   * last write counts its remaining part again from now: a jump cannot cut it short and hand
   * an identifier to a new VM while its old holder may still be using it.
   */
  async resumeCooldowns(floor: number): Promise<number> {
    const shift = this.clock.now() - floor;
    if (shift <= 0) return 0;
    return this.write(() => this.store.shiftCooldowns(floor, shift), true);
  }

  /**
   * Brings the database in line with the pool file in one transaction: new identifiers are
   * added free, missing ones retired (a held one keeps its lease), returning ones restored.
   * Errors: pool_sync_refused when it would retire more than half of the pool, unless `force`.
   */
  async syncPool(names: readonly string[], fingerprint: string | null = null, opts: { force?: boolean } = {}): Promise<SyncResult> {
    const result = await this.write(() => {
      const existing = new Map(this.store.poolRows().map((r) => [r.name, r]));
      const refusal = opts.force ? null : retireRefusal(retirePlan(existing.values(), names));
      if (refusal !== null) throw new RegistryError('pool_sync_refused', refusal);
      // Recorded with the sync it describes, so a start-up with the same file can skip it.
      this.store.setMeta(POOL_FINGERPRINT, fingerprint ?? '');
      const now = this.clock.now();
      let added = 0;
      let restored = 0;
      let retired = 0;
      names.forEach((name, order) => {
        const row = existing.get(name);
        if (!row) {
          this.store.insertIdentifier(name, order);
          added++;
          return;
        }
        existing.delete(name);
        if (row.retired) {
          this.store.setRetired(row.rowId, false, order);
          this.store.appendHistory(row.rowId, now, 'restored', row.clientId, row.epoch);
          restored++;
        } else if (row.poolOrder !== order) {
          this.store.setPoolOrder(row.rowId, order);
        }
      });
      for (const row of existing.values()) {
        if (row.retired) continue;
        this.store.setRetired(row.rowId, true, row.poolOrder);
        this.store.appendHistory(row.rowId, now, 'retired', row.clientId, row.epoch);
        retired++;
      }
      return { total: names.length, added, retired, restored };
    }, true);
    this.poolProblem = null;
    this.observe({ type: 'pool_synced', result });
    return result;
  }

  /**
   * What became of the last pool reload (SIGHUP): null when it succeeded, else why it did
   * not. /health is degraded with that reason until a reload or sync succeeds.
   */
  notePoolReload(problem: string | null): void {
    this.poolProblem = problem;
  }

  /** The fingerprint of the pool file last synced, if it was recorded. */
  poolFingerprint(): Promise<string | null> {
    return this.store.read(() => this.store.meta(POOL_FINGERPRINT) || null);
  }

  // ---- reads ----

  /** Errors: client_not_found. */
  async leaseOfClient(clientId: string): Promise<Lease> {
    const rec = await this.store.read(() => this.store.byClient(clientId));
    const lease = rec ? leaseOf(this.current(rec), this.rules) : null;
    if (!lease) throw new RegistryError('client_not_found', `client ${clientId} holds no identifier`);
    return lease;
  }

  /** Errors: identifier_not_found. */
  async identifier(name: string): Promise<IdentifierInfo> {
    return this.store.read(() => infoOf(this.current(this.mustFind(name)), this.clock.now(), this.rules));
  }

  /** Errors: identifier_not_found. */
  async history(name: string): Promise<HistoryEntry[]> {
    return this.store.read(() => this.store.history(this.mustFind(name).rowId));
  }

  /** Errors: invalid_request when `after` names no identifier. */
  async list(filter: ListFilter): Promise<ListPage> {
    return this.store.read(() => {
      const now = this.clock.now();
      let after: IdentifierRecord | null = null;
      if (filter.after !== null) {
        after = this.store.byName(filter.after);
        if (!after) throw new RegistryError('invalid_request', `after: no identifier ${filter.after}`);
      }
      // One row past the page tells whether there is a next page.
      const recs = this.store.list({
        status: filter.status,
        now,
        after: after ? { poolOrder: after.poolOrder, rowId: after.rowId } : null,
        limit: filter.limit === null ? null : filter.limit + 1,
      });
      const more = filter.limit !== null && recs.length > filter.limit;
      const page = more ? recs.slice(0, filter.limit ?? 0) : recs;
      return {
        items: page.map((r) => infoOf(this.current(r), now, this.rules)),
        next: more ? (page[page.length - 1]?.name ?? null) : null,
      };
    });
  }

  /** Errors: unavailable when the database cannot be read or cannot take writes. */
  async health(): Promise<Health> {
    return this.store.read(() => {
      const problem = this.store.healthProblem();
      if (problem) throw new RegistryError('unavailable', problem);
      const now = this.clock.now();
      const c = this.store.counts(now);
      return {
        nowMs: now,
        uptimeMs: now - this.startedAt,
        oldestLastSeen: this.store.oldestLastSeen(),
        pool: { total: c.total, leased: c.leased, cooling: c.cooling, retired: c.retired, free: c.total - c.leased - c.cooling - c.retired },
        reaper: this.reaper,
        poolProblem: this.poolProblem,
      };
    });
  }

  reaperState(): ReaperState {
    return this.reaper;
  }

  uptimeMs(): number {
    return this.clock.now() - this.startedAt;
  }

  /** Writes pending renewals; resolves once they are committed. */
  flushRenewals(): Promise<void> {
    if (this.pendingTimer) clearTimeout(this.pendingTimer);
    this.pendingTimer = null;
    if (this.pending.size === 0) return Promise.resolve();
    // Queued as a write of its own, ahead of whatever comes next, so a refused write's
    // rollback cannot take the renewals with it.
    return this.store.write(() => {
      for (const [rowId, p] of this.pending) this.store.renew(rowId, p.clientId, p.at);
      this.pending.clear();
    }, false).catch((e: unknown) => {
      // Not written (the database is locked or failing): they stay pending; try again soon.
      this.scheduleRenewalFlush();
      throw e;
    });
  }

  private scheduleRenewalFlush(): void {
    this.pendingTimer ??= setTimeout(() => void this.flushRenewals().catch(() => {}), RENEWAL_FLUSH_MS);
  }

  /** Writes pending renewals and stops taking time from the event loop. */
  close(): Promise<void> {
    return this.flushRenewals();
  }

  /** Every write but a renewal: pending renewals go first, in the same commit. */
  private write<T>(fn: () => T, durable: boolean): Promise<T> {
    if (this.pending.size > 0) void this.flushRenewals().catch(() => {});
    return this.store.write(fn, durable);
  }

  // ---- helpers (inside a transaction) ----

  /** The record as the registry knows it: with a renewal not yet written. */
  private current(rec: IdentifierRecord): IdentifierRecord {
    const p = this.pending.get(rec.rowId);
    if (!p || !rec.holder || rec.holder.clientId !== p.clientId || rec.holder.lastSeen >= p.at) return rec;
    return { ...rec, holder: { ...rec.holder, lastSeen: p.at } };
  }

  private mustFind(name: string): IdentifierRecord {
    const rec = this.store.byName(name);
    if (!rec) throw new RegistryError('identifier_not_found', `no identifier ${name} in the pool`);
    return rec;
  }

  private leaseAfterRenew(rec: IdentifierRecord, now: number): Lease {
    const h = rec.holder;
    if (!h) throw new Error('renewed a record without holder');
    const lastSeen = Math.max(h.lastSeen, now);
    return {
      identifier: rec.name, clientId: h.clientId, epoch: rec.epoch,
      allocatedAt: h.allocatedAt, lastSeen, expiresAt: lastSeen + this.rules.ttlMs, fenceAfterMs: fenceAfterMs(this.rules),
    };
  }

  private freeRecord(rec: IdentifierRecord, now: number, availableAt: number, event: HistoryEvent): IdentifierInfo {
    this.store.free(rec.rowId, availableAt);
    this.store.appendHistory(rec.rowId, now, event, rec.holder?.clientId ?? null, rec.epoch);
    return infoOf({ ...rec, holder: null, availableAt }, now, this.rules);
  }

  private emitOwnership(event: HistoryEvent, identifier: string, clientId: string | null, epoch: number): void {
    this.observe({ type: 'ownership', event, identifier, clientId, epoch });
  }
}

export interface OpenOptions {
  readonly store: Store;
  readonly source: TimeSource;
  readonly rules: RegistryRules;
  readonly observe?: RegistryObserver;
}

/**
 * Start-up: registry time resumes from the latest time in the database (never earlier), then
 * advances by the monotonic clock; cool-downs in progress are resumed.
 */
export async function openRegistry(opts: OpenOptions): Promise<Registry> {
  const floor = opts.store.latestTime();
  const registry = new Registry({
    store: opts.store,
    clock: anchoredClock(opts.source, floor),
    rules: opts.rules,
    ...(opts.observe ? { observe: opts.observe } : {}),
  });
  await registry.resumeCooldowns(floor);
  return registry;
}
