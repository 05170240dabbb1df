/**
 * The use cases of the registry (the etcd "lessor" analogue), written once against the Store
 * interface: allocate, renew, release, force release, an AWS event, and the reads. Each write is
 * one store transaction that reads the current state and decides on it, so uniqueness rests on
 * the store (SQLite's write lock, PostgreSQL's row locks), never on this process's memory: any
 * number of processes may share a store. Nothing another process must respect (a renewal, the
 * time, a cool-down, the guard's state) lives only here.
 *
 * The registry is also the facade the HTTP layer and the service call for the rest, kept in
 * modules of their own: this instance's beats and check-in (registry/beats.ts), the reaper's
 * sweep and history pruning (registry/sweep.ts), the pool sync (registry/pool.ts), and the
 * listing and health reads (registry/listing.ts).
 */
import { RegistryError } from './domain/errors.js';
import { hashHolderKey } from './domain/holder-key.js';
import {
  allocateConflict, assertOwner, expiresAt, infoOf, leaseOf, reapedAvailableAt, takenAvailableAt, timingProblem,
} from './domain/lease.js';
import type { ConflictReason } from './domain/lease.js';
import type { HistoryEntry, HistoryEvent, IdentifierInfo, IdentifierRecord, Lease, ReaperState, Status, SyncResult } from './domain/types.js';
import type { AwsEvent } from './aws/events.js';
import type { FreeEntry, GrantClaim, HeldProof, Reader, Store, Tx } from './store/types.js';
import { Beats } from './registry/beats.js';
import { Listing } from './registry/listing.js';
import { PoolSync } from './registry/pool.js';
import { Sweeper } from './registry/sweep.js';
import type {
  AllocateClaim, AwsEventOutcome, AwsEventResult, Health, HistoryPage, HolderProof, ListCursor, ListFilter, ListPage, ListedPage,
  ReapResult, RegistryDeps, RegistryObserver, RegistryRules,
} from './registry/types.js';

export type * from './registry/types.js';
export { BEAT_INTERVAL_MS } from './registry/beats.js';
export { storedPool } from './registry/pool.js';

/** How long an event id is remembered, so a redelivery changes nothing (EventBridge retries for up to 24 hours). */
export const AWS_EVENT_RETENTION_MS = 24 * 60 * 60 * 1000;

function heldProof(p: HolderProof): HeldProof {
  const key = p.key ?? null;
  return { keyHash: key === null ? null : hashHolderKey(key), watermark: p.watermark ?? null };
}

const CONFLICT_WHY: Readonly<Record<ConflictReason, string>> = {
  other_key: 'under another key',
  no_key: 'under a key, and this request sends none',
  key_on_keyless: 'without a key, and this request sends one',
};

