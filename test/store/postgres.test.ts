/**
 * The PostgreSQL engine against a real server (test/support/postgres.ts): migrations when
 * instances start together, races between instances on the same rows, the reaper from two
 * instances at once, an outage of the server, a crash of it, time, and moving state between
 * engines. Races are staged, not hoped for: one transaction is held at a gate while the other
 * runs, and "the other is now waiting on a lock" is read from pg_stat_activity.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import { FakeClock } from '../../src/clock.js';
import { RegistryError } from '../../src/domain/errors.js';
import { DumpError, dumpLines, parseDump, translateDump } from '../../src/store/dump.js';
import type { Dump } from '../../src/store/dump.js';
import { parsePool } from '../../src/pool/parse.js';
import { Registry } from '../../src/registry.js';
import { LINK_POLL_MS, LINK_WAIT_MS } from '../../src/store/postgres/clock.js';
import { MIGRATIONS } from '../../src/store/postgres/schema.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import type { PostgresStore, PostgresStoreOptions } from '../../src/store/postgres/store.js';
import { parseBigint } from '../../src/store/postgres/rows.js';
import { dumpSqlite, loadSqlite } from '../../src/store/sqlite/dump.js';
import { openDatabase } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { DEFAULT_RULES, SECOND, errorCode, heldLanes, makeSqliteRegistry, tempDir } from '../support/helpers.js';
import { TestPostgres, sharedPostgres } from '../support/postgres.js';
import { until } from '../support/process-helpers.js';

interface Grant { readonly identifier: string; readonly epoch: number }

interface Gate { reached: Promise<void>; arrive: () => void; opened: Promise<void>; open: () => void }
/** Gates of the running test, opened after it whatever happened, so no transaction is left waiting. */
const gates: Gate[] = [];

/** A gate a transaction waits at, and a signal that it got there. */
function gate(): Gate {
  let arrive = (): void => {};
  let open = (): void => {};
  const reached = new Promise<void>((r) => { arrive = r; });
  const opened = new Promise<void>((r) => { open = r; });
  const g = { reached, arrive, opened, open };
  gates.push(g);
  return g;
}

/**
 * allocate as the registry does it (same client, same answer; else the allocatable identifier
 * free the longest under a new epoch), with an optional pause while its rows are locked.
 */
function allocate(store: Store, clientId: string, pause?: { afterGrant?: () => Promise<void>; afterPick?: () => Promise<void> }): Promise<Grant> {
  return store.write(async (tx) => {
    const claim = await tx.claimFor(clientId, tx.now);
    if (claim?.held) {
      await tx.renewHeld(claim.rec.name, clientId, claim.rec.epoch, tx.now, 0);
      return { identifier: claim.rec.name, epoch: claim.rec.epoch };
    }
    const next = claim?.rec;
    if (!next) throw new RegistryError('pool_exhausted', 'nothing free');
    await pause?.afterPick?.();
    await tx.grant(next.rowId, clientId, next.epoch + 1, tx.now, 0);
    await pause?.afterGrant?.();
    return { identifier: next.name, epoch: next.epoch + 1 };
  }, { durable: true });
}

async function seed(store: Store, names: readonly string[]): Promise<void> {
  await store.write((tx) => tx.insertIdentifiers(names.map((name, poolOrder) => ({ name, poolOrder }))), { durable: true });
}

function names(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `w-${i}`);
}

