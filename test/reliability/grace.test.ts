/**
 * The start-up grace after a gap in service (issue 21, findings 5 and 6): whichever part of the
 * registry runs first after the service was down — its beat, its reaper, an operator's plain
 * POST /admin/reap — no lease whose VM could not renew meanwhile is reclaimed; nor after a
 * PostgreSQL crash recovery that lost acknowledged renewals. In process with a fake clock and
 * fast-check's scheduler for the orders, then with real processes, signals and a real server.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { Agent } from 'node:http';
import { join } from 'node:path';
import pg from 'pg';
import { FakeClock } from '../../src/clock.js';
import type { Lease } from '../../src/domain/types.js';
import { Registry } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { ENGINES, useEngine } from '../support/engines.js';
import { SECOND, errorCode, makeRegistry, tempDir } from '../support/helpers.js';
import { builtMain, call, eventually, startProcess } from '../support/process-helpers.js';
import type { Reply, RunningRegistry } from '../support/process-helpers.js';
import { TestPostgres } from '../support/postgres.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Crashes `server` the way a backend's SIGKILL does (every session ended, recovery from the WAL) and waits for it to recover. */
async function crashRecovery(server: TestPostgres, dbName: string, afterConnect: (kill: () => void) => Promise<void>): Promise<void> {
  const victim = new pg.Client({ connectionString: server.url(dbName) });
  victim.on('error', () => undefined);
  await victim.connect();
  const pid = Number((await victim.query('SELECT pg_backend_pid() AS pid')).rows[0]?.pid);
  await afterConnect(() => process.kill(pid, 'SIGKILL'));
  await victim.end().catch(() => undefined);
  await eventually(async () => server.sql('SELECT 1', [], dbName).then(() => true, () => false), 30_000, 'PostgreSQL to recover');
}

/** Retries `fn` while the store answers `unavailable` (its connections died with the crash). */
async function once<T>(fn: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (e) {
      if (i >= 50 || !(typeof e === 'object' && e !== null && 'code' in e && e.code === 'unavailable')) throw e;
      await sleep(100);
    }
  }
}

describe('PostgreSQL crash recovery, seen through the store', function () {
  this.timeout(120_000);
  let server: TestPostgres;
  before(async () => { server = await TestPostgres.start(); });
  after(async () => { await server.destroy(); });

  it('the store says it may have lost acknowledged writes after a crash recovery, not after a clean restart', async () => {
    const url = await server.createDatabase();
    const dbName = new URL(url).pathname.slice(1);
    const store = await openPostgresStore({ url, clock: new FakeClock(), poolSize: 2 });
    try {
      const lost = (): Promise<boolean> => once(() => store.write((tx) => tx.lostAcknowledgedWrites(), { durable: false }));
      expect(await lost(), 'a new database').to.equal(true);
      expect(await lost(), 'asked again').to.equal(false);
      await server.stop(); // a clean shutdown writes everything out
      await server.resume();
      expect(await lost(), 'after a clean restart').to.equal(false);
      await crashRecovery(server, dbName, async (kill) => kill());
      expect(await lost(), 'after a crash recovery').to.equal(true);
      expect(await lost(), 'asked again').to.equal(false);
    } finally {
      await store.close();
    }
  });

  it('a registry beating every second (no gap) starts the grace again after a crash recovery lost an acknowledged renewal', async () => {
    const url = await server.createDatabase();
    const dbName = new URL(url).pathname.slice(1);
    const clock = new FakeClock(); // registry time moves only when the test says: no gap in service, only the crash
    const store = await openPostgresStore({ url, clock, poolSize: 2 });
    try {
      const registry = new Registry({ store, rules: { ttlMs: 4 * SECOND, cooldownMs: 4 * SECOND, graceMs: 4 * SECOND, maxFraction: 1, minHold: 0, guardedRatePerMinute: 1, reapBatchSize: 100 } });
      await registry.syncPool(['w-0', 'w-1', 'w-2', 'w-3']);
      await registry.open();
      for (let i = 0; i < 5; i++) { clock.advance(SECOND); await registry.beat(); } // the first grace runs out
      const leases: Lease[] = [];
      for (let i = 0; i < 3; i++) leases.push(await registry.allocate(`vm-${i}`)); // committed and flushed
      for (let i = 0; i < 3; i++) { clock.advance(SECOND); await registry.beat(); }
      // A grant flushes everything committed before it, those beats included: after the crash
      // the latest beat is a second old, no gap. Only the renewals after it are lost.
      await registry.allocate('vm-late');
      let acknowledged: number[] = [];
      await crashRecovery(server, dbName, async (kill) => {
        // Renewals are committed with synchronous_commit off: acknowledged, not yet on disk.
        acknowledged = await Promise.all(leases.map(async (l) => (await registry.renew(l.clientId, l.identifier, l.epoch)).lastSeen));
        kill();
      });
      const stored = await server.sql(`SELECT last_seen FROM identifiers WHERE client_id LIKE 'vm-_' ORDER BY client_id`, [], dbName);
      expect(stored.map((r, i) => Number(r['last_seen']) < (acknowledged[i] ?? 0)), 'the crash lost the renewals').to.deep.equal([true, true, true]);
      await once(() => registry.beat()); // a beat a second after the last: no gap
      clock.advance(SECOND); // the leases are back on their grant, 4 s old: expired, though renewed a second ago
      await once(() => registry.beat());
      const swept = await once(() => registry.reap());
      expect(swept.reclaimed).to.equal(0);
      expect(swept.reason).to.match(/startup grace/);
      for (const l of leases) expect((await registry.renew(l.clientId, l.identifier, l.epoch)).epoch).to.equal(l.epoch);
      await registry.close();
    } finally {
      await store.close();
    }
  });
});

