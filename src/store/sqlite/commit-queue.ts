/**
 * Group commit on SQLite's one connection: the reads queued in one event-loop tick run in one
 * read transaction, the writes in one BEGIN IMMEDIATE transaction, each use case in a savepoint
 * of its own. A batch with a durable write is answered once the WAL is fsynced (durability.ts).
 * Another process's write lock is waited for off the event loop: the connection's busy timeout
 * is zero and a locked batch is put back and retried on a timer, so reads and /health go on.
 */
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { RegistryError, isRegistryError } from '../../domain/errors.js';
import type { Reader } from '../types.js';
import { toRegistryError } from './errors.js';
import type { Statements } from './statements.js';
import { SqliteReader, SqliteTx } from './tx.js';

/** First wait before retrying a write that found the database locked; doubles up to the cap. */
const LOCK_RETRY_FIRST_MS = 2;
const LOCK_RETRY_MAX_MS = 50;

interface Queued {
  readonly fn: (tx: SqliteTx) => Promise<unknown>;
  readonly durable: boolean;
  readonly since: number;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

interface QueuedRead {
  readonly fn: (r: Reader) => Promise<unknown>;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: RegistryError };

function isBusy(e: unknown): boolean {
  return e instanceof Database.SqliteError && /^SQLITE_(BUSY|LOCKED)/.test(e.code);
}

export interface CommitQueueOptions {
  readonly db: Database.Database;
  readonly statements: Statements;
  /** Registry time, read once a batch. */
  readonly now: () => number;
  /** How the next batch is deferred (setImmediate, or a test's scheduler). */
  readonly defer: (run: () => void) => void;
  /** How long a write may wait for another process's write lock before answering `unavailable`. */
  readonly busyTimeoutMs: number;
  /** Why no write may commit now (the file replaced or removed, a failed fsync), or null. */
  readonly refusal: () => string | null;
  /** Calls back once every commit so far is durable, or with why it could not be made so. */
  readonly sync: (then: (err: RegistryError | null) => void) => void;
}

export class CommitQueue {
  private writes: Queued[] = [];
  private reads: QueuedRead[] = [];
  private pumping = false;
  private pumpScheduled = false;
  /** A write batch found the database locked by another process: retry at this timer. */
  private lockRetry: NodeJS.Timeout | null = null;
  private lockWaitMs = LOCK_RETRY_FIRST_MS;
  private closed = false;
  private readonly db: Database.Database;
  private readonly s: Statements;
  /** The last storage failure of a write, until a write succeeds again. */
  storageFault: string | null = null;

  constructor(private readonly opts: CommitQueueOptions) {
    this.db = opts.db;
    this.s = opts.statements;
  }

