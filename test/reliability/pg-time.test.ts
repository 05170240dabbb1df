/**
 * Registry time on PostgreSQL when the database server's clock steps (issue 21, items 1 and 2):
 * a real PostgreSQL whose wall clock is stepped both ways under Debian's libfaketime, two real
 * registry instances on it, one of them restarted. Registry time must follow the server clock's
 * rate, never its steps, and both instances must keep agreeing: a +600 s step ends no cool-down
 * and reclaims no live lease; after a step back and a restart, a force release through one is not
 * granted again through the other, and a grant through one is not reclaimed by the other's sweep.
 * The rules alone, with fake clocks: test/store/postgres-clock.test.ts.
 */
import { expect } from 'chai';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import type { ClockStepEvent } from '../../src/store/postgres/time.js';
import { DEFAULT_RULES, tempDir } from '../support/helpers.js';
import { builtMain, eventually, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { LIBFAKETIME, TestPostgres, faketimeEnv } from '../support/postgres.js';

const TTL_S = 8;
const COOLDOWN_S = 300;
const STEP_S = 600;

describe('registry time on PostgreSQL: the server clock stepped under two instances', function () {
  this.timeout(240_000);
  let t: ReturnType<typeof tempDir>;
  let server: TestPostgres;
  let clockFile: string;
  let running: RunningRegistry[] = [];

  before(async function () {
    if (!existsSync(LIBFAKETIME)) throw new Error(`${LIBFAKETIME} is missing: install Debian's faketime package`);
    t = tempDir();
    chmodSync(t.dir, 0o755); // the server runs as the postgres user and reads the clock file
    clockFile = join(t.dir, 'server-clock');
    setServerClock(0);
    server = await TestPostgres.start({ env: faketimeEnv(clockFile) });
  });

  after(async () => {
    await server?.destroy();
    t?.cleanup();
  });

  afterEach(async () => {
    await Promise.all(running.map((r) => r.stop('SIGKILL')));
    running = [];
    setServerClock(0);
  });

  /** Sets the server's wall clock `seconds` away from the machine's, at once. */
  function setServerClock(seconds: number): void {
    writeFileSync(clockFile, `${seconds >= 0 ? '+' : ''}${seconds}\n`);
    chmodSync(clockFile, 0o644);
  }

  async function serverSkewMs(db: string): Promise<number> {
    const before = Date.now();
    const rows = await server.sql('SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text AS t', [], db);
    return Number(rows[0]?.['t']) - (before + Date.now()) / 2;
  }

  async function stepServerClock(db: string, seconds: number): Promise<void> {
    setServerClock(seconds);
    const skew = await serverSkewMs(db);
    expect(skew, 'the server clock moved').to.be.within(seconds * 1000 - 2000, seconds * 1000 + 2000);
  }

  async function instance(url: string, pool: string): Promise<RunningRegistry> {
    return startProcess({
      dir: t.dir, pool, entry: await builtMain(),
      env: {
        DATABASE_URL: url, LEASE_TTL_SECONDS: String(TTL_S), REUSE_COOLDOWN_SECONDS: String(COOLDOWN_S),
        // No grace: a sweep reclaims whatever registry time says has expired.
        STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '0 0 1 1 *', LOG_LEVEL: 'warn',
      },
    });
  }

  async function restart(r: RunningRegistry, url: string, pool: string): Promise<RunningRegistry> {
    expect((await r.stop('SIGTERM')).code).to.equal(0);
    const again = await instance(url, pool);
    running = running.map((x) => (x === r ? again : x));
    return again;
  }

  function said(a: { status: number; body: unknown }): string {
    const b = a.body;
    const err = typeof b === 'object' && b !== null && 'error' in b ? b.error : null;
    const code = typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : '';
    return `${a.status}${code ? ` ${code}` : ''}`;
  }

  function field(a: { body: unknown }, name: string): unknown {
    const b = a.body;
    return typeof b === 'object' && b !== null ? Object.fromEntries(Object.entries(b))[name] : undefined;
  }

  async function allocate(r: RunningRegistry, clientId: string): Promise<{ status: number; body: unknown }> {
    return json(r.base, 'POST', '/allocate', { client_id: clientId });
  }

  /** Renews `clientId`'s lease through `r`, then sweeps through `sweeper`: the lease must survive. */
  async function renewThenSweep(r: RunningRegistry, sweeper: RunningRegistry, clientId: string, identifier: string): Promise<void> {
    const renewed = await json(r.base, 'POST', '/liveness', { client_id: clientId, identifier });
    expect(said(renewed), `liveness of ${clientId}`).to.equal('200');
    const swept = await json(sweeper.base, 'POST', '/admin/reap');
    expect(said(swept)).to.equal('200');
    expect(field(swept, 'reclaimed'), `a lease renewed just now, TTL ${TTL_S}s`).to.equal(0);
    const after = await json(r.base, 'POST', '/liveness', { client_id: clientId, identifier });
    expect(said(after), `liveness of ${clientId} after the sweep`).to.equal('200');
  }

  /**
   * Registry time as each instance tells it (the `last_seen` of a renewal through it, one right
   * after the other), against this machine's clock, which is never stepped.
   */
  async function times(a: RunningRegistry, b: RunningRegistry, clientId: string, identifier: string): Promise<{ skewMs: number; apartMs: number }> {
    const renew = async (r: RunningRegistry): Promise<number> => {
      const answer = await json(r.base, 'POST', '/liveness', { client_id: clientId, identifier });
      expect(said(answer)).to.equal('200');
      return Date.parse(String(field(answer, 'last_seen')));
    };
    const before = Date.now();
    const ta = await renew(a);
    const tb = await renew(b);
    const after = Date.now();
    const outside = (x: number): number => Math.max(0, before - x, x - after);
    return { skewMs: Math.max(outside(ta), outside(tb)), apartMs: Math.abs(tb - ta) };
  }

  async function clockRow(db: string): Promise<{ gen: number; offset: number }> {
    const rows = await server.sql('SELECT gen::int AS gen, offset_ms::int AS offset FROM registry_clock', [], db);
    return { gen: Number(rows[0]?.['gen']), offset: Number(rows[0]?.['offset']) };
  }

  it(`+${STEP_S} s: no cool-down ends and no live lease is reclaimed, through either instance, nor after one restarts`, async () => {
    const url = await server.createDatabase();
    const db = new URL(url).pathname.slice(1);
    const pool = 'a\nb\n';
    let a = await instance(url, pool);
    const b = await instance(url, pool);
    running = [a, b];
    const held = await allocate(a, 'vm-1');
    expect([said(held), field(held, 'identifier')]).to.deep.equal(['200', 'a']);
    expect(said(await allocate(b, 'vm-2'))).to.equal('200');
    const forced = await json(a.base, 'DELETE', '/identifier/b');
    expect(said(forced)).to.equal('200');

    expect(said(await json(a.base, 'POST', '/liveness', { client_id: 'vm-1', identifier: 'a' }))).to.equal('200');
    await stepServerClock(db, STEP_S);
    // Through each instance at once, before either may have looked at the clock since.
    const swept = await json(b.base, 'POST', '/admin/reap');
    expect([said(swept), field(swept, 'reclaimed')], `a lease renewed before the step, TTL ${TTL_S}s`).to.deep.equal(['200', 0]);
    await renewThenSweep(a, b, 'vm-1', 'a');
    expect(said(await allocate(a, 'vm-3')), `b cools for ${COOLDOWN_S}s`).to.equal('503 pool_exhausted');
    expect(said(await allocate(b, 'vm-3'))).to.equal('503 pool_exhausted');
    await renewThenSweep(b, a, 'vm-1', 'a');

    a = await restart(a, url, pool);
    await renewThenSweep(b, a, 'vm-1', 'a');
    expect(said(await allocate(a, 'vm-3'))).to.equal('503 pool_exhausted');
    const views = await Promise.all([a, b].map((r) => json(r.base, 'GET', '/identifier/b')));
    expect(views.map((v) => field(v, 'status'))).to.deep.equal(['cooling', 'cooling']);
    expect(field(views[0] ?? { body: null }, 'available_at')).to.equal(field(views[1] ?? { body: null }, 'available_at'));

    // Registry time stayed on real time, and both tell the same; the step was recorded once.
    const now = await times(a, b, 'vm-1', 'a');
    expect(now.skewMs, 'registry time against real time').to.be.below(2000);
    expect(now.apartMs, 'the two instances').to.be.below(1000);
    const row = await clockRow(db);
    expect(row.gen, 'one step, recorded once').to.equal(1);
    expect(row.offset).to.be.within(-STEP_S * 1000 - 1000, -STEP_S * 1000 + 1000);
  });

  it(`-${STEP_S} s and one instance restarted: both keep agreeing (a force release is not granted again through the other, a grant is not reclaimed by the other's sweep)`, async () => {
    const url = await server.createDatabase();
    const db = new URL(url).pathname.slice(1);
    const pool = 'a\nb\n';
    const a = await instance(url, pool);
    let b = await instance(url, pool);
    running = [a, b];

    await stepServerClock(db, -STEP_S);
    b = await restart(b, url, pool);

    // Granted through the restarted instance, swept through the other (and the other way round).
    const one = await allocate(b, 'vm-1');
    expect(said(one)).to.equal('200');
    const two = await allocate(a, 'vm-2');
    expect(said(two)).to.equal('200');
    await renewThenSweep(b, a, 'vm-1', String(field(one, 'identifier')));
    await renewThenSweep(a, b, 'vm-2', String(field(two, 'identifier')));
    const now = await times(a, b, 'vm-2', String(field(two, 'identifier')));
    expect(now.skewMs, 'registry time against real time').to.be.below(2000);
    expect(now.apartMs, 'the two instances').to.be.below(1000);

    // Force-released through one, asked for through the other.
    expect(said(await json(b.base, 'DELETE', `/identifier/${String(field(one, 'identifier'))}`))).to.equal('200');
    expect(said(await allocate(a, 'vm-3')), `cooling for ${COOLDOWN_S}s`).to.equal('503 pool_exhausted');
    expect(said(await json(a.base, 'DELETE', `/identifier/${String(field(two, 'identifier'))}`))).to.equal('200');
    expect(said(await allocate(b, 'vm-3'))).to.equal('503 pool_exhausted');

    const row = await clockRow(db);
    expect(row.gen, 'one step, recorded once').to.equal(1);
    expect(row.offset).to.be.within(STEP_S * 1000 - 1000, STEP_S * 1000 + 1000);
  });

  it('a busy database is not a stepped clock: 64 writers through two instances for 5 s, many held 300 ms on row locks, record no step', async () => {
    const url = await server.createDatabase();
    const db = new URL(url).pathname.slice(1);
    const steps: ClockStepEvent[] = [];
    const stores = [
      await openPostgresStore({ url, poolSize: 8, onClockStep: (e) => steps.push(e) }),
      await openPostgresStore({ url, poolSize: 8, onClockStep: (e) => steps.push(e) }),
    ];
    try {
      const registries = stores.map((store) => new Registry({ store, rules: { ...DEFAULT_RULES, cooldownMs: 0 } }));
      const [first, second] = registries;
      if (!first || !second) throw new Error('two registries');
      await first.syncPool(Array.from({ length: 2000 }, (_, i) => `w-${i}`));
      const end = performance.now() + 5000;
      let n = 0;
      let held = 0;
      // Renewals and releases that read the server's clock, then wait for a row another transaction holds.
      const locker = (async () => {
        while (performance.now() < end) {
          const rows = await server.sql(`WITH h AS (SELECT id FROM identifiers WHERE client_id IS NOT NULL LIMIT 20 FOR UPDATE SKIP LOCKED)
            SELECT count(*)::int AS n, pg_sleep(0.3) FROM h`, [], db);
          held += Number(rows[0]?.['n'] ?? 0);
        }
      })();
      await Promise.all(Array.from({ length: 64 }, async (_, w) => {
        while (performance.now() < end) {
          const client = `vm-${w}-${n++}`;
          const lease = await (n % 2 ? first : second).allocate(client);
          await (n % 2 ? second : first).renew(client, lease.identifier, lease.epoch);
          await first.release(client, lease.identifier, lease.epoch);
        }
      }));
      await locker;
      expect(n).to.be.above(500);
      expect(held, 'leases held on a lock meanwhile').to.be.above(20);
      expect(steps).to.deep.equal([]);
      expect(await clockRow(db)).to.deep.equal({ gen: 0, offset: 0 });
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('the server restarted with its clock stepped while down: the running instances absorb it too', async () => {
    const url = await server.createDatabase();
    const db = new URL(url).pathname.slice(1);
    const pool = 'a\nb\n';
    const a = await instance(url, pool);
    const b = await instance(url, pool);
    running = [a, b];
    expect(said(await allocate(a, 'vm-1'))).to.equal('200');
    expect(said(await allocate(b, 'vm-2'))).to.equal('200');
    expect(said(await json(b.base, 'DELETE', '/identifier/b'))).to.equal('200');

    await server.stop();
    setServerClock(STEP_S);
    await server.resume();
    await eventually(async () => said(await json(a.base, 'GET', '/identifier/a')) === '200', 20_000, 'instance a to reconnect');
    await eventually(async () => said(await json(b.base, 'GET', '/identifier/a')) === '200', 20_000, 'instance b to reconnect');

    await renewThenSweep(a, b, 'vm-1', 'a');
    await renewThenSweep(b, a, 'vm-1', 'a');
    expect(said(await allocate(a, 'vm-3'))).to.equal('503 pool_exhausted');
    expect(said(await allocate(b, 'vm-3'))).to.equal('503 pool_exhausted');
    expect((await clockRow(db)).gen).to.equal(1);
  });
});
