import { expect } from 'chai';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { RegistryError } from '../../src/domain/errors.js';
import { SchemaTooNewError, SqliteStore } from '../../src/store/sqlite/store.js';
import type { Tx } from '../../src/store/types.js';
import { MIGRATIONS } from '../../src/store/sqlite/schema.js';
import { dumpSqlite, exportSqliteFile, importSqliteFile, loadSqlite } from '../../src/store/sqlite/dump.js';
import { FakeClock, systemTimeSource } from '../../src/clock.js';
import { Registry } from '../../src/registry.js';
import { DEFAULT_RULES, makeSqliteRegistry as makeRegistry, tempDir } from '../support/helpers.js';

function metaOf(store: SqliteStore, key: string): Promise<string | null> {
  return store.read((r) => r.meta(key));
}

/** Polls until `cond` holds (each look a timer turn), failing after two seconds. */
async function waitFor(cond: () => boolean): Promise<void> {
  const deadline = performance.now() + 2000;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error('condition not met in 2 s');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('store: migrations', () => {
  it('migrations run once: reopening a database keeps its data and version', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'm.db');
      const s1 = new SqliteStore({ path });
      s1.db.prepare(`INSERT INTO identifiers (name, pool_order) VALUES ('x', 0)`).run();
      await s1.close();
      const s2 = new SqliteStore({ path });
      expect(s2.db.pragma('user_version', { simple: true })).to.equal(MIGRATIONS.length);
      expect((await s2.read((r) => r.byName('x')))?.name).to.equal('x');
      expect(s2.db.pragma('journal_mode', { simple: true })).to.equal('wal');
      await s2.close();
    } finally {
      t.cleanup();
    }
  });

  it('a schema newer than this registry refuses to open, names both versions, and changes nothing', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'newer.db');
      const s1 = new SqliteStore({ path });
      s1.db.prepare(`INSERT INTO identifiers (name, pool_order) VALUES ('x', 0)`).run();
      await s1.close();
      // As a newer registry leaves it: one migration this build does not know.
      const newer = new Database(path);
      newer.pragma(`user_version = ${MIGRATIONS.length + 1}`);
      newer.close();
      const before = readFileSync(path);
      const message = `the database schema is at version ${MIGRATIONS.length + 1}, newer than this registry knows (${MIGRATIONS.length}); upgrade the registry`;
      expect(() => new SqliteStore({ path })).to.throw(SchemaTooNewError, message);
      // Read-only (idreg export), and an import into it, are refused alike.
      expect(() => exportSqliteFile(path, systemTimeSource)).to.throw(SchemaTooNewError, message);
      const imported = await importSqliteFile(path, { engine: 'sqlite', exportedAt: 0, identifiers: [], history: [], meta: [] }, systemTimeSource)
        .then(() => null, (e: unknown) => e);
      expect(imported).to.be.instanceOf(SchemaTooNewError);
      expect(readFileSync(path).equals(before), 'the file is unchanged').to.equal(true);
      expect(readdirSync(t.dir)).to.deep.equal(['newer.db']);
      const after = new Database(path, { readonly: true });
      try {
        expect(after.pragma('user_version', { simple: true })).to.equal(MIGRATIONS.length + 1);
        expect(after.prepare('SELECT name FROM identifiers').all()).to.deep.equal([{ name: 'x' }]);
      } finally {
        after.close();
      }
    } finally {
      t.cleanup();
    }
  });

  it('migration 4: a database of the index of every event by time keeps its history, and reclaims are counted through an index of just them', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'm4.db');
      // A database as the registry before migration 4 left it, with history of every kind.
      const old = new Database(path);
      old.pragma('journal_mode = WAL');
      for (const m of MIGRATIONS.slice(0, 3)) old.exec(m);
      old.pragma('user_version = 3');
      old.prepare(`INSERT INTO identifiers (name, pool_order) VALUES ('x', 0)`).run();
      const add = old.prepare(`INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES (1, ?, ?, 'vm', 1)`);
      for (const [at, event] of [[100, 'allocated'], [200, 'reclaimed'], [300, 'allocated'], [400, 'reclaimed'], [500, 'released'], [600, 'force_released']] as const) add.run(at, event);
      old.close();

      const store = new SqliteStore({ path, clock: new FakeClock(1000) });
      try {
        const indexes = (store.db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'history' ORDER BY name`).all() as { name: string }[]).map((r) => r.name);
        expect(indexes).to.deep.equal(['history_by_identifier', 'history_reclaimed_at']);
        expect(store.db.pragma('user_version', { simple: true })).to.equal(MIGRATIONS.length);
        const count = (event: 'reclaimed' | 'allocated' | 'released', since: number): Promise<number> => store.write((tx: Tx) => tx.countEvents(event, since), { durable: false });
        expect(await count('reclaimed', 0)).to.equal(2);
        expect(await count('reclaimed', 201)).to.equal(1);
        expect(await count('reclaimed', 401)).to.equal(0);
        expect(await count('allocated', 0)).to.equal(2);
        expect(await count('released', 500)).to.equal(1);
        expect((await store.read((r) => r.history(1))).map((h) => h.event)).to.deep.equal(['allocated', 'reclaimed', 'allocated', 'reclaimed', 'released', 'force_released']);
        // The guard's count reads the partial index, not the table.
        const plan = (store.db.prepare(`EXPLAIN QUERY PLAN SELECT count(*) AS n FROM history WHERE event = 'reclaimed' AND at >= ?`).all(0) as { detail: string }[]).map((r) => r.detail).join('; ');
        expect(plan).to.match(/history_reclaimed_at/);
      } finally {
        await store.close();
      }
    } finally {
      t.cleanup();
    }
  });
});

describe('store: pool counts kept by triggers', () => {
  it('equal a full scan after grants, renewals, releases, force releases, reclaims, retirements and restores', async () => {
    const { store, registry, clock } = await makeRegistry({ pool: 'w-[0-9]', rules: { cooldownMs: 30_000, maxFraction: 1 } });
    const scan = (): Record<string, unknown> => ({
      ...(store.db.prepare(`SELECT count(*) AS total, count(client_id) AS leased,
        coalesce(sum(client_id IS NULL AND retired = 1), 0) AS retired,
        coalesce(sum(client_id IS NULL AND retired = 0 AND available_at > ?), 0) AS cooling FROM identifiers`).get(clock.now()) as object),
    });
    const check = async (): Promise<void> => {
      expect(await store.read((r) => r.counts(clock.now()))).to.deep.equal(scan());
    };
    for (let i = 0; i < 6; i++) await registry.allocate(`vm-${i}`);
    await check();
    await registry.renew('vm-0', 'w-0');
    await registry.release('vm-1', 'w-1');
    await registry.forceRelease('w-2');
    await check();
    clock.advance(91_000);
    await registry.renew('vm-3', 'w-3');
    await registry.reap();
    await check();
    await registry.syncPool(['w-0', 'w-1', 'w-2', 'w-3', 'w-6', 'w-7', 'w-8', 'w-9', 'x-1']); // retires w-4 and w-5, adds x-1
    await check();
    await registry.syncPool(['w-0', 'w-1', 'w-2', 'w-3', 'w-4', 'w-6', 'w-7', 'w-8', 'w-9', 'x-1']); // restores w-4
    clock.advance(31_000); // cool-downs over
    await check();
    // An import (idreg import) inserts rows its own way: the counts it leaves match too.
    const copy = new SqliteStore({ path: ':memory:', clock });
    loadSqlite(copy.db, dumpSqlite(store.db, clock.now()));
    expect(await copy.read((r) => r.counts(clock.now()))).to.deep.equal(scan());
    await copy.close();
  });
});

describe('store: the pool sync', () => {
  it('adds a pool larger than one insert statement takes: every identifier, in file order, counted once', async () => {
    const { store, registry } = await makeRegistry({ pool: '' });
    const names = Array.from({ length: 25_001 }, (_, i) => `w-${i}`);
    expect(await registry.syncPool(names)).to.include({ total: 25_001, added: 25_001, retired: 0 });
    const rows = store.db.prepare('SELECT name, pool_order FROM identifiers ORDER BY id').all() as { name: string; pool_order: number }[];
    expect(rows.map((r) => r.name)).to.deep.equal(names);
    expect(rows.every((r, i) => r.pool_order === i)).to.equal(true);
    expect((await registry.health()).pool).to.include({ total: 25_001, free: 25_001, leased: 0 });
  });
});

describe('store: group commit', () => {
  it('commits the writes of one tick together, and a failing one leaves the others in', async () => {
    const { store } = await makeRegistry({ pool: '' });
    const results = await Promise.allSettled([
      store.write((tx) => tx.setMeta('k1', 'v'), { durable: true }),
      store.write(async (tx) => {
        await tx.setMeta('k2', 'v');
        throw new RegistryError('not_owner', 'refused after writing');
      }, { durable: false }),
      store.write((tx) => tx.setMeta('k3', 'v'), { durable: false }),
    ]);
    expect(results.map((r) => r.status)).to.deep.equal(['fulfilled', 'rejected', 'fulfilled']);
    expect(await metaOf(store, 'k1')).to.equal('v');
    expect(await metaOf(store, 'k2')).to.equal(null); // rolled back to its savepoint
    expect(await metaOf(store, 'k3')).to.equal('v');
  });

  it('answers a durable write only after the WAL is fsynced; a renewal-only batch does not wait', async () => {
    const t = tempDir();
    try {
      const held: Array<(err: Error | null) => void> = [];
      const store = new SqliteStore({ path: join(t.dir, 'f.db'), fsync: (_fd, done) => held.push(done) });
      const settled: string[] = [];
      const light = store.write((tx) => tx.setMeta('light', 'v'), { durable: false }).then(() => settled.push('light'));
      await light;
      expect(held).to.have.length(0); // no fsync for a batch without an ownership change
      const durable = store.write((tx) => tx.setMeta('durable', 'v'), { durable: true }).then(() => settled.push('durable'));
      await waitFor(() => held.length === 1);
      expect(settled).to.deep.equal(['light']); // committed, but not answered before the fsync
      expect(await metaOf(store, 'durable')).to.equal('v');
      held[0]?.(null);
      await durable;
      expect(settled).to.deep.equal(['light', 'durable']);
      expect(store.db.pragma('synchronous', { simple: true })).to.equal(1); // NORMAL: no fsync on the event loop
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('shares one fsync among the durable batches that commit while another runs; each answered after an fsync that began after its commit', async () => {
    const t = tempDir();
    try {
      const held: Array<(err: Error | null) => void> = [];
      const store = new SqliteStore({ path: join(t.dir, 'f.db'), fsync: (_fd, done) => held.push(done) });
      const answered: string[] = [];
      const write = (k: string): Promise<void> => store.write((tx) => tx.setMeta(k, 'v'), { durable: true })
        .then(() => { answered.push(k); }, (e: unknown) => { answered.push(`${k}:${e instanceof RegistryError ? e.code : String(e)}`); });
      const a = write('a');
      await waitFor(() => held.length === 1);
      const b = write('b');
      await waitFor(() => store.db.prepare(`SELECT count(*) AS n FROM meta WHERE key = 'b'`).pluck().get() === 1); // committed
      const c = write('c');
      await waitFor(() => store.db.prepare(`SELECT count(*) AS n FROM meta WHERE key = 'c'`).pluck().get() === 1);
      await new Promise((r) => setTimeout(r, 20));
      expect(held, 'no second fsync while the first runs').to.have.length(1);
      held.shift()?.(null);
      await a;
      expect(answered).to.deep.equal(['a']); // b and c committed after the first fsync began: not covered by it
      await waitFor(() => held.length === 1);
      held.shift()?.(new Error('EIO'));
      await Promise.all([b, c]);
      expect(answered).to.deep.equal(['a', 'b:unavailable', 'c:unavailable']);
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('a sweep of many batches is answered once all of its reclaims are on disk, with one fsync', async () => {
    const t = tempDir();
    try {
      const held: Array<(err: Error | null) => void> = [];
      const clock = new FakeClock();
      const store = new SqliteStore({ path: join(t.dir, 'f.db'), clock, fsync: (_fd, done) => held.push(done) });
      const registry = new Registry({ store, rules: { ...DEFAULT_RULES, reapBatchSize: 2, maxFraction: 1, graceMs: 0 } });
      const flushAll = async <T>(p: Promise<T>): Promise<T> => {
        // the setup's durable writes: let each fsync through as it is asked for
        let done = false;
        const out = p.finally(() => { done = true; });
        while (!done) {
          held.splice(0).forEach((f) => f(null));
          await new Promise((r) => setTimeout(r, 1));
        }
        return out;
      };
      await flushAll(registry.syncPool(['a', 'b', 'c', 'd', 'e']));
      for (const vm of ['vm-1', 'vm-2', 'vm-3', 'vm-4', 'vm-5']) await flushAll(registry.allocate(vm));
      clock.advance(DEFAULT_RULES.ttlMs + 1);
      let answered = false;
      const reap = registry.reap({ force: true }).then((r) => { answered = true; return r; });
      await waitFor(() => held.length > 0);
      // The one fsync asked for comes after the last batch: it covers every reclaim.
      const reclaimed = await store.read((r) => r.list({ status: 'leased', now: r.now, after: null, limit: null }));
      expect(reclaimed, 'all five reclaimed before the fsync').to.have.length(0);
      await new Promise((r) => setTimeout(r, 20));
      expect(held, 'one fsync for the whole sweep').to.have.length(1);
      expect(answered, 'not answered before the fsync').to.equal(false);
      held.splice(0).forEach((f) => f(null));
      expect((await reap).reclaimed).to.equal(5);
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('a chain of writes, each started when the last resolves, leaves the event loop a turn between them', async () => {
    const { store } = await makeRegistry({ pool: '' });
    const order: string[] = [];
    const chain = (async () => {
      for (let i = 0; i < 20; i++) {
        await store.write((tx) => tx.setMeta('k', String(i)), { durable: false });
        order.push(`w${i}`);
      }
    })();
    setImmediate(() => order.push('io'));
    await chain;
    expect(order.indexOf('io'), order.join(' ')).to.be.within(0, 2);
  });

  it('a failed fsync answers 503 unavailable, and refuses every write after it until a restart, even when fsync works again', async () => {
    const t = tempDir();
    try {
      let fail = true;
      const store = new SqliteStore({ path: join(t.dir, 'f.db'), fsync: (_fd, done) => done(fail ? new Error('EIO') : null) });
      const err = await store.write(async () => 1, { durable: true }).then(() => null, (e: unknown) => e);
      expect(err).to.be.instanceOf(RegistryError);
      if (err instanceof RegistryError) expect(err.code).to.equal('unavailable');
      expect(await store.healthProblem()).to.match(/could not be synced/);
      fail = false; // the disk answers again, but the pages it dropped are gone
      for (const durable of [true, false]) {
        const later = await store.write((tx) => tx.setMeta('after', 'v'), { durable }).then(() => null, (e: unknown) => e);
        expect(later, `a ${durable ? 'durable' : 'renewal'} write after the failure`).to.be.instanceOf(RegistryError);
        if (later instanceof RegistryError) expect(later.code).to.equal('unavailable');
      }
      expect(await metaOf(store, 'after')).to.equal(null); // nothing written
      expect(await store.healthProblem()).to.match(/refused until the registry is restarted/);
      await store.close();
      const reopened = new SqliteStore({ path: join(t.dir, 'f.db') });
      await reopened.write((tx) => tx.setMeta('after', 'v'), { durable: true });
      expect(await metaOf(reopened, 'after')).to.equal('v');
      await reopened.close();
    } finally {
      t.cleanup();
    }
  });

  it('an unexpected SQL failure rejects as internal, never leaking SQL', async () => {
    const { store } = await makeRegistry({ pool: '' });
    const bad = store.write(async () => store.db.prepare('INSERT INTO nope VALUES (1)').run(), { durable: false });
    try {
      await bad;
      expect.fail('should have failed');
    } catch (e) {
      expect(e).to.be.instanceOf(RegistryError);
      if (e instanceof RegistryError) {
        expect(e.code).to.equal('internal');
        expect(e.message).to.not.match(/nope|INSERT/);
      }
    }
  });

  it('a commit that fails acknowledges nothing of its batch, renewals included', async () => {
    // A renewal answered before its commit and then lost with the commit was finding 4 of
    // issue 10. Here the commit itself fails (a deferred foreign key, standing in for a full
    // disk): every write of the batch is refused, and none of it is in the database.
    const { store, registry, clock } = await makeRegistry({ pool: 'a\n' });
    const lease = await registry.allocate('vm-1');
    clock.advance(5000);
    const poison = store.write(async (tx: Tx) => {
      store.db.pragma('defer_foreign_keys = ON');
      await tx.appendHistory(999_999, tx.now, 'allocated', 'ghost', 1);
    }, { durable: false });
    const renewal = registry.renew('vm-1', 'a');
    const [p, r] = await Promise.allSettled([poison, renewal]);
    expect(p.status).to.equal('rejected');
    expect(r.status).to.equal('rejected');
    if (r.status === 'rejected') expect(r.reason).to.be.instanceOf(RegistryError); // (a full disk: unavailable)
    expect((await registry.leaseOfClient('vm-1')).lastSeen).to.equal(lease.lastSeen); // not renewed, and not answered as renewed
    expect((await registry.renew('vm-1', 'a')).lastSeen).to.equal(clock.now()); // the next batch commits
  });

  it('waiting for another process\'s write lock does not block the event loop: reads go on, the write lands after', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'locked.db');
      const store = new SqliteStore({ path, busyTimeoutMs: 3000 });
      const other = new Database(path);
      other.exec('BEGIN IMMEDIATE');
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 5);
      let landed = false;
      const write = store.write((tx) => tx.setMeta('k', 'v'), { durable: true }).then(() => { landed = true; });
      try {
        const started = performance.now();
        expect(await metaOf(store, 'k')).to.equal(null);
        expect(performance.now() - started).to.be.below(200); // a read does not queue behind the locked write
        await waitFor(() => ticks >= 10); // timers run: the event loop is free
        expect(landed).to.equal(false);
      } finally {
        other.exec('COMMIT');
        other.close();
        clearInterval(ticker);
      }
      await write;
      expect(await metaOf(store, 'k')).to.equal('v');
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('a locked database answers unavailable instead of waiting forever', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'locked.db');
      const store = new SqliteStore({ path, busyTimeoutMs: 50 });
      const other = new Database(path);
      other.exec('BEGIN IMMEDIATE');
      try {
        const err = await store.write(async () => 1, { durable: true }).then(() => null, (e: unknown) => e);
        expect(err).to.be.instanceOf(RegistryError);
        if (err instanceof RegistryError) expect(err.code).to.equal('unavailable');
      } finally {
        other.exec('ROLLBACK');
        other.close();
        await store.close();
      }
    } finally {
      t.cleanup();
    }
  });
});
