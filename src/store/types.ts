/**
 * The Store interface the registry speaks (the kine idea: one interface, one SQL dialect per
 * engine behind it). The lease rules live in `domain/` and the use cases in `registry.ts`,
 * written once against `Tx`; each engine says how its transactions do it:
 *  - sqlite/: one connection, the writes of one tick in one BEGIN IMMEDIATE (group commit),
 *    a savepoint per use case, time from the host's clock anchored once per boot in the file;
 *  - postgres/: a pool, one transaction per use case, row locks (FOR UPDATE / SKIP LOCKED),
 *    retried on serialization failures and unique violations, time from the server's clock
 *    plus an offset kept in the database (its steps absorbed: see postgres/clock.ts);
 *    a renewal, a release by its holder and allocate's common case (a grant to a client that
 *    holds nothing) are each one statement, shared by those queued meanwhile.
 *
 * Every method of `Tx` and `Reader` is async so both engines fit; SQLite's resolve at once.
 * A use case given to `write` may run more than once (a retried PostgreSQL transaction), so it
 * must have no effect outside the transaction.
 */
import type { Clock } from '../clock.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, InstanceInfo, RecordTuple, Status } from '../domain/types.js';
import type { ListingCapability } from './listing.js';

/** What a grant records about its holder beyond its client id. */
export interface GrantClaim {
  /** The hash of the key the lease is granted with (domain/holder-key.ts, never the key), or null for none. */
  readonly keyHash: string | null;
  /** What an attested claim proved about the instance, or null. */
  readonly instance: InstanceInfo | null;
}

/** What a liveness or a release by its holder carries beyond its client id and epoch. */
export interface HeldProof {
  /** The hash of the key presented, or null for none: it must be the one the lease was granted with. */
  readonly keyHash: string | null;
  /** The holder's watermark: kept as the identifier's when higher than its own (never lowered); null for none. */
  readonly watermark: number | null;
}

/** No key, no watermark: what a caller that passes no proof presents. */
export const NO_PROOF: HeldProof = Object.freeze({ keyHash: null, watermark: null });
export const NO_CLAIM: GrantClaim = Object.freeze({ keyHash: null, instance: null });

/** An identifier as the pool sync needs to see it. */
export interface PoolRow {
  readonly rowId: number;
  readonly name: string;
  readonly poolOrder: number;
  readonly retired: boolean;
  readonly clientId: string | null;
  readonly epoch: number;
}

export interface ListQuery {
  readonly status: Status | null;
  readonly now: number;
  /** Start after this position (exclusive): the pool order and row id of the last row seen. */
  readonly after: { readonly poolOrder: number; readonly rowId: number } | null;
  /** At most this many rows; null for all. */
  readonly limit: number | null;
}

export interface RawCounts {
  readonly total: number;
  readonly leased: number;
  readonly cooling: number;
  readonly retired: number;
}

/** The history entry of a row being freed by a release or a force release (the reaper frees its own, see reclaimExpired). */
export interface FreeEntry {
  readonly at: number;
  readonly event: 'released' | 'force_released' | 'terminated';
  readonly clientId: string | null;
  readonly epoch: number;
}

/** A page of one identifier's history, oldest first. */
export interface HistoryRows {
  readonly entries: HistoryEntry[];
  /** Where the next page starts (the position of this page's last entry) when more follow, else null. */
  readonly next: number | null;
}

/** One registry process, as the others see it through the store. */
export interface InstanceBeat {
  readonly id: string;
  readonly startedAt: number;
  /** Registry time of this beat. */
  readonly at: number;
  /** The latest time a VM's request (answered or refused) reached this instance; null if none yet. */
  readonly fleetSeenAt: number | null;
}

/** Reads; inside `read` they share one snapshot where the engine can give one. */
export interface Reader {
  /** Registry time of this read or transaction: the store's clock, the same in every process. */
  readonly now: number;
  byName(name: string): Promise<IdentifierRecord | null>;
  byClient(clientId: string): Promise<IdentifierRecord | null>;
  history(rowId: number): Promise<HistoryEntry[]>;
  /**
   * Up to `limit` entries of one identifier's history, oldest first, after the position `after`
   * (an entry's position: increasing in the order entries were written; null: from the first).
   */
  historyPage(rowId: number, after: number | null, limit: number): Promise<HistoryRows>;
  /** Rows in pool order (pool_order, then row id). */
  list(q: ListQuery): Promise<IdentifierRecord[]>;
  /** `list` as tuples: what a listing reads, up to the whole pool, without an object per row. */
  listRows(q: ListQuery): Promise<RecordTuple[]>;
  counts(now: number): Promise<RawCounts>;
  /** The least recent liveness among leases, or null with none. */
  oldestLastSeen(): Promise<number | null>;
  meta(key: string): Promise<string | null>;
  /** The latest beat of any instance but `exceptId`, or null. */
  latestBeat(exceptId: string | null): Promise<InstanceBeat | null>;
  /** The latest time any instance saw a VM's request, or null. */
  fleetSeenAt(): Promise<number | null>;
}