  write<T>(fn: (tx: SqliteTx) => Promise<T>, durable: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the database is closed'));
      this.writes.push({ fn, durable, since: performance.now(), resolve: (v) => resolve(v as T), reject });
      this.schedule();
    });
  }

  read<T>(fn: (r: Reader) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the database is closed'));
      this.reads.push({ fn, resolve: (v) => resolve(v as T), reject });
      this.schedule();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Commits what is queued, then takes no more. Writes waiting for another process's lock get
   * their busy timeout, then are refused.
   */
  async close(): Promise<void> {
    while (this.pumping || this.reads.length > 0 || this.writes.length > 0) {
      if (this.lockRetry !== null || this.pumping) await new Promise((r) => setTimeout(r, LOCK_RETRY_FIRST_MS));
      else await this.pump();
    }
    this.closed = true;
  }

  private schedule(): void {
    if (this.pumpScheduled || this.pumping) return;
    this.pumpScheduled = true;
    this.opts.defer(() => {
      this.pumpScheduled = false;
      this.pump().catch((e: unknown) => this.failAll(e));
    });
  }

  /**
   * One batch at a time on the connection: the queued reads, then the queued writes in one
   * transaction. Whatever queued meanwhile waits for the next turn of the event loop: a chain
   * of writes that each start when the one before resolves (a sweep's batches) would otherwise
   * run back to back in one turn, and no request would be read until the chain ended.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      if (this.reads.length > 0) {
        const batch = this.reads;
        this.reads = [];
        await this.runReads(batch);
      }
      if (this.writes.length > 0 && this.lockRetry === null) {
        const batch = this.writes;
        this.writes = [];
        await this.flushWrites(batch);
      }
    } finally {
      this.pumping = false;
    }
    if (this.reads.length > 0 || (this.writes.length > 0 && this.lockRetry === null)) this.schedule();
  }

  private async runReads(batch: readonly QueuedRead[]): Promise<void> {
    const r = new SqliteReader(this.s, this.opts.now());
    try {
      this.s.begin.run();
    } catch (e) {
      for (const item of batch) item.reject(toRegistryError(e));
      return;
    }
    for (const item of batch) {
      try {
        item.resolve(await item.fn(r));
      } catch (e) {
        item.reject(toRegistryError(e));
      }
    }
    try {
      this.s.commit.run();
    } catch {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
    }
  }

  /** Commits `batch` in one transaction; a locked database puts it back and retries on a timer. */
  private async flushWrites(batch: Queued[]): Promise<void> {
    try {
      const refused = this.opts.refusal();
      if (refused) throw new RegistryError('unavailable', refused);
      this.s.beginImmediate.run();
    } catch (e) {
      if (isBusy(e)) return this.waitForLock(batch);
      return this.fail(batch, e);
    }
    this.lockWaitMs = LOCK_RETRY_FIRST_MS;
    const outcomes: Outcome[] = [];
    try {
      for (const item of batch) outcomes.push(await this.runItem(item));
      this.s.commit.run();
    } catch (e) {
      // A storage failure, or the commit itself failed (disk full): nothing of the batch is kept
      // and nothing of it is acknowledged.
      try {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
      } catch {
        // SQLite may have rolled back already; the original error is the answer
      }
      return this.fail(batch, e);
    }
    this.storageFault = null;
    if (!batch.some((b, i) => b.durable && outcomes[i]?.ok)) return this.settle(batch, outcomes, null);
    this.opts.sync((err) => {
      if (err) this.storageFault = err.message;
      this.settle(batch, outcomes, err);
    });
  }

  /**
   * One use case in its own savepoint: its failure undoes only its own writes and is only its
   * own answer. If SQLite itself ended the transaction (an I/O error), the batch fails whole.
   */
  private async runItem(item: Queued): Promise<Outcome> {
    this.s.savepoint.run();
    try {
      const value = await item.fn(new SqliteTx(this.s, this.opts.now()));
      this.s.release.run();
      return { ok: true, value };
    } catch (e) {
      if (!this.db.inTransaction) throw e;
      this.s.rollbackTo.run();
      this.s.release.run();
      if (isRegistryError(e) && e.code !== 'unavailable') return { ok: false, error: e };
      if (isBusy(e) || (e instanceof Database.SqliteError && !/^SQLITE_(CONSTRAINT|ERROR|MISMATCH|RANGE)/.test(e.code))) throw e;
      return { ok: false, error: toRegistryError(e) };
    }
  }

  /** The pump itself failed (it should not): nothing queued is left hanging. */
  private failAll(e: unknown): void {
    this.pumping = false;
    try {
      if (this.db.open && this.db.inTransaction) this.db.exec('ROLLBACK');
    } catch {
      // the connection is gone; the answers below say so
    }
    const err = toRegistryError(e);
    for (const item of [...this.writes.splice(0), ...this.reads.splice(0)]) item.reject(err);
  }

  private waitForLock(batch: Queued[]): void {
    const now = performance.now();
    const expired = batch.filter((b) => now - b.since >= this.opts.busyTimeoutMs);
    const waiting = batch.filter((b) => now - b.since < this.opts.busyTimeoutMs);
    const err = new RegistryError('unavailable', 'the database is locked by another writer; try again');
    for (const item of expired) item.reject(err);
    this.writes = [...waiting, ...this.writes];
    if (this.writes.length === 0) return;
    this.lockRetry = setTimeout(() => {
      this.lockRetry = null;
      this.schedule();
    }, this.lockWaitMs);
    this.lockWaitMs = Math.min(this.lockWaitMs * 2, LOCK_RETRY_MAX_MS);
  }

  private fail(batch: readonly Queued[], e: unknown): void {
    const err = toRegistryError(e);
    if (err.code === 'unavailable' && !isBusy(e)) this.storageFault = err.message;
    for (const item of batch) item.reject(err);
  }

  /** Answers each item with its outcome; `durableError` overrides the durable ones' success. */
  private settle(batch: readonly Queued[], outcomes: readonly Outcome[], durableError: RegistryError | null): void {
    outcomes.forEach((o, i) => {
      const item = batch[i];
      if (!item) return;
      if (!o.ok) item.reject(o.error);
      else if (durableError && item.durable) item.reject(durableError);
      else item.resolve(o.value);
    });
  }
}
