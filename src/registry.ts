/**
 * The use cases of the registry (the etcd "lessor" analogue), written once against the Store
 * interface. Each write is one store transaction that reads the current state and decides on
 * it, so uniqueness rests on the store (SQLite's write lock, PostgreSQL's row locks), never on
 * this process's memory: any number of processes may share a store. Nothing another process
 * must respect (a renewal, the time, a cool-down, the guard's state) lives only here.
 */
import { randomUUID } from 'node:crypto';
import { StepDetector } from './clock.js';
import type { TimeSource } from './clock.js';
import { RegistryError } from './domain/errors.js';
import { graceLeftMs, graceRestarts } from './domain/grace.js';
import { hashHolderKey } from './domain/holder-key.js';
import { GUARD_AT_REST, allocateConflict, assertOwner, decideSweep, fenceAfterMs, guardCountFrom, infoOf, leaseCooldownMs, leaseOf, recordOf, timingProblem } from './domain/lease.js';
import type { ConflictReason, GuardMemory, GuardRules, LeaseRules, SweepDecision } from './domain/lease.js';
import { retirePlan, retireRefusal } from './domain/pool-sync.js';
import type {
  HistoryEntry, HistoryEvent, IdentifierInfo, IdentifierRecord, InstanceInfo, Lease, PoolCounts, ReaperState, RecordTuple, Status, SyncResult,
} from './domain/types.js';
import type { AwsEvent, AwsEventType } from './aws/events.js';
import type { FreeEntry, GrantClaim, HeldProof, ListJson, ListingReader, OffLoopPage, RawCounts, Reader, Store, Tx } from './store/types.js';

export interface RegistryRules extends LeaseRules, GuardRules {
  /** No reclaim before the service has been up this long. */
  readonly graceMs: number;
  /** Leases reclaimed per transaction; the event loop gets a turn between batches. */
  readonly reapBatchSize: number;
}

/** What happened, for logs and metrics. Observers must not throw. */
export type RegistryEvent =
  | { readonly type: 'ownership'; readonly event: HistoryEvent; readonly identifier: string; readonly clientId: string | null; readonly epoch: number }
  | { readonly type: 'renewed'; readonly identifier: string; readonly clientId: string }
  /** An allocate refused because its client id holds a lease under another key (or the other side of none). */
  | { readonly type: 'holder_conflict'; readonly identifier: string; readonly clientId: string; readonly reason: ConflictReason }
  | { readonly type: 'sweep'; readonly reclaimed: number; readonly expired: number; readonly leased: number; readonly held: boolean; readonly reason: string | null; readonly forced: boolean; readonly durationMs: number }
  | { readonly type: 'clock_step'; readonly stepMs: number }
  /** An AWS event acted on or acknowledged (POST /events/aws); `earlyMs`: how much sooner than the reaper a released identifier is allocatable. */
  | {
    readonly type: 'aws_event'; readonly eventType: AwsEventType; readonly outcome: AwsEventOutcome; readonly eventId: string;
    readonly instanceId: string | null; readonly identifier: string | null; readonly earlyMs: number | null;
  }
  | { readonly type: 'pool_synced'; readonly result: SyncResult };

export type RegistryObserver = (e: RegistryEvent) => void;

/** What an allocate carries beyond its client id. */
export interface AllocateClaim {
  /** The holder key the VM chose (docs/api.md, "Holder keys"); only its hash is kept. Null or absent: none. */
  readonly key?: string | null;
  /** What a verified identity document proved about the instance; null or absent: not attested. */
  readonly instance?: InstanceInfo | null;
}

/** What a liveness or release carries beyond its client id, identifier and epoch. */
export interface HolderProof {
  /** The key the lease was granted with; null or absent: none. */
  readonly key?: string | null;
  /** The holder's watermark (a whole number below 2^53); null or absent: none. */
  readonly watermark?: number | null;
}

function heldProof(p: HolderProof): HeldProof {
  const key = p.key ?? null;
  return { keyHash: key === null ? null : hashHolderKey(key), watermark: p.watermark ?? null };
}