/**
 * A write transaction. `byName`/`byClient` lock the row they return for the rest of the
 * transaction (PostgreSQL: FOR UPDATE; SQLite: the whole database is locked already).
 */
export interface Tx extends Reader {
  /**
   * The identifier `clientId` holds, else the one it was granted last if nobody was granted it
   * since and it is allocatable now (sticky identity), else the allocatable one free the longest
   * (never-used first, in pool order), locked; skips rows locked by others. Null when it holds
   * none and none is allocatable.
   */
  claimFor(clientId: string, now: number): Promise<{ readonly rec: IdentifierRecord; readonly held: boolean } | null>;
  /**
   * Grants a free row to `clientId` under `epoch`, its fence window announced from
   * `fenceCooldownMs` (kept with the lease), with the claim's key hash and instance facts (none
   * when absent; the row remembers `clientId` as its last holder), and appends its `allocated`
   * history entry; refuses (throws) unless the row is free.
   */
  grant(rowId: number, clientId: string, epoch: number, now: number, fenceCooldownMs: number, claim?: GrantClaim): Promise<void>;
  /**
   * The renewal rule, the one place each engine writes it: last_seen = max(last_seen, now),
   * fence_cooldown_ms = max(fence_cooldown_ms, fenceCooldownMs) (the window announced never
   * shrinks during a lease) and the watermark raised to the proof's if `clientId` holds `name`
   * (under `epoch`, when given) with the proof's key (none when absent). The record as renewed,
   * or null when the client does not hold it so (then nothing changed).
   */
  renewHeld(name: string, clientId: string, epoch: number | null, now: number, fenceCooldownMs: number, proof?: HeldProof): Promise<IdentifierRecord | null>;
  /**
   * The release rule, the one place each engine writes it: if `clientId` holds `name` (under
   * `epoch`, when given) with the proof's key, it is freed, allocatable at once (available_at =
   * now), its watermark raised to the proof's, with its `released` history entry. The record as
   * freed, or null when the client does not hold it so (then nothing changed).
   */
  releaseHeld(name: string, clientId: string, epoch: number | null, now: number, proof?: HeldProof): Promise<IdentifierRecord | null>;
  /** Frees the row whoever holds it (allocatable from `availableAt`, its fence record cleared) and appends the history entry that says why: an ownership change never goes unrecorded. */
  free(rowId: number, availableAt: number, entry: FreeEntry): Promise<void>;
  appendHistory(rowId: number, at: number, event: HistoryEvent, clientId: string | null, epoch: number): Promise<void>;
  /**
   * Deletes history entries written before `before`, at most `limit` of them: the oldest, found
   * by their position (the order they were written, which their times follow), so the work is
   * bounded by `limit` whatever the history's length, without an index of every entry by time.
   * The store's newest entry is never deleted (it is a floor of registry time). Returns how
   * many were deleted: 0 when none of the oldest `limit` is due.
   */
  pruneHistory(before: number, limit: number): Promise<number>;

  // ---- AWS events (POST /events/aws)
  /**
   * Records an EventBridge event id as seen at `at`: true the first time, false when it was
   * seen already (a redelivery: nothing else may change). Concurrent callers with one id: one
   * gets true (PostgreSQL: the second waits for the first to commit).
   */
  noteAwsEvent(eventId: string, at: number): Promise<boolean>;
  /** Forgets the event ids seen before `before` (the retention of redelivery detection). */
  pruneAwsEvents(before: number): Promise<void>;

  // ---- the sweep
  /** Whether this transaction may run the sweep now (one sweeper at a time across instances). */
  trySweepLock(): Promise<boolean>;
  countExpired(cutoff: number): Promise<number>;
  countLeased(): Promise<number>;
  /** History entries of `event` at or after `since`. */
  countEvents(event: HistoryEvent, since: number): Promise<number>;
  /**
   * Reclaims up to `limit` leases whose last liveness is at or before `cutoff`, oldest first,
   * each into cooling for the longer of `cooldownMs` and its own fence_cooldown_ms (domain
   * leaseCooldownMs) from `now`, with their history; returns them as they were.
   */
  reclaimExpired(cutoff: number, limit: number, now: number, cooldownMs: number): Promise<IdentifierRecord[]>;
  /** An allocation refused for want of an identifier: demand the guarded reaper must meet. */
  recordRefusal(clientId: string, at: number): Promise<void>;
  /** Distinct clients refused at or after `since`. */
  countRefusedClients(since: number): Promise<number>;
  pruneRefusals(before: number): Promise<void>;

