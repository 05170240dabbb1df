/**
 * The WAL checkpointer (src/store/sqlite/checkpointer.ts), on a real database file with its
 * worker thread: a log past its limit starts over while writes go on, so it stays bounded, and
 * is shrunk to nothing once they are quiet.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { statSync } from 'node:fs';
import { startCheckpointer } from '../../src/store/sqlite/checkpointer.js';
import { tempDir } from '../helpers.js';

const PAGE = 4096;

/** Polls `ready` (a real thread's own time) until true, or fails after `ms`. */
async function until(what: string, ready: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function open(path: string): Database.Database {
  const db = new Database(path, { timeout: 5000 });
  db.pragma('journal_mode = WAL');
  db.pragma('wal_autocheckpoint = 0'); // as the store runs it: checkpoints are the worker's
  db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)');
  return db;
}

describe('WAL checkpointer', function () {
  this.timeout(30_000);

  it('shrinks a log past its limit to nothing once no write came for a tick, keeping every row', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    const wal = `${dir}/r.db-wal`;
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    db.transaction(() => { for (let i = 0; i < 300; i++) insert.run(Buffer.alloc(3000)); })();
    expect(statSync(wal).size).to.be.above(100 * PAGE);
    const cp = startCheckpointer(db.name, { intervalMs: 20, walLimitPages: 100 });
    try {
      await until('the log to be truncated', () => statSync(wal).size === 0);
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: 300 });
    } finally {
      await cp.stop();
      db.close();
      cleanup();
    }
  });

  it('under a steady stream of writes the log starts over: its file stays within a few ticks of writes, nothing is lost', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    const wal = `${dir}/r.db-wal`;
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 50 });
    let writes = 0;
    let largest = 0;
    try {
      // 1.5 s of writes of ~10 pages each, about a millisecond apart: ~10,000 pages in all.
      const end = Date.now() + 1500;
      while (Date.now() < end) {
        db.transaction(() => { for (let i = 0; i < 10; i++) insert.run(Buffer.alloc(3000)); })();
        writes++;
        largest = Math.max(largest, statSync(wal).size);
        await new Promise((r) => setTimeout(r, 1));
      }
      expect(writes).to.be.above(100);
      // Without starting over the log would hold every page written (writes * 10 pages).
      expect(largest, `largest log ${largest / PAGE} pages for ${writes * 10} written`).to.be.below((writes * 10 * PAGE) / 4);
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: writes * 10 });
    } finally {
      await cp.stop();
      db.close();
      cleanup();
    }
  });
});
