/**
 * The listing's pages written on worker threads: each has a read-only connection of its own to
 * the same WAL database file and runs a page's statements (listing-json.ts, planned on the
 * main thread), so the event loop only relays the page's Buffer, and the SQLite work of the
 * next pages overlaps the sending of this one. The same threads run the other reads whose work
 * grows with the pool (the counts behind /health and /metrics: a million identifiers, most of
 * them cooling, took 16-60 ms to count), one statement in a read transaction of its own.
 *
 * A page is one message (its plan) and two answers, both from one read transaction: first
 * where the page ends (the edge statement, cheap: an index walk), so the next page can be
 * asked of another worker at once, then the page itself (its blob, or its rows when SQL cannot
 * write one of them). The transaction ends before the page is posted, and a worker holds
 * nothing between pages: a listing never pins a snapshot, a client that stops reading (or
 * leaves) costs no open transaction, and a WAL checkpoint waits for a listing no longer than
 * one page's statements.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { PagePlan, PageResult, PageSql } from './listing-json.js';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
// Waiting for a lock (a WAL recovery) blocks this thread only, never the event loop.
const db = new Database(workerData.path, { readonly: true, fileMustExist: true, timeout: 1000 });
const begin = db.prepare('BEGIN');
const commit = db.prepare('COMMIT');
const prepared = new Map();
const reads = new Map();
function readStatement(key) {
  let s = reads.get(key);
  if (!s) {
    const sql = workerData.reads[key];
    if (!sql) throw new Error('no read statement ' + key);
    s = db.prepare(sql).raw();
    reads.set(key, s);
  }
  return s;
}
function statements(key) {
  let s = prepared.get(key);
  if (!s) {
    const sql = workerData.sql[key];
    if (!sql) throw new Error('no listing statement ' + key);
    s = { body: db.prepare(sql.body).raw(), edge: db.prepare(sql.edge).raw(), rows: db.prepare(sql.rows).raw() };
    prepared.set(key, s);
  }
  return s;
}
// Runs read() in a read transaction of its own; a failure is posted as the answer to message id.
function inSnapshot(id, read) {
  try {
    begin.run();
    try {
      return { ok: true, value: read() };
    } finally {
      if (db.inTransaction) commit.run();
    }
  } catch (e) {
    try { if (db.inTransaction) db.exec('ROLLBACK'); } catch {}
    parentPort.postMessage({ id, error: String((e && e.message) || e), code: (e && e.code) || null });
    return { ok: false };
  }
}
parentPort.on('message', (m) => {
  if (m.stop) {
    db.close();
    parentPort.close();
    return;
  }
  if (m.read) {
    const s = inSnapshot(m.id, () => readStatement(m.read).get(m.params));
    if (s.ok) parentPort.postMessage({ id: m.id, row: s.value === undefined ? null : s.value });
    return;
  }
  const page = inSnapshot(m.id, () => {
    const s = statements(m.key);
    if (m.limit >= 0) parentPort.postMessage({ id: m.id, edge: s.edge.all(m.edge) });
    const row = s.body.get(m.body);
    // A row SQL could not write (a time outside years 0000-9999): the page's rows, from this snapshot.
    return { row, rows: !Array.isArray(row) || row[1] !== row[2] ? s.rows.all(m.edge) : null };
  });
  if (!page.ok) return;
  const { row, rows } = page.value;
  // The page's blob is handed over, not copied, when it owns its memory.
  const blob = Array.isArray(row) ? row[0] : null;
  const own = blob instanceof Uint8Array && blob.byteOffset === 0 && blob.byteLength === blob.buffer.byteLength;
  parentPort.postMessage({ id: m.id, row, rows }, own ? [blob.buffer] : []);
});
parentPort.postMessage({ ready: true });
`;

/** SQL of the reads beside the pages, by name: one statement each, named parameters, one row. */
export type ReadSql = Readonly<Record<string, string>>;

export interface ListingWorkerStats {
  /** Worker threads running (started, not stopped or failed). */
  readonly running: number;
  /** Pages asked of them and not answered yet. */
  readonly pending: number;
  /** Pages they answered. */
  readonly pages: number;
  /** Other reads (the counts) they answered. */
  readonly reads: number;
}

/** A page as a worker read it: the statements' results, and the rows when SQL could not write one. */
export interface WorkerPage extends PageResult {
  readonly rows: unknown[] | null;
}

interface Waiting {
  /** A page (counted in the stats), or one of the other reads. */
  readonly page: boolean;
  readonly onEdge: (edge: unknown[] | null) => void;
  /** The edge statement's rows, once posted (they come before the page). */
  edge: unknown[] | null | undefined;
  readonly resolve: (r: WorkerPage) => void;
  readonly reject: (e: Error) => void;
}