describe('postgres store', function () {
  this.timeout(60_000);
  let server: TestPostgres;
  let url: string;
  const opened: Store[] = [];

  async function open(extra: Partial<PostgresStoreOptions> = {}, on = url): Promise<PostgresStore> {
    const store = await openPostgresStore({ url: on, ...extra });
    opened.push(store);
    return store;
  }

  /** Raw SQL on this test's database, as an operator (or a buggy caller) would run it. */
  async function sql(text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
    return server.sql(text, values, new URL(url).pathname.slice(1));
  }

  /** Whether the instance named `app` has a statement waiting on a lock right now. */
  async function waitingOnLock(app: string): Promise<boolean> {
    const rows = await sql(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, [app]);
    return rows[0]?.['n'] === 1;
  }

  before(async () => {
    server = await sharedPostgres();
    // Reported with the run, so start-up cost stays visible.
    console.log(`      (PostgreSQL ready in ${Math.round(server.startupMs)} ms)`);
  });

  beforeEach(async () => {
    url = await server.createDatabase();
  });

  afterEach(async () => {
    for (const g of gates.splice(0)) g.open();
    await Promise.all(opened.splice(0).map((s) => s.close()));
  });

  describe('schema', () => {
    it('three instances starting together on a fresh database migrate it once', async () => {
      await Promise.all([open(), open(), open()]);
      const versions = await sql('SELECT version FROM schema_version ORDER BY version');
      expect(versions.map((r) => r['version'])).to.deep.equal(MIGRATIONS.map((_, i) => i + 1));
    });

    it('a restart keeps the data and migrates nothing again', async () => {
      const first = await open();
      await seed(first, ['a']);
      await first.close();
      const again = await open();
      expect((await again.read((r) => r.byName('a')))?.name).to.equal('a');
      expect(await sql('SELECT count(*)::int AS n FROM schema_version')).to.deep.equal([{ n: MIGRATIONS.length }]);
    });

    it('a schema newer than this registry refuses to start and changes nothing', async () => {
      await (await open()).close();
      await sql('INSERT INTO schema_version (version) VALUES ($1)', [MIGRATIONS.length + 1]);
      const err = await openPostgresStore({ url }).then(() => null, (e: unknown) => e);
      expect(err).to.be.instanceOf(Error);
      expect(String(err)).to.match(/newer than this registry/);
      expect(await sql('SELECT count(*)::int AS n FROM schema_version')).to.deep.equal([{ n: MIGRATIONS.length + 1 }]);
    });
  });

  describe('the database refuses what the rules forbid', () => {
    beforeEach(async () => {
      const store = await open();
      await seed(store, ['a', 'b']);
      await allocate(store, 'vm-1');
    });

    it('a value past 2^53 is refused as an internal error, never rounded', async () => {
      await sql(`UPDATE identifiers SET epoch = 9007199254740993 WHERE name = 'a'`);
      const store = await open();
      expect(await errorCode(store.read((r) => r.byName('a')))).to.equal('internal');
      expect(() => parseBigint('9007199254740993')).to.throw(/does not fit/);
      expect(parseBigint('-42')).to.equal(-42);
    });
  });

  describe('instances racing for the same rows', () => {
    it('two instances allocating at once take different identifiers without waiting for each other', async () => {
      const a = await open({ applicationName: 'inst-a', lockTimeoutMs: 2000 });
      const b = await open({ applicationName: 'inst-b', lockTimeoutMs: 2000 });
      await seed(a, ['x', 'y']);
      const hold = gate();
      const first = allocate(a, 'vm-a', { afterPick: async () => { hold.arrive(); await hold.opened; } });
      await hold.reached; // a has picked x and holds its row lock
      const second = await allocate(b, 'vm-b'); // skips the locked row, waits for nothing
      hold.open();
      expect(second).to.deep.equal({ identifier: 'y', epoch: 1 });
      expect(await first).to.deep.equal({ identifier: 'x', epoch: 1 });
    });

    it('two instances racing for the last free identifier: exactly one grant, the other pool_exhausted', async () => {
      const a = await open({ applicationName: 'inst-a', lockTimeoutMs: 2000 });
      const b = await open({ applicationName: 'inst-b', lockTimeoutMs: 2000 });
      await seed(a, ['only']);
      const hold = gate();
      const first = allocate(a, 'vm-a', { afterPick: async () => { hold.arrive(); await hold.opened; } });
      await hold.reached;
      expect(await errorCode(allocate(b, 'vm-b'))).to.equal('pool_exhausted');
      hold.open();
      expect(await first).to.deep.equal({ identifier: 'only', epoch: 1 });
      expect(await sql(`SELECT client_id, epoch::int AS epoch FROM identifiers`)).to.deep.equal([{ client_id: 'vm-a', epoch: 1 }]);
      expect(await sql(`SELECT count(*)::int AS n FROM history WHERE event = 'allocated'`)).to.deep.equal([{ n: 1 }]);
    });

    it('many clients through two instances for a smaller pool: one grant per identifier, the rest pool_exhausted', async () => {
      const a = await open({ poolSize: 8 });
      const b = await open({ poolSize: 8 });
      await seed(a, names(20));
      const results = await Promise.allSettled(Array.from({ length: 60 }, (_, i) => allocate(i % 2 ? a : b, `vm-${i}`)));
      const granted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const refused = results.flatMap((r) => (r.status === 'rejected' && r.reason instanceof RegistryError ? [r.reason.code] : []));
      expect(granted).to.have.length(20);
      expect(new Set(granted.map((g) => g.identifier)).size).to.equal(20);
      expect(granted.every((g) => g.epoch === 1)).to.equal(true);
      expect(refused).to.deep.equal(Array(40).fill('pool_exhausted'));
    });

    it('the same client through two instances at once gets one identifier and one epoch', async () => {
      const a = await open({ applicationName: 'inst-a' });
      const b = await open({ applicationName: 'inst-b' });
      await seed(a, ['x', 'y']);
      const hold = gate();
      // a has granted x to vm-1 but not committed; b, not seeing it, picks y for vm-1 and
      // runs into the one-client index, where it waits for a.
      const first = allocate(a, 'vm-1', { afterGrant: async () => { hold.arrive(); await hold.opened; } });
      await hold.reached;
      const second = allocate(b, 'vm-1');
      await until(() => waitingOnLock('inst-b'), 5000, 'b to wait on the unique index');
      hold.open();
      expect(await first).to.deep.equal({ identifier: 'x', epoch: 1 });
      expect(await second).to.deep.equal({ identifier: 'x', epoch: 1 });
      expect(await sql(`SELECT name, client_id FROM identifiers WHERE client_id IS NOT NULL`)).to.deep.equal([{ name: 'x', client_id: 'vm-1' }]);
      expect(await sql(`SELECT count(*)::int AS n FROM history`)).to.deep.equal([{ n: 1 }]);
    });
    it('the same lease released through two instances at once: one release, one history entry, the other not_owner', async () => {
      const a = await open({ applicationName: 'inst-a' });
      const b = await open({ applicationName: 'inst-b' });
      await seed(a, ['x']);
      await allocate(a, 'vm-1');
      const release = (store: Store, pause?: () => Promise<void>): Promise<void> => store.write(async (tx) => {
        const rec = await tx.byName('x');
        if (rec?.holder?.clientId !== 'vm-1') throw new RegistryError('not_owner', 'vm-1 does not hold x');
        await pause?.();
        await tx.free(rec.rowId, tx.now, { at: tx.now, event: 'released', clientId: 'vm-1', epoch: rec.epoch });
      }, { durable: true });
      const hold = gate();
      const first = release(a, async () => { hold.arrive(); await hold.opened; });
      await hold.reached;
      let secondDone = false;
      const second = release(b);
      void second.finally(() => { secondDone = true; }).catch(() => undefined);
      await until(async () => secondDone || (await waitingOnLock('inst-b')), 5000, 'the second release to finish or wait');
      hold.open();
      await first;
      expect(await errorCode(second)).to.equal('not_owner');
      expect(await sql(`SELECT count(*)::int AS n FROM history WHERE event = 'released'`)).to.deep.equal([{ n: 1 }]);
    });
  });

  describe('the reaper on several instances', () => {
    const T = 1_000_000;

    async function leased(store: Store, n: number): Promise<void> {
      await seed(store, names(n));
      await store.write(async (tx) => {
        for (let i = 0; i < n; i++) {
          const rec = await tx.byName(`w-${i}`);
          if (!rec) throw new Error('missing');
          await tx.grant(rec.rowId, `vm-${i}`, 1, T + i, 0);
        }
      }, { durable: true });
    }

    it('two sweeps at once reclaim each expired lease once, with one history entry each, neither waiting', async () => {
      const a = await open({ applicationName: 'sweep-a' });
      const b = await open({ applicationName: 'sweep-b', lockTimeoutMs: 2000 });
      await leased(a, 100);
      const cutoff = T + 1000;
      const hold = gate();
      const first = a.write(async (tx) => {
        const recs = await tx.reclaimExpired(cutoff, 30, T + 5000, 4000);
        hold.arrive();
        await hold.opened;
        return recs;
      }, { durable: true });
      await hold.reached;
      // While the first sweep holds its 30 rows, the second takes the other 70 without waiting.
      const rb = await b.write((tx) => tx.reclaimExpired(cutoff, 1000, T + 5000, 4000), { durable: true });
      hold.open();
      const ra = await first;
      expect(ra.map((r) => r.name)).to.deep.equal(names(30)); // oldest first
      expect(rb).to.have.length(70);
      expect(new Set([...ra, ...rb].map((r) => r.name)).size).to.equal(100);
      expect(await sql(`SELECT count(*)::int AS n, count(DISTINCT identifier_id)::int AS d FROM history WHERE event = 'reclaimed'`))
        .to.deep.equal([{ n: 100, d: 100 }]);
      expect(await sql(`SELECT count(*)::int AS n FROM identifiers WHERE client_id IS NULL AND available_at = $1`, [T + 9000]))
        .to.deep.equal([{ n: 100 }]);
    });

    it('a lease being renewed while a sweep runs is not reclaimed', async () => {
      const a = await open({ applicationName: 'renewer' });
      const b = await open({ applicationName: 'sweeper' });
      await leased(a, 1);
      const hold = gate();
      const renewal = a.write(async (tx) => {
        const rec = await tx.byName('w-0');
        if (!rec) throw new Error('missing');
        await tx.renewHeld(rec.name, 'vm-0', null, T + 50_000, 0);
        hold.arrive();
        await hold.opened;
      }, { durable: false });
      await hold.reached;
      let sweepDone = false;
      const sweep = b.write((tx) => tx.reclaimExpired(T + 1000, 10, T + 5000, 4000), { durable: true });
      void sweep.finally(() => { sweepDone = true; }).catch(() => undefined);
      await until(async () => sweepDone || (await waitingOnLock('sweeper')), 5000, 'the sweep to finish or wait for the renewal');
      hold.open();
      await renewal;
      expect(await sweep).to.deep.equal([]);
      expect(await sql(`SELECT client_id, last_seen::text FROM identifiers`)).to.deep.equal([{ client_id: 'vm-0', last_seen: String(T + 50_000) }]);
      expect(await sql(`SELECT count(*)::int AS n FROM history WHERE event = 'reclaimed'`)).to.deep.equal([{ n: 0 }]);
    });

    it('one instance sweeps at a time', async () => {
      const a = await open();
      const b = await open();
      const hold = gate();
      const first = a.write(async (tx) => {
        const got = await tx.trySweepLock();
        hold.arrive();
        await hold.opened;
        return got;
      }, { durable: false });
      await hold.reached;
      expect(await b.write((tx) => tx.trySweepLock(), { durable: false })).to.equal(false);
      hold.open();
      expect(await first).to.equal(true);
      expect(await b.write((tx) => tx.trySweepLock(), { durable: false })).to.equal(true);
    });
  });

  describe('transactions', () => {
    it('a RegistryError thrown by a use case rolls its writes back and comes out unchanged', async () => {
      const store = await open();
      await seed(store, ['a']);
      const refusal = new RegistryError('not_owner', 'refused after writing');
      const err = await store.write(async (tx) => {
        const rec = await tx.byName('a');
        if (rec) await tx.grant(rec.rowId, 'vm-1', 1, tx.now, 0);
        throw refusal;
      }, { durable: true }).then(() => null, (e: unknown) => e);
      expect(err).to.equal(refusal);
      expect(await sql(`SELECT client_id FROM identifiers`)).to.deep.equal([{ client_id: null }]);
    });

    it('a statement the database refuses is internal, says no SQL, and leaves nothing behind', async () => {
      const store = await open();
      await seed(store, ['a']);
      await allocate(store, 'vm-1');
      const err = await store.write(async (tx) => {
        await tx.setMeta('touched', 'yes');
        const rec = await tx.byName('a');
        if (!rec) throw new Error('missing');
        await tx.free(rec.rowId, 0, { at: tx.now, event: 'force_released', clientId: 'vm-1', epoch: rec.epoch });
        await tx.grant(rec.rowId, 'vm-2', rec.epoch, tx.now, 0); // the same epoch again: the database refuses
      }, { durable: true }).then(() => null, (e: unknown) => e);
      expect(err).to.be.instanceOf(RegistryError).with.property('code', 'internal');
      expect(String(err)).not.to.match(/UPDATE|identifiers|SELECT/);
      expect(await sql(`SELECT count(*)::int AS n FROM meta WHERE key = 'touched'`)).to.deep.equal([{ n: 0 }]);
    });

    it('a unique violation on every attempt (a grant to the same client winning each time) is unavailable, never internal', async () => {
      const store = await open();
      await seed(store, ['a', 'b']);
      await allocate(store, 'vm-1'); // a
      let attempts = 0;
      const err = await store.write(async (tx) => {
        attempts++;
        const rec = await tx.byName('b');
        if (rec) await tx.grant(rec.rowId, 'vm-1', rec.epoch + 1, tx.now, 0); // vm-1 holds a: the one-client index refuses
      }, { durable: true }).then(() => null, (e: unknown) => e);
      expect(attempts, 'run again each time').to.be.above(1);
      expect(err).to.be.instanceOf(RegistryError).with.property('code', 'unavailable');
      expect(await sql(`SELECT name, client_id FROM identifiers ORDER BY name`)).to.deep.equal([{ name: 'a', client_id: 'vm-1' }, { name: 'b', client_id: null }]);
    });

    it('a lost race runs again after a random pause taken through the injected sleep, up to six attempts', async () => {
      const pauses: number[] = [];
      const store = await open({ sleep: async (ms) => { pauses.push(ms); } });
      let attempts = 0;
      const err = await store.write(async (tx) => {
        attempts++;
        await tx.setMeta('touched', 'yes');
        throw Object.assign(new Error('could not serialize access'), { code: '40001' });
      }, { durable: true }).then(() => null, (e: unknown) => e);
      expect(attempts).to.equal(6);
      expect(pauses, 'one pause between each two attempts').to.have.length(5);
      pauses.forEach((ms, i) => expect(ms, `pause ${i + 1}: random below 2^${i + 1} ms`).to.be.at.least(0).and.below(2 ** (i + 1)));
      expect(err).to.be.instanceOf(RegistryError).with.property('code', 'unavailable');
      expect(await sql(`SELECT count(*)::int AS n FROM meta WHERE key = 'touched'`), 'every attempt rolled back').to.deep.equal([{ n: 0 }]);
    });

    it('a use case that swallows a failed statement cannot commit half of itself', async () => {
      const store = await open();
      await seed(store, ['a']);
      const err = await store.write(async (tx) => {
        await tx.setMeta('first', 'yes');
        await tx.appendHistory(999, tx.now, 'allocated', 'vm-1', 1).catch(() => undefined); // no such identifier
        return 'done';
      }, { durable: true }).then(() => null, (e: unknown) => e);
      expect(err).to.be.instanceOf(RegistryError).with.property('code', 'internal');
      expect(await sql(`SELECT count(*)::int AS n FROM meta WHERE key = 'first'`)).to.deep.equal([{ n: 0 }]);
    });
  });

  describe('failover', () => {
    it('a database that turns read-only (a standby after failover) is unavailable, and served again once writable, no restart', async () => {
      const store = await open({ poolSize: 4 });
      await seed(store, names(10));
      expect(await allocate(store, 'vm-1')).to.deep.equal({ identifier: 'w-0', epoch: 1 });
      const db = new URL(url).pathname.slice(1);
      const dropSessions = `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db}' AND pid <> pg_backend_pid()`;
      await server.sql(`ALTER DATABASE ${db} SET default_transaction_read_only = on`);
      await server.sql(dropSessions);
      // Every pooled connection now goes to a read-only server.
      for (let i = 0; i < 6; i++) expect(await errorCode(allocate(store, `vm-ro-${i}`))).to.equal('unavailable');
      await server.sql(`ALTER DATABASE ${db} SET default_transaction_read_only = off`);
      // The read-only connections were dropped, not kept: the next write gets a writable one.
      expect(await allocate(store, 'vm-2')).to.deep.equal({ identifier: 'w-1', epoch: 1 });
      expect(await allocate(store, 'vm-1')).to.deep.equal({ identifier: 'w-0', epoch: 1 });
    });
  });

  describe('group commit', () => {
    it('writes that queue up commit together; a refusal, a refusal after writing and a refused statement each fail alone', async () => {
      const store = await open({ poolSize: 2 }); // one lane: while it is busy, writes queue into one batch
      await seed(store, names(40));
      const [before] = await sql(`SELECT xact_commit::int AS n FROM pg_stat_database WHERE datname = current_database()`);
      const queueUp = async <T>(writes: () => T): Promise<T> => {
        const blocker = gate();
        const busy = store.write(async () => { blocker.arrive(); await blocker.opened; }, { durable: false });
        await blocker.reached;
        const out = writes();
        blocker.open();
        await busy;
        return out;
      };
      const refusal = new RegistryError('not_owner', 'refused before writing');
      const lateRefusal = new RegistryError('stale_epoch', 'refused after writing');
      const first = await queueUp(() => ({
        renewals: names(40).map((name, i) => store.write(async (tx) => {
          await tx.setMeta(`k-${i}`, name);
          return name;
        }, { durable: i % 2 === 0 })),
        early: store.write(async () => { throw refusal; }, { durable: false }).then(() => null, (e: unknown) => e),
        late: store.write(async (tx) => {
          await tx.setMeta('late', 'should not stay');
          throw lateRefusal;
        }, { durable: true }).then(() => null, (e: unknown) => e),
      }));
      expect(await Promise.all(first.renewals)).to.deep.equal(names(40));
      expect(await first.early).to.equal(refusal);
      expect(await first.late).to.equal(lateRefusal);
      const second = await queueUp(() => ({
        good: store.write((tx) => tx.setMeta('good', 'stays'), { durable: true }),
        broken: errorCode(store.write(async (tx) => {
          await tx.setMeta('broken', 'should not stay');
          await tx.appendHistory(999_999, tx.now, 'allocated', 'vm-x', 1); // no such identifier
        }, { durable: true })),
      }));
      await second.good;
      expect(await second.broken).to.equal('internal');
      expect(await sql(`SELECT count(*)::int AS n FROM meta WHERE key LIKE 'k-%'`)).to.deep.equal([{ n: 40 }]);
      expect(await sql(`SELECT key FROM meta WHERE key IN ('late', 'broken', 'good') ORDER BY key`)).to.deep.equal([{ key: 'good' }]);
      const [after] = await sql(`SELECT xact_commit::int AS n FROM pg_stat_database WHERE datname = current_database()`);
      // Far fewer commits than writes (the statistics count a few of this test's own queries too).
      expect(Number(after?.['n']) - Number(before?.['n'])).to.be.below(20);
    });

    it('a batch sees its earlier writes: two allocations for one client in one batch get one identifier', async () => {
      const store = await open({ poolSize: 2 });
      await seed(store, names(5));
      const blocker = gate();
      const first = store.write(async () => { blocker.arrive(); await blocker.opened; }, { durable: false });
      await blocker.reached; // the lane is busy: the next writes queue into one batch
      const both = Promise.all([allocate(store, 'vm-1'), allocate(store, 'vm-1'), allocate(store, 'vm-2')]);
      blocker.open();
      await first;
      expect(await both).to.deep.equal([{ identifier: 'w-0', epoch: 1 }, { identifier: 'w-0', epoch: 1 }, { identifier: 'w-1', epoch: 1 }]);
      expect(await sql(`SELECT count(*)::int AS n FROM history`)).to.deep.equal([{ n: 2 }]);
    });
  });

  describe('renewals and releases by their holder, batched', () => {
    const T = Date.parse('2026-01-08T10:00:00.000Z');

    /** A store whose lanes start only when the test says: what is asked meanwhile queues up. */
    async function heldBack(clock: FakeClock): Promise<{ store: PostgresStore; settle: <T>(p: Promise<T>) => Promise<T> }> {
      const { defer, settle } = heldLanes();
      const store = await open({ clock, poolSize: 2, defer });
      return { store, settle };
    }

    it('renewals queued together go out in one statement, and each renews only a lease its client holds, under its epoch when sent', async () => {
      const clock = new FakeClock(T);
      const { store, settle } = await heldBack(clock);
      await settle(seed(store, ['a', 'b', 'c', 'd']));
      for (const vm of ['vm-1', 'vm-2', 'vm-3']) await settle(allocate(store, vm)); // a, b, c, each epoch 1
      clock.advance(5000);
      const before = { ...store.heldStats.renew };
      const answers = await settle(Promise.all([
        store.renewHeld('a', 'vm-1', 1, 0),
        store.renewHeld('b', 'vm-2', 2, 0), // a stale epoch
        store.renewHeld('c', 'vm-1', null, 0), // not its lease
        store.renewHeld('d', 'vm-4', null, 0), // free
        store.renewHeld('zz', 'vm-1', null, 0), // no such identifier
        store.renewHeld('c', 'vm-3', null, 0), // its lease, no epoch sent
      ]));
      expect(store.heldStats.renew.statements - before.statements).to.equal(1);
      expect(store.heldStats.renew.asks - before.asks).to.equal(6);
      expect(answers.map((r) => (r ? `${r.name}#${r.epoch} ${r.holder?.clientId ?? '-'} ${(r.holder?.lastSeen ?? 0) - T}` : null)))
        .to.deep.equal(['a#1 vm-1 5000', null, null, null, null, 'c#1 vm-3 5000']);
      expect(await sql(`SELECT name, client_id, (last_seen - $1)::int AS since FROM identifiers ORDER BY name`, [T])).to.deep.equal([
        { name: 'a', client_id: 'vm-1', since: 5000 },
        { name: 'b', client_id: 'vm-2', since: 0 },
        { name: 'c', client_id: 'vm-3', since: 5000 },
        { name: 'd', client_id: null, since: null },
      ]);
    });

    it('releases queued together go out in one statement, each with its history entry, and free only what their client holds', async () => {
      const clock = new FakeClock(T);
      const { store, settle } = await heldBack(clock);
      await settle(seed(store, ['a', 'b', 'c']));
      for (const vm of ['vm-1', 'vm-2', 'vm-3']) await settle(allocate(store, vm));
      clock.advance(1000);
      const before = { ...store.heldStats.release };
      const answers = await settle(Promise.all([
        store.releaseHeld('a', 'vm-1', 1),
        store.releaseHeld('b', 'vm-2', 7), // a stale epoch
        store.releaseHeld('c', 'vm-3', null),
        store.releaseHeld('c', 'vm-1', null), // not its lease
      ]));
      expect(store.heldStats.release.statements - before.statements).to.equal(1);
      expect(answers.map((r) => (r ? `${r.name}#${r.epoch} ${r.holder === null ? 'free' : 'held'} ${r.availableAt - T}` : null)))
        .to.deep.equal(['a#1 free 1000', null, 'c#1 free 1000', null]);
      expect(await sql(`SELECT name, client_id FROM identifiers ORDER BY name`)).to.deep.equal([
        { name: 'a', client_id: null }, { name: 'b', client_id: 'vm-2' }, { name: 'c', client_id: null },
      ]);
      expect(await sql(`SELECT i.name, h.client_id, h.epoch::int AS epoch, (h.at - $1)::int AS at FROM history h JOIN identifiers i ON i.id = h.identifier_id
                        WHERE h.event = 'released' ORDER BY i.name`, [T])).to.deep.equal([
        { name: 'a', client_id: 'vm-1', epoch: 1, at: 1000 }, { name: 'c', client_id: 'vm-3', epoch: 1, at: 1000 },
      ]);
    });
  });

  describe('time', () => {
    async function serverNow(): Promise<number> {
      const rows = await sql(`SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text AS t`);
      return Number(rows[0]?.['t']);
    }

    it("transactions read the database server's clock, and instances agree on it", async () => {
      const a = await open();
      const b = await open();
      const before = await serverNow();
      const ta = await a.write(async (tx) => tx.now, { durable: false });
      const tb = await b.write(async (tx) => tx.now, { durable: false });
      const after = await serverNow();
      expect(ta).to.be.within(before, after);
      expect(tb).to.be.within(ta, after);
      // Outside a transaction: the local estimate, never behind the server, within 100 ms of it.
      const ea = a.clock.now();
      const eb = b.clock.now();
      const s = await serverNow();
      expect(Math.abs(ea - eb)).to.be.below(100);
      expect(ea).to.be.within(after, s + 100);
    });

    it('an injected clock drives transaction time (tests on PostgreSQL use a FakeClock)', async () => {
      const clock = new FakeClock();
      const store = await open({ clock });
      clock.advance(90 * SECOND);
      expect(await store.write(async (tx) => tx.now, { durable: false })).to.equal(clock.now());
      expect(await store.read(async (r) => r.now)).to.equal(clock.now());
      expect(store.clock.now()).to.equal(clock.now());
    });

    it('a host new to the store waits for the running instances through the injected sleep, not on real timers', async () => {
      const running = await open({ bootId: 'host-a' });
      await running.write(async (tx) => tx.beat({ id: 'instance-a', startedAt: tx.now, at: tx.now, fleetSeenAt: null }), { durable: true });
      // The newcomer's monotonic clock moves only as far as it sleeps (and as real time moves).
      let slept = 0;
      const pauses: number[] = [];
      const started = performance.now();
      await open({ bootId: 'host-b', monotonic: () => performance.now() + slept, sleep: async (ms) => { pauses.push(ms); slept += ms; } });
      expect(pauses.length, 'it looked again and again (no beat came)').to.be.above(1);
      expect(new Set(pauses), `${LINK_POLL_MS} ms each`).to.deep.equal(new Set([LINK_POLL_MS]));
      expect(slept, `until LINK_WAIT_MS had passed on its clock`).to.be.at.least(LINK_WAIT_MS);
      expect(performance.now() - started, 'without waiting that long for real').to.be.below(LINK_WAIT_MS);
    });
  });

  describe('moving the state between engines', () => {
    /** A SQLite registry with leases, releases, a cool-down, retirements and history. */
    async function sqliteState(path: string): Promise<Dump> {
      const h = await makeSqliteRegistry({ pool: 'w-[0-5]\n', path, rules: { graceMs: 0 } });
      await h.registry.allocate('vm-a');
      await h.registry.allocate('vm-b');
      await h.registry.allocate('vm-c');
      await h.registry.allocate('vm-d');
      await h.registry.release('vm-b', 'w-1');
      await h.registry.forceRelease('w-2');
      h.clock.advance(5 * SECOND);
      await h.registry.renew('vm-a', 'w-0');
      await h.registry.allocate('vm-e');
      await h.registry.syncPool(parsePool('w-[0-2]\nw-4\nw-5\n'));
      await h.registry.close();
      const dump = dumpSqlite(h.store.db, h.clock.now());
      await h.store.close();
      return dump;
    }

    const state = (d: Dump): unknown => ({ identifiers: d.identifiers, history: d.history, meta: [...d.meta].sort((a, b) => (a.key < b.key ? -1 : 1)) });

    it('SQLite -> PostgreSQL -> SQLite keeps every lease, epoch, cool-down and history entry', async () => {
      const t = tempDir();
      try {
        const original = await sqliteState(join(t.dir, 'from.db'));
        expect(original.identifiers.some((i) => i.retired)).to.equal(true);
        expect(original.identifiers.some((i) => i.availableAt > 0 && i.clientId === null)).to.equal(true);
        expect(original.history.length).to.be.above(5);
        // Through the file format, as idreg export | idreg import would carry it.
        const carried = parseDump(dumpLines(original));
        expect(state(carried)).to.deep.equal(state(original));

        const pgStore = await open();
        // PostgreSQL's registry time is its server's clock, not the SQLite registry's (a fake
        // clock here): every time moves by the difference, and nothing else changes.
        const moved = await pgStore.load(carried);
        expect(moved.shiftMs).to.equal(moved.dump.exportedAt - original.exportedAt);
        expect(state(moved.dump)).to.deep.equal(state(translateDump(original, moved.dump.exportedAt).dump));
        const fromPg = await pgStore.dump();
        expect(fromPg.engine).to.equal('postgres');
        expect(state(fromPg)).to.deep.equal(state(moved.dump));

        const db = openDatabase({ path: join(t.dir, 'back.db') });
        loadSqlite(db, parseDump(dumpLines(fromPg)));
        expect(state(dumpSqlite(db, 0))).to.deep.equal(state(moved.dump));

        // A second import is refused on both engines, and changes nothing.
        expect(await pgStore.load(carried).then(() => null, (e: unknown) => e)).to.be.instanceOf(DumpError);
        expect(() => loadSqlite(db, carried)).to.throw(DumpError, /already holds/);
        expect(state(await pgStore.dump())).to.deep.equal(state(moved.dump));
        db.close();
      } finally {
        t.cleanup();
      }
    });

    it('a held identifier keeps its epoch on PostgreSQL: the next grant there takes a later one', async () => {
      const t = tempDir();
      try {
        const original = await sqliteState(join(t.dir, 'from.db'));
        const store = await open();
        await store.load(original);
        const w0 = original.identifiers.find((i) => i.name === 'w-0');
        await store.write(async (tx) => {
          const rec = await tx.byName('w-0');
          if (!rec) throw new Error('missing');
          await tx.free(rec.rowId, 0, { at: tx.now, event: 'force_released', clientId: rec.holder?.clientId ?? null, epoch: rec.epoch });
        }, { durable: true });
        const grant = await allocate(store, 'vm-new');
        expect(grant.identifier).to.equal('w-0');
        expect(grant.epoch).to.equal((w0?.epoch ?? 0) + 1);
      } finally {
        t.cleanup();
      }
    });

    it('a damaged or truncated dump is refused with the line that is wrong', () => {
      const lines = [...dumpLines({ engine: 'sqlite', exportedAt: 1, identifiers: [], history: [], meta: [{ key: 'k', value: 'v' }] })];
      expect(() => parseDump(lines.slice(0, 1))).to.throw(DumpError, /truncated/);
      expect(() => parseDump(['{"format":"other"}'])).to.throw(DumpError, /not an asg-id-registry dump/);
      expect(() => parseDump([lines[0] ?? '', '{"meta":{"key":1,"value":"v"}}'])).to.throw(DumpError, /line 2/);
      expect(() => parseDump([lines[0] ?? '', 'nope'])).to.throw(DumpError, /line 2: not JSON/);
    });
  });
});

