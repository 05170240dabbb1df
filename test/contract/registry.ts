import { expect } from 'chai';
import { FakeClock } from '../../src/clock.js';
import { parsePool } from '../../src/pool/parse.js';
import { join } from 'node:path';
import { Registry } from '../../src/registry.js';
import type { Store } from '../../src/store/types.js';
import { DEFAULT_RULES, SECOND, errorCode, makeRegistry, makeSqliteRegistry, snapshotDb, tempDir } from '../support/helpers.js';

export function registry(): void {

  describe('registry: allocate', () => {
    it('hands out never-used identifiers in pool-file order, with epoch 1', async () => {
      const { registry } = await makeRegistry({ pool: 'b\na\nc\n' });
      const got = [];
      for (const c of ['vm-1', 'vm-2', 'vm-3']) got.push(await registry.allocate(c));
      expect(got.map((l) => l.identifier)).to.deep.equal(['b', 'a', 'c']);
      expect(got.map((l) => l.epoch)).to.deep.equal([1, 1, 1]);
    });

    it('gives the same client the same identifier and epoch, and renews it', async () => {
      const { registry, clock } = await makeRegistry();
      const first = await registry.allocate('vm-a');
      clock.advance(30 * SECOND);
      const again = await registry.allocate('vm-a');
      expect(again.identifier).to.equal(first.identifier);
      expect(again.epoch).to.equal(first.epoch);
      expect(again.allocatedAt).to.equal(first.allocatedAt);
      expect(again.lastSeen).to.equal(first.lastSeen + 30 * SECOND);
    });

    it('prefers never-used identifiers, then the one free the longest', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'w-[0-3]' });
      for (const c of ['a', 'b', 'c']) await registry.allocate(c); // w-0, w-1, w-2
      await registry.release('b', 'w-1');
      clock.advance(SECOND);
      await registry.release('a', 'w-0');
      expect((await registry.allocate('d')).identifier).to.equal('w-3'); // never used first
      expect((await registry.allocate('e')).identifier).to.equal('w-1'); // free since earlier
      expect((await registry.allocate('f')).identifier).to.equal('w-0');
    });

    it('takes a new epoch on every new grant and never reuses one', async () => {
      const { registry } = await makeRegistry({ pool: 'only' });
      const epochs = [];
      for (const c of ['a', 'b', 'c', 'a']) {
        const l = await registry.allocate(c);
        epochs.push(l.epoch);
        await registry.release(c, 'only');
      }
      expect(epochs).to.deep.equal([1, 2, 3, 4]);
    });

    it('answers pool_exhausted when every identifier is held, and changes nothing', async () => {
      const h = await makeRegistry({ pool: 'w-[0-1]' });
      await h.registry.allocate('a');
      await h.registry.allocate('b');
      expect(await errorCode(h.registry.allocate('c'))).to.equal('pool_exhausted');
      expect((await h.leasedCount())).to.equal(2);
      expect(await errorCode(h.registry.leaseOfClient('c'))).to.equal('client_not_found');
    });

    it('records the grant in the history', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only' });
      await registry.allocate('vm-a');
      expect(await registry.history('only')).to.deep.equal([{ at: clock.now(), event: 'allocated', clientId: 'vm-a', epoch: 1 }]);
    });

    it('is durable: a second registry on the same database sees the grant', async () => {
      const h = await makeRegistry({ shared: true, pool: 'w-[0-2]' });
      const l = await h.registry.allocate('vm-a');
      await h.store.close();
      const again = await h.another(new FakeClock(h.clock.now()));
      expect((await again.leaseOfClient('vm-a')).identifier).to.equal(l.identifier);
    });

    it('two registries sharing one database never hand out the same identifier', async () => {
      const a = await makeRegistry({ shared: true, pool: 'w-[0-9]' });
      const b = await a.another();
      const grants = await Promise.allSettled(
        Array.from({ length: 14 }, (_, i) => (i % 2 ? a.registry : b).allocate(`vm-${i}`)),
      );
      const ids = grants.flatMap((g) => (g.status === 'fulfilled' ? [g.value.identifier] : []));
      expect(ids).to.have.length(10);
      expect(new Set(ids).size).to.equal(10);
      expect(grants.filter((g) => g.status === 'rejected')).to.have.length(4);
    });
  });

  describe('registry: liveness', () => {
    it('moves last_seen and expires_at forward for the owner', async () => {
      const { registry, clock } = await makeRegistry();
      const l = await registry.allocate('vm-a');
      clock.advance(40 * SECOND);
      const r = await registry.renew('vm-a', l.identifier, l.epoch);
      expect(r.lastSeen).to.equal(l.lastSeen + 40 * SECOND);
      expect(r.expiresAt).to.equal(r.lastSeen + 90 * SECOND);
      expect(r.allocatedAt).to.equal(l.allocatedAt);
    });

    it('refuses strangers, free identifiers, unknown identifiers and stale epochs', async () => {
      const h = await makeRegistry();
      const l = await h.registry.allocate('vm-a');
      const before = (await h.row(l.identifier));
      expect(await errorCode(h.registry.renew('vm-b', l.identifier))).to.equal('not_owner');
      expect(await errorCode(h.registry.renew('vm-a', 'w-4'))).to.equal('not_owner');
      expect(await errorCode(h.registry.renew('vm-a', 'nope'))).to.equal('identifier_not_found');
      h.clock.advance(SECOND);
      expect(await errorCode(h.registry.renew('vm-a', l.identifier, l.epoch + 1))).to.equal('stale_epoch');
      expect((await h.row(l.identifier))).to.deep.equal(before);
    });

    it('still renews a lease past its TTL that the reaper has not reclaimed', async () => {
      const { registry, clock } = await makeRegistry();
      const l = await registry.allocate('vm-a');
      clock.advance(10 * 60 * SECOND);
      expect((await registry.renew('vm-a', l.identifier)).lastSeen).to.equal(clock.now());
      expect((await registry.reap()).reclaimed).to.equal(0);
    });
  });

  describe('registry: release', () => {
    it('frees the identifier at once for the next client, with history', async () => {
      const { registry } = await makeRegistry({ pool: 'only' });
      const l = await registry.allocate('vm-a');
      const info = await registry.release('vm-a', 'only', l.epoch);
      expect(info).to.include({ status: 'free', epoch: 1 });
      expect(info.lease).to.equal(null);
      expect((await registry.allocate('vm-b')).identifier).to.equal('only');
      expect((await registry.history('only')).map((e) => e.event)).to.deep.equal(['allocated', 'released', 'allocated']);
    });

    it('refuses a stranger and a stale epoch without freeing', async () => {
      const h = await makeRegistry({ pool: 'only' });
      await h.registry.allocate('vm-a');
      expect(await errorCode(h.registry.release('vm-b', 'only'))).to.equal('not_owner');
      expect(await errorCode(h.registry.release('vm-a', 'only', 7))).to.equal('stale_epoch');
      expect(await errorCode(h.registry.release('vm-a', 'gone'))).to.equal('identifier_not_found');
      expect((await h.row('only'))?.['client_id']).to.equal('vm-a');
    });
  });

  describe('registry: force release', () => {
    it('takes the identifier from its holder into cooling, for the cool-down', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only', rules: { cooldownMs: 60 * SECOND } });
      await registry.allocate('vm-a');
      const info = await registry.forceRelease('only');
      expect(info.status).to.equal('cooling');
      expect(await errorCode(registry.renew('vm-a', 'only'))).to.equal('not_owner');
      expect(await errorCode(registry.allocate('vm-b'))).to.equal('pool_exhausted');
      clock.advance(60 * SECOND - 1);
      expect(await errorCode(registry.allocate('vm-b'))).to.equal('pool_exhausted');
      clock.advance(1);
      expect(await registry.allocate('vm-b')).to.include({ identifier: 'only', epoch: 2 });
      expect((await registry.history('only')).map((e) => [e.event, e.clientId])).to.deep.equal([
        ['allocated', 'vm-a'], ['force_released', 'vm-a'], ['allocated', 'vm-b'],
      ]);
    });

    it('leaves a free identifier as it is, and 404s an unknown one', async () => {
      const { registry } = await makeRegistry({ pool: 'only' });
      expect((await registry.forceRelease('only')).status).to.equal('free');
      expect(await registry.history('only')).to.deep.equal([]);
      expect(await errorCode(registry.forceRelease('nope'))).to.equal('identifier_not_found');
    });
  });

  describe('registry: reaper', () => {
    it('reclaims a lease a full TTL after its last liveness, not before, into cooling', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only', rules: { ttlMs: 90 * SECOND, cooldownMs: 30 * SECOND } });
      await registry.allocate('vm-a');
      clock.advance(90 * SECOND - 1);
      expect((await registry.reap()).reclaimed).to.equal(0);
      clock.advance(1);
      expect((await registry.reap()).reclaimed).to.equal(1);
      expect((await registry.identifier('only')).status).to.equal('cooling');
      expect(await errorCode(registry.renew('vm-a', 'only'))).to.equal('not_owner');
      expect(await errorCode(registry.allocate('vm-b'))).to.equal('pool_exhausted');
      clock.advance(30 * SECOND);
      expect(await registry.allocate('vm-b')).to.include({ identifier: 'only', epoch: 2 });
      expect((await registry.history('only')).map((e) => e.event)).to.deep.equal(['allocated', 'reclaimed', 'allocated']);
    });

    it('reclaims in bounded batches until every expired lease is gone', async () => {
      const { registry, clock, events } = await makeRegistry({ pool: 'w-[0-6]', rules: { reapBatchSize: 2 } });
      for (let i = 0; i < 7; i++) await registry.allocate(`vm-${i}`);
      clock.advance(90 * SECOND);
      await registry.renew('vm-3', 'w-3');
      expect((await registry.reap()).reclaimed).to.equal(6);
      expect((await registry.list({ status: 'leased', after: null, limit: null })).items.map((i) => i.identifier)).to.deep.equal(['w-3']);
      expect(events.filter((e) => e.type === 'ownership' && e.event === 'reclaimed')).to.have.length(6);
    });

    it('takes a quarter batch in the transaction that decides, then full batches, each its own transaction', async () => {
      const { registry, store, clock, events } = await makeRegistry({ pool: 'w-[00-29]', rules: { reapBatchSize: 8 } });
      for (let i = 0; i < 20; i++) await registry.allocate(`vm-${i}`);
      clock.advance(90 * SECOND);
      // Each transaction's reclaims, as the store answered them.
      const batches: number[] = [];
      const write = store.write.bind(store);
      store.write = (fn, opts) => write((tx) => fn(Object.assign(Object.create(tx) as typeof tx, {
        reclaimExpired: async (...a: Parameters<typeof tx.reclaimExpired>) => {
          const got = await tx.reclaimExpired(...a);
          batches.push(got.length);
          return got;
        },
      })), opts);
      expect((await registry.reap()).reclaimed).to.equal(20);
      expect(batches).to.deep.equal([2, 8, 8, 2]);
      expect(await registry.list({ status: 'leased', after: null, limit: null })).to.have.property('items').that.is.empty;
      expect(events.filter((e) => e.type === 'ownership' && e.event === 'reclaimed')).to.have.length(20);
    });

    it('a forced sweep waits out another instance\'s sweep lock through the injected wait, and gives up after its bound', async () => {
      const h = await makeRegistry({ pool: 'only' });
      await h.registry.allocate('vm-a');
      h.clock.advance(90 * SECOND);
      // Another instance holds the sweep lock for the first `busy` looks.
      let busy = Infinity;
      let looks = 0;
      const write = h.store.write.bind(h.store);
      const store: Store = Object.assign(Object.create(h.store) as Store, {
        write: ((fn, opts) => write((tx) => fn(Object.assign(Object.create(tx) as typeof tx, {
          trySweepLock: async () => ++looks > busy && await tx.trySweepLock(),
        })), opts)) satisfies Store['write'],
      });
      const waits: number[] = [];
      const registry = new Registry({ store, rules: DEFAULT_RULES, wait: async (ms) => { waits.push(ms); } });
      const started = performance.now();
      expect(await registry.reap({ force: true })).to.deep.equal({ reclaimed: 0, held: false, reason: 'another instance is sweeping' });
      expect(looks).to.equal(101);
      expect(waits).to.deep.equal(Array(100).fill(50));
      expect(performance.now() - started).to.be.below(100 * 50); // the bound's real time never passed
      // A sweep that is not forced does not wait.
      looks = 0;
      waits.length = 0;
      expect((await registry.reap()).reason).to.equal('another instance is sweeping');
      expect([looks, waits.length]).to.deep.equal([1, 0]);
      // Once the other sweep ends, the forced one runs.
      looks = 0;
      busy = 3;
      expect(await registry.reap({ force: true })).to.deep.equal({ reclaimed: 1, held: false, reason: null });
      expect(waits).to.deep.equal([50, 50, 50]);
      expect((await h.registry.identifier('only')).status).to.equal('cooling');
    });

    it('reports its last run on health', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only' });
      await registry.allocate('vm-a');
      clock.advance(100 * SECOND);
      await registry.reap();
      const h = await registry.health();
      expect(h.reaper).to.deep.equal({ lastRunAt: clock.now(), lastReclaimed: 1, held: false, reason: null });
      expect(h.pool).to.deep.equal({ total: 1, leased: 0, free: 0, cooling: 1, retired: 0 });
    });
  });

  describe('registry: pool sync', () => {
    it('adds, retires and restores, recording retire and restore in the history', async () => {
      const { registry } = await makeRegistry({ pool: 'a\nb\nc\n' });
      expect(await registry.syncPool(parsePool('a\nd\n'), null, { force: true })).to.deep.equal({ total: 2, added: 1, retired: 2, restored: 0 });
      expect((await registry.identifier('b')).status).to.equal('retired');
      expect((await registry.identifier('d')).status).to.equal('free');
      expect(await registry.syncPool(parsePool('a\nb\nd\n'))).to.deep.equal({ total: 3, added: 0, retired: 0, restored: 1 });
      expect((await registry.identifier('b')).status).to.equal('free');
      expect((await registry.history('b')).map((e) => e.event)).to.deep.equal(['retired', 'restored']);
      expect((await registry.identifier('c')).status).to.equal('retired');
    });

    it('never allocates a retired identifier', async () => {
      const { registry } = await makeRegistry({ pool: 'a\nb\n' });
      await registry.syncPool(['b']);
      expect((await registry.allocate('vm-1')).identifier).to.equal('b');
      expect(await errorCode(registry.allocate('vm-2'))).to.equal('pool_exhausted');
    });

    it('a retired identifier keeps its lease until freed, then stays retired', async () => {
      const { registry } = await makeRegistry({ pool: 'a\nb\n' });
      const l = await registry.allocate('vm-1');
      await registry.syncPool(['b']);
      expect((await registry.identifier('a')).status).to.equal('leased');
      expect((await registry.renew('vm-1', 'a', l.epoch)).identifier).to.equal('a');
      expect((await registry.allocate('vm-1')).identifier).to.equal('a');
      expect((await registry.release('vm-1', 'a')).status).to.equal('retired');
    });

    it('follows the file order for never-used identifiers after the file is reordered', async () => {
      const { registry } = await makeRegistry({ pool: 'a\nb\nc\n' });
      await registry.syncPool(['c', 'b', 'a']);
      expect((await registry.allocate('vm-1')).identifier).to.equal('c');
      const page = await registry.list({ status: null, after: null, limit: null });
      expect(page.items.map((i) => i.identifier)).to.deep.equal(['c', 'b', 'a']);
    });
  });

  describe('registry: listing', () => {
    it('pages with a cursor in pool order, filtered by status', async () => {
      const { registry } = await makeRegistry({ pool: 'w-[0-9]' });
      for (let i = 0; i < 5; i++) await registry.allocate(`vm-${i}`);
      const p1 = await registry.list({ status: 'free', after: null, limit: 2 });
      expect(p1.items.map((i) => i.identifier)).to.deep.equal(['w-5', 'w-6']);
      expect(p1.next).to.equal('w-6');
      const p2 = await registry.list({ status: 'free', after: 'w-6', limit: 2 });
      expect(p2.items.map((i) => i.identifier)).to.deep.equal(['w-7', 'w-8']);
      const p3 = await registry.list({ status: 'free', after: 'w-8', limit: 2 });
      expect(p3.items.map((i) => i.identifier)).to.deep.equal(['w-9']);
      expect(p3.next).to.equal(null);
      expect(await errorCode(registry.list({ status: null, after: 'zzz', limit: 2 }))).to.equal('invalid_request');
    });
  });
}

