/**
 * The SQLite engine: one connection, statements prepared once (statements.ts). The writes
 * queued in one event-loop tick commit together, each use case in a savepoint of its own
 * (commit-queue.ts), and the commit is fsynced off the event loop when any of them changed
 * ownership (durability.ts). Opening migrates the file (migrate.ts) and anchors registry time
 * through it (time.ts); the full listing and the counts are read on worker threads
 * (listing-worker.ts), WAL checkpoints run on another (checkpointer.ts).
 */
import { fsync as fsFsync } from 'node:fs';
import type Database from 'better-sqlite3';
import { anchoredClock, systemTimeSource } from '../../clock.js';
import type { Clock, TimeSource } from '../../clock.js';
import { RegistryError } from '../../domain/errors.js';
import type { IdentifierRecord } from '../../domain/types.js';
import { recordTuples } from '../columns.js';
import { NO_PROOF } from '../types.js';
import type { ListJson, ListingCapability, ListingReader, OffLoopPage, ViewRules } from '../listing.js';
import type { HeldProof, ListQuery, RawCounts, Reader, Store, Tx, WriteOptions } from '../types.js';
import { startCheckpointer } from './checkpointer.js';
import type { Checkpointer } from './checkpointer.js';
import { CommitQueue } from './commit-queue.js';
import { DatabaseFile, WalSync } from './durability.js';
import type { Fsync } from './durability.js';
import { toRegistryError } from './errors.js';
import { edgeNext, finishPage, pageSql, planPage } from './listing-json.js';
import { ListingWorkers } from './listing-worker.js';
import type { ListingWorkerStats } from './listing-worker.js';
import { openDatabase } from './migrate.js';
import { scalar } from './rows.js';
import { COUNTS_SQL, STATUS_WHERE, Statements } from './statements.js';
import { anchorOn } from './time.js';
import { SqliteReader } from './tx.js';

export { openDatabase, SchemaTooNewError } from './migrate.js';
export { STATUS_WHERE } from './statements.js';
export { registryTimeOf } from './time.js';

export interface SqliteStoreOptions {
  /** File path, or `:memory:` for a throwaway database. */
  readonly path: string;
  /** How long a write may wait for another process's write lock before answering `unavailable`. */
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
  /** How a durable commit's WAL is made durable; tests hold it back. Default: fs.fsync. */
  readonly fsync?: Fsync;
  /** Registry time. Default: the machine's clocks anchored through the database (see clock.ts). */
  readonly clock?: Clock;
  /** The machine's clocks, for the default clock; tests step them. */
  readonly source?: TimeSource;
  /**
   * How the next batch is deferred (default: setImmediate, so the requests of one tick share a
   * commit). Interleaving tests hand it to fast-check's scheduler.
   */
  readonly defer?: (run: () => void) => void;
  /** Whether the full listing's pages may be read on a worker thread (default true; never in memory). */
  readonly listingWorker?: boolean;
}

/** The listing workers stop after this long without a page to write. */
const LISTING_IDLE_MS = 60_000;
/**
 * Listing worker threads: two, so the next page is written while this one is (each page tells
 * where it ends before it is written, see listing-worker.ts).
 */
const LISTING_WORKERS = 2;

/** A count a worker read (a number, or a bigint from a very large table). */
function countOf(v: unknown): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new Error(`counts: expected a count, got ${typeof v}`);
  return n;
}

export class SqliteStore implements Store {
  readonly engine = 'sqlite' as const;
  readonly db: Database.Database;
  readonly clock: Clock;
  /** Set when this process found a previous boot's anchor: cool-downs were resumed from the floor. */
  readonly rebooted: boolean;
  private readonly s: Statements;
  private readonly queue: CommitQueue;
  private readonly wal: WalSync;
  private checkpointer: Checkpointer | null = null;
  /** The database file as opened; null in memory. */
  private readonly file: DatabaseFile | null;
  /** The full listing's reader threads (listing-worker.ts), made at the first listing. */
  private workers: ListingWorkers | null = null;
  /** False: the listing's pages are read in-process (the store was opened so). */
  private readonly listingOffLoop: boolean;

  constructor(opts: SqliteStoreOptions) {
    const db = this.db = openDatabase(opts);
    this.listingOffLoop = opts.listingWorker ?? true;
    this.file = db.memory ? null : new DatabaseFile(db.name);
    this.wal = new WalSync(this.file, opts.fsync ?? fsFsync);
    this.s = new Statements(db);
    if (opts.clock || opts.readonly) {
      this.clock = opts.clock ?? anchoredClock(opts.source ?? systemTimeSource, this.latestTime());
      this.rebooted = false;
    } else {
      const { clock, rebooted } = anchorOn(db, this.s.metaSet, opts.source ?? systemTimeSource);
      this.clock = clock;
      this.rebooted = rebooted;
    }
    this.queue = new CommitQueue({
      db, statements: this.s, now: () => this.clock.now(), defer: opts.defer ?? setImmediate, busyTimeoutMs: opts.busyTimeoutMs ?? 5000,
      refusal: () => this.fileProblem() ?? this.wal.failure,
      sync: (then) => this.wal.sync(then),
    });
    // From here on the event loop never waits for another process's lock: see commit-queue.ts.
    db.pragma('busy_timeout = 0');
  }

