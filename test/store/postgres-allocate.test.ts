/**
 * Allocate's common case on PostgreSQL as one statement (PostgresStore.grantNext, statements.ts
 * GRANT_NEXT_SQL), shared by the allocations queued beside it, against a real server: what one
 * statement grants, what it leaves to the full use case (a client that holds one, nothing
 * allocatable), rows other instances are changing, and — since the statement restates rules
 * the use case keeps in domain/ and registry.ts — the same answers as the full use case alone,
 * in fixed scenarios and in random histories.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import pg from 'pg';
import type { CustomTypesConfig, PoolClient } from 'pg';
import { FakeClock } from '../../src/clock.js';
import { RegistryError } from '../../src/domain/errors.js';
import { Registry } from '../../src/registry.js';
import type { RegistryRules } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import type { PostgresStore, PostgresStoreOptions } from '../../src/store/postgres/store.js';
import { parseBigint } from '../../src/store/postgres/rows.js';
import { grantNextAlone } from '../../src/store/postgres/held.js';
import type { StatementTime } from '../../src/store/postgres/held.js';
import type { Reader, Store, Tx, WriteOptions } from '../../src/store/types.js';
import { DEFAULT_RULES, heldLanes } from '../support/helpers.js';
import { sharedPostgres } from '../support/postgres.js';
import type { TestPostgres } from '../support/postgres.js';

const T = Date.parse('2026-01-08T10:00:00.000Z');
const SEC = 1000;
const RULES: RegistryRules = { ...DEFAULT_RULES, ttlMs: 30 * SEC, cooldownMs: 20 * SEC };
/** The statement's time: the server's clock as it is (no bounds). */
const SERVER_TIME: StatementTime = { now: null, lo: 0, hi: Number.MAX_SAFE_INTEGER };

/** The same store without the one-statement grant: every allocate runs the full use case. */
function fullUseCaseOnly(store: PostgresStore): Store {
  return {
    engine: store.engine,
    clock: store.clock,
    write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T> { return store.write(fn, opts); },
    renewHeld: (n, c, e, f) => store.renewHeld(n, c, e, f),
    releaseHeld: (n, c, e) => store.releaseHeld(n, c, e),
    read<T>(fn: (r: Reader) => Promise<T>): Promise<T> { return store.read(fn); },
    healthProblem: () => store.healthProblem(),
    close: () => store.close(),
  };
}

/** An answer as a VM would see it: the lease, or the error code. */
async function answer(p: Promise<unknown>): Promise<unknown> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof RegistryError) return { error: e.code };
    throw e;
  }
}

