/**
 * The WAL checkpointer (src/store/sqlite/checkpointer.ts), on a real database file with its
 * worker thread: under steady writes the log starts over without a writer ever waiting for the
 * checkpointer, so it stays bounded; it is shrunk to nothing once writes are quiet; and a log
 * that cannot start over is truncated at its limit all the same.
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

  /**
   * ~1.5 s of writes of ~10 pages each, about a millisecond apart, on a connection that never
   * waits for a lock (busy timeout 0, as the store's is): each write the checkpointer's lock
   * refused is counted, and the largest the log file got.
   */
  async function steadyWrites(db: Database.Database, wal: string): Promise<{ writes: number; busy: number; largest: number }> {
    db.pragma('busy_timeout = 0');
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const write = db.transaction(() => { for (let i = 0; i < 10; i++) insert.run(Buffer.alloc(3000)); });
    let writes = 0;
    let busy = 0;
    let largest = 0;
    const end = Date.now() + 1500;
    while (Date.now() < end) {
      try {
        write.immediate();
        writes++;
      } catch (e) {
        if (!(e instanceof Database.SqliteError && e.code.startsWith('SQLITE_BUSY'))) throw e;
        busy++;
      }
      largest = Math.max(largest, statSync(wal).size);
      await new Promise((r) => setTimeout(r, 1));
    }
    return { writes, busy, largest };
  }

  it('under a steady stream of writes the log starts over while no write ever waits for the checkpointer; nothing is lost', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    const wal = `${dir}/r.db-wal`;
    const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 50 });
    try {
      const { writes, busy, largest } = await steadyWrites(db, wal);
      expect(writes).to.be.above(100);
      // A TRUNCATE or RESTART under load takes the write lock: writes would be refused here.
      expect(busy, 'writes refused because the checkpointer held the lock').to.equal(0);
      // Without starting over the log would hold every page written (writes * 10 pages).
      expect(largest, `largest log ${largest / PAGE} pages for ${writes * 10} written`).to.be.below((writes * 10 * PAGE) / 4);
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: writes * 10 });
      const stats = await cp.stats();
      expect(stats.forced, 'forced truncates').to.equal(0);
      expect(stats.passes).to.be.above(10);
    } finally {
      await cp.stop();
      db.close();
      cleanup();
    }
  });

  it('a log that cannot start over (a reader is always on it when a write begins) is truncated at its limit; nothing is lost', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    const wal = `${dir}/r.db-wal`;
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    // Another connection starts a read right after each write, before the checkpointer has
    // copied that write, and keeps it until after the next write has begun: every page can be
    // checkpointed, but no write ever finds the log free to start over.
    const reader = new Database(db.name);
    const read = reader.prepare('SELECT count(*) AS n FROM t');
    const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 50 });
    let writes = 0;
    let emptied = false;
    try {
      const deadline = Date.now() + 10_000;
      while ((await cp.stats()).forced === 0) {
        if (Date.now() > deadline) throw new Error(`no forced truncate; log ${statSync(wal).size / PAGE} pages`);
        db.transaction(() => { for (let k = 0; k < 10; k++) insert.run(Buffer.alloc(3000)); })();
        writes++;
        if (reader.inTransaction) reader.exec('COMMIT');
        reader.exec('BEGIN');
        read.get();
        await new Promise((r) => setTimeout(r, 2));
        if (statSync(wal).size === 0) emptied = true;
      }
      expect(writes * 10, 'pages written before the limit was reached').to.be.above(50);
      if (reader.inTransaction) reader.exec('COMMIT');
      await until('the log to be emptied', () => emptied || statSync(wal).size === 0);
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: writes * 10 });
    } finally {
      if (reader.inTransaction) reader.exec('COMMIT');
      reader.close();
      await cp.stop();
      db.close();
      cleanup();
    }
  });
});
