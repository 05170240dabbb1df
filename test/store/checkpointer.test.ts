/**
 * The WAL checkpointer (src/store/sqlite/checkpointer.ts), on a real database file with its
 * worker thread: under steady writes the log starts over, so it stays bounded, also when the
 * passes never catch up; it is shrunk to nothing once writes are quiet; and a checkpoint that
 * takes the write lock never holds it while it waits for a reader.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { statSync, writeFileSync } from 'node:fs';
import { startCheckpointer } from '../../src/store/sqlite/checkpointer.js';
import { tempDir } from '../support/helpers.js';

const PAGE = 4096;

/** Polls `ready` (a real thread's own time) until true, or fails after `ms`. */
async function until(what: string, ready: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Another connection with a read transaction open on the log, as a long reader keeps one. */
function readerOnLog(db: Database.Database): Database.Database {
  const reader = new Database(db.name);
  reader.exec('BEGIN');
  reader.prepare('SELECT count(*) FROM t').get();
  return reader;
}

function closeReader(reader: Database.Database): void {
  if (reader.inTransaction) reader.exec('COMMIT');
  reader.close();
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

  it('shrinks the log to nothing once no write came for a tick, keeping every row', async () => {
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
   * waits for a lock (busy timeout 0, as the store's is; a refused write is tried again a
   * millisecond later, as the store retries): the largest the log file got, and the longest a
   * write was kept waiting by the checkpointer's lock.
   */
  async function steadyWrites(db: Database.Database, wal: string, ms = 1500): Promise<{ writes: number; largest: number; longestWait: number }> {
    db.pragma('busy_timeout = 0');
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const write = db.transaction(() => { for (let i = 0; i < 10; i++) insert.run(Buffer.alloc(3000)); });
    let writes = 0;
    let largest = 0;
    let longestWait = 0;
    let refusedSince: number | null = null;
    const end = performance.now() + ms;
    while (performance.now() < end) {
      try {
        write.immediate();
        writes++;
        if (refusedSince !== null) longestWait = Math.max(longestWait, performance.now() - refusedSince);
        refusedSince = null;
      } catch (e) {
        if (!(e instanceof Database.SqliteError && e.code.startsWith('SQLITE_BUSY'))) throw e;
        refusedSince ??= performance.now();
      }
      largest = Math.max(largest, statSync(wal).size);
      await new Promise((r) => setTimeout(r, 1));
    }
    return { writes, largest, longestWait };
  }

  for (const passes of [8, 1]) {
    it(`under a steady stream of writes the log starts over and stays bounded, nothing is lost (${passes === 1 ? 'one pass a tick: every start-over is a RESTART' : 'passes until caught up'})`, async () => {
      const { dir, cleanup } = tempDir();
      const db = open(`${dir}/r.db`);
      const wal = `${dir}/r.db-wal`;
      const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 50, passes });
      try {
        const { writes, largest } = await steadyWrites(db, wal);
        expect(writes).to.be.above(100);
        // Without starting over the log would hold every page written (writes * 10 pages).
        expect(largest, `largest log ${largest / PAGE} pages for ${writes * 10} written`).to.be.below((writes * 10 * PAGE) / 4);
        expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: writes * 10 });
        const stats = await cp.stats();
        expect(stats.passes).to.be.above(10);
        if (passes === 1) expect(stats.restarts, 'RESTARTs that made the log start over').to.be.above(0);
      } finally {
        await cp.stop();
        db.close();
        cleanup();
      }
    });
  }

  it('a checkpoint that takes the write lock gives up at once when a reader is on the log, instead of holding the lock while it waits', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    const wal = `${dir}/r.db-wal`;
    db.prepare('INSERT INTO t (v) VALUES (?)').run(Buffer.alloc(3000));
    // A reader on the log for the whole test: the log can neither start over nor be emptied,
    // so every tick past the limit tries a RESTART, and each must find the reader and give up.
    const reader = readerOnLog(db);
    const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 50 });
    try {
      const { writes, longestWait } = await steadyWrites(db, wal, 1000);
      expect(writes).to.be.above(50);
      const stats = await cp.stats();
      expect(stats.gaveUp, 'RESTARTs that found the reader').to.be.above(0);
      expect(stats.restarts).to.equal(0);
      // With a busy timeout the RESTART would keep the write lock for as long as it (1 s).
      expect(longestWait, 'longest a write waited for the checkpointer (ms)').to.be.below(250);
      reader.exec('COMMIT');
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: 1 + writes * 10 });
    } finally {
      closeReader(reader);
      await cp.stop();
      db.close();
      cleanup();
    }
  });

  it('a quiet log with a reader on it is left for a later tick: the TRUNCATE gives up at once, and a write goes through meanwhile', async () => {
    const { dir, cleanup } = tempDir();
    const db = open(`${dir}/r.db`);
    db.pragma('busy_timeout = 0');
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    db.transaction(() => { for (let i = 0; i < 50; i++) insert.run(Buffer.alloc(3000)); })();
    const reader = readerOnLog(db);
    const started = performance.now();
    const cp = startCheckpointer(db.name, { intervalMs: 10, walLimitPages: 1000 });
    try {
      while ((await cp.stats()).gaveUp === 0) {
        if (performance.now() - started > 5000) throw new Error('no TRUNCATE was tried');
        await new Promise((r) => setTimeout(r, 5));
      }
      // The second tick is quiet and tries: with a busy timeout it would give up only after it (1 s).
      expect(performance.now() - started, 'ms until a TRUNCATE gave up').to.be.below(500);
      // A write now: with a busy timeout the TRUNCATE would hold the lock for a second each tick.
      let waited = 0;
      const t0 = performance.now();
      for (;;) {
        try {
          insert.run(Buffer.alloc(10));
          break;
        } catch (e) {
          if (!(e instanceof Database.SqliteError && e.code.startsWith('SQLITE_BUSY'))) throw e;
          waited = performance.now() - t0;
          if (waited > 2000) throw new Error('the write waited 2 s');
          await new Promise((r) => setTimeout(r, 1));
        }
      }
      expect(waited, 'ms the write waited').to.be.below(250);
      expect((await cp.stats()).truncates).to.equal(0);
      reader.exec('COMMIT');
      await until('the quiet log to be emptied once the reader is gone', () => statSync(`${dir}/r.db-wal`).size === 0);
      expect(db.prepare('SELECT count(*) AS n FROM t').get()).to.deep.equal({ n: 51 });
    } finally {
      closeReader(reader);
      await cp.stop();
      db.close();
      cleanup();
    }
  });

  it('a checkpoint that keeps failing is reported once, not at every tick', async () => {
    const { dir, cleanup } = tempDir();
    const path = `${dir}/not-a.db`;
    writeFileSync(path, 'this is not a SQLite database, and every checkpoint of it fails'.repeat(100));
    const errors: string[] = [];
    const cp = startCheckpointer(path, { intervalMs: 5, onError: (m) => errors.push(m) });
    try {
      await until('the first failure', () => errors.length > 0);
      const ticks = (await cp.stats()).passes;
      const deadline = Date.now() + 10_000;
      while ((await cp.stats()).passes < ticks + 20) {
        if (Date.now() > deadline) throw new Error('the checkpointer stopped ticking');
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(errors, 'failures reported').to.have.length(1);
      expect(errors[0]).to.match(/not a database/);
    } finally {
      await cp.stop();
      cleanup();
    }
  });
});