const CONFLICT_WHY: Readonly<Record<ConflictReason, string>> = {
  other_key: 'under another key',
  no_key: 'under a key, and this request sends none',
  key_on_keyless: 'without a key, and this request sends one',
};

export interface ListFilter {
  readonly status: Status | null;
  /** Start after this identifier, or after this position of the pool order (a previous page's `cursor`). */
  readonly after: string | ListCursor | null;
  readonly limit: number | null;
}

/** A position in the pool order: the pool order and row id of the last row seen. */
export interface ListCursor {
  readonly poolOrder: number;
  readonly rowId: number;
}

export interface ListPage {
  readonly items: IdentifierInfo[];
  /** The identifier to pass as `after` for the next page, or null on the last page. */
  readonly next: string | null;
}

/**
 * A page of the listing, for the HTTP layer to write out without an object per row
 * (http/views.ts, identifierViewsJson). Either the store wrote it already (`json`, SQLite) or
 * it comes as the store's rows; either way its views are those of `list`'s items,
 * `identifierView(infoOf(recordOf(row), now, rules))`.
 */
export interface ListedPage {
  /** The page's identifier views as the members of a JSON array (UTF-8, no brackets), when the store wrote them; else null. */
  readonly json: Buffer | null;
  /** The page's rows when `json` is null (else empty). */
  readonly rows: readonly RecordTuple[];
  /** Registry time of the page's read. */
  readonly now: number;
  readonly rules: LeaseRules;
  /** Where the next page starts (`name` as `after` in a URL, `cursor` as `after` here), or null on the last page. */
  readonly next: { readonly name: string; readonly cursor: ListCursor } | null;
}

/** A page of an identifier's history, oldest first. */
export interface HistoryPage {
  readonly entries: HistoryEntry[];
  /** Where the next page starts (`after` in a URL and here) when more follow, else null. */
  readonly next: number | null;
}

/**
 * What an AWS event did: `released` (a lease ended: its instance terminated), `noted` (its
 * instance is about to go: history only), `no_lease` (the instance holds nothing), `duplicate`
 * (this event id was acted on already: nothing changed), `ignored` (an event that ends nothing).
 */
export type AwsEventOutcome = 'released' | 'noted' | 'no_lease' | 'duplicate' | 'ignored';

export interface AwsEventResult {
  readonly released: number;
  readonly noted: number;
  readonly outcome: AwsEventOutcome;
}

/** How long an event id is remembered, so a redelivery changes nothing (EventBridge retries for up to 24 hours). */
export const AWS_EVENT_RETENTION_MS = 24 * 60 * 60 * 1000;

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
  /** Why this process's last pool reload failed or was refused, until one succeeds. */
  readonly poolProblem: string | null;
}

export interface RegistryDeps {
  readonly store: Store;
  readonly rules: RegistryRules;
  readonly observe?: RegistryObserver;
  /** The machine's clocks, to notice a step of the wall clock (a sign of lost time). */
  readonly source?: TimeSource;
}

const POOL_FINGERPRINT = 'pool_fingerprint';
const REAPER_STATE = 'reaper_state';
const SERVICE_UP_SINCE = 'service_up_since';
const CLOCK_STEP_AT = 'clock_step_at';
const GUARD_MEMORY = 'guard_memory';
const MINUTE = 60_000;
/** History entries one pruning transaction deletes at most: a few milliseconds of work. */
const PRUNE_BATCH = 1000;
/** Pruning transactions one pruneHistory call runs at most. */
const PRUNE_MAX_BATCHES = 100;
/** How often an instance beats (see domain/grace.ts, SERVICE_GAP_MS, for how stale the last beat may be). */
export const BEAT_INTERVAL_MS = 1000;
/** A step of the wall clock against registry time larger than this is a sign of lost time. */
const CLOCK_STEP_MS = 1000;

const NO_SWEEP: ReaperState = { lastRunAt: null, lastReclaimed: 0, held: false, reason: null };