for (const engine of ENGINES) {
  describe(`[${engine}] the start-up grace after a gap in service, whichever part notices it first`, function () {
    useEngine(engine);
    this.timeout(180_000);
    const rules = { ttlMs: 3 * SECOND, cooldownMs: 3 * SECOND, graceMs: 3 * SECOND, maxFraction: 1, minHold: 0 };

    it('beats, reapers and a plain POST /admin/reap on two instances, and the VMs renewing, in any order after 5 s down: nothing live is reclaimed', async () => {
      await fc.assert(fc.asyncProperty(fc.scheduler(), async (s) => {
        const h = await makeRegistry({ shared: true, pool: 'w-[0-2]', rules });
        await h.registry.open();
        const other = await h.another(); // a second instance on the same database
        await other.open();
        const leases = [];
        for (let i = 0; i < 3; i++) leases.push(await h.registry.allocate(`vm-${i}`));
        // Serving: a beat and a renewal of every lease each second, until the grace is long over.
        for (let i = 0; i < 6; i++) {
          h.clock.advance(SECOND);
          await h.registry.beat();
          await other.beat();
          for (const l of leases) await h.registry.renew(l.clientId, l.identifier, l.epoch);
        }
        expect(await h.registry.reap()).to.deep.equal({ reclaimed: 0, held: false, reason: null });
        // The service stops for 5 s (both instances frozen, their database unreachable): no beat, no renewal.
        // Whichever instance notices first records the grace; the other respects it.
        h.clock.advance(5 * SECOND);
        const swept: unknown[] = [];
        const renewed: string[] = [];
        await s.waitFor(Promise.all([
          s.schedule(Promise.resolve(), 'beat').then(() => h.registry.beat()),
          s.schedule(Promise.resolve(), 'reaper').then(async () => { swept.push((await h.registry.reap()).reclaimed); }),
          s.schedule(Promise.resolve(), 'POST /admin/reap').then(async () => { swept.push((await h.http.post('/admin/reap')).body.reclaimed); }),
          s.schedule(Promise.resolve(), 'other beat').then(() => other.beat()),
          s.schedule(Promise.resolve(), 'other reaper').then(async () => { swept.push((await other.reap()).reclaimed); }),
          ...leases.map((l) => s.schedule(Promise.resolve(), `renew ${l.clientId}`).then(async () => {
            renewed.push(await h.registry.renew(l.clientId, l.identifier, l.epoch).then(() => 'ok', (e: unknown) => errorCode(Promise.reject(e))));
          })),
        ]));
        expect(swept).to.deep.equal([0, 0, 0]);
        expect(renewed).to.deep.equal(['ok', 'ok', 'ok']);
        expect(await h.leasedCount()).to.equal(3);
        // The grace runs again from the end of the gap: a sweep now says so.
        expect((await h.registry.reap()).reason).to.match(/startup grace/);
        expect((await other.reap()).reason).to.match(/startup grace/);
      }), { numRuns: engine === 'sqlite' ? 60 : 10 });
    });
  });
}

