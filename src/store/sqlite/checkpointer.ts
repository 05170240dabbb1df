/**
 * WAL checkpoints on a worker thread. SQLite's automatic checkpoint runs inside whichever
 * commit crosses the threshold, copying pages and fsyncing the database file on the event
 * loop: a stall of many milliseconds for one unlucky request. Here the main connection turns
 * the automatic checkpoint off and a second connection, on its own thread, checkpoints every
 * `intervalMs` (PASSIVE: it never blocks the writer), truncating the WAL when it grew large.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { timeout: 1000 });
const walLimit = workerData.walLimitPages;
let timer = null;
function tick() {
  try {
    const r = db.pragma('wal_checkpoint(PASSIVE)')[0];
    if (r && r.log > walLimit && r.checkpointed === r.log) db.pragma('wal_checkpoint(TRUNCATE)');
  } catch (e) {
    parentPort.postMessage({ error: String(e && e.message || e) });
  }
  timer = setTimeout(tick, workerData.intervalMs);
}
parentPort.on('message', (m) => {
  if (m === 'stop') {
    clearTimeout(timer);
    try { db.pragma('wal_checkpoint(PASSIVE)'); } catch {}
    db.close();
    parentPort.postMessage({ stopped: true });
  }
});
tick();
`;

export interface Checkpointer {
  stop(): Promise<void>;
}

export function startCheckpointer(path: string, opts: { intervalMs?: number; walLimitPages?: number; onError?: (message: string) => void } = {}): Checkpointer {
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: { path, driver, intervalMs: opts.intervalMs ?? 1000, walLimitPages: opts.walLimitPages ?? 10_000 },
  });
  worker.unref();
  worker.on('message', (m: unknown) => {
    if (typeof m === 'object' && m !== null && 'error' in m) opts.onError?.(String(m.error));
  });
  worker.on('error', (e) => opts.onError?.(e.message));
  return {
    stop(): Promise<void> {
      return new Promise((resolve) => {
        const done = (): void => {
          void worker.terminate().then(() => resolve());
        };
        worker.once('message', done);
        worker.once('exit', () => resolve());
        // Held until it answers: unreferenced, a process with nothing else to do could end first.
        worker.ref();
        worker.postMessage('stop');
        setTimeout(done, 2000).unref();
      });
    },
  };
}
