/**
 * WAL checkpoints on a worker thread. SQLite's automatic checkpoint runs inside whichever
 * commit crosses the threshold, copying pages and fsyncing the database file on the event
 * loop: a stall of many milliseconds for one unlucky request. Here the main connection turns
 * the automatic checkpoint off and a second connection, on its own thread, checkpoints every
 * `intervalMs`.
 *
 * Most checkpoints are PASSIVE: they copy the log into the database without taking the write
 * lock, so writes never wait for them. A tick makes passes until one finds nothing new to copy:
 * the first copies what the last tick left, each next one only the frames committed while the
 * one before ran, so they shorten quickly. A log checkpointed to its end is started over by
 * SQLite itself at the next write (it writes from the start of the file again, which is why
 * the file does not grow under steady writes), provided no reader still reads from the log.
 *
 * Two checkpoints take the write lock, both with no busy wait (a reader or writer in the way
 * makes them give up at once instead of holding the lock while they wait, as they would with a
 * busy timeout):
 * - a TRUNCATE when nothing was written for a tick (`data_version` unchanged): it empties the
 *   log file, giving the disk back;
 * - a RESTART when the passes did not catch up with a busy writer and the log, past
 *   `walLimitPages`, has not started over for three ticks (the WAL header's checkpoint
 *   sequence unchanged): it copies the last frames under the lock, so the next write starts the
 *   log over. Writes wait for that copy only (the frames since the last pass). Rare on purpose:
 *   tried at every tick past 4,000 pages, it slowed a 100,000-reclaim sweep by a fifth.
 * Measured on this machine (docs/adr/0005-wal-checkpoints-that-never-wait-holding-the-lock.md, "Context"): the TRUNCATE the checkpointer used to run
 * under load held the write lock 22–40 ms about every 2 s, and writers then retried after 2,
 * 4, 8, 16 ms; a RESTART with a 1 s busy timeout gave a 177 ms p99.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const fs = require('node:fs');
const db = new Database(workerData.path, { timeout: 1000 });
const walLimit = workerData.walLimitPages;
const maxPasses = workerData.passes;
const stats = { passes: 0, truncates: 0, restarts: 0, gaveUp: 0 };
/** Ticks in a row with the log past its limit and not started over, before a RESTART. */
const STUCK_TICKS = 3;
let timer = null;
let lastVersion = -1;
let lastStart = null;
let stuck = 0;
let walFd = null;
let dbFd = null;
let lastError = null;
let lastErrorAt = -Infinity;
/** The log file header's checkpoint sequence and salt: new each time the log starts over. */
function logStart() {
  try {
    if (walFd === null) walFd = fs.openSync(workerData.path + '-wal', 'r');
    const b = Buffer.alloc(12);
    return fs.readSync(walFd, b, 0, 12, 12) < 12 ? 'empty' : b.toString('hex');
  } catch {
    return 'none';
  }
}
function pass() {
  stats.passes++;
  return db.pragma('wal_checkpoint(PASSIVE)')[0];
}
/**
 * A checkpoint that takes the write lock, without waiting: true when it did all it is for.
 * The database file is synced first, outside any lock: a pass that does not reach the end of
 * the log leaves the pages it copied unsynced, and the checkpoint would otherwise sync all of
 * them while it holds the lock (a 116 ms p99 in a full run).
 */