type Body = Record<string, unknown>;
const GRACE_ENV = { LEASE_TTL_SECONDS: '3', REUSE_COOLDOWN_SECONDS: '3', STARTUP_GRACE_SECONDS: '3', REAPER_MAX_FRACTION: '1', LOG_LEVEL: 'warn' };

interface Fleet {
  readonly agent: Agent;
  readonly leases: Array<{ client: string; identifier: string; epoch: number }>;
  /** Each VM renews (once); the answers. */
  renewAll(): Promise<Reply[]>;
}

async function fleetOf(base: string, n: number): Promise<Fleet> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const leases: Fleet['leases'] = [];
  for (let i = 0; i < n; i++) {
    const r = await call(agent, base, 'POST', '/allocate', { client_id: `vm-${i}` });
    expect(r.status).to.equal(200);
    leases.push({ client: `vm-${i}`, identifier: String(r.body['identifier']), epoch: Number(r.body['epoch']) });
  }
  return {
    agent, leases,
    renewAll: () => Promise.all(leases.map((l) => call(agent, base, 'POST', '/liveness', { client_id: l.client, identifier: l.identifier, epoch: l.epoch }))),
  };
}

/** Every VM renews once more and keeps its identifier under the same epoch. */
async function expectAllKept(f: Fleet): Promise<void> {
  const answers = await f.renewAll();
  expect(answers.map((a) => `${a.status} ${String(a.body['identifier'] ?? JSON.stringify(a.body['error']))}#${String(a.body['epoch'] ?? '')}`))
    .to.deep.equal(f.leases.map((l) => `200 ${l.identifier}#${l.epoch}`));
}