describe('postgres store: the server goes away', function () {
  this.timeout(90_000);
  let server: TestPostgres;
  let url: string;

  beforeEach(async () => {
    server = await TestPostgres.start();
    url = await server.createDatabase();
  });

  afterEach(async () => {
    for (const g of gates.splice(0)) g.open();
    await server.destroy();
  });

  it('stopped for 3 s: every call is unavailable (never internal), then it serves again with no restart', async () => {
    const problems: string[] = [];
    const store = await openPostgresStore({ url, connectTimeoutMs: 1000, onConnectionError: (r) => problems.push(r) });
    try {
      await seed(store, names(50));
      // Several connections in the pool, idle when the server goes: their errors must not crash us.
      const [firstGrant] = await Promise.all(names(8).map((_, i) => allocate(store, `vm-${i}`)));
      const hold = gate();
      const cutOff = allocate(store, 'vm-cut', { afterGrant: async () => { hold.arrive(); await hold.opened; } });
      await hold.reached;

      await server.stop();
      hold.open();
      expect(await errorCode(cutOff)).to.equal('unavailable');
      const codes = new Set<string>();
      const end = performance.now() + 3000;
      let calls = 0;
      while (performance.now() < end) {
        codes.add(await errorCode(allocate(store, `vm-down-${calls}`)));
        codes.add(await errorCode(store.read((r) => r.byName('w-0'))));
        expect(await store.healthProblem()).to.be.a('string');
        calls++;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect([...codes]).to.deep.equal(['unavailable']);
      expect(calls).to.be.above(5);
      expect(problems.length).to.be.above(0);

      await server.resume();
      await until(async () => (await store.healthProblem()) === null, 10_000, 'health to recover');
      expect(await allocate(store, 'vm-after')).to.have.property('epoch', 1);
      // The same client, the same answer (which identifier it got depends on which lane locked first).
      expect(await allocate(store, 'vm-0')).to.deep.equal(firstGrant);
      // The transaction cut off by the shutdown left nothing behind.
      expect(await store.read((r) => r.byClient('vm-cut'))).to.equal(null);
    } finally {
      await store.close();
    }
  });

  it('unreachable at start-up: open rejects with unavailable', async () => {
    await server.stop();
    const err = await openPostgresStore({ url, connectTimeoutMs: 1000 }).then(() => null, (e: unknown) => e);
    expect(err).to.be.instanceOf(RegistryError).with.property('code', 'unavailable');
  });

  it('a crash of the server loses no acknowledged grant', async () => {
    const store = await openPostgresStore({ url });
    const acknowledged: Grant[] = [];
    try {
      await seed(store, names(300));
      for (let round = 0; round < 10; round++) {
        const batch = await Promise.all(Array.from({ length: 20 }, (_, i) => allocate(store, `vm-${round}-${i}`)));
        acknowledged.push(...batch);
      }
      await server.crash();
      await server.resume();
    } finally {
      await store.close();
    }
    const held = await server.sql(`SELECT name, epoch FROM identifiers WHERE client_id IS NOT NULL`, [], new URL(url).pathname.slice(1));
    expect(held.map((r) => r['name']).sort()).to.deep.equal(acknowledged.map((g) => g.identifier).sort());
  });

  it('a crash of the server loses no grant acknowledged by allocate through its one-statement path', async () => {
    // Registry.allocate grants a client that holds nothing in one statement, batched
    // (PostgresStore.grantNext): that statement's commit must be on disk before the answer.
    const store = await openPostgresStore({ url });
    const acknowledged: string[] = [];
    try {
      const registry = new Registry({ store, rules: DEFAULT_RULES });
      await registry.syncPool(names(300));
      for (let round = 0; round < 10; round++) {
        const batch = await Promise.all(Array.from({ length: 20 }, (_, i) => registry.allocate(`vm-${round}-${i}`)));
        acknowledged.push(...batch.map((l) => `${l.identifier}#${l.epoch} ${l.clientId}`));
      }
      expect(store.grantStats.granted, 'granted by the one statement').to.equal(200);
      await server.crash();
      await server.resume();
    } finally {
      await store.close();
    }
    const held = await server.sql(`SELECT name, epoch::int AS epoch, client_id FROM identifiers WHERE client_id IS NOT NULL`, [], new URL(url).pathname.slice(1));
    expect(held.map((r) => `${String(r['name'])}#${String(r['epoch'])} ${String(r['client_id'])}`).sort()).to.deep.equal(acknowledged.sort());
  });
});
