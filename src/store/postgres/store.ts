/**
 * The PostgreSQL engine: several registry instances share one database. Each write is one
 * transaction on a pooled connection (READ COMMITTED, with row locks taken by the statements
 * that decide: see tx.ts), committed with `synchronous_commit` on when it changes ownership;
 * writes queue in lanes and go out in batches (lanes.ts). A transaction that lost a race
 * (serialization failure, deadlock, a unique index won by a concurrent grant) runs again from
 * the start; a lost connection is `unavailable`, and the pool opens new connections by itself
 * when the server is back (connection.ts).
 */
import { systemTimeSource } from '../../clock.js';
import type { Clock } from '../../clock.js';
import { RegistryError } from '../../domain/errors.js';
import { translateDump } from '../dump.js';
import type { Dump, Translation } from '../dump.js';
import type { IdentifierRecord } from '../../domain/types.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { GrantAnswer, GrantClaim, HeldProof, Reader, Store, Tx, WriteOptions } from '../types.js';
import type { ServerTime } from './clock.js';
import { Connections } from './connection.js';
import type { ConnectionOptions } from './connection.js';
import { dumpFrom, loadInto } from './dump.js';
import { unavailableReason } from './errors.js';
import { readingOf } from './held.js';
import { Lanes } from './lanes.js';
import { migrate } from './migrate.js';
import { CLOCK_READING } from './statements.js';
import { StoreClock, startTime } from './time.js';
import type { ClockOptions, ClockRole, ClockStepEvent } from './time.js';
import { PgReader } from './tx.js';

export interface PostgresStoreOptions extends ConnectionOptions {
  /** Registry time from this clock instead of the server's (tests drive time with a FakeClock). */
  readonly clock?: Clock;
  /** The local monotonic clock the server's clock is measured against (see clock.ts). */
  readonly monotonic?: () => number;
  /** Names this host's boot (the monotonic clock's timeline); null: unknown, no host mark is kept. */
  readonly bootId?: string | null;
  /**
   * 'instance' (default): a registry instance, which records the steps of the server's clock it
   * sees. 'tool' (`idreg`): reads registry time, never records a step nor waits at start.
   */
  readonly clockRole?: ClockRole;
  /** A step of the server's clock seen and absorbed (or found to be this host's own), for the logs. */
  readonly onClockStep?: (e: ClockStepEvent) => void;
  /**
   * How a free lane starts its next batch (default: at once). Interleaving tests hand it to
   * fast-check's scheduler, so the work queued meanwhile is batched in the orders it picks.
   */
  readonly defer?: (run: () => void) => void;
}

/** A failure at start: `unavailable` when the database cannot be reached, anything else (a schema too new) as it is. */
function startError(e: unknown): unknown {
  const reason = unavailableReason(e);
  return reason !== null ? new RegistryError('unavailable', reason, { cause: e }) : e;
}

export class PostgresStore implements Store {
  readonly engine = 'postgres' as const;
  readonly clock: Clock;
  /** Statements sent of each kind, and the asks they carried (tests check that batches form). */
  readonly heldStats: Lanes['heldStats'];
  /** Grant statements sent, the allocations they carried, and those they granted (the rest ran the full use case). */
  readonly grantStats: Lanes['grantStats'];
  private readonly time: StoreClock;
  private readonly lanes: Lanes;
  private closed = false;

  private constructor(
    private readonly db: Connections,
    clock: Clock | null,
    time: ServerTime | null,
    monotonic: () => number,
    poolSize: number,
    defer: ((run: () => void) => void) | null,
    clockOpts: ClockOptions,
  ) {
    this.time = new StoreClock(db, time, clock, monotonic, clockOpts, () => this.lanes.settled());
    this.clock = this.time.clock;
    this.lanes = new Lanes({ db, clock: this.time }, poolSize, defer);
    this.heldStats = this.lanes.heldStats;
    this.grantStats = this.lanes.grantStats;
  }