/** One worker thread and the pages asked of it. */
class ListingThread {
  private worker: Worker | null;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;
  private stopping: Promise<void> | null = null;
  /** Why it stopped serving (it failed, or was stopped): every page asked from then on is refused with it. */
  private ended: Error | null = null;
  /** Set once the worker has opened the database. */
  ready = false;
  everReady = false;
  pages = 0;
  reads = 0;

  constructor(path: string, sql: PageSql, reads: ReadSql, private readonly onEnd: (t: ListingThread, failure: Error) => void) {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    const worker = new Worker(WORKER, { eval: true, workerData: { path, driver, sql, reads } });
    this.worker = worker;
    worker.unref(); // the registry's server keeps the process alive, not the listing's threads
    worker.on('message', (m: unknown) => this.onMessage(m));
    worker.on('error', (e) => this.end(e));
    // A page that cannot be read back would otherwise never settle, and its listing would hang.
    worker.on('messageerror', (e) => this.end(e));
    worker.on('exit', (code) => this.end(new Error(`a listing worker exited (${code})`)));
  }

  get running(): boolean {
    return this.worker !== null && this.ended === null;
  }

  get pending(): number {
    return this.waiting.size;
  }

  run(plan: PagePlan, onEdge: (edge: unknown[] | null) => void): Promise<WorkerPage> {
    return new Promise<WorkerPage>((resolve, reject) => {
      if (this.ended || !this.worker) return reject(this.ended ?? new Error('the listing worker is stopped'));
      const id = this.nextId++;
      this.waiting.set(id, { page: true, onEdge, edge: undefined, resolve, reject });
      this.worker.postMessage({ id, key: plan.key, body: plan.body, edge: plan.edge, limit: plan.limit });
    });
  }

  /** Runs the read statement `key` with `params`, in a read transaction of its own: its one row (an array), or null for none. */
  read(key: string, params: Readonly<Record<string, unknown>>): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      if (this.ended || !this.worker) return reject(this.ended ?? new Error('the listing worker is stopped'));
      const id = this.nextId++;
      this.waiting.set(id, { page: false, onEdge: () => {}, edge: undefined, resolve: (r) => resolve(r.row), reject });
      this.worker.postMessage({ id, read: key, params });
    });
  }

  /** Asks the worker to close its connection and exit (terminated if it has not within 2 s); pages asked meanwhile are refused. */
  stop(reason: Error): Promise<void> {
    if (this.stopping) return this.stopping;
    const worker = this.worker;
    this.fail(reason);
    if (!worker) return (this.stopping = Promise.resolve());
    this.stopping = new Promise<void>((resolve) => {
      const timer = setTimeout(() => void worker.terminate(), 2000);
      timer.unref();
      worker.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      // Held until it has exited: unreferenced, a process with nothing else to do would end
      // before the store's close got past this wait, leaving the database open.
      worker.ref();
      worker.postMessage({ stop: true });
    });
    return this.stopping;
  }

  private onMessage(m: unknown): void {
    if (typeof m !== 'object' || m === null) return;
    if ('ready' in m) {
      if (this.ended === null) this.ready = this.everReady = true;
      return;
    }
    if (!('id' in m) || typeof m.id !== 'number') return;
    const w = this.waiting.get(m.id);
    if (!w) return;
    if ('error' in m) {
      this.waiting.delete(m.id);
      const err = new Error(String(m.error)) as Error & { code?: unknown };
      if ('code' in m && m.code) err.code = m.code;
      return w.reject(err);
    }
    const edge = 'edge' in m && Array.isArray(m.edge) ? (m.edge as unknown[]) : null;
    if (!('row' in m)) {
      w.edge = edge;
      return w.onEdge(edge);
    }
    this.waiting.delete(m.id);
    if (w.page) this.pages++;
    else this.reads++;
    const row = Array.isArray(m.row) ? [...(m.row as unknown[])] : null;
    // A Buffer crosses threads as a plain Uint8Array: the same memory, seen as a Buffer again.
    const blob = row?.[0];
    if (row && blob instanceof Uint8Array && !Buffer.isBuffer(blob)) row[0] = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
    const rows = 'rows' in m && Array.isArray(m.rows) ? (m.rows as unknown[]) : null;
    if (w.edge === undefined) w.onEdge(null); // no limit: no edge, no next page
    w.resolve({ row, edge: w.edge ?? null, rows });
  }

  /** The worker errored or exited: what is waiting is refused, and the pool forgets this thread. */
  private end(e: Error): void {
    const wasServing = this.ended === null;
    this.fail(e);
    this.worker = null;
    if (wasServing) this.onEnd(this, e);
  }

  private fail(e: Error): void {
    if (this.ended === null) this.ended = e;
    this.ready = false;
    for (const w of this.waiting.values()) w.reject(this.ended);
    this.waiting.clear();
  }
}