  write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T> {
    return this.queue.write(fn, opts.durable);
  }

  /** A write like the others: SQLite commits the writes of a tick together anyway. */
  renewHeld(name: string, clientId: string, epoch: number | null, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.write((tx) => tx.renewHeld(name, clientId, epoch, tx.now, fenceCooldownMs, proof), { durable: false });
  }

  releaseHeld(name: string, clientId: string, epoch: number | null, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.write((tx) => tx.releaseHeld(name, clientId, epoch, tx.now, proof), { durable: true });
  }

  read<T>(fn: (r: Reader) => Promise<T>): Promise<T> {
    return this.queue.read(fn);
  }

  /**
   * Whether the file this connection writes to is still the one at its path (see
   * durability.ts): writes to a deleted or replaced file are refused.
   */
  fileProblem(): string | null {
    return this.file?.problem() ?? null;
  }

  async healthProblem(): Promise<string | null> {
    try {
      if (!this.db.open) return 'the database is closed';
      this.s.ping.get();
      if (this.db.readonly) return 'the database is open read-only';
      return this.fileProblem() ?? this.wal.failure ?? this.queue.storageFault;
    } catch (e) {
      return toRegistryError(e).message;
    }
  }

  /** The latest registry time written to the database. */
  latestTime(): number {
    return Math.max(scalar(this.s.latestLastSeen.get()) ?? 0, scalar(this.s.latestHistory.get()) ?? 0);
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

  /**
   * The listing capability (store/listing.ts): pages written as JSON in SQL (listing-json.ts),
   * in-process on this connection or off the event loop on the listing's worker threads.
   */
  readonly listing: ListingCapability = {
    pageJson: async (r: Reader, q: ListQuery, view: ViewRules): Promise<ListJson | null> => (r instanceof SqliteReader ? r.listJson(q, view) : null),
    offLoop: (): ListingReader | null => this.listingReader(),
  };

  /**
   * The listing's worker threads (listing-worker.ts; started now if none run), or null: in
   * memory, closed, the file replaced or removed, or workers that could not open the database.
   */
  private listingReader(): ListingReader | null {
    if (this.queue.isClosed || !this.listingOffLoop || !this.file || this.fileProblem()) return null;
    this.workers ??= new ListingWorkers(this.file.path, pageSql(STATUS_WHERE), LISTING_WORKERS, LISTING_IDLE_MS, undefined, { counts: COUNTS_SQL });
    const workers = this.workers;
    if (workers.failed) return null;
    workers.start();
    return {
      get ready() { return workers.ready; },
      whenReady: () => workers.whenReady(),
      counts: async (now: number): Promise<RawCounts> => {
        const row = await workers.read('counts', { now });
        if (!Array.isArray(row)) throw new Error('counts: expected one row');
        const [total, leased, retired, cooling]: unknown[] = row;
        return { total: countOf(total), leased: countOf(leased), retired: countOf(retired), cooling: countOf(cooling) };
      },
      page: async (q: ListQuery, view: ViewRules, onNext: (next: ListJson['next']) => void): Promise<OffLoopPage | null> => {
        const plan = planPage(q, view);
        if (plan === null) return null;
        const r = await workers.run(plan, (edge) => onNext(edgeNext(edge)));
        const json = finishPage(q, r);
        if (json) return { members: json.members, rows: [], next: json.next };
        return { members: null, rows: recordTuples(r.rows ?? []), next: edgeNext(r.edge) };
      },
    };
  }

  /** Starts the listing workers now rather than at the first listing; true once one is ready to read pages. */
  async startListingWorkers(): Promise<boolean> {
    if (this.listingReader() === null || !this.workers) return false;
    return this.workers.whenReady();
  }

  /** For tests and the bench: the listing workers' state, and the pages and other reads they answered so far. */
  listingWorkerStats(): ListingWorkerStats {
    return this.workers?.stats ?? { running: 0, pending: 0, pages: 0, reads: 0 };
  }

  /** Stops the listing workers, as if they failed: pages waiting are refused (tests: workers gone mid-listing). */
  async stopListingWorkers(): Promise<void> {
    await this.workers?.stop(new RegistryError('unavailable', 'the listing workers were stopped'));
  }

  /** Commits what is queued, stops the checkpointer, then closes the database. */
  async close(): Promise<void> {
    await this.queue.close();
    await this.workers?.stop(new RegistryError('unavailable', 'the database is closed'));
    await this.wal.close();
    if (this.checkpointer) {
      await this.checkpointer.stop();
      this.checkpointer = null;
    }
    if (this.db.open) this.db.close();
  }
}