function locking(mode) {
  if (dbFd === null) dbFd = fs.openSync(workerData.path, 'r');
  fs.fdatasyncSync(dbFd);
  db.pragma('busy_timeout = 0');
  try {
    const r = db.pragma('wal_checkpoint(' + mode + ')')[0];
    if (r.busy) stats.gaveUp++;
    return !r.busy;
  } finally {
    db.pragma('busy_timeout = 1000');
  }
}
function tick() {
  try {
    let r = pass();
    for (let i = 1; i < maxPasses && !r.busy; i++) {
      const next = pass();
      if (next.busy) break; // another connection is checkpointing
      // Caught up: nothing was committed while the pass before ran (or the log started over).
      const caughtUp = (next.log === r.log && next.checkpointed === next.log) || next.log < r.log;
      r = next;
      if (caughtUp) break;
    }
    // Changes whenever another connection committed since this one last looked.
    const version = db.pragma('data_version', { simple: true });
    const quiet = version === lastVersion;
    lastVersion = version;
    const start = logStart();
    stuck = !r.busy && r.log > walLimit && start === lastStart ? stuck + 1 : 0;
    lastStart = start;
    if (!r.busy && r.log > 0 && r.checkpointed === r.log && quiet) {
      if (locking('TRUNCATE')) stats.truncates++; // nothing written for a tick: give the disk back
    } else if (stuck >= STUCK_TICKS) {
      // The passes have not caught up with the writer for a while: make the log start over.
      if (locking('RESTART')) {
        stats.restarts++;
        stuck = 0;
      }
    }
  } catch (e) {
    // Told once, and again only when it changes or a minute later: ticks are 4 a second.
    const message = String(e && e.message || e);
    if (message !== lastError || performance.now() - lastErrorAt >= 60000) {
      lastError = message;
      lastErrorAt = performance.now();
      parentPort.postMessage({ error: message });
    }
  }
  timer = setTimeout(tick, workerData.intervalMs);
}
parentPort.on('message', (m) => {
  if (m === 'stats') {
    parentPort.postMessage({ stats });
  } else if (m === 'stop') {
    clearTimeout(timer);
    try { db.pragma('wal_checkpoint(PASSIVE)'); } catch {}
    db.close();
    if (walFd !== null) fs.closeSync(walFd);
    if (dbFd !== null) fs.closeSync(dbFd);
    parentPort.postMessage({ stopped: true });
  }
});
tick();
`;

/** What the checkpointer did so far. */
export interface CheckpointStats {
  /** PASSIVE checkpoints. */
  readonly passes: number;
  /** Logs emptied when no write came for a tick. */
  readonly truncates: number;
  /** Logs made to start over under a writer the passes could not catch up with. */
  readonly restarts: number;
  /** TRUNCATEs or RESTARTs that found a reader or writer in the way and gave up at once. */
  readonly gaveUp: number;
}

export interface Checkpointer {
  /** The worker's counts so far (for tests and the bench). */
  stats(): Promise<CheckpointStats>;
  stop(): Promise<void>;
}

export function startCheckpointer(
  path: string,
  opts: { intervalMs?: number; walLimitPages?: number; passes?: number; onError?: (message: string) => void } = {},
): Checkpointer {
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: { path, driver, intervalMs: opts.intervalMs ?? 250, walLimitPages: opts.walLimitPages ?? 10_000, passes: opts.passes ?? 8 },
  });
  worker.unref();
  const asked: { resolve: (s: CheckpointStats) => void; reject: (e: Error) => void }[] = [];
  let exited = false;
  const stopped: (() => void)[] = [];
  worker.on('message', (m: unknown) => {
    if (typeof m !== 'object' || m === null) return;
    if ('error' in m) opts.onError?.(String(m.error));
    if ('stats' in m) asked.shift()?.resolve(m.stats as CheckpointStats);
    if ('stopped' in m) for (const done of stopped.splice(0)) done();
  });
  worker.on('error', (e) => opts.onError?.(e.message));
  worker.once('exit', () => {
    exited = true;
    for (const a of asked.splice(0)) a.reject(new Error('the checkpointer has stopped'));
    for (const done of stopped.splice(0)) done();
  });
  return {
    stats(): Promise<CheckpointStats> {
      return new Promise((resolve, reject) => {
        if (exited) return reject(new Error('the checkpointer has stopped'));
        asked.push({ resolve, reject });
        worker.postMessage('stats');
      });
    },
    stop(): Promise<void> {
      return new Promise((resolve) => {
        if (exited) return resolve();
        let once = false;
        const done = (): void => {
          if (once) return;
          once = true;
          void worker.terminate().then(() => resolve());
        };
        stopped.push(done);
        // Held until it answers: unreferenced, a process with nothing else to do could end first.
        worker.ref();
        worker.postMessage('stop');
        setTimeout(done, 2000).unref();
      });
    },
  };
}