  // ---- the pool file
  poolRows(): Promise<PoolRow[]>;
  insertIdentifiers(rows: readonly { readonly name: string; readonly poolOrder: number }[]): Promise<void>;
  setRetired(rowId: number, retired: boolean, poolOrder: number): Promise<void>;
  setPoolOrder(rowId: number, poolOrder: number): Promise<void>;

  // ---- bookkeeping
  setMeta(key: string, value: string): Promise<void>;
  /** Records an instance's beat, and the latest VM request it saw (kept even after the instance goes). */
  beat(b: InstanceBeat): Promise<void>;
  /** An instance stopping cleanly: its beat no longer counts as the service being up. */
  forgetInstance(id: string): Promise<void>;
  /**
   * Whether the store may have lost writes it had acknowledged since any process last asked
   * (renewals are committed without waiting for the disk). PostgreSQL: a row of an UNLOGGED
   * table, which a crash recovery empties and a promoted standby never held, put back by the
   * call that finds it missing (true the first time on a new database). SQLite: false (a
   * crashed process loses nothing committed; a reboot of the host is found when the file opens).
   */
  lostAcknowledgedWrites(): Promise<boolean>;
}

export interface WriteOptions {
  /** On disk (fsynced / synchronously committed) before the promise resolves: ownership changes. */
  readonly durable: boolean;
}

/** What Store.grantNext answers: the client's record, and whether this answer is the grant. */
export interface GrantAnswer {
  readonly rec: IdentifierRecord;
  /** True for the one answer that granted it; false for the same client asking again in between. */
  readonly granted: boolean;
}

export interface Store {
  readonly engine: 'sqlite' | 'postgres';
  /**
   * Registry time outside a transaction (uptime, logs, the reaper's schedule): the same clock
   * `Reader.now` reads, estimated locally where reading it costs a round trip.
   */
  readonly clock: Clock;
  /**
   * Runs `fn` in one write transaction and resolves with its value once committed (and on disk
   * when `durable`). A RegistryError thrown by `fn` rolls back its writes and rejects with it.
   * Storage failures reject with RegistryError `unavailable` (never SQL or a stack).
   */
  write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T>;
  /**
   * A liveness as one write: Tx.renewHeld at the store's time, committed (not necessarily on
   * disk) before it resolves; null when the client does not hold `name` (under `epoch`) and
   * nothing changed. Engines may commit several renewals in one statement.
   */
  renewHeld(name: string, clientId: string, epoch: number | null, fenceCooldownMs: number, proof?: HeldProof): Promise<IdentifierRecord | null>;
  /**
   * A release by its holder as one write: Tx.releaseHeld at the store's time, on disk before it
   * resolves; null when the client does not hold `name` (under `epoch`) and nothing changed.
   * Engines may commit several releases in one statement.
   */
  releaseHeld(name: string, clientId: string, epoch: number | null, proof?: HeldProof): Promise<IdentifierRecord | null>;
  /**
   * Optional: allocate's common case as one write, for an engine where that is faster than the
   * use case's transaction (PostgreSQL: one statement, shared by the allocations queued beside
   * it). If `clientId` holds no identifier, the allocatable one free the longest (as `claimFor`
   * picks it, skipping rows others are changing) is granted to it under its next epoch with its
   * `allocated` history entry and its fence cool-down (as Tx.grant), on disk before it resolves,
   * and returned as granted. The same
   * client asking again before that grant is answered gets the same record, not granted (as the
   * full use case answers a held lease). Null when it cannot decide (the client holds one, none
   * is allocatable now, or the statement lost a race) and nothing changed: the caller then runs
   * the full use case, which gives the answer the rules give. Also null when the client has a
   * sticky identifier allocatable now (the full use case grants it), and for an ask whose key
   * differs from that of the same client's ask before it in the batch (the full use case
   * answers it: holder_conflict). The grant records `claim` (none when absent).
   */
  grantNext?(clientId: string, fenceCooldownMs: number, claim?: GrantClaim): Promise<GrantAnswer | null>;
  /** Runs `fn` with read access; never waits for another process's write lock. */
  read<T>(fn: (r: Reader) => Promise<T>): Promise<T>;
  /** Optional: the listing's engine capability (store/listing.ts); absent, the listing reads rows with `read`. */
  readonly listing?: ListingCapability;
  /** Why the store cannot serve, or null; never throws. */
  healthProblem(): Promise<string | null>;
  close(): Promise<void>;
}