describe('postgres: allocate in one statement', function () {
  this.timeout(120_000);
  let server: TestPostgres;
  const opened: PostgresStore[] = [];
  /** Gates of the running test, opened after it whatever happened, so no transaction is left waiting. */
  const gates: Array<() => void> = [];
  /** Timers that let batching stores' lanes pick up their batches, stopped after each test. */
  const pumps: NodeJS.Timeout[] = [];

  /** A gate a transaction waits at, and a signal that it got there. */
  function gate(): { reached: Promise<void>; arrive: () => void; opened: Promise<void>; open: () => void } {
    let arrive = (): void => {};
    let open = (): void => {};
    const reached = new Promise<void>((r) => { arrive = r; });
    const opened = new Promise<void>((r) => { open = r; });
    gates.push(open);
    return { reached, arrive, opened, open };
  }

  async function open(url: string, extra: Partial<PostgresStoreOptions> = {}): Promise<PostgresStore> {
    const store = await openPostgresStore({ url, ...extra });
    opened.push(store);
    return store;
  }

  async function sql(url: string, text: string, values: unknown[] = []): Promise<Record<string, unknown>[]> {
    return server.sql(text, values, new URL(url).pathname.slice(1));
  }

  before(async () => {
    server = await sharedPostgres();
  });

  afterEach(async () => {
    for (const open of gates.splice(0)) open();
    for (const pump of pumps.splice(0)) clearInterval(pump);
    await Promise.all(opened.splice(0).map((s) => s.close()));
  });

  /** The state a history leaves, as the API shows it: every identifier's view and history. */
  async function stateOf(registry: Registry, names: readonly string[]): Promise<unknown[]> {
    const out: unknown[] = [];
    for (const name of names) out.push({ view: await registry.identifier(name), history: await registry.history(name) });
    return out;
  }

  it('allocations queued together go out in one statement: distinct identifiers free the longest, next epochs, one history entry each; the rest are left to the full use case', async () => {
    const url = await server.createDatabase();
    const clock = new FakeClock(T);
    const { defer, settle } = heldLanes();
    const store = await open(url, { clock, poolSize: 2, defer });
    const registry = new Registry({ store, rules: RULES });
    await settle(registry.syncPool(['a', 'b', 'c', 'd', 'e']));
    await settle(registry.allocate('vm-1')); // a#1
    await settle(registry.allocate('vm-2')); // b#1
    await settle(registry.allocate('vm-3')); // c#1
    clock.advance(1000);
    await settle(registry.release('vm-1', 'a', 1)); // a free since T+1000, epoch 1
    await settle(registry.forceRelease('b')); // b cooling until T+21000
    await settle(registry.syncPool(['a', 'b', 'c', 'd'])); // e retired
    clock.advance(1000);
    const before = { ...store.grantStats };
    const answers = await settle(Promise.all(['vm-3', 'vm-7', 'vm-5', 'vm-4', 'vm-4', 'vm-6'].map((c) => store.grantNext(c, 0))));
    expect(store.grantStats.statements - before.statements, 'one statement for the lot').to.equal(1);
    expect(store.grantStats.asks - before.asks, 'one row per distinct client').to.equal(5);
    // In arrival order: vm-3 holds c; vm-7 takes d (never used), vm-5 a (free since T+1000);
    // nothing is left for vm-4 and vm-6 (b cooling, e retired): those changed nothing.
    expect(answers.map((r) => (r ? `${r.rec.name}#${r.rec.epoch} ${r.rec.holder?.clientId ?? '-'} ${(r.rec.holder?.allocatedAt ?? 0) - T}${r.granted ? ' granted' : ''}` : null)))
      .to.deep.equal([null, 'd#1 vm-7 2000 granted', 'a#2 vm-5 2000 granted', null, null, null]);
    expect(await sql(url, `SELECT i.name, h.client_id, h.epoch::int AS epoch, (h.at - $1)::int AS at FROM history h
                           JOIN identifiers i ON i.id = h.identifier_id WHERE h.event = 'allocated' AND h.at = $1 + 2000 ORDER BY i.name`, [T]))
      .to.deep.equal([{ name: 'a', client_id: 'vm-5', epoch: 2, at: 2000 }, { name: 'd', client_id: 'vm-7', epoch: 1, at: 2000 }]);
    expect(await sql(url, 'SELECT name, client_id, epoch::int AS epoch FROM identifiers ORDER BY name')).to.deep.equal([
      { name: 'a', client_id: 'vm-5', epoch: 2 }, { name: 'b', client_id: null, epoch: 1 }, { name: 'c', client_id: 'vm-3', epoch: 1 },
      { name: 'd', client_id: 'vm-7', epoch: 1 }, { name: 'e', client_id: null, epoch: 0 },
    ]);
    // Through the registry, the clients left to the full use case get the rules' answers.
    expect(await settle(registry.allocate('vm-3'))).to.include({ identifier: 'c', epoch: 1 });
    expect(await settle(answer(registry.allocate('vm-4')))).to.deep.equal({ error: 'pool_exhausted' });
  });

  it('a row another instance is granting is skipped, not waited for', async () => {
    const url = await server.createDatabase();
    const a = await open(url, { lockTimeoutMs: 2000 });
    const b = await open(url, { lockTimeoutMs: 2000, statementTimeoutMs: 3000 });
    await new Registry({ store: a, rules: RULES }).syncPool(['x', 'y']);
    const hold = gate();
    // a picks x under FOR UPDATE SKIP LOCKED and holds its row lock until the test opens the gate.
    const first = a.write(async (tx) => {
      const claim = await tx.claimFor('vm-a', tx.now);
      hold.arrive();
      await hold.opened;
      if (!claim) throw new Error('nothing claimed');
      await tx.grant(claim.rec.rowId, 'vm-a', claim.rec.epoch + 1, tx.now, 0);
      return claim.rec.name;
    }, { durable: true });
    await hold.reached;
    const started = performance.now();
    const second = await b.grantNext('vm-b', 0);
    const waited = performance.now() - started;
    hold.open();
    expect(await first).to.equal('x');
    expect(second?.rec.name, 'the next free row, not the locked one').to.equal('y');
    expect(waited, 'no wait for the lock').to.be.below(1000);
  });

  it('the same client through two instances: a grant committed meanwhile elsewhere wins, and the statement grants nothing', async () => {
    const url = await server.createDatabase();
    const a = await open(url, { applicationName: 'grant-a' });
    const b = await open(url, { applicationName: 'grant-b' });
    const registryB = new Registry({ store: b, rules: RULES });
    await registryB.syncPool(['x', 'y']);
    const hold = gate();
    // a grants x to vm-1 and holds the transaction open; b's statement, not seeing that grant,
    // picks y for vm-1 and runs into the one-client index, where it waits for a.
    const first = a.write(async (tx) => {
      const claim = await tx.claimFor('vm-1', tx.now);
      if (!claim) throw new Error('nothing claimed');
      await tx.grant(claim.rec.rowId, 'vm-1', claim.rec.epoch + 1, tx.now, 0);
      hold.arrive();
      await hold.opened;
      return claim.rec.name;
    }, { durable: true });
    await hold.reached;
    const second = registryB.allocate('vm-1');
    const deadline = performance.now() + 5000;
    for (;;) {
      const rows = await sql(url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'grant-b' AND wait_event_type = 'Lock'`);
      if (rows[0]?.['n'] === 1) break;
      if (performance.now() > deadline) throw new Error('b never waited on the one-client index');
      await new Promise((r) => setTimeout(r, 20));
    }
    hold.open();
    expect(await first).to.equal('x');
    expect(await second, 'the same identifier and epoch as the grant that won').to.include({ identifier: 'x', epoch: 1, clientId: 'vm-1' });
    expect(b.grantStats.granted).to.equal(0);
    expect(await sql(url, 'SELECT name, client_id FROM identifiers WHERE client_id IS NOT NULL')).to.deep.equal([{ name: 'x', client_id: 'vm-1' }]);
    expect(await sql(url, `SELECT count(*)::int AS n FROM history WHERE event = 'allocated'`)).to.deep.equal([{ n: 1 }]);
  });

  /** A store whose lanes pick up their batches when the test lets them (every millisecond), so asks made together share a statement. */
  async function batching(url: string, extra: Partial<PostgresStoreOptions> = {}): Promise<PostgresStore> {
    const runs: Array<() => void> = [];
    const store = await open(url, { defer: (run) => { runs.push(run); }, ...extra });
    pumps.push(setInterval(() => { for (const run of runs.splice(0)) run(); }, 1));
    return store;
  }

  /** Waits until `n` connections of `app` wait for a lock (a statement blocked on another transaction). */
  async function waitingOnLock(url: string, app: string, n = 1): Promise<void> {
    const deadline = performance.now() + 10_000;
    for (;;) {
      const rows = await sql(url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, [app]);
      if (rows[0]?.['n'] === n) return;
      if (performance.now() > deadline) throw new Error(`${app} never waited on a lock`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it('a batch is granted in arrival order: the first to ask gets the identifier free the longest', async () => {
    const url = await server.createDatabase();
    const store = await batching(url, { clock: new FakeClock(T) });
    const registry = new Registry({ store, rules: RULES });
    await registry.syncPool(['a', 'b', 'c']);
    const before = store.grantStats.statements;
    const leases = await Promise.all(['vm-3', 'vm-1', 'vm-2'].map((c) => registry.allocate(c)));
    expect(store.grantStats.statements - before, 'one statement for the lot').to.equal(1);
    expect(leases.map((l) => `${l.clientId} ${l.identifier}#${l.epoch}`)).to.deep.equal(['vm-3 a#1', 'vm-1 b#1', 'vm-2 c#1']);
  });

  it('the same client twice in one batch: one grant, one ownership event, one history entry; the second answer is the same lease', async () => {
    const url = await server.createDatabase();
    const store = await batching(url, { clock: new FakeClock(T) });
    const events: string[] = [];
    const registry = new Registry({ store, rules: RULES, observe: (e) => { if (e.type === 'ownership') events.push(`${e.event} ${e.identifier}#${e.epoch} ${e.clientId ?? '-'}`); } });
    await registry.syncPool(['a', 'b']);
    const before = store.grantStats.statements;
    const leases = await Promise.all([registry.allocate('vm-1'), registry.allocate('vm-1')]);
    expect(store.grantStats.statements - before, 'one statement for both').to.equal(1);
    expect(leases.map((l) => `${l.clientId} ${l.identifier}#${l.epoch}`)).to.deep.equal(['vm-1 a#1', 'vm-1 a#1']);
    expect(events).to.deep.equal(['allocated a#1 vm-1']);
    expect(await sql(url, `SELECT count(*)::int AS n FROM history WHERE event = 'allocated'`)).to.deep.equal([{ n: 1 }]);
  });

  it('clients of one batch granted meanwhile elsewhere, one after another: every client of the batch gets its lease, none an error', async () => {
    // The statement runs into another instance's grant to the same client at the one-client
    // index (23505 once that commits), again and again: the batch is left to the full use case,
    // which answers each its held lease, and the innocent client its grant.
    const url = await server.createDatabase();
    const store = await batching(url, { clock: new FakeClock(T), applicationName: 'grant-b' });
    const registry = new Registry({ store, rules: RULES });
    const names = Array.from({ length: 20 }, (_, i) => `w-${String(i).padStart(2, '0')}`);
    await registry.syncPool(names);
    const clients = ['x1', 'x2', 'x3', 'x4', 'x5', 'x6'];
    const others: pg.Client[] = [];
    try {
      for (const [i, c] of clients.entries()) {
        const o = new pg.Client({ connectionString: url });
        await o.connect();
        others.push(o);
        await o.query('BEGIN');
        await o.query(`WITH g AS (UPDATE identifiers SET client_id = $1, epoch = epoch + 1, allocated_at = $2, last_seen = $2 WHERE name = $3 RETURNING id, epoch)
                       INSERT INTO history (identifier_id, at, event, client_id, epoch) SELECT id, $2, 'allocated', $1, epoch FROM g`, [c, T, names[19 - i]]);
      }
      const answers = Promise.all([...clients, 'innocent'].map((c) => answer(registry.allocate(c))));
      for (const o of others) {
        await waitingOnLock(url, 'grant-b');
        await o.query('COMMIT');
      }
      const out = (await answers) as Array<{ clientId?: string; identifier?: string; epoch?: number; error?: string }>;
      expect(out.slice(0, 6).map((l) => `${l.clientId ?? l.error ?? '?'} ${l.identifier ?? '-'}#${l.epoch ?? '-'}`))
        .to.deep.equal(clients.map((c, i) => `${c} ${names[19 - i] ?? ''}#1`));
      const innocent = out[6];
      expect(innocent).to.include({ clientId: 'innocent', epoch: 1 });
      expect(names.slice(0, 14)).to.include(innocent?.identifier);
      expect(await sql(url, `SELECT client_id FROM history WHERE event = 'allocated' ORDER BY client_id`))
        .to.deep.equal(['innocent', ...clients].sort().map((c) => ({ client_id: c })));
    } finally {
      for (const o of others) await o.end().catch(() => undefined);
    }
  });

  it('a client whose grant is in flight on another instance does not stall the batch: the others are granted, only it is told to retry', async () => {
    // Another instance's grant to x stays open: the statement, pairing x with a free row, waits
    // for it at the one-client index only briefly, then leaves the batch to the full use case,
    // where x waits (lock_timeout) and is told `unavailable`, and the others are granted.
    const url = await server.createDatabase();
    const store = await batching(url, { clock: new FakeClock(T), lockTimeoutMs: 1000 });
    const registry = new Registry({ store, rules: RULES });
    await registry.syncPool(['a', 'b', 'c', 'd']);
    const o = new pg.Client({ connectionString: url });
    await o.connect();
    try {
      await o.query('BEGIN');
      await o.query(`UPDATE identifiers SET client_id = 'x', epoch = epoch + 1, allocated_at = $1, last_seen = $1 WHERE name = 'd'`, [T]);
      const out = await Promise.all(['x', 'innocent-1', 'innocent-2'].map((c) => answer(registry.allocate(c))));
      expect(out[0]).to.deep.equal({ error: 'unavailable' });
      expect(out.slice(1).map((l) => { const { clientId, identifier, epoch } = l as Record<string, unknown>; return { clientId, identifier, epoch }; }))
        .to.deep.equal([{ clientId: 'innocent-1', identifier: 'a', epoch: 1 }, { clientId: 'innocent-2', identifier: 'b', epoch: 1 }]);
      await o.query('ROLLBACK');
      expect(await sql(url, 'SELECT name, client_id FROM identifiers WHERE client_id IS NOT NULL ORDER BY name'))
        .to.deep.equal([{ name: 'a', client_id: 'innocent-1' }, { name: 'b', client_id: 'innocent-2' }]);
    } finally {
      await o.end().catch(() => undefined);
    }
  });

  it('the grant statement waits at most 50 ms for a lock, and that limit ends with its statement', async () => {
    const url = await server.createDatabase();
    await new Registry({ store: await open(url), rules: RULES }).syncPool(['a', 'b']);
    const o = new pg.Client({ connectionString: url });
    // The store's connections parse bigint columns as numbers; so does this one.
    const types: CustomTypesConfig = { getTypeParser: (oid, format) => (oid === 20 ? parseBigint : pg.types.getTypeParser(oid, format)) };
    const q = new pg.Client({ connectionString: url, types });
    await o.connect();
    await q.connect();
    try {
      await q.query(`SET lock_timeout = '7s'`);
      await o.query('BEGIN');
      await o.query(`UPDATE identifiers SET client_id = 'x', epoch = epoch + 1, allocated_at = 1, last_seen = 1 WHERE name = 'b'`);
      const started = performance.now();
      const err = await grantNextAlone(q as unknown as PoolClient, [{ clientId: 'x', fenceCooldownMs: 0 }], SERVER_TIME).then(() => null, (e: unknown) => (e as { code?: string }).code);
      const waited = performance.now() - started;
      expect(err, 'lock_timeout').to.equal('55P03');
      expect(waited, 'not the session\'s 7 s').to.be.below(2000);
      expect((await q.query('SHOW lock_timeout')).rows, 'the next statement on the connection has its own limit back').to.deep.equal([{ lock_timeout: '7s' }]);
      await o.query('ROLLBACK');
      expect((await grantNextAlone(q as unknown as PoolClient, [{ clientId: 'x', fenceCooldownMs: 0 }], SERVER_TIME)).map((r) => r.rec.name)).to.deep.equal(['a']);
      expect((await q.query('SHOW lock_timeout')).rows, 'after a statement that granted, too').to.deep.equal([{ lock_timeout: '7s' }]);
    } finally {
      await o.end().catch(() => undefined);
      await q.end().catch(() => undefined);
    }
  });

  it('the one-statement grant and the full use case give the same answers: held, pool exhausted, cool-down pending, retired, free the longest first', async () => {
    const clock = new FakeClock(T);
    const fastStore = await open(await server.createDatabase(), { clock });
    const fullStore = await open(await server.createDatabase(), { clock });
    const fast = new Registry({ store: fastStore, rules: RULES });
    const full = new Registry({ store: fullUseCaseOnly(fullStore), rules: RULES });
    const both = async (f: (r: Registry) => Promise<unknown>): Promise<unknown> => {
      const a = await answer(f(fast));
      const b = await answer(f(full));
      expect(a, 'the one-statement grant answered otherwise than the full use case').to.deep.equal(b);
      return a;
    };
    await both((r) => r.syncPool(['a', 'b', 'c']));
    expect(await both((r) => r.allocate('vm-1'))).to.include({ identifier: 'a', epoch: 1 });
    clock.advance(1000);
    expect(await both((r) => r.allocate('vm-1')), 'a client that holds one gets it again, renewed').to.include({ identifier: 'a', epoch: 1, lastSeen: T + 1000 });
    expect(await both((r) => r.allocate('vm-2'))).to.include({ identifier: 'b', epoch: 1 });
    expect(await both((r) => r.allocate('vm-3'))).to.include({ identifier: 'c', epoch: 1 });
    expect(await both((r) => r.allocate('vm-4')), 'pool exhausted').to.deep.equal({ error: 'pool_exhausted' });
    await both((r) => r.forceRelease('b'));
    clock.advance(RULES.cooldownMs - 1);
    expect(await both((r) => r.allocate('vm-4')), 'a cool-down pending').to.deep.equal({ error: 'pool_exhausted' });
    await both((r) => r.release('vm-1', 'a', 1));
    clock.advance(1);
    expect(await both((r) => r.allocate('vm-4')), 'the one free the longest first: b (cooled since now) after a (released before)')
      .to.include({ identifier: 'a', epoch: 2 });
    expect(await both((r) => r.allocate('vm-5'))).to.include({ identifier: 'b', epoch: 2 });
    await both((r) => r.syncPool(['a', 'b'], null, { force: true })); // c retired, still held by vm-3
    expect(await both((r) => r.allocate('vm-3')), 'a retired identifier stays with its holder').to.include({ identifier: 'c', epoch: 1 });
    await both((r) => r.release('vm-3', 'c', 1));
    expect(await both((r) => r.allocate('vm-6')), 'a retired identifier is not granted').to.deep.equal({ error: 'pool_exhausted' });
    expect(await stateOf(fast, ['a', 'b', 'c'])).to.deep.equal(await stateOf(full, ['a', 'b', 'c']));
    // Refusals are recorded alike (the guarded reaper's demand).
    const refusals = async (s: PostgresStore): Promise<number> => s.write((tx) => tx.countRefusedClients(0), { durable: false });
    expect(await refusals(fastStore)).to.equal(await refusals(fullStore)).and.to.equal(2);
    expect(fastStore.grantStats.granted, 'the fast store granted through its statement').to.equal(5);
    expect(fullStore.grantStats.statements, 'the other never used it').to.equal(0);
  });

  it('random histories: the one-statement grant and the full use case give the same answers and leave the same state', async () => {
    const POOL = ['p', 'q', 'r', 's'];
    const clients = fc.constantFrom('vm-0', 'vm-1', 'vm-2', 'vm-3', 'vm-4', 'vm-5');
    type Cmd =
      | { t: 'allocate'; c: string }
      | { t: 'renew'; c: string }
      | { t: 'release'; c: string }
      | { t: 'force'; id: string }
      | { t: 'retire'; keep: string[] }
      | { t: 'reap' }
      | { t: 'advance'; ms: number };
    const cmd: fc.Arbitrary<Cmd> = fc.oneof(
      { weight: 6, arbitrary: fc.record({ t: fc.constant('allocate' as const), c: clients }) },
      { weight: 2, arbitrary: fc.record({ t: fc.constant('renew' as const), c: clients }) },
      { weight: 3, arbitrary: fc.record({ t: fc.constant('release' as const), c: clients }) },
      { weight: 2, arbitrary: fc.record({ t: fc.constant('force' as const), id: fc.constantFrom(...POOL) }) },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('retire' as const), keep: fc.subarray(POOL, { minLength: 2 }) }) },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('reap' as const) }) },
      { weight: 3, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.constantFrom(1 * SEC, 10 * SEC, 19 * SEC, 25 * SEC) }) },
    );
    let granted = 0;
    await fc.assert(fc.asyncProperty(fc.array(cmd, { minLength: 5, maxLength: 30 }), async (cmds) => {
      const clock = new FakeClock(T);
      const fastStore = await open(await server.createDatabase(), { clock });
      const fullStore = await open(await server.createDatabase(), { clock });
      const fast = new Registry({ store: fastStore, rules: RULES });
      const full = new Registry({ store: fullUseCaseOnly(fullStore), rules: RULES });
      const held = new Map<string, { identifier: string; epoch: number }>();
      try {
        for (const r of [fast, full]) await r.syncPool(POOL);
        for (const [i, c] of cmds.entries()) {
          if (c.t === 'advance') {
            clock.advance(c.ms);
            continue;
          }
          const h = 'c' in c ? held.get(c.c) : undefined;
          const run = (r: Registry): Promise<unknown> => {
            switch (c.t) {
              case 'allocate': return r.allocate(c.c);
              case 'renew': return h ? r.renew(c.c, h.identifier, h.epoch) : Promise.resolve(null);
              case 'release': return h ? r.release(c.c, h.identifier, h.epoch) : Promise.resolve(null);
              case 'force': return r.forceRelease(c.id);
              case 'retire': return r.syncPool(c.keep, null, { force: true });
              case 'reap': return r.reap({ force: true });
            }
          };
          const a = await answer(run(fast));
          const b = await answer(run(full));
          expect(a, `command ${i} ${JSON.stringify(c)}`).to.deep.equal(b);
          if (c.t === 'allocate' && a && typeof a === 'object' && 'identifier' in a && 'epoch' in a) {
            held.set(c.c, { identifier: String(a.identifier), epoch: Number(a.epoch) });
          }
          if (c.t === 'release' && h) held.delete(c.c);
        }
        expect(await stateOf(fast, POOL)).to.deep.equal(await stateOf(full, POOL));
        granted += fastStore.grantStats.granted;
      } finally {
        await Promise.all([fastStore.close(), fullStore.close()]);
        opened.splice(0);
      }
    }), { numRuns: Number(process.env['GRANT_RUNS'] ?? 25) });
    expect(granted, 'the fast path must have granted in these histories').to.be.above(0);
  });
});