/**
 * The store's listing threads, shared by every listing: a page goes to the ready thread with
 * the fewest pages waiting. Started at the first listing, stopped after `idleMs` without a page
 * asked, or when the store closes. A thread that fails is forgotten (its pages are refused, and
 * the listing reads them in-process); if none ever opened the database, `failed` is set.
 */
/** How long threads that could not open the database stay off before they are tried again. */
export const FAILED_RETRY_MS = 30_000;

export class ListingWorkers {
  private threads: ListingThread[] = [];
  private idle: NodeJS.Timeout | null = null;
  private pagesBefore = 0;
  private readsBefore = 0;
  /** Threads that failed before opening the database: they would again, for a while. */
  private failure: { readonly error: Error; readonly at: number } | null = null;

  constructor(
    private readonly path: string, private readonly sql: PageSql, private readonly size: number, private readonly idleMs: number,
    private readonly now: () => number = () => performance.now(),
    /** The other reads the threads may run (see ListingThread.read), by name. */
    private readonly reads: ReadSql = {},
  ) {}

  get ready(): boolean {
    return this.threads.some((t) => t.ready);
  }

  /**
   * Why the threads could not open the database, for FAILED_RETRY_MS after it: then they are
   * tried again (a passing cause, a busy file or too many open files, does not turn them off for
   * the life of the process).
   */
  get failed(): Error | null {
    if (this.failure !== null && this.now() - this.failure.at >= FAILED_RETRY_MS) this.failure = null;
    return this.failure?.error ?? null;
  }

  /** Resolves true once a thread is ready, false when none is running (they failed or stopped). */
  async whenReady(): Promise<boolean> {
    while (!this.ready) {
      if (!this.threads.some((t) => t.running)) return false;
      await new Promise((r) => setTimeout(r, 2));
    }
    return true;
  }

  get stats(): ListingWorkerStats {
    return {
      running: this.threads.filter((t) => t.running).length,
      pending: this.threads.reduce((n, t) => n + t.pending, 0),
      pages: this.pagesBefore + this.threads.reduce((n, t) => n + t.pages, 0),
      reads: this.readsBefore + this.threads.reduce((n, t) => n + t.reads, 0),
    };
  }

  /** Starts the threads if none run, and keeps them from stopping for idleness a while longer. */
  start(): void {
    while (this.threads.length < this.size && this.failed === null) {
      this.threads.push(new ListingThread(this.path, this.sql, this.reads, (t, failure) => this.forget(t, failure)));
    }
    this.keep();
  }

  run(plan: PagePlan, onEdge: (edge: unknown[] | null) => void): Promise<WorkerPage> {
    // Stopped for idleness under a listing whose client paused: started again (this page is read
    // in-process meanwhile).
    if (!this.threads.some((t) => t.running)) this.start();
    this.keep();
    const best = this.leastBusy();
    if (best === null) return Promise.reject(this.failed ?? new Error('no listing worker is ready'));
    return best.run(plan, onEdge);
  }

  /** Runs the read statement `key` (one of `reads`) on the ready thread with the least waiting; its one row, or null. */
  read(key: string, params: Readonly<Record<string, unknown>>): Promise<unknown> {
    if (!this.threads.some((t) => t.running)) this.start();
    this.keep();
    const best = this.leastBusy();
    if (best === null) return Promise.reject(this.failed ?? new Error('no listing worker is ready'));
    return best.read(key, params);
  }

  private leastBusy(): ListingThread | null {
    let best: ListingThread | null = null;
    for (const t of this.threads) if (t.ready && (best === null || t.pending < best.pending)) best = t;
    return best;
  }

  /** Stops every thread; pages waiting are refused with `reason`. */
  async stop(reason: Error): Promise<void> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    const threads = this.threads;
    this.threads = [];
    for (const t of threads) {
      this.pagesBefore += t.pages;
      this.readsBefore += t.reads;
    }
    await Promise.all(threads.map((t) => t.stop(reason)));
  }

  private forget(t: ListingThread, failure: Error): void {
    if (!this.threads.includes(t)) return;
    this.threads = this.threads.filter((x) => x !== t);
    this.pagesBefore += t.pages;
    this.readsBefore += t.reads;
    if (!t.everReady) this.failure = { error: failure, at: this.now() };
  }

  private keep(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      this.idle = null;
      if (this.stats.pending > 0) return this.keep();
      void this.stop(new Error('the listing workers stopped for idleness'));
    }, this.idleMs);
    this.idle.unref();
  }
}