describe('the start-up grace with real processes: a freeze, a PostgreSQL outage, a PostgreSQL crash recovery', function () {
  this.timeout(240_000);
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function registry(dir: string, pool: string, env: Record<string, string>): Promise<RunningRegistry> {
    const r = await startProcess({ dir, pool, env, entry: await builtMain() });
    cleanups.push(async () => { await r.stop('SIGKILL'); });
    return r;
  }

  /**
   * One try at freezing a SQLite registry just after a beat, when its reaper is due before its
   * next beat. Its reaper runs every 10 s, at registry times whose second is a multiple of 10; it
   * beats every second at its own phase, which the test reads from the database. Frozen in the
   * second before a sweep, right after that second's beat, the sweep is due first when it
   * wakes. Null when the beat came too close to the sweep to freeze between them (try again).
   */
  async function freezeBeforeSweep(): Promise<{ reg: RunningRegistry; fleet: Fleet } | null> {
    const t = tempDir();
    cleanups.push(() => t.cleanup());
    const reg = await registry(t.dir, 'w-[0-2]\n', { ...GRACE_ENV, REAPER_SCHEDULE: '*/10 * * * * *' });
    const fleet = await fleetOf(reg.base, 3);
    cleanups.push(() => fleet.agent.destroy());
    const db = new Database(join(t.dir, 'registry.db'), { readonly: true });
    cleanups.push(() => { db.close(); });
    const latestBeat = db.prepare('SELECT max(at) AS at FROM instances').pluck();
    const beatAt = (): number => Number(latestBeat.get() ?? 0);
    let renewing = true;
    const renewals = (async () => {
      while (renewing) {
        const answers = await fleet.renewAll();
        expect(answers.map((a) => a.status)).to.deep.equal([200, 200, 200]);
        await sleep(300);
      }
    })();
    try {
      const firstBeat = beatAt();
      let last = firstBeat;
      for (const deadline = Date.now() + 40_000; Date.now() < deadline; await sleep(2)) {
        const at = beatAt();
        if (at === last) continue;
        last = at;
        if (at - firstBeat < 4000) continue; // the first grace (3 s) runs out first
        const inTen = at % 10_000;
        if (inTen >= 8000 && inTen < 9000) renewing = false; // the VMs go quiet a second before the freeze
        if (renewing || inTen < 9000) continue;
        if (inTen >= 9970) return null; // too close to the sweep at the next multiple of 10 s
        reg.child.kill('SIGSTOP');
        cleanups.push(() => { reg.child.kill('SIGCONT'); });
        await renewals;
        return { reg, fleet };
      }
      throw new Error('no beat in the second before a sweep within 40 s');
    } finally {
      renewing = false;
      await renewals;
    }
  }

  it('SQLite: frozen 3.5 s (SIGSTOP) with its reaper due before its beat, then a plain POST /admin/reap: nothing is reclaimed, every VM keeps its lease', async () => {
    let frozen = null;
    for (let attempt = 0; frozen === null && attempt < 4; attempt++) frozen = await freezeBeforeSweep();
    if (!frozen) throw new Error('could not freeze the registry between a beat and a sweep in 4 tries');
    const { reg, fleet } = frozen;
    await sleep(3500); // longer than the TTL: every lease looks expired when it wakes
    reg.child.kill('SIGCONT'); // its reaper fires first, then its beat
    const reaped = await call(fleet.agent, reg.base, 'POST', '/admin/reap');
    expect(reaped.status).to.equal(200);
    expect(reaped.body).to.include({ reclaimed: 0, held: false });
    expect(String(reaped.body['reason'])).to.match(/startup grace/);
    await expectAllKept(fleet);
    const health = await call(fleet.agent, reg.base, 'GET', '/health');
    expect(health.body['pool']).to.include({ leased: 3 });
    for (const l of fleet.leases) {
      const history = await fetch(`${reg.base}/identifier/${l.identifier}/history`).then((r) => r.json());
      expect(history).to.have.length(1);
      expect(history).to.have.nested.property('[0].event', 'allocated');
    }
  });

  it('PostgreSQL: stopped for 5 s, then a plain POST /admin/reap as soon as it answers: nothing is reclaimed, every VM keeps its lease', async () => {
    const server = await TestPostgres.start();
    cleanups.push(() => server.destroy());
    const url = await server.createDatabase();
    const t = tempDir();
    cleanups.push(() => t.cleanup());
    const reg = await registry(t.dir, 'w-[0-2]\n', { ...GRACE_ENV, REAPER_SCHEDULE: '0 0 1 1 *', DATABASE_URL: url });
    const fleet = await fleetOf(reg.base, 3);
    cleanups.push(() => fleet.agent.destroy());
    for (const until = Date.now() + 4000; Date.now() < until; await sleep(300)) { // past the first grace, renewing
      expect((await fleet.renewAll()).map((a) => a.status)).to.deep.equal([200, 200, 200]);
    }
    await server.stop();
    await sleep(5000); // no VM can renew meanwhile: every lease looks expired when it is back
    // Sweeps asked for every few ms while it starts again: the first one it answers comes before
    // the registry's next beat (once a second), so the sweep is the first to see the gap.
    const sweeper = new Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(() => sweeper.destroy());
    const refused: string[] = [];
    let first: Reply | null = null;
    const resumed = server.resume();
    for (const deadline = Date.now() + 30_000; first === null && Date.now() < deadline; await sleep(5)) {
      const r = await call(sweeper, reg.base, 'POST', '/admin/reap');
      if (r.status === 200) first = r;
      else refused.push(`${r.status} ${JSON.stringify(r.body['error']).match(/"code":"(\w+)"/)?.[1] ?? ''}`);
    }
    await resumed;
    expect(new Set(refused)).to.deep.equal(new Set(['503 unavailable']));
    expect(first?.body).to.include({ reclaimed: 0, held: false });
    expect(String(first?.body['reason'])).to.match(/startup grace/);
    await expectAllKept(fleet);
    const db = new URL(url).pathname.slice(1);
    expect(await server.sql(`SELECT count(*)::int AS n FROM history WHERE event = 'reclaimed'`, [], db)).to.deep.equal([{ n: 0 }]);
  });

  it('PostgreSQL: a backend SIGKILLed (crash recovery) just after an acknowledged renewal: the next sweeps reclaim nothing within a TTL of it', async () => {
    const server = await TestPostgres.start();
    cleanups.push(() => server.destroy());
    const url = await server.createDatabase();
    const dbName = new URL(url).pathname.slice(1);
    const t = tempDir();
    cleanups.push(() => t.cleanup());
    const ttlMs = 4000;
    const reg = await registry(t.dir, 'w-[0-2]\n', {
      ...GRACE_ENV, LEASE_TTL_SECONDS: '4', STARTUP_GRACE_SECONDS: '4', REAPER_SCHEDULE: '0 0 1 1 *', DATABASE_URL: url,
    });
    await eventually(async () => Number((await (await fetch(`${reg.base}/health`)).json() as Body)['uptime_seconds']) >= 5, 20_000, 'the first grace over');
    const fleet = await fleetOf(reg.base, 3); // granted: committed and flushed (synchronous_commit on)
    cleanups.push(() => fleet.agent.destroy());
    await sleep(2000); // no renewal meanwhile: the leases live on their grant, a TTL of 4 s
    // Crashed right after one of the registry's beats: it beats again a second later, once
    // PostgreSQL has recovered (about 0.4 s), so its beats show no gap in service; only the
    // store can tell it the renewals were lost.
    const latestBeat = async (): Promise<number> => Number((await server.sql('SELECT max(at) AS at FROM instances', [], dbName))[0]?.['at'] ?? 0);
    let sentAt = 0;
    let renewed: Reply[] = [];
    await crashRecovery(server, dbName, async (kill) => {
      const before = await latestBeat();
      await eventually(async () => (await latestBeat()) > before, 5000, 'a beat');
      // A sweep's answer waits for the disk, and brings that beat with it: after the crash the
      // latest beat is recent. (The registry's own sweeps, on a denser schedule, do the same.)
      expect(await call(fleet.agent, reg.base, 'POST', '/admin/reap')).to.have.nested.property('body.reclaimed', 0);
      sentAt = Date.now();
      renewed = await fleet.renewAll(); // committed with synchronous_commit off: not yet on disk
      kill(); // PostgreSQL ends every session and recovers from its WAL
    });
    const acknowledged = renewed.map((r) => Date.parse(String(r.body['last_seen'])));
    expect(renewed.map((r) => r.status)).to.deep.equal([200, 200, 200]);
    // The crash lost those renewals: the leases are back on their grant, older than a TTL soon.
    const stored = await server.sql(`SELECT client_id, last_seen FROM identifiers WHERE client_id IS NOT NULL ORDER BY client_id`, [], dbName);
    expect(stored.map((r, i) => Number(r['last_seen']) < (acknowledged[i] ?? 0)), 'the crash lost the renewals').to.deep.equal([true, true, true]);
    // Sweeps, as the reaper or an operator would run them, until just before a TTL after the renewal was sent.
    const sweeps: string[] = [];
    const sweeper = new Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(() => sweeper.destroy());
    while (Date.now() < sentAt + ttlMs - 500) {
      const r = await call(sweeper, reg.base, 'POST', '/admin/reap');
      sweeps.push(r.status === 200 ? `reclaimed ${String(r.body['reclaimed'])}` : `${r.status}`);
      await sleep(100);
    }
    expect(sweeps.filter((s) => s.startsWith('reclaimed')).length, sweeps.join(', ')).to.be.above(5);
    expect(sweeps.filter((s) => s !== 'reclaimed 0' && s !== '503'), sweeps.join(', ')).to.deep.equal([]);
    await expectAllKept(fleet);
    expect(await server.sql(`SELECT count(*)::int AS n FROM history WHERE event = 'reclaimed'`, [], dbName)).to.deep.equal([{ n: 0 }]);
  });
});