function parseReaperState(raw: string | null): ReaperState {
  if (raw === null) return NO_SWEEP;
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v !== 'object' || v === null) return NO_SWEEP;
    const o: Record<string, unknown> = { ...v };
    return {
      lastRunAt: typeof o['lastRunAt'] === 'number' ? o['lastRunAt'] : null,
      lastReclaimed: typeof o['lastReclaimed'] === 'number' ? o['lastReclaimed'] : 0,
      held: o['held'] === true,
      reason: typeof o['reason'] === 'string' ? o['reason'] : null,
    };
  } catch {
    return NO_SWEEP;
  }
}

/** The guard's memory as stored (JSON); at rest when missing or unreadable. */
function parseGuardMemory(raw: string | null): GuardMemory {
  if (raw === null) return GUARD_AT_REST;
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v !== 'object' || v === null) return GUARD_AT_REST;
    const o: Record<string, unknown> = { ...v };
    const countFrom = typeof o['countFrom'] === 'number' ? o['countFrom'] : 0;
    const t = o['tripped'];
    if (typeof t !== 'object' || t === null) return { tripped: null, countFrom };
    const trip: Record<string, unknown> = { ...t };
    const at = trip['at'];
    const expired = trip['expired'];
    const of = trip['of'];
    if (typeof at !== 'number' || typeof expired !== 'number' || typeof of !== 'number') return { tripped: null, countFrom };
    return { tripped: { at, expired, of }, countFrom };
  } catch {
    return GUARD_AT_REST;
  }
}

function numberOrNull(raw: string | null): number | null {
  if (raw === null) return null;
  const n = Number(raw);
  return Number.isFinite(n) ? n : null;
}

export class Registry {
  readonly instanceId = randomUUID();
  readonly startedAt: number;
  private readonly store: Store;
  private readonly rules: RegistryRules;
  private readonly observe: RegistryObserver;
  private readonly steps: StepDetector | null;
  /** The latest time a VM's request reached this process; written with every beat. */
  private fleetSeenAt: number | null = null;
  /** A step of the wall clock this process saw and has not yet written to the store. */
  private stepSeenAt: number | null = null;
  /** The sweep running now, and the one queued behind it (forced or not). */
  private running: { readonly force: boolean; readonly done: Promise<ReapResult> } | null = null;
  private queued: { readonly force: boolean; readonly done: Promise<ReapResult> } | null = null;
  private lastReaper: ReaperState = NO_SWEEP;
  /** Why the last pool reload (SIGHUP to this process) failed or was refused; null once one succeeds. */
  private poolProblem: string | null = null;

  constructor(deps: RegistryDeps) {
    const { ttlMs, cooldownMs, graceMs } = deps.rules;
    const problem = timingProblem({ ttlMs, cooldownMs, graceMs });
    if (problem !== null) throw new Error(`registry rules: ${problem}`);
    this.store = deps.store;
    this.rules = deps.rules;
    this.observe = deps.observe ?? (() => {});
    this.startedAt = deps.store.clock.now();
    this.steps = deps.source ? new StepDetector(deps.source, deps.store.clock) : null;
    this.steps?.check();
  }

  now(): number {
    return this.store.clock.now();
  }