  /**
   * Connects, migrates the schema (safely alongside other instances starting at once) and
   * resumes registry time from the store (see time.ts: this may wait up to a few seconds for the
   * running instances, on a host new to the store). Rejects with RegistryError `unavailable`
   * when the database cannot be reached, and with the migration's error when the schema cannot
   * be brought up to date.
   */
  static async open(opts: PostgresStoreOptions): Promise<PostgresStore> {
    const db = Connections.open(opts);
    const monotonic = opts.monotonic ?? systemTimeSource.monotonic;
    const bootId = opts.bootId === undefined ? knownBootId(systemTimeSource.bootId()) : opts.bootId;
    const clockOpts = { bootId, role: opts.clockRole ?? 'instance', onStep: opts.onClockStep ?? null } as const;
    try {
      const time = await db.withClient(async (client) => {
        await migrate(client);
        return opts.clock ? null : startTime(client, { monotonic, sleep: db.sleep, ...clockOpts });
      }, { mapError: startError });
      return new PostgresStore(db, opts.clock ?? null, time, monotonic, opts.poolSize ?? 10, opts.defer ?? null, clockOpts);
    } catch (e) {
      await db.end().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Group commit: a write starts at once on a free lane (a connection of its own); writes that
   * arrive while every lane is busy queue, and the next free lane runs up to MAX_BATCH of them
   * (lanes.ts) one after another in one transaction and one commit, as SQLite's engine does with
   * the writes of a tick. Serial, so each sees the ones before it as if they had committed first.
   */
  write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T> {
    return this.lanes.write(fn, opts.durable);
  }

  /**
   * A renewal starts at once on a free lane, as one statement in a transaction of its own; the
   * renewals that queue while it runs go out together, up to MAX_HELD_BATCH (lanes.ts) in one
   * statement: one round trip for the lot instead of four for each.
   */
  renewHeld(name: string, clientId: string, epoch: number | null, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.lanes.ask('renew', { name, clientId, epoch, fenceCooldownMs, proof });
  }

  /** A release by its holder, batched as renewals are (committed with `synchronous_commit` on). */
  releaseHeld(name: string, clientId: string, epoch: number | null, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.lanes.ask('release', { name, clientId, epoch, fenceCooldownMs: null, proof });
  }

  /**
   * Allocate's common case as one write (see statements.ts, GRANT_NEXT_SQL): the allocatable
   * identifier free the longest granted to `clientId`, on disk before it resolves; null when the
   * client already holds one, none was free and unlocked, or the statement lost a race, and
   * nothing changed (the caller then runs the full use case). Allocations queued while a grant
   * statement runs go out together in the next, up to MAX_GRANT_BATCH (lanes.ts): one round
   * trip and one fsync for the lot.
   */
  grantNext(clientId: string, fenceCooldownMs: number, claim: GrantClaim = NO_CLAIM): Promise<GrantAnswer | null> {
    return this.lanes.grant(clientId, fenceCooldownMs, claim);
  }

  read<T>(fn: (r: Reader) => Promise<T>): Promise<T> {
    // Each statement reads the latest committed state; no transaction, so a read costs one
    // round trip and never waits for a writer's locks. `now` is the local estimate of the
    // server's clock, never behind it.
    return this.db.withClient((client) => fn(new PgReader(client, this.clock.now(), '')));
  }

  /**
   * The whole state, from one snapshot (`idreg export`), its times measured against this store's
   * registry time read (in a transaction of its own) before the snapshot: a time written
   * meanwhile is later, so what it starts comes out longer, never shorter.
   */
  async dump(): Promise<Dump> {
    const exportedAt = await this.registryTime();
    return this.db.withClient((client) => dumpFrom(client, exportedAt));
  }

  /**
   * Loads a dump into this store, which must hold no identifiers and no history (`idreg import`),
   * its times moved onto this store's registry time (see ../dump.ts, translateDump). The import
   * starts the store's past: this host's mark of registry time is left with it, so an instance
   * started here next resumes on it (not as after an outage: see time.ts).
   */
  async load(d: Dump): Promise<Translation> {
    const moved = translateDump(d, await this.registryTime());
    await this.db.withClient(async (client) => {
      await loadInto(client, moved.dump);
      await this.time.leaveMark(client);
    });
    return moved;
  }

  /** Registry time as a transaction reads it. */
  private registryTime(): Promise<number> {
    return this.write(async (tx) => tx.now, { durable: false });
  }

  async healthProblem(): Promise<string | null> {
    if (this.closed) return 'the store is closed';
    try {
      const sentAt = this.time.monotonic();
      const res = await this.db.healthPool.query(CLOCK_READING);
      const reading = readingOf(res.rows[0]);
      if (reading) this.time.observe(reading, sentAt, this.time.monotonic());
      return null;
    } catch (e) {
      return unavailableReason(e) ?? 'the database check failed';
    }
  }

  /** Refuses new writes, finishes the queued ones, then closes the connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.lanes.close();
    await this.db.end();
  }
}

/** A boot id that names this boot; the stand-in of a system without one names nothing. */
function knownBootId(id: string): string | null {
  return id === 'unknown-boot' ? null : id;
}

export const openPostgresStore = (opts: PostgresStoreOptions): Promise<PostgresStore> => PostgresStore.open(opts);
