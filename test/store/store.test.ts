import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { RegistryError } from '../../src/domain/errors.js';
import { Store } from '../../src/store/store.js';
import { makeRegistry, tempDir } from '../helpers.js';

describe('store: the database refuses what the rules forbid', () => {
  it('one client cannot hold two identifiers, even through raw SQL', async () => {
    const { store, registry } = await makeRegistry({ pool: 'a\nb\n' });
    await registry.allocate('vm-1');
    expect(() => store.db.prepare(`UPDATE identifiers SET client_id = 'vm-1', allocated_at = 1, last_seen = 1, epoch = epoch + 1 WHERE name = 'b'`).run())
      .to.throw(Database.SqliteError, /UNIQUE/);
  });

  it('an identifier cannot pass between holders without being freed', async () => {
    const { store, registry } = await makeRegistry({ pool: 'a\n' });
    await registry.allocate('vm-1');
    expect(() => store.db.prepare(`UPDATE identifiers SET client_id = 'vm-2', epoch = epoch + 1 WHERE name = 'a'`).run())
      .to.throw(/without being freed/);
  });

  it('epochs never go back, and a grant must take a new one', async () => {
    const { store, registry } = await makeRegistry({ pool: 'a\n' });
    await registry.allocate('vm-1');
    expect(() => store.db.prepare(`UPDATE identifiers SET epoch = 0 WHERE name = 'a'`).run()).to.throw(/may not decrease/);
    await registry.release('vm-1', 'a');
    expect(() => store.db.prepare(`UPDATE identifiers SET client_id = 'vm-2', allocated_at = 1, last_seen = 1 WHERE name = 'a'`).run())
      .to.throw(/new epoch/);
  });

  it('migrations run once: reopening a database keeps its data and version', () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'm.db');
      const s1 = new Store({ path });
      s1.db.prepare(`INSERT INTO identifiers (name, pool_order) VALUES ('x', 0)`).run();
      s1.close();
      const s2 = new Store({ path });
      expect(s2.db.pragma('user_version', { simple: true })).to.equal(1);
      expect(s2.byName('x')?.name).to.equal('x');
      expect(s2.db.pragma('journal_mode', { simple: true })).to.equal('wal');
      s2.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('store: group commit', () => {
  it('commits the writes of one tick together, and a failing one leaves the others in', async () => {
    const { store } = await makeRegistry({ pool: '' });
    const ins = store.db.prepare(`INSERT INTO meta (key, value) VALUES (?, 'v')`);
    const results = await Promise.allSettled([
      store.write(() => ins.run('k1'), true),
      store.write(() => {
        ins.run('k2');
        throw new RegistryError('not_owner', 'refused after writing');
      }, false),
      store.write(() => ins.run('k3'), false),
    ]);
    expect(results.map((r) => r.status)).to.deep.equal(['fulfilled', 'rejected', 'fulfilled']);
    expect(store.meta('k1')).to.equal('v');
    expect(store.meta('k2')).to.equal(null); // rolled back to its savepoint
    expect(store.meta('k3')).to.equal('v');
  });

  it('answers a durable write only after the WAL is fsynced; a renewal-only batch does not wait', async () => {
    const t = tempDir();
    try {
      const held: Array<(err: Error | null) => void> = [];
      const store = new Store({ path: join(t.dir, 'f.db'), fsync: (_fd, done) => held.push(done) });
      const settled: string[] = [];
      const ins = store.db.prepare(`INSERT INTO meta (key, value) VALUES (?, 'v')`);
      const light = store.write(() => ins.run('light'), false).then(() => settled.push('light'));
      await light;
      expect(held).to.have.length(0); // no fsync for a batch without an ownership change
      const durable = store.write(() => ins.run('durable'), true).then(() => settled.push('durable'));
      await new Promise((r) => setTimeout(r, 20));
      expect(held).to.have.length(1);
      expect(settled).to.deep.equal(['light']); // committed, but not answered before the fsync
      expect(store.meta('durable')).to.equal('v');
      held[0]?.(null);
      await durable;
      expect(settled).to.deep.equal(['light', 'durable']);
      expect(store.db.pragma('synchronous', { simple: true })).to.equal(1); // NORMAL: no fsync on the event loop
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('a failed fsync answers 503 unavailable to the durable writes and makes the store unhealthy', async () => {
    const t = tempDir();
    try {
      const store = new Store({ path: join(t.dir, 'f.db'), fsync: (_fd, done) => done(new Error('EIO')) });
      const err = await store.write(() => 1, true).then(() => null, (e: unknown) => e);
      expect(err).to.be.instanceOf(RegistryError);
      if (err instanceof RegistryError) expect(err.code).to.equal('unavailable');
      expect(store.healthProblem()).to.match(/could not be synced/);
      await store.close();
    } finally {
      t.cleanup();
    }
  });

  it('an unexpected SQL failure rejects as internal, never leaking SQL', async () => {
    const { store } = await makeRegistry({ pool: '' });
    const bad = store.write(() => store.db.prepare('INSERT INTO nope VALUES (1)').run(), false);
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

  it('a locked database answers unavailable instead of waiting forever', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'locked.db');
      const store = new Store({ path, busyTimeoutMs: 50 });
      const other = new Database(path);
      other.exec('BEGIN IMMEDIATE');
      try {
        const err = await store.write(() => 1, true).then(() => null, (e: unknown) => e);
        expect(err).to.be.instanceOf(RegistryError);
        if (err instanceof RegistryError) expect(err.code).to.equal('unavailable');
      } finally {
        other.exec('ROLLBACK');
        other.close();
        store.close();
      }
    } finally {
      t.cleanup();
    }
  });
});