  /**
   * Joins the service: when no other instance has beaten lately, the service is (re)starting
   * and the start-up grace runs from now; otherwise it has been up, and this instance restarting
   * while others serve changes nothing.
   */
  async open(opts: { readonly serviceRestarted?: boolean } = {}): Promise<void> {
    // After a reboot of the (one) host, every process on the store was down, whatever the
    // beats' times say: registry time may have been clamped to the last of them.
    const serviceRestarted = opts.serviceRestarted ?? false;
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
      const lease: Lease = {
        identifier: next.name, clientId, epoch, allocatedAt: now, lastSeen: now, expiresAt: now + this.rules.ttlMs,
        fenceAfterMs: fenceAfterMs({ cooldownMs: fence }), watermark: next.watermark ?? null, instance: grantClaim.instance,
      };
      return { lease, granted: true };
    }, { durable: true });
    if (!out) throw new RegistryError('pool_exhausted', 'no identifier is free: every one is leased, cooling down or retired');
    if ('conflict' in out) throw this.conflict(clientId, out.conflict, out.rec, out.now);
    if (out.granted) this.emitOwnership('allocated', out.lease.identifier, clientId, out.lease.epoch);
    return out.lease;
  }

  /** The refusal of an allocate by a second claimant of a client id, told when it may ask again. */
  private conflict(clientId: string, reason: ConflictReason, rec: IdentifierRecord, now: number): RegistryError {
    const lastSeen = rec.holder?.lastSeen ?? now;
    const retryAfterSeconds = Math.max(1, Math.ceil((lastSeen + this.rules.ttlMs - now) / 1000));
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
      const info = await this.freeRecord(tx, rec, tx.now + leaseCooldownMs(rec.holder, this.rules), 'force_released');
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
      const cooldownMs = leaseCooldownMs(rec.holder, this.rules);
      const availableAt = attested ? tx.now : tx.now + cooldownMs;
      await this.freeRecord(tx, rec, availableAt, 'terminated');
      // When the reaper would have made it allocatable: a TTL after its last liveness, then a cool-down.
      const reaperAt = rec.holder.lastSeen + this.rules.ttlMs + cooldownMs;
      return { outcome: 'released' as const, rec, earlyMs: reaperAt - availableAt };
    }, { durable: true });
    if (out.outcome === 'released' && out.rec?.holder) this.emitOwnership('terminated', out.rec.name, out.rec.holder.clientId, out.rec.epoch);
    this.observeAws(e, out.outcome, out.rec?.name ?? null, out.earlyMs);
    return { released: out.outcome === 'released' ? 1 : 0, noted: out.outcome === 'noted' ? 1 : 0, outcome: out.outcome };
  }

  private observeAws(e: AwsEvent, outcome: AwsEventOutcome, identifier: string | null, earlyMs: number | null): void {
    this.observe({ type: 'aws_event', eventType: e.type, outcome, eventId: e.eventId, instanceId: e.instanceId ?? null, identifier, earlyMs });
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

  private async sweep(force: boolean): Promise<ReapResult> {
    const started = this.store.clock.now();
    this.noticeClockStep(started);
    let first: { decision: SweepDecision; cutoff: number; expired: number; leased: number; reclaimed: IdentifierRecord[]; limit: number } | null = null;
    // Another instance sweeping holds the sweep lock; a forced sweep waits for it.
    // The batches need not each wait for the disk: the sweep's last write below is durable, and
    // a commit on disk brings every earlier one with it (SQLite's WAL and PostgreSQL's are
    // appended in order). A crash before that loses reclaims, never grants: a lost reclaim
    // leaves the lease with its dead holder, to be reclaimed again; and nothing can grant a
    // reclaimed identifier without a durable commit of its own after it.
    for (let attempt = 0; first === null; attempt++) {
      first = await this.store.write((tx) => this.decideAndReclaim(tx, force), { durable: false });
      if (first === null && (!force || attempt >= 100)) {
        return { reclaimed: 0, held: false, reason: 'another instance is sweeping' };
      }
      if (first === null) await new Promise((r) => setTimeout(r, 50));
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
        if ((await this.checkIn(tx, false)) > 0 && !force) return null;
        return tx.reclaimExpired(cutoff, limit, tx.now, this.rules.cooldownMs);
      }, { durable: false });
      if (batch === null) break;
      this.emitReclaimed(batch);
      reclaimed += batch.length;
      more = batch.length === limit;
    }
    const finished = this.store.clock.now();
    const state: ReaperState = { lastRunAt: finished, lastReclaimed: reclaimed, held: decision.held, reason: decision.reason };
    this.lastReaper = state;
    // Durable: the sweep is answered (and logged as done) once all of its reclaims are on disk.
    await this.store.write((tx) => tx.setMeta(REAPER_STATE, JSON.stringify(state)), { durable: true });
    this.observe({
      type: 'sweep', reclaimed, expired: first.expired, leased: first.leased, held: decision.held, reason: decision.reason,
      forced: force, durationMs: finished - started,
    });
    return { reclaimed, held: decision.held, reason: decision.reason };
  }

  /** The sweep's decision and its first batch, in one transaction: one guard decision per sweep across instances. */
  private async decideAndReclaim(tx: Tx, force: boolean) {
    if (!(await tx.trySweepLock())) return null;
    const now = tx.now;
    // Checked in before deciding: a sweep that runs first after a gap in service starts the grace itself.
    const graceLeft = await this.checkIn(tx, false);
    if (this.stepSeenAt !== null) {
      // Never over a newer step another process recorded.
      const stored = numberOrNull(await tx.meta(CLOCK_STEP_AT));
      if (stored === null || stored < this.stepSeenAt) await tx.setMeta(CLOCK_STEP_AT, String(this.stepSeenAt));
    }
    const cutoff = now - this.rules.ttlMs;
    const storedGuard = await tx.meta(GUARD_MEMORY);
    const guard = parseGuardMemory(storedGuard);
    const [expired, leased, reclaimedInTtl, reclaimedInMinute, refused, fleetSeenAt, stepAt] = [
      await tx.countExpired(cutoff),
      await tx.countLeased(),
      await tx.countEvents('reclaimed', guardCountFrom(now, this.rules.ttlMs, guard)),
      await tx.countEvents('reclaimed', now - MINUTE),
      await tx.countRefusedClients(now - MINUTE),
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
      ttlMs: this.rules.ttlMs,
    }, this.rules);
    // Kept with the decision, under the sweep lock: every instance's next sweep starts from it.
    const keep = JSON.stringify(decision.guard);
    if (keep !== (storedGuard ?? JSON.stringify(GUARD_AT_REST))) await tx.setMeta(GUARD_MEMORY, keep);
    await tx.pruneRefusals(now - 2 * MINUTE);
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
    for (const rec of recs) this.emitOwnership('reclaimed', rec.name, rec.holder?.clientId ?? null, rec.epoch);
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
    const keepMs = Math.max(opts.retentionMs, this.rules.ttlMs, MINUTE);
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

  /**
   * Brings the store in line with the pool file in one transaction: new identifiers are
   * added free, missing ones retired (a held one keeps its lease), returning ones restored.
   * Errors: pool_sync_refused when it would retire more than half of the pool, unless `force`.
   */
  async syncPool(names: readonly string[], fingerprint: string | null = null, opts: { force?: boolean } = {}): Promise<SyncResult> {
    const result = await this.store.write(async (tx) => {
      const existing = new Map((await tx.poolRows()).map((r) => [r.name, r]));
      const refusal = opts.force ? null : retireRefusal(retirePlan(existing.values(), names));
      if (refusal !== null) throw new RegistryError('pool_sync_refused', refusal);
      // Recorded with the sync it describes, so a start-up with the same file can skip it.
      await tx.setMeta(POOL_FINGERPRINT, fingerprint ?? '');
      const now = tx.now;
      const added: { name: string; poolOrder: number }[] = [];
      let restored = 0;
      let retired = 0;
      for (const [order, name] of names.entries()) {
        const row = existing.get(name);
        if (!row) {
          added.push({ name, poolOrder: order });
          continue;
        }
        existing.delete(name);
        if (row.retired) {
          await tx.setRetired(row.rowId, false, order);
          await tx.appendHistory(row.rowId, now, 'restored', row.clientId, row.epoch);
          restored++;
        } else if (row.poolOrder !== order) {
          await tx.setPoolOrder(row.rowId, order);
        }
      }
      await tx.insertIdentifiers(added);
      for (const row of existing.values()) {
        if (row.retired) continue;
        await tx.setRetired(row.rowId, true, row.poolOrder);
        await tx.appendHistory(row.rowId, now, 'retired', row.clientId, row.epoch);
        retired++;
      }
      return { total: names.length, added: added.length, retired, restored };
    }, { durable: true });
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
    return this.store.read(async (r) => (await r.meta(POOL_FINGERPRINT)) || null);
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

  /** Errors: invalid_request when `after` names no identifier. */
  async list(filter: ListFilter): Promise<ListPage> {
    const page = await this.readPage(filter, false);
    return {
      items: page.rows.map((row) => infoOf(recordOf(row), page.now, this.rules)),
      next: page.next?.name ?? null,
    };
  }

  /**
   * `list` for the HTTP layer to write out: written as JSON by the store where it can (SQLite),
   * else as the store's rows. A page of free or cooling identifiers is read by the store's
   * listing reader when it has one (SQLite on a file: off the event loop), since finding its
   * rows may walk far through the pool: which identifiers are cooling depends on the time, so
   * no index holds just them (69 ms for a page of cooling ones behind 140,000 free ones). Other
   * pages walk an index of just their rows: a page's work, read here.
   * Errors: invalid_request when `after` names no identifier.
   */
  async listPage(filter: ListFilter): Promise<ListedPage> {
    return (await this.pageOffLoop(filter)) ?? this.readPage(filter, true);
  }

  /** The listing reader, once it can take work; null when the store has none or it cannot start. */
  private async readyReader(): Promise<ListingReader | null> {
    const reader = this.store.listingReader?.() ?? null;
    if (reader === null) return null;
    return reader.ready || (await reader.whenReady()) ? reader : null;
  }

  /** `filter`'s page read by the listing reader; null when there is none or it cannot read this page (read it here). */
  private async pageOffLoop(filter: ListFilter): Promise<ListedPage | null> {
    if (filter.limit === null || (filter.status !== 'free' && filter.status !== 'cooling')) return null;
    const reader = await this.readyReader();
    if (reader === null) return null;
    let after: ListCursor | null;
    if (typeof filter.after === 'string') {
      const name = filter.after;
      const rec = await this.store.read((r) => r.byName(name));
      if (!rec) throw new RegistryError('invalid_request', `after: no identifier ${name}`);
      after = { poolOrder: rec.poolOrder, rowId: rec.rowId };
    } else {
      after = filter.after;
    }
    const now = this.store.clock.now();
    const view = { ttlMs: this.rules.ttlMs, cooldownMs: this.rules.cooldownMs };
    let page: OffLoopPage | null;
    try {
      page = await reader.page({ status: filter.status, now, after, limit: filter.limit }, view, () => {});
    } catch {
      return null; // the reader failed: the store's own read answers, or says why it cannot
    }
    if (page === null) return null;
    const n = page.next;
    return { json: page.members, rows: page.rows, now, rules: this.rules, next: n ? { name: n.name, cursor: { poolOrder: n.poolOrder, rowId: n.rowId } } : null };
  }

  /**
   * The pages of the full listing after `after` (the first page's cursor), read ahead of the
   * caller by up to `ahead` pages, `limit` rows each: by the store's listing reader when it has
   * one (SQLite on a file: worker threads, so the next pages are read while this one is sent),
   * else with listPage on this thread (also while the reader starts, for a page it cannot
   * read, and for the rest of the listing once it failed: from the first page not yet taken). Each page is
   * its own read snapshot, as listPage's are, and starts where the one before it ended in that
   * page's snapshot. Stopping the iteration (a client gone) asks for no more pages; those being
   * read are dropped when they arrive.
   */
  async *pagesAfter(status: Status | null, after: ListCursor, opts: { limit: number; ahead?: number }): AsyncGenerator<ListedPage> {
    const ahead = opts.ahead ?? 2;
    let reader = this.store.listingReader?.() ?? null;
    const view = { ttlMs: this.rules.ttlMs, cooldownMs: this.rules.cooldownMs };
    type OnNext = (next: ListCursor | null) => void;
    const here = async (cursor: ListCursor, onNext: OnNext): Promise<ListedPage> => {
      const page = await this.readPage({ status, after: cursor, limit: opts.limit }, true);
      onNext(page.next?.cursor ?? null);
      return page;
    };
    const read = async (cursor: ListCursor, onNext: OnNext): Promise<ListedPage> => {
      const r = reader;
      if (r === null || !r.ready) return here(cursor, onNext);
      const now = this.store.clock.now();
      const q = { status, now, after: cursor, limit: opts.limit };
      const page = await r.page(q, view, (n) => onNext(n ? { poolOrder: n.poolOrder, rowId: n.rowId } : null));
      if (page === null) return here(cursor, onNext);
      const n = page.next;
      return { json: page.members, rows: page.rows, now, rules: this.rules, next: n ? { name: n.name, cursor: { poolOrder: n.poolOrder, rowId: n.rowId } } : null };
    };
    // Pages asked for and not yet taken, in order; where the next one starts (undefined: not
    // known yet, null: no more); `round` tells a discarded read's late news from the current.
    let slots: { readonly cursor: ListCursor; readonly page: Promise<ListedPage> }[] = [];
    let next: ListCursor | null | undefined = after;
    let round = 0;
    let stopped = false;
    const ask = (): void => {
      while (!stopped && next !== undefined && next !== null && slots.length < ahead) {
        const cursor: ListCursor = next;
        const mine = round;
        next = undefined;
        const page = read(cursor, (n) => {
          if (mine !== round || stopped) return;
          next = n;
          ask();
        });
        page.catch(() => {}); // answered where it is taken
        slots.push({ cursor, page });
      }
    };
    try {
      for (;;) {
        ask();
        const slot = slots.shift();
        if (!slot) return;
        let page: ListedPage;
        try {
          page = await slot.page;
        } catch (e) {
          if (reader === null) throw e; // read here, and failed: the store's error ends the listing
          // The reader failed: this page and those read ahead are read again here, from this page's start.
          reader = null;
          round++;
          slots = [];
          next = slot.cursor;
          continue;
        }
        yield page;
      }
    } finally {
      stopped = true;
    }
  }

  private async readPage(filter: ListFilter, written: boolean): Promise<ListedPage> {
    return this.store.read(async (r) => {
      const now = r.now;
      let after: ListCursor | null = null;
      if (typeof filter.after === 'string') {
        const rec = await r.byName(filter.after);
        if (!rec) throw new RegistryError('invalid_request', `after: no identifier ${filter.after}`);
        after = { poolOrder: rec.poolOrder, rowId: rec.rowId };
      } else {
        after = filter.after;
      }
      const q = { status: filter.status, now, after, limit: filter.limit };
      const json = written && r.listJson ? await r.listJson(q, { ttlMs: this.rules.ttlMs, cooldownMs: this.rules.cooldownMs }) : null;
      if (json) {
        const n = json.next;
        return { json: json.members, rows: [], now, rules: this.rules, next: n ? { name: n.name, cursor: { poolOrder: n.poolOrder, rowId: n.rowId } } : null };
      }
      // One row past the page tells whether there is a next page.
      const rows = await r.listRows({ ...q, limit: filter.limit === null ? null : filter.limit + 1 });
      const more = filter.limit !== null && rows.length > filter.limit;
      const page = more ? rows.slice(0, filter.limit ?? 0) : rows;
      const last = page[page.length - 1];
      return {
        json: null,
        rows: page,
        now,
        rules: this.rules,
        next: more && last ? { name: last[1], cursor: { poolOrder: last[2], rowId: last[0] } } : null,
      };
    });
  }

  /** Errors: unavailable when the store cannot be read or cannot take writes. */
  async health(): Promise<Health> {
    const problem = await this.store.healthProblem();
    if (problem) throw new RegistryError('unavailable', problem);
    const counted = await this.countsOffLoop();
    return this.store.read(async (r) => {
      const now = counted?.now ?? r.now;
      const c = counted?.counts ?? await r.counts(now);
      return {
        nowMs: now,
        uptimeMs: now - this.startedAt,
        oldestLastSeen: await r.oldestLastSeen(),
        pool: { total: c.total, leased: c.leased, cooling: c.cooling, retired: c.retired, free: c.total - c.leased - c.cooling - c.retired },
        reaper: this.lastReaper = parseReaperState(await r.meta(REAPER_STATE)),
        poolProblem: this.poolProblem,
      };
    });
  }

  /**
   * The pool's counts read by the store's listing reader (SQLite on a file: off the event loop;
   * counting a million identifiers, most of them cooling, took 16-60 ms), at registry time `now`;
   * null when there is none or it failed (count them here).
   */
  private async countsOffLoop(): Promise<{ now: number; counts: RawCounts } | null> {
    const reader = await this.readyReader();
    if (reader === null) return null;
    const now = this.store.clock.now();
    try {
      return { now, counts: await reader.counts(now) };
    } catch {
      return null;
    }
  }

  /** The reaper's last sweep by any instance, as last read (for when the store cannot be read). */
  reaperState(): ReaperState {
    return this.lastReaper;
  }

  uptimeMs(): number {
    return this.store.clock.now() - this.startedAt;
  }

  /** Leaves the service: this instance's beat no longer counts as the service being up. */
  async close(): Promise<void> {
    await Promise.allSettled([this.running?.done, this.queued?.done]);
    await this.store.write(async (tx) => {
      await this.beatIn(tx); // keeps when a VM last reached it
      await tx.forgetInstance(this.instanceId);
    }, { durable: false }).catch(() => {});
  }

  // ---- helpers (inside a transaction) ----

  /**
   * Checks this instance in with the service, in the transaction that then acts on the grace
   * (a beat, a sweep, joining): the grace runs again from now after a gap in service or when
   * the store may have lost acknowledged renewals (domain/grace.ts), and this instance beats.
   * Returns the grace left. Whichever instance, and whichever part of it, looks first records
   * the restart in the store, where every other one reads it: so the store is asked whether it
   * lost writes before the grace is read (on PostgreSQL, a check-in that lost that race waits
   * for the winner's commit there, then reads the grace the winner wrote).
   */
  private async checkIn(tx: Tx, serviceRestarted: boolean): Promise<number> {
    const last = await tx.latestBeat(null);
    const storeLostWrites = await tx.lostAcknowledgedWrites();
    let upSince = numberOrNull(await tx.meta(SERVICE_UP_SINCE));
    if (upSince === null || graceRestarts({ now: tx.now, lastBeatAt: last?.at ?? null, storeLostWrites, serviceRestarted })) {
      upSince = tx.now;
      await tx.setMeta(SERVICE_UP_SINCE, String(upSince));
    }
    await this.beatIn(tx);
    return graceLeftMs(upSince, tx.now, this.rules.graceMs);
  }

  private async beatIn(tx: Tx): Promise<void> {
    await tx.beat({ id: this.instanceId, startedAt: this.startedAt, at: tx.now, fleetSeenAt: this.fleetSeenAt });
  }

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

/**
 * What the store holds of the pool: the fingerprint of the file last synced and how many
 * identifiers are in service. Start-up reads it before building the registry, so an unchanged
 * pool file (a million lines) is neither parsed nor held in memory.
 */
export function storedPool(store: Store): Promise<{ fingerprint: string | null; inService: number }> {
  return store.read(async (r) => {
    const c = await r.counts(r.now);
    return { fingerprint: (await r.meta(POOL_FINGERPRINT)) || null, inService: c.total - c.retired };
  });
}

/** Builds a registry on `store` and joins the service (see Registry.open). */
export async function openRegistry(deps: RegistryDeps, opts: { readonly serviceRestarted?: boolean } = {}): Promise<Registry> {
  const registry = new Registry(deps);
  await registry.open(opts);
  return registry;
}
