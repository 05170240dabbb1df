/**
 * SQLite storage. Statements are prepared once; every write runs inside `write()`, which
 * commits the writes of one event-loop tick together (group commit) and fsyncs that one
 * commit when any of them changed ownership.
 */
import { closeSync, fsync as fsFsync, fsyncSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { Statement, Transaction } from 'better-sqlite3';
import { RegistryError, isRegistryError } from '../domain/errors.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, Status } from '../domain/types.js';
import { startCheckpointer } from './checkpointer.js';
import type { Checkpointer } from './checkpointer.js';
import { toRegistryError } from './errors.js';
import { RECORD_COLUMNS, asRow, intColumn, scalar, toHistoryEntry, toRecord } from './rows.js';
import { MIGRATIONS } from './schema.js';

export interface StoreOptions {
  /** File path, or `:memory:` for a throwaway database. */
  readonly path: string;
  /** How long a write waits for another process's write lock before answering `unavailable`. */
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
  /** How a durable commit's WAL is made durable; tests hold it back. Default: fs.fsync. */
  readonly fsync?: (fd: number, done: (err: Error | null) => void) => void;
}

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

interface Pending {
  readonly fn: () => unknown;
  readonly durable: boolean;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** Runs each queued function; a RegistryError is that item's answer, anything else aborts the batch. */
function runEach(batch: readonly Pending[], run: (fn: () => unknown) => unknown): Outcome[] {
  return batch.map((item): Outcome => {
    try {
      return { ok: true, value: run(item.fn) };
    } catch (error) {
      if (isRegistryError(error)) return { ok: false, error };
      throw error; // a storage failure: the whole transaction rolls back
    }
  });
}

/** Answers each item with its outcome; `durableError` overrides the durable ones' success. */
function settle(batch: readonly Pending[], outcomes: readonly Outcome[], durableError: RegistryError | null = null): void {
  outcomes.forEach((o, i) => {
    const item = batch[i];
    if (!item) return;
    if (!o.ok) item.reject(o.error);
    else if (durableError && item.durable) item.reject(durableError);
    else item.resolve(o.value);
  });
}

const STATUS_WHERE: Readonly<Record<Status | 'all', string>> = {
  all: '1 = 1',
  leased: 'client_id IS NOT NULL',
  free: 'client_id IS NULL AND retired = 0 AND available_at <= @now',
  cooling: 'client_id IS NULL AND retired = 0 AND available_at > @now',
  retired: 'client_id IS NULL AND retired = 1',
};

export function openDatabase(opts: StoreOptions): Database.Database {
  if (opts.path !== ':memory:' && !opts.readonly) mkdirSync(dirname(opts.path), { recursive: true });
  const db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 5000, readonly: opts.readonly ?? false });
  if (!opts.readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    // Commits never fsync on the event loop: a batch with an ownership change fsyncs the WAL
    // on libuv's thread pool and answers after (see Store.flush). NORMAL + that fsync is FULL.
    db.pragma('synchronous = NORMAL');
    migrate(db);
  }
  return db;
}

function migrate(db: Database.Database): void {
  const run = db.transaction(() => {
    const version = Number(db.pragma('user_version', { simple: true }));
    for (let v = version; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v] ?? '');
      db.pragma(`user_version = ${v + 1}`);
    }
  });
  run.immediate();
}

export class Store {
  readonly db: Database.Database;
  private queue: Pending[] = [];
  private flushScheduled = false;
  private walFd: number | null = null;
  private syncsInFlight = 0;
  private syncsDone: (() => void) | null = null;
  private readonly fsync: (fd: number, done: (err: Error | null) => void) => void;
  private checkpointer: Checkpointer | null = null;
  /** The database file as opened; null in memory. */
  private readonly file: { readonly path: string; readonly dev: number; readonly ino: number } | null;
  /** The last storage failure of a write, until a write succeeds again. */
  private storageFault: string | null = null;

