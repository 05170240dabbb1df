/**
 * WAL checkpoints on a worker thread. SQLite's automatic checkpoint runs inside whichever
 * commit crosses the threshold, copying pages and fsyncing the database file on the event
 * loop: a stall of many milliseconds for one unlucky request. Here the main connection turns
 * the automatic checkpoint off and a second connection, on its own thread, checkpoints every
 * `intervalMs`.
 *
 * Every checkpoint is PASSIVE: it copies the log into the database without taking the write
 * lock, so writes never wait for it. A tick makes passes until one finds nothing new to copy:
 * the first copies what the last tick left, each next one only the frames committed while the
 * one before ran, so they shorten quickly. A log checkpointed to its end is started over by
 * SQLite itself at the next write (it writes from the start of the file again, which is why
 * the file does not grow under steady writes), provided no reader still reads from the log.
 *
 * A TRUNCATE (which holds the write lock while it waits for readers, syncs the database file
 * and shrinks the log file) runs only when nothing is being written: a log checkpointed to its
 * end and unchanged since the tick before is emptied, returning the disk. And as a last resort:
 * a log past `walLimitPages` that has not started over for three ticks in a row (a writer so
 * busy that no pass ever catches up) is truncated while writes wait. Measured on this machine
 * (README, "Performance"): the TRUNCATE every ~2 s that the checkpointer used to run under load
 * held the write lock 22–40 ms, and writers then retried after 2, 4, 8, 16 ms.
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
const stats = { passes: 0, truncates: 0, forced: 0 };
let timer = null;
let lastVersion = -1;
let lastStart = null;
let stuck = 0;
let walFd = null;
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
function truncate() {
  db.pragma('wal_checkpoint(TRUNCATE)');
}
function tick() {
  try {
    let r = pass();
    for (let i = 1; i < maxPasses; i++) {
      const next = pass();
      // Caught up: nothing was committed while the pass before ran (or the log started over).
      const caughtUp = (next.log === r.log && next.checkpointed === next.log) || next.log < r.log;
      r = next;
      if (caughtUp) break;
    }
    const done = r.checkpointed === r.log;
    // Changes whenever another connection committed since this one last looked.
    const version = db.pragma('data_version', { simple: true });
    const quiet = version === lastVersion;
    lastVersion = version;
    const start = logStart();
    stuck = r.log > walLimit && start === lastStart ? stuck + 1 : 0;
    lastStart = start;
    if (done && r.log > 0 && quiet) {
      truncate(); // nothing written for a tick: give the disk back
      stats.truncates++;
      stuck = 0;
    } else if (done && stuck >= 3) {
      truncate(); // the log has not started over for three ticks: writes wait for this one
      stats.forced++;
      stuck = 0;
    }
  } catch (e) {
    parentPort.postMessage({ error: String(e && e.message || e) });
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
    parentPort.postMessage({ stopped: true });
  }
});
tick();
`;

/** What the checkpointer did so far: PASSIVE passes, TRUNCATEs when quiet, forced TRUNCATEs. */
export interface CheckpointStats {
  readonly passes: number;
  readonly truncates: number;
  readonly forced: number;
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
  const asked: ((s: CheckpointStats) => void)[] = [];
  worker.on('message', (m: unknown) => {
    if (typeof m !== 'object' || m === null) return;
    if ('error' in m) opts.onError?.(String(m.error));
    if ('stats' in m) asked.shift()?.(m.stats as CheckpointStats);
  });
  worker.on('error', (e) => opts.onError?.(e.message));
  return {
    stats(): Promise<CheckpointStats> {
      return new Promise((resolve) => {
        asked.push(resolve);
        worker.postMessage('stats');
      });
    },
    stop(): Promise<void> {
      return new Promise((resolve) => {
        const done = (): void => {
          void worker.terminate().then(() => resolve());
        };
        worker.on('message', (m: unknown) => {
          if (typeof m === 'object' && m !== null && 'stopped' in m) done();
        });
        worker.once('exit', () => resolve());
        // Held until it answers: unreferenced, a process with nothing else to do could end first.
        worker.ref();
        worker.postMessage('stop');
        setTimeout(done, 2000).unref();
      });
    },
  };
}
