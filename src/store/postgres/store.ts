/**
 * The PostgreSQL engine: several registry instances share one database. Each write is one
 * transaction on a pooled connection (READ COMMITTED, with row locks taken by the statements
 * that decide: see tx.ts), committed with `synchronous_commit` on when it changes ownership.
 * A transaction that lost a race (serialization failure, deadlock, a unique index won by a
 * concurrent grant) runs again from the start; a lost connection is `unavailable`, and the
 * pool opens new connections by itself when the server is back.
 */
import pg from 'pg';
import type { CustomTypesConfig, Pool, PoolClient, PoolConfig } from 'pg';
import { systemTimeSource } from '../../clock.js';
import type { Clock } from '../../clock.js';
import { RegistryError, isRegistryError } from '../../domain/errors.js';
import { DumpError, translateDump } from '../dump.js';
import type { Dump, Translation } from '../dump.js';
import type { IdentifierRecord } from '../../domain/types.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { GrantAnswer, GrantClaim, HeldProof, Reader, Store, Tx, WriteOptions } from '../types.js';
import { ServerTime } from './clock.js';
import type { ClockReading, Correction, Settled } from './clock.js';
import { dumpFrom, loadInto } from './dump.js';
import { isConnectionLoss, isGrantUndecided, isRetryable, toRegistryError, unavailableReason } from './errors.js';
import { migrate } from './migrate.js';
import { parseBigint } from './rows.js';
import { CLOCK_READING, PgReader, PgTx, grantNextAlone, heldAlone, readingOf } from './tx.js';
import type { HeldAsk, HeldKind, HeldRow, HostClock, StatementTime } from './tx.js';
import { recordStep, startTime, writeHostMark } from './time.js';
import type { ClockRole, ClockStepEvent } from './time.js';