  private readonly byNameStmt: Statement;
  private readonly byClientStmt: Statement;
  private readonly nextAllocatableStmt: Statement;
  private readonly grantStmt: Statement;
  private readonly renewStmt: Statement;
  private readonly freeStmt: Statement;
  private readonly historyInsertStmt: Statement;
  private readonly historyStmt: Statement;
  private readonly expiredStmt: Statement;
  private readonly countExpiredStmt: Statement;
  private readonly countLeasedStmt: Statement;
  private readonly countsStmt: Statement;
  private readonly listStmts: ReadonlyMap<string, Statement>;
  private readonly poolRowsStmt: Statement;
  private readonly insertStmt: Statement;
  private readonly setRetiredStmt: Statement;
  private readonly setOrderStmt: Statement;
  private readonly metaGetStmt: Statement;
  private readonly metaSetStmt: Statement;
  private readonly latestLastSeenStmt: Statement;
  private readonly oldestLastSeenStmt: Statement;
  private readonly latestHistoryStmt: Statement;
  private readonly pingStmt: Statement;
  private readonly shiftCooldownsStmt: Statement;
  private readonly reclaimHistoryStmt: Statement;
  private readonly reclaimFreeStmt: Statement;
  private readonly runBatch: Transaction<(batch: readonly Pending[]) => Outcome[]>;
  private readonly runReads: Transaction<(batch: readonly Pending[]) => Outcome[]>;
  private reads: Pending[] = [];
  private readsScheduled = false;