export const poolSyncRefusal = (): Mocha.Suite => describe('registry: pool sync refusal (SQLite file, compared byte for byte)', () => {
  it('refuses a sync that would retire more than half of the pool, changing nothing; force applies it', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'r.db');
      const { registry } = await makeSqliteRegistry({ pool: 'w-[0-9]\n', path });
      await registry.syncPool(parsePool('w-[0-9]\n'), 'fingerprint-1');
      const lease = await registry.allocate('vm-a');
      const before = snapshotDb(path);
      expect(await errorCode(registry.syncPool([], 'fingerprint-empty'))).to.equal('pool_sync_refused');
      expect(await errorCode(registry.syncPool(parsePool('w-[0-3]\n'), 'fingerprint-truncated'))).to.equal('pool_sync_refused');
      expect(snapshotDb(path)).to.equal(before);
      expect(await registry.poolFingerprint()).to.equal('fingerprint-1'); // so the next start-up syncs it again
      expect((await registry.renew('vm-a', lease.identifier, lease.epoch)).identifier).to.equal(lease.identifier);
      // Exactly half is allowed, and retired identifiers do not count as the pool.
      expect(await registry.syncPool(parsePool('w-[0-4]\n'))).to.include({ retired: 5 });
      expect(await registry.syncPool(parsePool('w-[0-1]\nw-4\n'))).to.include({ retired: 2 });
      expect(await registry.syncPool([], null, { force: true })).to.include({ retired: 3 });
      expect((await registry.health()).pool).to.include({ retired: 9, leased: 1 });
    } finally {
      t.cleanup();
    }
  });
});
