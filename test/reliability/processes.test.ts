/**
 * Truth lives in the store: real registry processes sharing one database file, with their own
 * wall clocks, restarts and failed starts, must agree on every renewal, time and cool-down
 * (issue 10, findings 2, 3, 5, 6 and 8).
 */
import { expect } from 'chai';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { snapshotDb, tempDir } from '../support/helpers.js';
import { WALL_CLOCK_PRELOAD, eventually, freePort, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

type Body = Record<string, unknown>;
const asBody = (b: unknown): Body => (typeof b === 'object' && b !== null ? Object.fromEntries(Object.entries(b)) : {});
async function get(base: string, path: string): Promise<Body> {
  return asBody((await json(base, 'GET', path)).body);
}

/** No sweep of its own during a test: the test sweeps through POST /admin/reap. */
const NO_CRON = '0 0 0 1 1 *';

describe('several registry processes on one database file', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  const running: RunningRegistry[] = [];
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((r) => r.stop()));
    t.cleanup();
  });
  const start = async (env: Record<string, string>, more: Partial<Parameters<typeof startProcess>[0]> = {}): Promise<RunningRegistry> => {
    const r = await startProcess({ dir: t.dir, pool: 'a\n', env: { REAPER_SCHEDULE: NO_CRON, STARTUP_GRACE_SECONDS: '0', ...env }, ...more });
    running.push(r);
    return r;
  };

  it('a liveness answered by one process is seen by the other\'s sweep at once (finding 2)', async () => {
    const env = { LEASE_TTL_SECONDS: '1', REUSE_COOLDOWN_SECONDS: '0' };
    const p1 = await start(env);
    const p2 = await start(env);
    expect(p1.output()).to.match(/REUSE_COOLDOWN_SECONDS is 0/); // said at start-up: no fence window
    for (let round = 0; round < 5; round++) {
      const lease = asBody((await json(p1.base, 'POST', '/allocate', { client_id: 'vm-a' })).body);
      await eventually(async () => Date.parse(String((await get(p2.base, '/client/vm-a'))['expires_at'])) < Date.now(), 5000, 'the lease to expire');
      // Expired but not reclaimed: still vm-a's. The renewal through p1 and the sweep through p2 race.
      const [renewal, sweep] = await Promise.all([
        json(p1.base, 'POST', '/liveness', { client_id: 'vm-a', identifier: 'a', epoch: lease['epoch'] }),
        json(p2.base, 'POST', '/admin/reap'),
      ]);
      const reclaimed = asBody(sweep.body)['reclaimed'];
      if (renewal.status === 200) {
        // Answered: the sweep either ran before it (and the renewal would have been a 409) or saw it.
        expect(reclaimed, `round ${round}: an acknowledged renewal was reclaimed`).to.equal(0);
        expect((await get(p2.base, '/identifier/a'))['client_id']).to.equal('vm-a');
        expect((await get(p2.base, '/identifier/a'))['last_seen']).to.equal(asBody(renewal.body)['last_seen']);
        expect((await json(p2.base, 'POST', '/release', { client_id: 'vm-a', identifier: 'a' })).status).to.equal(200);
      } else {
        expect(renewal.status).to.equal(409);
        expect(reclaimed).to.equal(1);
      }
    }
  });

  it('processes whose wall clocks differ by an hour share one time: a cool-down set through one holds in the other (finding 3)', async () => {
    const env = { LEASE_TTL_SECONDS: '60' };
    const p1 = await start(env, { pool: 'a\nb\n' });
    const p2 = await start({ ...env, WALL_OFFSET_MS: String(3_600_000) }, { pool: 'a\nb\n', nodeArgs: ['--import', WALL_CLOCK_PRELOAD] });
    expect((await json(p1.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
    const c = asBody((await json(p1.base, 'POST', '/allocate', { client_id: 'vm-c' })).body);
    const freed = asBody((await json(p1.base, 'DELETE', '/identifier/a')).body);
    expect(freed['status']).to.equal('cooling');
    const seen = await get(p2.base, '/identifier/a');
    expect(seen['status']).to.equal('cooling');
    expect(seen['available_at']).to.equal(freed['available_at']);
    const other = await json(p2.base, 'POST', '/allocate', { client_id: 'vm-b' });
    expect(other.status).to.equal(503);
    expect(asBody(asBody(other.body)['error'])['code']).to.equal('pool_exhausted');
    // One time: a renewal through the process an hour ahead is stamped by the same clock.
    const renewed = asBody((await json(p2.base, 'POST', '/liveness', { client_id: 'vm-c', identifier: c['identifier'] })).body);
    const gap = Date.parse(String(renewed['last_seen'])) - Date.parse(String(c['last_seen']));
    expect(gap).to.be.at.least(0).and.below(5000);
  });

  it('restarts, failed starts and a second process leave a cool-down exactly as it was (finding 6)', async () => {
    const env = { LEASE_TTL_SECONDS: '60' };
    const p1 = await start(env);
    await json(p1.base, 'POST', '/allocate', { client_id: 'vm-a' });
    const availableAt = asBody((await json(p1.base, 'DELETE', '/identifier/a')).body)['available_at'];
    expect(availableAt).to.be.a('string');
    await p1.stop();
    const dbPath = join(t.dir, 'registry.db');
    const before = snapshotDb(dbPath);

    // A port taken by someone else, an address that does not resolve: each start fails, changing nothing.
    const port = await freePort();
    const squatter = createServer().listen(port, '127.0.0.1');
    try {
      for (const [host, named] of [['127.0.0.1', /PORT/], ['no-such-host.invalid', /HOST/]] as const) {
        const failed = await startProcess({ dir: t.dir, port, env: { REAPER_SCHEDULE: NO_CRON, ...env, HOST: host }, wait: false });
        expect((await failed.exited).code, failed.output()).to.equal(78);
        expect(failed.output()).to.match(named);
        expect(snapshotDb(dbPath)).to.equal(before);
      }
    } finally {
      squatter.close();
    }
    // Two restarts, and a second process alongside.
    for (let i = 0; i < 2; i++) {
      const again = await start(env);
      expect((await get(again.base, '/identifier/a'))['available_at']).to.equal(availableAt);
      await again.stop();
    }
    const a = await start(env);
    const b = await start(env);
    expect((await get(b.base, '/identifier/a'))['available_at']).to.equal(availableAt);
    expect((await get(a.base, '/identifier/a'))['available_at']).to.equal(availableAt);
  });

  it('a wall-clock step back while running neither stops the reaper nor is hidden (finding 5)', async () => {
    const reg = await start(
      { LEASE_TTL_SECONDS: '60', REAPER_SCHEDULE: '* * * * * *', WALL_STEP_MS: String(-3_600_000) },
      { nodeArgs: ['--import', WALL_CLOCK_PRELOAD] },
    );
    const lastRun = async (): Promise<number> => Date.parse(String(asBody((await get(reg.base, '/health'))['reaper'])['last_run_at']));
    await eventually(async () => !Number.isNaN(await lastRun()), 5000, 'a first sweep');
    reg.child.kill('SIGUSR2'); // the wall clock steps an hour back
    const after = await lastRun();
    await eventually(async () => (await lastRun()) >= after + 2000, 6000, 'two more sweeps after the step');
    await eventually(async () => /the wall clock was stepped/.test(reg.output()), 3000, 'the step to be logged');
  });

  it('values the store cannot hold and addresses that do not resolve stop start-up with exit 78 naming the variable (finding 8)', async () => {
    for (const [name, value] of [
      ['LEASE_TTL_SECONDS', '10000000000000'],
      ['REUSE_COOLDOWN_SECONDS', '100000000000000000000'],
      ['STARTUP_GRACE_SECONDS', '99999999999'],
      ['REAPER_GUARDED_RATE', '-1'],
      ['HOST', 'no-such-host.invalid'],
    ] as const) {
      const r = await startProcess({ dir: t.dir, pool: 'a\n', env: { [name]: value }, wait: false });
      expect((await r.exited).code, `${name}=${value}: ${r.output()}`).to.equal(78);
      const lines = r.output().trim().split('\n');
      expect(lines, r.output()).to.have.length(1);
      expect(lines[0]).to.contain(name);
    }
  });
});