/** By default a forced sweep waits for another instance's with a real timer. */
const realWait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Registry {
  readonly instanceId: string;
  readonly startedAt: number;
  private readonly store: Store;
  private readonly rules: RegistryRules;
  private readonly observe: RegistryObserver;
  private readonly beats: Beats;
  private readonly sweeper: Sweeper;
  private readonly pool: PoolSync;
  private readonly listing: Listing;

  constructor(deps: RegistryDeps) {
    const { ttlMs, cooldownMs, graceMs } = deps.rules;
    const problem = timingProblem({ ttlMs, cooldownMs, graceMs });
    if (problem !== null) throw new Error(`registry rules: ${problem}`);
    this.store = deps.store;
    this.rules = deps.rules;
    this.observe = deps.observe ?? (() => {});
    this.beats = new Beats(deps.store, graceMs);
    this.instanceId = this.beats.instanceId;
    this.startedAt = this.beats.startedAt;
    this.sweeper = new Sweeper({ ...deps, observe: this.observe, beats: this.beats, wait: deps.wait ?? realWait });
    this.pool = new PoolSync(deps.store, this.observe);
    this.listing = new Listing({
      store: deps.store, rules: deps.rules, startedAt: this.startedAt, reaperState: (r) => this.sweeper.readState(r), poolProblem: () => this.pool.reloadProblem(),
    });
  }

  now(): number {
    return this.store.clock.now();
  }

  /** Joins the service (see Beats.join); `serviceRestarted`: every process on the store was down (a reboot of its host). */
  async open(opts: { readonly serviceRestarted?: boolean } = {}): Promise<void> {
    await this.beats.join(opts.serviceRestarted ?? false);
  }

  /** Tells the others this instance is alive (see Beats.beat); run every BEAT_INTERVAL_MS. */
  beat(): Promise<void> {
    return this.beats.beat();
  }

  /** A VM's request reached this instance (answered or refused): the registry still reaches its fleet. */
  noteFleetRequest(): void {
    this.beats.noteFleetRequest();
  }

  /**
   * Grants `clientId` an identifier: the one it already holds (renewed, same epoch) when asked
   * with the key it was granted with (none for none), else the one it was granted last if
   * allocatable now (sticky), else the allocatable one free the longest, under a new epoch,
   * bound to the claim's key and instance facts.
   * Errors: holder_conflict when the client id holds a lease under another key (or none against
   * a key, or a key against none), with the seconds until that lease could end; pool_exhausted
   * when nothing is allocatable.
   */
  async allocate(clientId: string, claim: AllocateClaim = {}): Promise<Lease> {
    this.noteFleetRequest();
    const key = claim.key ?? null;
    const grantClaim: GrantClaim = { keyHash: key === null ? null : hashHolderKey(key), instance: claim.instance ?? null };
    // The common case in one store call where the engine has one (PostgreSQL: one statement,
    // shared with the allocations queued beside it): a grant to a client that holds nothing.
    // When it grants nothing, the full use case below answers (the held lease, pool_exhausted).
    // The same client asking twice in one batch is granted once: the other answer is its held
    // lease, as below (no second event).
    const fence = this.rules.cooldownMs;
    const fast = this.store.grantNext ? await this.store.grantNext(clientId, fence, grantClaim) : null;
    if (fast) {
      const lease = this.leaseOfRenewed(fast.rec);
      if (fast.granted) this.emitOwnership('allocated', lease.identifier, clientId, lease.epoch);
      return lease;
    }
    type Answer = { lease: Lease; granted: boolean } | { conflict: ConflictReason; rec: IdentifierRecord; now: number };
    const out = await this.store.write(async (tx): Promise<Answer | null> => {
      const now = tx.now;
      const found = await tx.claimFor(clientId, now);
      const holder = found?.held ? found.rec.holder : null;
      if (found && holder) {
        // Same client, same answer only for the same key: another key is another claimant.
        const conflict = allocateConflict(holder, key);
        if (conflict !== null) return { conflict, rec: found.rec, now };
        const renewed = await tx.renewHeld(found.rec.name, clientId, found.rec.epoch, now, fence, { keyHash: holder.keyHash ?? null, watermark: null });
        return { lease: this.leaseOfRenewed(renewed), granted: false };
      }
      const next = found?.rec;
      if (!next) {
        // Demand the guarded reaper must meet (a churning fleet never stalls the pool).
        await tx.recordRefusal(clientId, now);
        return null;
      }
      const epoch = next.epoch + 1;
      await tx.grant(next.rowId, clientId, epoch, now, fence, grantClaim);
      // The lease as the grant wrote it, read as every other one is (domain leaseOf).
      const granted = { clientId, allocatedAt: now, lastSeen: now, fenceCooldownMs: fence, ...grantClaim };
      return { lease: this.leaseOfRenewed({ ...next, epoch, holder: granted }), granted: true };
    }, { durable: true });
    if (!out) throw new RegistryError('pool_exhausted', 'no identifier is free: every one is leased, cooling down or retired');
    if ('conflict' in out) throw this.conflict(clientId, out.conflict, out.rec, out.now);
    if (out.granted) this.emitOwnership('allocated', out.lease.identifier, clientId, out.lease.epoch);
    return out.lease;
  }

  /** The refusal of an allocate by a second claimant of a client id, told when it may ask again. */
  private conflict(clientId: string, reason: ConflictReason, rec: IdentifierRecord, now: number): RegistryError {
    const lastSeen = rec.holder?.lastSeen ?? now;
    const retryAfterSeconds = Math.max(1, Math.ceil((expiresAt(lastSeen, this.rules) - now) / 1000));
    this.observe({ type: 'holder_conflict', identifier: rec.name, clientId, reason });
    return new RegistryError('holder_conflict',
      // Not which identifier: the claimant that was not granted it is told nothing of the lease but when it may end.
      `client ${clientId} holds a lease ${CONFLICT_WHY[reason]}: two claimants present one client id, and only the one ` +
        `granted it holds it (it may end in ${retryAfterSeconds}s if its holder stays silent)`, { retryAfterSeconds });
  }

  /**
   * Liveness: renews the owner's lease (and raises the identifier's watermark to the one sent).
   * Answered only once the new last_seen is committed, where every process that can reclaim
   * sees it. A lease past its expiry that the reaper has not yet reclaimed is still the owner's.
   * Errors: identifier_not_found, not_owner (another client, or the wrong key or none), stale_epoch.
   */
  async renew(clientId: string, identifier: string, epoch?: number, proof: HolderProof = {}): Promise<Lease> {
    this.noteFleetRequest();
    const held = heldProof(proof);
    const key = proof.key ?? null;
    // The common case in one store call (one statement on PostgreSQL, shared with the renewals
    // queued beside it); when it changed nothing, the full use case says why, or renews a lease
    // granted to this client in between.
    const fence = this.rules.cooldownMs;
    const renewed = await this.store.renewHeld(identifier, clientId, epoch ?? null, fence, held) ?? await this.store.write(async (tx) => {
      const rec = await this.mustFind(tx, identifier);
      assertOwner(rec, clientId, epoch, key);
      return tx.renewHeld(identifier, clientId, epoch ?? null, tx.now, fence, held);
    }, { durable: false });
    this.observe({ type: 'renewed', identifier, clientId });
    return this.leaseOfRenewed(renewed);
  }

  /**
   * The owner gives its identifier back. It is allocatable at once: the owner knows it has
   * stopped using it, so there is nothing to wait for.
   * Errors: identifier_not_found, not_owner, stale_epoch.
   */
  async release(clientId: string, identifier: string, epoch?: number, proof: HolderProof = {}): Promise<IdentifierInfo> {
    this.noteFleetRequest();
    const held = heldProof(proof);
    const key = proof.key ?? null;
    // As renew: the common case in one store call, the full use case when it changed nothing.
    const freed = await this.store.releaseHeld(identifier, clientId, epoch ?? null, held) ?? await this.store.write(async (tx) => {
      const rec = await this.mustFind(tx, identifier);
      assertOwner(rec, clientId, epoch, key);
      return tx.releaseHeld(identifier, clientId, epoch ?? null, tx.now, held);
    }, { durable: true });
    if (!freed) throw new Error('released a lease its owner does not hold');
    this.emitOwnership('released', identifier, clientId, freed.epoch);
    return infoOf(freed, freed.availableAt, this.rules); // freed now: available from now
  }

  /**
   * An operator takes an identifier from its holder. Its holder may still be running, so the
   * identifier cools down before anyone else gets it: for at least the fence window its holder
   * was last told, whatever the setting now. Freeing a free identifier changes nothing.
   * Errors: identifier_not_found.
   */
  async forceRelease(identifier: string): Promise<IdentifierInfo> {
    const { info, holder } = await this.store.write(async (tx) => {
      const rec = await this.mustFind(tx, identifier);
      if (!rec.holder) return { info: infoOf(rec, tx.now, this.rules), holder: null };
      const info = await this.freeRecord(tx, rec, takenAvailableAt(rec.holder, tx.now, this.rules), 'force_released');
      return { info, holder: rec.holder.clientId };
    }, { durable: true });
    if (holder !== null) this.emitOwnership('force_released', identifier, holder, info.epoch);
    return info;
  }

  /**
   * An EventBridge event about an EC2 instance (docs/operations.md, "AWS events"). `terminated`:
   * the lease its instance id holds (as client id) ends now, history `terminated`; free at once
   * when the claim was attested (that instance provably never runs again), cooling as after a
   * force release otherwise (the registry cannot know the client id named that instance).
   * `terminating`: history `terminating`, nothing released. An event id seen before changes
   * nothing (EventBridge delivers at least once); an instance that holds nothing counts 0.
   * One durable transaction: answered once on disk.
   */
  async awsEvent(e: AwsEvent): Promise<AwsEventResult> {
    const instanceId = e.instanceId ?? null;
    if (e.kind === 'other' || instanceId === null) {
      this.observeAws(e, 'ignored', null, null);
      return { released: 0, noted: 0, outcome: 'ignored' };
    }
    const out = await this.store.write(async (tx) => {
      if (!await tx.noteAwsEvent(e.eventId, tx.now)) return { outcome: 'duplicate' as const, rec: null, earlyMs: null };
      await tx.pruneAwsEvents(tx.now - AWS_EVENT_RETENTION_MS);
      const rec = await tx.byClient(instanceId);
      if (!rec?.holder) return { outcome: 'no_lease' as const, rec: null, earlyMs: null };
      if (e.kind === 'terminating') {
        await tx.appendHistory(rec.rowId, tx.now, 'terminating', rec.holder.clientId, rec.epoch);
        return { outcome: 'noted' as const, rec, earlyMs: null };
      }
      const attested = rec.holder.instance !== null && rec.holder.instance !== undefined;
      // Cooling as a force release does: the longer of the setting and the window its holder was told.
      const availableAt = attested ? tx.now : takenAvailableAt(rec.holder, tx.now, this.rules);
      await this.freeRecord(tx, rec, availableAt, 'terminated');
      // Against when the reaper would have made it allocatable: a TTL after its last liveness, then the cool-down.
      return { outcome: 'released' as const, rec, earlyMs: reapedAvailableAt(rec.holder, this.rules) - availableAt };
    }, { durable: true });
    if (out.outcome === 'released' && out.rec?.holder) this.emitOwnership('terminated', out.rec.name, out.rec.holder.clientId, out.rec.epoch);
    this.observeAws(e, out.outcome, out.rec?.name ?? null, out.earlyMs);
    return { released: out.outcome === 'released' ? 1 : 0, noted: out.outcome === 'noted' ? 1 : 0, outcome: out.outcome };
  }

  private observeAws(e: AwsEvent, outcome: AwsEventOutcome, identifier: string | null, earlyMs: number | null): void {
    this.observe({ type: 'aws_event', eventType: e.type, outcome, eventId: e.eventId, instanceId: e.instanceId ?? null, identifier, earlyMs });
  }

  // ---- reads ----

  /** Errors: client_not_found. */
  async leaseOfClient(clientId: string): Promise<Lease> {
    const rec = await this.store.read((r) => r.byClient(clientId));
    const lease = rec ? leaseOf(rec, this.rules) : null;
    if (!lease) throw new RegistryError('client_not_found', `client ${clientId} holds no identifier`);
    return lease;
  }

  /** Errors: identifier_not_found. */
  async identifier(name: string): Promise<IdentifierInfo> {
    return this.store.read(async (r) => infoOf(await this.mustFind(r, name), r.now, this.rules));
  }

  /** Errors: identifier_not_found. */
  async history(name: string): Promise<HistoryEntry[]> {
    return this.store.read(async (r) => r.history((await this.mustFind(r, name)).rowId));
  }

  /**
   * Up to `limit` entries of an identifier's history, oldest first, after the position `after`
   * (a previous page's `next`; null: from the first). A position past the end is an empty page.
   * Errors: identifier_not_found.
   */
  async historyPage(name: string, q: { readonly after: number | null; readonly limit: number }): Promise<HistoryPage> {
    return this.store.read(async (r) => r.historyPage((await this.mustFind(r, name)).rowId, q.after, q.limit));
  }

  /**
   * The pages of an identifier's history after `after` (the first page's `next`), each read as
   * it is asked for, in a read of its own: a history of any length, a bounded page at a time.
   */
  async *historyPagesAfter(name: string, after: number, opts: { readonly limit: number }): AsyncGenerator<HistoryPage> {
    for (let next: number | null = after; next !== null;) {
      const page: HistoryPage = await this.historyPage(name, { after: next, limit: opts.limit });
      yield page;
      next = page.next;
    }
  }

  // ---- the reaper, the pool, the listing (modules of their own) ----

  /** One reaper sweep (see Sweeper.reap). */
  reap(opts: { force?: boolean } = {}): Promise<ReapResult> {
    return this.sweeper.reap(opts);
  }

  /** Deletes ownership history older than `retentionMs` (see Sweeper.pruneHistory); returns how many entries. */
  pruneHistory(opts: { readonly retentionMs: number; readonly batch?: number; readonly maxBatches?: number }): Promise<number> {
    return this.sweeper.pruneHistory(opts);
  }

  /** The reaper's last sweep by any instance, as last read (for when the store cannot be read). */
  reaperState(): ReaperState {
    return this.sweeper.state();
  }

  /** Brings the store in line with the pool file (see PoolSync.sync). Errors: pool_sync_refused. */
  syncPool(names: readonly string[], fingerprint: string | null = null, opts: { force?: boolean } = {}): Promise<SyncResult> {
    return this.pool.sync(names, fingerprint, opts);
  }

  /** What became of the last pool reload (SIGHUP): null when it succeeded, else why not (see PoolSync.noteReload). */
  notePoolReload(problem: string | null): void {
    this.pool.noteReload(problem);
  }

  /** The fingerprint of the pool file last synced, if it was recorded. */
  poolFingerprint(): Promise<string | null> {
    return this.pool.fingerprint();
  }

  /** Errors: invalid_request when `after` names no identifier. */
  list(filter: ListFilter): Promise<ListPage> {
    return this.listing.list(filter);
  }

  /** `list` for the HTTP layer to write out (see Listing.listPage). Errors: invalid_request. */
  listPage(filter: ListFilter): Promise<ListedPage> {
    return this.listing.listPage(filter);
  }

  /** The pages of the full listing after `after`, read ahead (see Listing.pagesAfter). */
  pagesAfter(status: Status | null, after: ListCursor, opts: { limit: number; ahead?: number }): AsyncGenerator<ListedPage> {
    return this.listing.pagesAfter(status, after, opts);
  }

  /** Errors: unavailable when the store cannot be read or cannot take writes. */
  health(): Promise<Health> {
    return this.listing.health();
  }

  uptimeMs(): number {
    return this.store.clock.now() - this.startedAt;
  }

  /** Leaves the service once its sweeps are done: this instance's beat no longer counts as the service being up. */
  async close(): Promise<void> {
    await this.sweeper.settled();
    await this.beats.leave();
  }

  // ---- helpers ----

  private async mustFind(r: Reader, name: string): Promise<IdentifierRecord> {
    const rec = await r.byName(name);
    if (!rec) throw new RegistryError('identifier_not_found', `no identifier ${name} in the pool`);
    return rec;
  }

  /** The lease as a renewal or a grant left it; a row locked and checked before (allocate, the full liveness) cannot have slipped away. */
  private leaseOfRenewed(rec: IdentifierRecord | null): Lease {
    const lease = rec ? leaseOf(rec, this.rules) : null;
    if (!lease) throw new Error('renewed or granted a lease its owner does not hold');
    return lease;
  }

  private async freeRecord(tx: Tx, rec: IdentifierRecord, availableAt: number, event: FreeEntry['event']): Promise<IdentifierInfo> {
    await tx.free(rec.rowId, availableAt, { at: tx.now, event, clientId: rec.holder?.clientId ?? null, epoch: rec.epoch });
    return infoOf({ ...rec, holder: null, availableAt }, tx.now, this.rules);
  }

  private emitOwnership(event: HistoryEvent, identifier: string, clientId: string | null, epoch: number): void {
    this.observe({ type: 'ownership', event, identifier, clientId, epoch });
  }
}

/** Builds a registry on `store` and joins the service (see Registry.open). */
export async function openRegistry(deps: RegistryDeps, opts: { readonly serviceRestarted?: boolean } = {}): Promise<Registry> {
  const registry = new Registry(deps);
  await registry.open(opts);
  return registry;
}