  constructor(opts: StoreOptions | Database.Database) {
    this.db = opts instanceof Database ? opts : openDatabase(opts);
    this.fsync = (!(opts instanceof Database) && opts.fsync) || fsFsync;
    const db = this.db;
    if (db.memory) {
      this.file = null;
    } else {
      const st = statSync(db.name);
      this.file = { path: db.name, dev: st.dev, ino: st.ino };
    }
    const p = (sql: string): Statement => db.prepare(sql);
    this.byNameStmt = p(`SELECT ${RECORD_COLUMNS} FROM identifiers WHERE name = ?`);
    this.byClientStmt = p(`SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id = ?`);
    this.nextAllocatableStmt = p(
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id IS NULL AND retired = 0 AND available_at <= ?
       ORDER BY available_at, pool_order LIMIT 1`,
    );
    this.grantStmt = p(
      `UPDATE identifiers SET client_id = @clientId, epoch = @epoch, allocated_at = @now, last_seen = @now
       WHERE id = @rowId AND client_id IS NULL`,
    );
    this.renewStmt = p(`UPDATE identifiers SET last_seen = max(last_seen, @now) WHERE id = @rowId AND client_id = @clientId`);
    this.freeStmt = p(
      `UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, available_at = @availableAt
       WHERE id = @rowId`,
    );
    this.historyInsertStmt = p(
      `INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES (@rowId, @at, @event, @clientId, @epoch)`,
    );
    this.historyStmt = p(`SELECT at, event, client_id, epoch FROM history WHERE identifier_id = ? ORDER BY id`);
    this.expiredStmt = p(
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id IS NOT NULL AND last_seen <= @cutoff
       ORDER BY last_seen LIMIT @limit`,
    );
    this.countExpiredStmt = p(`SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL AND last_seen <= ?`);
    this.countLeasedStmt = p(`SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    this.countsStmt = p(
      `SELECT count(*) AS total,
              count(client_id) AS leased,
              coalesce(sum(client_id IS NULL AND retired = 0 AND available_at > @now), 0) AS cooling,
              coalesce(sum(client_id IS NULL AND retired = 1), 0) AS retired
       FROM identifiers`,
    );
    const lists = new Map<string, Statement>();
    for (const [status, where] of Object.entries(STATUS_WHERE)) {
      const base = `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE ${where}`;
      lists.set(`${status}:first`, p(`${base} ORDER BY pool_order, id LIMIT @limit`));
      lists.set(`${status}:after`, p(`${base} AND (pool_order, id) > (@afterOrder, @afterId) ORDER BY pool_order, id LIMIT @limit`));
    }
    this.listStmts = lists;
    this.poolRowsStmt = p(`SELECT id, name, pool_order, retired, client_id, epoch FROM identifiers`);
    this.insertStmt = p(`INSERT INTO identifiers (name, pool_order) VALUES (?, ?)`);
    this.setRetiredStmt = p(`UPDATE identifiers SET retired = @retired, pool_order = @poolOrder WHERE id = @rowId`);
    this.setOrderStmt = p(`UPDATE identifiers SET pool_order = ? WHERE id = ?`);
    this.metaGetStmt = p(`SELECT value FROM meta WHERE key = ?`);
    this.metaSetStmt = p(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`);
    this.latestLastSeenStmt = p(`SELECT max(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    this.oldestLastSeenStmt = p(`SELECT min(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    this.latestHistoryStmt = p(`SELECT at AS n FROM history ORDER BY id DESC LIMIT 1`);
    this.pingStmt = p(`SELECT count(*) AS n FROM meta`);
    // Set-based: one statement for the history and one for the rows, whatever the batch size.
    this.reclaimHistoryStmt = p(
      `INSERT INTO history (identifier_id, at, event, client_id, epoch)
       SELECT id, @now, 'reclaimed', client_id, epoch FROM identifiers WHERE id IN (SELECT value FROM json_each(@ids))`,
    );
    this.reclaimFreeStmt = p(
      `UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, available_at = @availableAt
       WHERE id IN (SELECT value FROM json_each(@ids))`,
    );
    this.shiftCooldownsStmt = p(`UPDATE identifiers SET available_at = available_at + @shift WHERE client_id IS NULL AND available_at > @floor`);

    // Reads of one tick share one read transaction: one snapshot, one WAL lookup setup.
    this.runReads = db.transaction((batch: readonly Pending[]) => runEach(batch, (fn) => fn()));
    // Each queued write runs in its own savepoint, so one that fails leaves the others' writes in.
    const inSavepoint = db.transaction((fn: () => unknown) => fn());
    this.runBatch = db.transaction((batch: readonly Pending[]) => runEach(batch, inSavepoint));
  }

  /**
   * Runs `fn` in a write transaction (BEGIN IMMEDIATE: the read and the write it decides see
   * one state, with other processes locked out). Resolves after the commit, and, when
   * `durable`, after the commit is fsynced. `fn` must be synchronous.
   */
  write<T>(fn: () => T, durable: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, durable, resolve: (v) => resolve(v as T), reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Commits everything queued so far in one transaction. */
  flush(): void {
    this.flushScheduled = false;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    let outcomes: Outcome[];
    try {
      const moved = this.fileProblem();
      if (moved) throw new RegistryError('unavailable', moved);
      outcomes = this.runBatch.immediate(batch);
      this.storageFault = null;
    } catch (e) {
      const err = toRegistryError(e);
      // A lock held by another writer passes; any other storage failure makes the database unhealthy.
      const busy = e instanceof Database.SqliteError && /^SQLITE_(BUSY|LOCKED)/.test(e.code);
      if (err.code === 'unavailable' && !busy) this.storageFault = err.message;
      for (const item of batch) item.reject(err);
      return;
    }
    if (!batch.some((b, i) => b.durable && outcomes[i]?.ok)) return settle(batch, outcomes);
    this.syncWal((fsyncError) => settle(batch, outcomes, fsyncError));
  }

  /**
   * Makes every commit so far durable, off the event loop: fsync of the WAL file, which is
   * what synchronous=FULL does after each commit. One fsync covers all the commits before it.
   */
  private syncWal(then: (err: RegistryError | null) => void): void {
    const failed = (err: Error): void => {
      this.storageFault = `the database's log could not be synced to disk (${err.message})`;
      then(new RegistryError('unavailable', this.storageFault, { cause: err }));
    };
    let fd: number | null;
    try {
      fd = this.walDescriptor();
    } catch (e) {
      return failed(e instanceof Error ? e : new Error(String(e)));
    }
    if (fd === null) return then(null); // in memory: nothing to make durable
    this.syncsInFlight++;
    this.fsync(fd, (err) => {
      this.syncsInFlight--;
      if (this.syncsInFlight === 0) this.syncsDone?.();
      if (err) failed(err);
      else then(null);
    });
  }

  private walDescriptor(): number | null {
    if (this.walFd !== null || !this.file) return this.walFd;
    this.walFd = openSync(`${this.file.path}-wal`, 'r');
    // The WAL file's directory entry must be durable too (once).
    const dir = openSync(dirname(this.file.path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return this.walFd;
  }

  /**
   * Runs a read with the other reads of this tick in one read transaction (no write lock).
   * For the hot path; `fn` must not write.
   */
  readBatched<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.reads.push({ fn, durable: false, resolve: (v) => resolve(v as T), reject });
      if (!this.readsScheduled) {
        this.readsScheduled = true;
        setImmediate(() => this.flushReads());
      }
    });
  }

  private flushReads(): void {
    this.readsScheduled = false;
    const batch = this.reads;
    this.reads = [];
    let outcomes: Outcome[];
    try {
      outcomes = this.runReads.deferred(batch);
    } catch (e) {
      const err = toRegistryError(e);
      for (const item of batch) item.reject(err);
      return;
    }
    settle(batch, outcomes);
  }

  /** Runs a read; storage failures come back as RegistryError. */
  read<T>(fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (e) {
      return Promise.reject(toRegistryError(e));
    }
  }

  // ---- reads (inside or outside a write) ----

  byName(name: string): IdentifierRecord | null {
    const r: unknown = this.byNameStmt.get(name);
    return r === undefined ? null : toRecord(r);
  }

  byClient(clientId: string): IdentifierRecord | null {
    const r: unknown = this.byClientStmt.get(clientId);
    return r === undefined ? null : toRecord(r);
  }

  nextAllocatable(now: number): IdentifierRecord | null {
    const r: unknown = this.nextAllocatableStmt.get(now);
    return r === undefined ? null : toRecord(r);
  }

  history(rowId: number): HistoryEntry[] {
    return this.historyStmt.all(rowId).map(toHistoryEntry);
  }

  expired(cutoff: number, limit: number): IdentifierRecord[] {
    return this.expiredStmt.all({ cutoff, limit }).map(toRecord);
  }

  countExpired(cutoff: number): number {
    return scalar(this.countExpiredStmt.get(cutoff)) ?? 0;
  }

  countLeased(): number {
    return scalar(this.countLeasedStmt.get()) ?? 0;
  }

  counts(now: number): RawCounts {
    const r = asRow(this.countsStmt.get({ now }));
    return {
      total: intColumn(r, 'total'),
      leased: intColumn(r, 'leased'),
      cooling: intColumn(r, 'cooling'),
      retired: intColumn(r, 'retired'),
    };
  }

  list(q: ListQuery): IdentifierRecord[] {
    const stmt = this.listStmts.get(`${q.status ?? 'all'}:${q.after ? 'after' : 'first'}`);
    if (!stmt) throw new Error('no list statement');
    const params: Record<string, number> = { now: q.now, limit: q.limit ?? -1 };
    if (q.after) {
      params['afterOrder'] = q.after.poolOrder;
      params['afterId'] = q.after.rowId;
    }
    return stmt.all(params).map(toRecord);
  }

  poolRows(): PoolRow[] {
    return this.poolRowsStmt.all().map((raw) => {
      const r = asRow(raw);
      const clientId = r['client_id'];
      return {
        rowId: intColumn(r, 'id'),
        name: String(r['name']),
        poolOrder: intColumn(r, 'pool_order'),
        retired: intColumn(r, 'retired') === 1,
        clientId: typeof clientId === 'string' ? clientId : null,
        epoch: intColumn(r, 'epoch'),
      };
    });
  }

  meta(key: string): string | null {
    const r: unknown = this.metaGetStmt.get(key);
    if (r === undefined) return null;
    const v = asRow(r)['value'];
    return typeof v === 'string' ? v : null;
  }

  /** The latest registry time written to the database: a floor for the clock after a restart. */
  latestTime(): number {
    return Math.max(scalar(this.latestLastSeenStmt.get()) ?? 0, scalar(this.latestHistoryStmt.get()) ?? 0);
  }

  oldestLastSeen(): number | null {
    return scalar(this.oldestLastSeenStmt.get());
  }

  /**
   * Whether the file this connection writes to is still the one at its path. SQLite keeps
   * writing to a deleted or replaced file's inode, and everything written there is lost at
   * the next start-up, so such writes are refused.
   */
  fileProblem(): string | null {
    if (!this.file) return null;
    try {
      const st = statSync(this.file.path);
      if (st.ino !== this.file.ino || st.dev !== this.file.dev) return `the database file ${this.file.path} was replaced`;
      return null;
    } catch {
      return `the database file ${this.file.path} was removed`;
    }
  }

  /** Why the database cannot serve writes, or null. Reads it once, so a broken file throws. */
  healthProblem(): string | null {
    this.pingStmt.get();
    if (this.db.readonly) return 'the database is open read-only';
    return this.fileProblem() ?? this.storageFault;
  }

  // ---- writes (only inside `write()`) ----

  grant(rowId: number, clientId: string, epoch: number, now: number): void {
    const r = this.grantStmt.run({ rowId, clientId, epoch, now });
    if (r.changes !== 1) throw new Error(`grant of row ${rowId} changed ${r.changes} rows`);
  }

  renew(rowId: number, clientId: string, now: number): void {
    this.renewStmt.run({ rowId, clientId, now });
  }

  free(rowId: number, availableAt: number): void {
    this.freeStmt.run({ rowId, availableAt });
  }

  appendHistory(rowId: number, at: number, event: HistoryEvent, clientId: string | null, epoch: number): void {
    this.historyInsertStmt.run({ rowId, at, event, clientId, epoch });
  }

  insertIdentifier(name: string, poolOrder: number): number {
    return Number(this.insertStmt.run(name, poolOrder).lastInsertRowid);
  }

  setRetired(rowId: number, retired: boolean, poolOrder: number): void {
    this.setRetiredStmt.run({ rowId, retired: retired ? 1 : 0, poolOrder });
  }

  setPoolOrder(rowId: number, poolOrder: number): void {
    this.setOrderStmt.run(poolOrder, rowId);
  }

  /**
   * Reclaims up to `limit` leases whose last liveness is at or before `cutoff` into cooling
   * until `availableAt`, with their history; returns them as they were.
   */
  reclaimExpired(cutoff: number, limit: number, now: number, availableAt: number): IdentifierRecord[] {
    const recs = this.expired(cutoff, limit);
    if (recs.length === 0) return recs;
    const ids = JSON.stringify(recs.map((r) => r.rowId));
    this.reclaimHistoryStmt.run({ ids, now });
    this.reclaimFreeStmt.run({ ids, availableAt });
    return recs;
  }

  /** Pushes every cool-down still running at `floor` later by `shift` ms; returns how many. */
  shiftCooldowns(floor: number, shift: number): number {
    return this.shiftCooldownsStmt.run({ floor, shift }).changes;
  }

  setMeta(key: string, value: string): void {
    this.metaSetStmt.run(key, value);
  }

  /**
   * Moves WAL checkpoints to a worker thread (see checkpointer.ts). For a long-running
   * registry on a file; tests and one-shot commands keep SQLite's automatic checkpoint.
   */
  checkpointInBackground(onError?: (message: string) => void): void {
    if (this.checkpointer || this.db.memory) return;
    this.db.pragma('wal_autocheckpoint = 0');
    this.checkpointer = startCheckpointer(this.db.name, onError ? { onError } : {});
  }

  /** Commits what is queued, stops the checkpointer, then closes the database. */
  async close(): Promise<void> {
    this.flush();
    if (this.syncsInFlight > 0) await new Promise<void>((resolve) => { this.syncsDone = resolve; });
    if (this.checkpointer) {
      await this.checkpointer.stop();
      this.checkpointer = null;
    }
    if (this.walFd !== null) closeSync(this.walFd);
    this.walFd = null;
    if (this.db.open) this.db.close();
  }
}