export interface PostgresStoreOptions {
  /** postgres://user:password@host:port/database?… (libpq-style parameters as node-postgres reads them). */
  readonly url: string;
  /** Registry time from this clock instead of the server's (tests drive time with a FakeClock). */
  readonly clock?: Clock;
  /** Connections this instance may hold. */
  readonly poolSize?: number;
  /** How long a request waits for a connection before answering `unavailable`. */
  readonly connectTimeoutMs?: number;
  /** Longest a statement may run, and longest a row lock is waited for, before `unavailable`. */
  readonly statementTimeoutMs?: number;
  readonly lockTimeoutMs?: number;
  /** How long /health waits for the database. */
  readonly healthTimeoutMs?: number;
  readonly applicationName?: string;
  /** Failures of idle connections (the server went away between requests), for the logs. */
  readonly onConnectionError?: (reason: string) => void;
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

/** Attempts of one write when it loses a race to another transaction. */
const MAX_ATTEMPTS = 6;
/**
 * Writes one transaction takes at most: enough to spread a commit over many, few enough that
 * the rows it locks are not held long (no savepoints, so no subtransactions either).
 */
const MAX_BATCH = 32;
/** Renewals (or releases) one statement takes at most: each is a row lock held only for that statement. */
const MAX_HELD_BATCH = 128;
/**
 * Lanes the statements of each kind (renewals, releases) may take at once. One: the asks that
 * arrive while it runs all go out in the next statement, so under load each statement carries
 * many (measured: a third of PostgreSQL's CPU per renewal, against one lane per renewal), while
 * the other lanes stay free for allocations and the rest.
 */
const MAX_HELD_LANES = 1;
const HELD_KINDS: readonly HeldKind[] = ['renew', 'release'];
/** Allocations one statement takes at most (see grantNext). */
const MAX_GRANT_BATCH = 128;
/**
 * Lanes the grant statements may take at once. One, as renewals: the allocations that arrive
 * while one statement waits for its fsync go out together in the next.
 */
const MAX_GRANT_LANES = 1;

interface QueuedWrite {
  /** Arrival order across writes, renewals, releases and grants: a free lane takes whichever waited longest. */
  readonly seq: number;
  readonly fn: (tx: Tx) => Promise<unknown>;
  readonly durable: boolean;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

interface QueuedAsk {
  readonly seq: number;
  readonly ask: HeldAsk;
  readonly resolve: (v: IdentifierRecord | null) => void;
  readonly reject: (e: unknown) => void;
}

interface QueuedGrant {
  readonly seq: number;
  readonly clientId: string;
  readonly claim: GrantClaim;
  readonly fenceCooldownMs: number;
  readonly resolve: (v: GrantAnswer | null) => void;
  readonly reject: (e: unknown) => void;
}

/** Someone waiting for the answer of one row of a statement. */
interface Waiter {
  readonly resolve: (v: IdentifierRecord | null) => void;
  readonly reject: (e: unknown) => void;
}

type Outcome = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: unknown };
const INT8_OID = 20;

/** BIGINT columns as numbers (exact, or an error), everything else as node-postgres does. */
const TYPES: CustomTypesConfig = {
  getTypeParser: (oid, format) => (oid === INT8_OID && format !== 'binary' ? parseBigint : pg.types.getTypeParser(oid, format)),
};

function begin(durable: boolean, readClock: boolean): string {
  // Ownership changes wait for the commit to be flushed (and replicated to a synchronous
  // standby); a renewal only needs to be visible to every instance, as docs/safety.md
  // ("What an answer means") allows.
  const parts = ['BEGIN', `SET LOCAL synchronous_commit = ${durable ? 'on' : 'off'}`];
  // The server's clock in the transaction (clock_timestamp: not frozen at its start), with the offset.
  if (readClock) parts.push(CLOCK_READING);
  return parts.join('; ');
}

/** The clock reading in the last result of a (multi-statement) query. */
function readingOfResult(res: unknown): ClockReading {
  const results: unknown[] = Array.isArray(res) ? res : [res];
  const last: unknown = results[results.length - 1];
  const rowList = typeof last === 'object' && last !== null && 'rows' in last ? last.rows : null;
  const reading = Array.isArray(rowList) ? readingOf(rowList[0]) : null;
  if (reading === null) throw new Error('no clock reading in the answer');
  return reading;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function poolConfig(opts: PostgresStoreOptions, max: number, connectTimeoutMs: number, queryTimeoutMs: number): PoolConfig {
  return {
    connectionString: opts.url,
    max,
    connectionTimeoutMillis: connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    types: TYPES,
    application_name: opts.applicationName ?? 'asg-id-registry',
    statement_timeout: opts.statementTimeoutMs ?? 10_000,
    lock_timeout: opts.lockTimeoutMs ?? 5_000,
    // A transaction whose instance died or was cut off mid-way must not hold its row locks for
    // the TCP timeout: the server ends it.
    idle_in_transaction_session_timeout: 15_000,
    // Client side too, for a server that stopped answering without closing the connection.
    query_timeout: queryTimeoutMs,
  };
}

export class PostgresStore implements Store {
  readonly engine = 'postgres' as const;
  readonly clock: Clock;
  /** Registry time measured on the server's clock; null when injected. */
  private readonly time: ServerTime | null;
  private readonly injectedClock: Clock | null;
  private readonly monotonic: () => number;
  /** A step of the server's clock being recorded (one at a time). */
  private recording = false;
  private closed = false;
  private ended = false;
  private drained: (() => void) | null = null;
  private queue: QueuedWrite[] = [];
  private held: Record<HeldKind, QueuedAsk[]> = { renew: [], release: [] };
  private seq = 0;
  private lanes = 0;
  /** Statements sent of each kind, and the asks they carried (tests check that batches form). */
  readonly heldStats: Record<HeldKind, { statements: number; asks: number }> = {
    renew: { statements: 0, asks: 0 },
    release: { statements: 0, asks: 0 },
  };
  /** Lanes running a statement of each kind. */
  private heldLanes: Record<HeldKind, number> = { renew: 0, release: 0 };
  private grants: QueuedGrant[] = [];
  private grantLanes = 0;
  /** Grant statements sent, the allocations they carried, and those they granted (the rest ran the full use case). */
  readonly grantStats = { statements: 0, asks: 0, granted: 0 };
  private pumpScheduled = false;
  private readonly maxLanes: number;
  private readonly defer: ((run: () => void) => void) | null;

  private constructor(
    private readonly pool: Pool,
    private readonly healthPool: Pool,
    clock: Clock | null,
    time: ServerTime | null,
    monotonic: () => number,
    poolSize: number,
    defer: ((run: () => void) => void) | null,
    private readonly clockOpts: { readonly bootId: string | null; readonly role: ClockRole; readonly onStep: ((e: ClockStepEvent) => void) | null },
  ) {
    this.defer = defer;
    // Lanes leave connections for reads, so a queue of writes never starves /identifier or /health.
    this.maxLanes = Math.max(1, Math.ceil(poolSize / 2));
    this.injectedClock = clock;
    this.monotonic = monotonic;
    this.time = time;
    const fixed = clock ?? time;
    if (fixed === null) throw new Error('a PostgreSQL store needs a clock');
    this.clock = fixed;
  }

  /**
   * Connects, migrates the schema (safely alongside other instances starting at once) and
   * resumes registry time from the store (see time.ts: this may wait up to a few seconds for the
   * running instances, on a host new to the store). Rejects with RegistryError `unavailable`
   * when the database cannot be reached, and with the migration's error when the schema cannot
   * be brought up to date.
   */
  static async open(opts: PostgresStoreOptions): Promise<PostgresStore> {
    const connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
    const healthTimeoutMs = opts.healthTimeoutMs ?? 2_000;
    const pool = new pg.Pool(poolConfig(opts, opts.poolSize ?? 10, connectTimeoutMs, (opts.statementTimeoutMs ?? 10_000) + 5_000));
    // /health asks through a connection of its own, so a busy pool does not look like a dead database.
    const healthPool = new pg.Pool(poolConfig(opts, 1, healthTimeoutMs, healthTimeoutMs));
    const onIdleError = (err: Error): void => opts.onConnectionError?.(unavailableReason(err) ?? 'a database connection failed');
    pool.on('error', onIdleError);
    healthPool.on('error', onIdleError);
    // An error on a connection while a request holds it (the server closed it between two
    // statements) rejects that request's next statement; without a listener it would crash us.
    const quiet = (client: PoolClient): void => { client.on('error', () => undefined); };
    pool.on('connect', quiet);
    healthPool.on('connect', quiet);
    const monotonic = opts.monotonic ?? systemTimeSource.monotonic;
    const bootId = opts.bootId === undefined ? knownBootId(systemTimeSource.bootId()) : opts.bootId;
    const clockOpts = { bootId, role: opts.clockRole ?? 'instance', onStep: opts.onClockStep ?? null } as const;
    let client: PoolClient | null = null;
    try {
      client = await pool.connect();
      await migrate(client);
      const time = opts.clock ? null : await startTime(client, { monotonic, ...clockOpts });
      client.release();
      client = null;
      return new PostgresStore(pool, healthPool, opts.clock ?? null, time, monotonic, opts.poolSize ?? 10, opts.defer ?? null, clockOpts);
    } catch (e) {
      client?.release(e instanceof Error ? e : true);
      await Promise.all([pool.end(), healthPool.end()]).catch(() => undefined);
      const reason = unavailableReason(e);
      if (reason !== null) throw new RegistryError('unavailable', reason, { cause: e });
      throw e;
    }
  }

  /**
   * Group commit: a write starts at once on a free lane (a connection of its own); writes that
   * arrive while every lane is busy queue, and the next free lane runs up to MAX_BATCH of them
   * one after another in one transaction and one commit, as SQLite's engine does with the
   * writes of a tick. Serial, so each sees the ones before it as if they had committed first.
   */
  write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the store is closed'));
      this.queue.push({ seq: this.seq++, fn, durable: opts.durable, resolve: (v) => resolve(v as T), reject });
      this.pump();
    });
  }

  /**
   * A renewal starts at once on a free lane, as one statement in a transaction of its own; the
   * renewals that queue while it runs go out together, up to MAX_HELD_BATCH in one statement:
   * one round trip for the lot instead of four for each.
   */
  renewHeld(name: string, clientId: string, epoch: number | null, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.ask('renew', { name, clientId, epoch, fenceCooldownMs, proof });
  }

  /** A release by its holder, batched as renewals are (committed with `synchronous_commit` on). */
  releaseHeld(name: string, clientId: string, epoch: number | null, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.ask('release', { name, clientId, epoch, fenceCooldownMs: null, proof });
  }

  /**
   * Allocate's common case as one write (see tx.ts, GRANT_NEXT_SQL): the allocatable identifier
   * free the longest granted to `clientId`, on disk before it resolves; null when the client
   * already holds one, none was free and unlocked, or the statement lost a race, and nothing
   * changed (the caller then runs the full use case). Allocations queued while a grant
   * statement runs go out together in the next, up to MAX_GRANT_BATCH: one round trip and one
   * fsync for the lot.
   */
  grantNext(clientId: string, fenceCooldownMs: number, claim: GrantClaim = NO_CLAIM): Promise<GrantAnswer | null> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the store is closed'));
      this.grants.push({ seq: this.seq++, clientId, fenceCooldownMs, claim, resolve, reject });
      this.pump();
    });
  }

  private ask(kind: HeldKind, ask: HeldAsk): Promise<IdentifierRecord | null> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the store is closed'));
      this.held[kind].push({ seq: this.seq++, ask, resolve, reject });
      this.pump();
    });
  }

  private idle(): boolean {
    return this.lanes === 0 && !this.recording && this.queue.length === 0 && this.held.renew.length === 0 && this.held.release.length === 0 &&
      this.grants.length === 0;
  }

  private pump(): void {
    if (!this.defer) return this.startWork();
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    this.defer(() => {
      this.pumpScheduled = false;
      this.startWork();
    });
  }

  /** Free lanes take the work that waited longest: a batch of writes, of renewals or of releases. */
  private startWork(): void {
    while (this.lanes < this.maxLanes) {
      const work = this.nextWork();
      if (!work) return;
      this.lanes++;
      void work().finally(() => {
        this.lanes--;
        this.pump();
        if (this.idle()) this.drained?.();
      });
    }
  }

  private nextWork(): (() => Promise<void>) | null {
    let oldest: { seq: number; take: () => () => Promise<void> } | null = null;
    const write = this.queue[0];
    if (write) {
      oldest = { seq: write.seq, take: () => { const batch = this.queue.splice(0, MAX_BATCH); return () => this.runBatch(batch); } };
    }
    for (const kind of HELD_KINDS) {
      const head = this.heldLanes[kind] < MAX_HELD_LANES ? this.held[kind][0] : undefined;
      if (head && (!oldest || head.seq < oldest.seq)) {
        oldest = { seq: head.seq, take: () => { const batch = this.held[kind].splice(0, MAX_HELD_BATCH); return () => this.runHeld(kind, batch); } };
      }
    }
    const grant = this.grantLanes < MAX_GRANT_LANES ? this.grants[0] : undefined;
    if (grant && (!oldest || grant.seq < oldest.seq)) {
      oldest = { seq: grant.seq, take: () => { const batch = this.grants.splice(0, MAX_GRANT_BATCH); return () => this.runGrants(batch); } };
    }
    return oldest ? oldest.take() : null;
  }

  private async runGrants(batch: readonly QueuedGrant[]): Promise<void> {
    this.grantLanes++;
    try {
      // One row per client: the same client twice in a batch gets the one answer (same client,
      // same identifier and epoch), the grant for its first ask only (the others are answered
      // as the full use case answers a held lease). In arrival order (a Map keeps its keys in
      // insertion order): the statement pairs the k-th client with the k-th identifier free
      // the longest. No order is needed against deadlocks: the statement waits for a lock only
      // at the unique index on client_id, for a grant to one of its clients in flight elsewhere,
      // and only briefly (its own lock_timeout); that, a deadlock, or a unique violation leaves
      // the whole batch to the full use case (GRANT_NEXT_SQL changed nothing).
      // Only asks with the key of the client's first ask share its answer: another key (or none
      // against a key) is another claimant presenting the same client id, never told the same
      // identifier; it goes to the full use case, which answers holder_conflict.
      const byClient = new Map<string, QueuedGrant[]>();
      for (const g of batch) {
        const list = byClient.get(g.clientId);
        if (!list) byClient.set(g.clientId, [g]);
        else if (list[0]?.claim.keyHash === g.claim.keyHash) list.push(g);
        else g.resolve(null);
      }
      const clients = [...byClient.keys()];
      // A client asking twice announces the longer window (the same registry asks with one);
      // its first ask's claim (the others share its key) is the one granted.
      const asks = clients.map((clientId) => ({
        clientId, fenceCooldownMs: Math.max(...(byClient.get(clientId) ?? []).map((g) => g.fenceCooldownMs)),
        claim: byClient.get(clientId)?.[0]?.claim ?? NO_CLAIM,
      }));
      const waiters: Waiter[] = clients.map((id) => {
        const list = byClient.get(id) ?? [];
        return {
          resolve: (rec) => { list.forEach((g, i) => g.resolve(rec ? { rec, granted: i === 0 } : null)); },
          reject: (e) => { for (const g of list) g.reject(e); },
        };
      });
      this.grantStats.statements++;
      this.grantStats.asks += clients.length;
      await this.statementTogether(waiters, (client, time) => grantNextAlone(client, asks, time),
        (n) => { this.grantStats.granted += n; }, isGrantUndecided);
    } finally {
      this.grantLanes--;
    }
  }

  /** One statement renews (or releases) the batch (see tx.ts); a lost race runs it again, anything else answers each ask. */
  private async runHeld(kind: HeldKind, batch: readonly QueuedAsk[]): Promise<void> {
    this.heldLanes[kind]++;
    try {
      await this.heldTogether(kind, batch);
    } finally {
      this.heldLanes[kind]--;
    }
  }

  private async heldTogether(kind: HeldKind, batch: readonly QueuedAsk[]): Promise<void> {
    // Every batch locks its rows in name order, so two batches never deadlock over them.
    const sorted = [...batch].sort((a, b) => (a.ask.name < b.ask.name ? -1 : a.ask.name > b.ask.name ? 1 : 0));
    this.heldStats[kind].statements++;
    this.heldStats[kind].asks += sorted.length;
    await this.statementTogether(sorted, (client, time) => heldAlone(client, kind, sorted.map((r) => r.ask), time));
  }

  /**
   * Runs one statement of its own (autocommit) for a batch and answers each waiter with the row
   * at its index, or null; an error that leaves it `undecided` answers every waiter null (the
   * statement failed, so changed nothing: each goes to the full use case), a lost race runs it
   * again, anything else rejects every waiter.
   */
  private async statementTogether(
    waiters: readonly Waiter[],
    send: (client: PoolClient, time: StatementTime) => Promise<HeldRow[]>,
    onDone?: (rows: number) => void,
    undecided?: (e: unknown) => boolean,
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      let client: PoolClient;
      try {
        client = await this.connect();
      } catch (e) {
        for (const item of waiters) item.reject(e);
        return;
      }
      let broken: Error | undefined;
      let retry = false;
      try {
        const sentAt = this.monotonic();
        const done = await send(client, this.statementTime(sentAt));
        const receivedAt = this.monotonic();
        const answers: Array<IdentifierRecord | null> = waiters.map(() => null);
        // Every row carries the statement's one reading of the server's clock.
        const reading = done[0]?.reading;
        if (reading) this.observe(reading, sentAt, receivedAt);
        for (const r of done) {
          answers[r.index] = r.rec;
          this.time?.saw(r.now);
        }
        onDone?.(done.length);
        waiters.forEach((item, i) => item.resolve(answers[i] ?? null));
        return;
      } catch (e) {
        // Cut off on the way, the statement may or may not have committed: `unavailable`, never a 200.
        if (isConnectionLoss(e)) broken = e instanceof Error ? e : new Error(String(e));
        if (broken === undefined && undecided?.(e)) {
          for (const item of waiters) item.resolve(null);
          return;
        }
        retry = broken === undefined && isRetryable(e) && attempt < MAX_ATTEMPTS;
        if (!retry) {
          const err = toRegistryError(e);
          for (const item of waiters) item.reject(err);
          return;
        }
      } finally {
        client.release(broken);
      }
      await delay(Math.random() * 2 ** attempt);
    }
  }

  private async runBatch(batch: readonly QueuedWrite[]): Promise<void> {
    const only = batch[0];
    if (batch.length === 1 && only) {
      await this.runOne(only.fn, only.durable).then(only.resolve, only.reject);
      return;
    }
    let outcomes: Outcome[] | null;
    try {
      outcomes = await this.tryTogether(batch);
    } catch (e) {
      // The database is gone: the batch was not committed (or its COMMIT's fate is unknown).
      const err = toRegistryError(e);
      for (const item of batch) item.reject(err);
      return;
    }
    if (outcomes === null) {
      // Something in the batch needs a transaction of its own (a race lost, a statement
      // refused, a refusal after writing): each runs alone, with its own retries, in order
      // and on this lane's one connection at a time.
      for (const item of batch) await this.runOne(item.fn, item.durable).then(item.resolve, item.reject);
      return;
    }
    outcomes.forEach((o, i) => {
      const item = batch[i];
      if (!item) return;
      if (o.ok) item.resolve(o.value);
      else item.reject(o.error);
    });
  }

  /**
   * Runs the batch in one transaction; its outcomes once committed, or null (rolled back) when
   * an item failed in a way only a transaction of its own can answer. Throws on connection loss.
   */
  private async tryTogether(batch: readonly QueuedWrite[]): Promise<Outcome[] | null> {
    const client = await this.connect();
    let broken: Error | undefined;
    try {
      const { now, host } = await this.begin(client, batch.some((b) => b.durable));
      const outcomes: Outcome[] = [];
      for (const item of batch) {
        const tx = new PgTx(client, now, host);
        try {
          outcomes.push({ ok: true, value: await item.fn(tx) });
        } catch (e) {
          if (isConnectionLoss(e)) throw e;
          // A refusal before any write is that item's answer; anything else undoes the batch.
          if (!isRegistryError(e) || tx.wrote) {
            await client.query('ROLLBACK');
            return null;
          }
          outcomes.push({ ok: false, error: e });
        }
      }
      const done = await client.query('COMMIT');
      if (done.command !== 'COMMIT') return null;
      return outcomes;
    } catch (e) {
      if (isConnectionLoss(e)) broken = e instanceof Error ? e : new Error(String(e));
      else {
        await client.query('ROLLBACK').catch((rollbackError: unknown) => {
          broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
        });
        if (broken === undefined) return null;
      }
      throw e;
    } finally {
      client.release(broken);
    }
  }

  /** One use case in a transaction of its own, run again when it loses a race. */
  private async runOne<T>(fn: (tx: Tx) => Promise<T>, durable: boolean): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.connect();
      let broken: Error | undefined;
      try {
        const { now, host } = await this.begin(client, durable);
        const value = await fn(new PgTx(client, now, host));
        const done = await client.query('COMMIT');
        // A transaction that failed inside `fn` (an error swallowed there) commits as a ROLLBACK.
        if (done.command !== 'COMMIT') throw new Error(`the transaction ended in ${done.command}, not COMMIT`);
        return value;
      } catch (e) {
        if (isConnectionLoss(e)) {
          // The outcome of a COMMIT cut off on the way is unknown: never run it again, answer
          // `unavailable` (an allocate retried by the VM gets the same answer if it did commit).
          broken = e instanceof Error ? e : new Error(String(e));
        } else {
          await client.query('ROLLBACK').catch((rollbackError: unknown) => {
            broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
          });
        }
        if (isRegistryError(e)) throw e;
        if (broken === undefined && isRetryable(e) && attempt < MAX_ATTEMPTS) {
          // Lost a race to another transaction: run again from the start, after a short random
          // pause so the two do not collide again.
          await delay(Math.random() * 2 ** attempt);
          continue;
        }
        throw toRegistryError(e);
      } finally {
        client.release(broken);
      }
    }
  }

  async read<T>(fn: (r: Reader) => Promise<T>): Promise<T> {
    const client = await this.connect();
    let broken: Error | undefined;
    try {
      // Each statement reads the latest committed state; no transaction, so a read costs one
      // round trip and never waits for a writer's locks. `now` is the local estimate of the
      // server's clock, never behind it.
      return await fn(new PgReader(client, this.clock.now(), ''));
    } catch (e) {
      if (isConnectionLoss(e)) broken = e instanceof Error ? e : new Error(String(e));
      throw toRegistryError(e);
    } finally {
      client.release(broken);
    }
  }

  /**
   * The whole state, from one snapshot (`idreg export`), its times measured against this store's
   * registry time read (in a transaction of its own) before the snapshot: a time written
   * meanwhile is later, so what it starts comes out longer, never shorter.
   */
  async dump(): Promise<Dump> {
    const exportedAt = await this.registryTime();
    return this.withClient((client) => dumpFrom(client, exportedAt));
  }

  /**
   * Loads a dump into this store, which must hold no identifiers and no history (`idreg import`),
   * its times moved onto this store's registry time (see ../dump.ts, translateDump). The import
   * starts the store's past: this host's mark of registry time is left with it, so an instance
   * started here next resumes on it (not as after an outage: see time.ts).
   */
  async load(d: Dump): Promise<Translation> {
    const moved = translateDump(d, await this.registryTime());
    await this.withClient(async (client) => {
      await loadInto(client, moved.dump);
      const { bootId } = this.clockOpts;
      if (bootId !== null && this.time) await writeHostMark(client, bootId, this.time);
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
      const sentAt = this.monotonic();
      const res = await this.healthPool.query(CLOCK_READING);
      const reading = readingOf(res.rows[0]);
      if (reading) this.observe(reading, sentAt, this.monotonic());
      return null;
    } catch (e) {
      return unavailableReason(e) ?? 'the database check failed';
    }
  }

  /** Refuses new writes, finishes the queued ones, then closes the connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.idle()) await new Promise<void>((resolve) => { this.drained = resolve; });
    this.ended = true;
    await Promise.all([this.pool.end(), this.healthPool.end()]);
  }

  /** Runs `fn` on a connection of its own; DumpError passes through, storage failures become RegistryError. */
  private async withClient<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.connect();
    let broken: Error | undefined;
    try {
      return await fn(client);
    } catch (e) {
      if (isConnectionLoss(e)) broken = e instanceof Error ? e : new Error(String(e));
      if (e instanceof DumpError) throw e;
      throw toRegistryError(e);
    } finally {
      client.release(broken);
    }
  }

  private async connect(): Promise<PoolClient> {
    if (this.ended) throw new RegistryError('unavailable', 'the store is closed');
    try {
      return await this.pool.connect();
    } catch (e) {
      throw toRegistryError(e);
    }
  }

  /** Opens the transaction and reads its time: one round trip. */
  private async begin(client: PoolClient, durable: boolean): Promise<{ now: number; host: HostClock | null }> {
    if (this.injectedClock) {
      await client.query(begin(durable, false));
      return { now: this.injectedClock.now(), host: null };
    }
    const sentAt = this.monotonic();
    const res = await client.query(begin(durable, true));
    const now = this.observe(readingOfResult(res), sentAt, this.monotonic());
    return { now, host: this.hostClock() };
  }

  /** The time a one-statement write sent now runs at (see ServerTime.bounds). */
  private statementTime(sentAt: number): StatementTime {
    if (this.injectedClock || !this.time) return { now: this.injectedClock?.now() ?? this.clock.now(), lo: 0, hi: 0 };
    return { now: null, ...this.time.bounds(sentAt) };
  }

  /** A reading of the server's clock: the registry time it stands for; a step seen in it is recorded. */
  private observe(reading: ClockReading, sentAt: number, receivedAt: number): number {
    if (!this.time) return this.clock.now();
    const { now, step } = this.time.observe({ ...reading, sentAt, receivedAt });
    if (step) this.recordSteps();
    return now;
  }

  /** What this host knows of registry time, for its beat (see clock_hosts). */
  private hostClock(): HostClock | null {
    const { bootId } = this.clockOpts;
    if (bootId === null || !this.time) return null;
    return { bootId, mark: { ...this.time.currentMark(), gen: this.time.generation } };
  }

  /**
   * Records the step this instance's readings show (one at a time, off the request's path: the
   * request already runs on this instance's estimate). Another instance recording the same step
   * first makes this one's compare-and-set change nothing; it then takes that instance's offset.
   */
  private recordSteps(): void {
    const time = this.time;
    if (!time || this.clockOpts.role !== 'instance' || this.recording || this.ended) return;
    const c = time.proposal();
    if (!c) return;
    this.recording = true;
    void this.recordOne(c).then((outcome) => {
      time.settled(c, outcome);
      this.clockOpts.onStep?.({ stepMs: c.stepMs, outcome: outcome.kind, atStart: false, shiftMs: null });
      this.recording = false;
      if (outcome.kind !== 'failed') this.recordSteps();
      if (this.idle()) this.drained?.();
    });
  }

  private async recordOne(c: Correction): Promise<Settled> {
    let client: PoolClient;
    try {
      client = await this.connect();
    } catch {
      return { kind: 'failed' };
    }
    let broken: Error | undefined;
    try {
      return await recordStep(client, c, this.clockOpts.bootId);
    } catch (e) {
      if (isConnectionLoss(e)) broken = e instanceof Error ? e : new Error(String(e));
      return { kind: 'failed' };
    } finally {
      client.release(broken);
    }
  }
}

/** A boot id that names this boot; the stand-in of a system without one names nothing. */
function knownBootId(id: string): string | null {
  return id === 'unknown-boot' ? null : id;
}

export const openPostgresStore = (opts: PostgresStoreOptions): Promise<PostgresStore> => PostgresStore.open(opts);
