/** Pool reloads on the real process: the guard against an emptied file, and SIGHUP at any moment. */
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { snapshotDb, tempDir } from '../support/helpers.js';
import { builtMain, eventually, json, startProcess } from '../support/process-helpers.js';

function field(body: unknown, ...path: string[]): unknown {
  let v: unknown = body;
  for (const k of path) v = typeof v === 'object' && v !== null && k in v ? Object.fromEntries(Object.entries(v))[k] : undefined;
  return v;
}

describe('pool reload (SIGHUP) on the real process', function () {
  this.timeout(120_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('an emptied pool file is refused: nothing retired, /health degraded with the reason until a good file', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'w-[00-19]\n' });
    try {
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
      expect(field((await json(reg.base, 'GET', '/health')).body, 'status')).to.equal('healthy');
      const before = snapshotDb(join(t.dir, 'registry.db'));

      writeFileSync(join(t.dir, 'pool.txt'), ''); // : > pool.txt
      reg.child.kill('SIGHUP');
      await eventually(async () => field((await json(reg.base, 'GET', '/health')).body, 'status') === 'degraded', 10_000, 'degraded');
      const health = (await json(reg.base, 'GET', '/health')).body;
      expect(field(health, 'pool_file', 'reason')).to.match(/refused.*20 of the 20.*idreg pool sync --force/);
      expect(field(health, 'pool')).to.include({ total: 20, retired: 0, leased: 1, free: 19 });
      expect((await json(reg.base, 'GET', '/identifiers?status=retired')).body).to.deep.equal([]);
      expect(snapshotDb(join(t.dir, 'registry.db'))).to.equal(before);
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-b' })).status).to.equal(200); // still serving
      await eventually(async () => /"level":"warn".*pool reload refused/.test(reg.output()), 10_000, 'the refusal logged at warn');
      expect(await (await fetch(`${reg.base}/metrics`)).text()).to.include('asg_id_registry_pool_reload_failed 1');

      // A malformed file keeps it degraded, with that reason.
      writeFileSync(join(t.dir, 'pool.txt'), 'w-[00-19]\nbad name\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => /line 2/.test(String(field((await json(reg.base, 'GET', '/health')).body, 'pool_file', 'reason'))), 10_000, 'the new reason');
      await eventually(async () => /"level":"error".*pool reload failed/.test(reg.output()), 10_000, 'the failure logged at error'); // logs are written asynchronously

      // A good file: applied, and healthy again.
      writeFileSync(join(t.dir, 'pool.txt'), 'w-[00-20]\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => field((await json(reg.base, 'GET', '/health')).body, 'status') === 'healthy', 10_000, 'healthy');
      expect(field((await json(reg.base, 'GET', '/health')).body, 'pool_file', 'reason')).to.equal(null);
      expect(field((await json(reg.base, 'GET', '/identifier/w-20')).body, 'status')).to.equal('free');
    } finally {
      await reg.stop();
    }
  });

  it('restoring the file last synced clears a refused reload', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'w-[0-9]\n' });
    try {
      writeFileSync(join(t.dir, 'pool.txt'), 'w-0\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => field((await json(reg.base, 'GET', '/health')).body, 'status') === 'degraded', 10_000, 'degraded');
      writeFileSync(join(t.dir, 'pool.txt'), 'w-[0-9]\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => field((await json(reg.base, 'GET', '/health')).body, 'status') === 'healthy', 10_000, 'healthy');
    } finally {
      await reg.stop();
    }
  });

  it('a start-up whose pool file would retire more than half of the pool stops (exit 78) and changes nothing', async () => {
    const first = await startProcess({ dir: t.dir, pool: 'w-[0-9]\n' });
    await first.stop();
    const before = snapshotDb(join(t.dir, 'registry.db'));
    const bad = await startProcess({ dir: t.dir, pool: 'w-0\n', wait: false });
    const stopAnyway = setTimeout(() => void bad.stop('SIGKILL'), 20_000); // if it starts after all
    expect((await bad.exited).code).to.equal(78);
    clearTimeout(stopAnyway);
    expect(bad.output()).to.match(/9 of the 10 .*idreg pool sync --force/);
    expect(snapshotDb(join(t.dir, 'registry.db'))).to.equal(before);
  });

  it('SIGHUP 0.4 s into a 300,000-identifier start-up: the process survives, serves, then reloads', async () => {
    // Compiled JavaScript, as the service runs it: under tsx the first line of main.ts runs
    // about a second after spawn on this machine, past the moment this test is about.
    const main = await builtMain();
    const reg = await startProcess({ dir: t.dir, pool: 'p-[000000-299999]\n', entry: main, wait: false });
    try {
      await new Promise((r) => setTimeout(r, 400));
      expect(reg.child.exitCode, reg.output()).to.equal(null);
      reg.child.kill('SIGHUP');
      await eventually(async () => {
        if (reg.child.exitCode !== null || reg.child.signalCode !== null) throw new Error(`the registry ended: ${reg.output()}`);
        try {
          return (await fetch(`${reg.base}/health`)).status === 200;
        } catch {
          return false;
        }
      }, 60_000, 'the registry to serve');
      expect(reg.child.exitCode).to.equal(null);
      expect(field((await json(reg.base, 'GET', '/health')).body, 'pool', 'total')).to.equal(300_000);
      await eventually(async () => /pool file unchanged since the last sync/.test(reg.output()), 10_000, 'the reload after start-up');
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
    } finally {
      expect((await reg.stop()).code).to.equal(0);
    }
    expect(reg.output()).to.match(/SIGHUP: re-reading the pool file/);
  });
});
