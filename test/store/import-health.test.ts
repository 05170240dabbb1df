/**
 * After `idreg import`, /health is the importing registry's own: the exporting registry's last
 * sweep (when it ran, what it reclaimed, whether the guard held it and why) stays behind, on
 * both engines, also when the dump file was written by a registry that still exported it.
 */
import { expect } from 'chai';
import request from 'supertest';
import { FakeClock } from '../../src/clock.js';
import { createApp } from '../../src/http/app.js';
import { Metrics } from '../../src/metrics.js';
import { Registry } from '../../src/registry.js';
import { dumpLines, parseDump } from '../../src/store/dump.js';
import type { Dump } from '../../src/store/dump.js';
import { dumpSqlite, loadSqlite } from '../../src/store/sqlite/dump.js';
import { ENGINES, openTestStore } from '../support/engines.js';
import { DEFAULT_RULES, SECOND, makeSqliteRegistry } from '../support/helpers.js';

/** A SQLite registry whose last sweep was held by the mass-expiry guard, exported through the file format. */
async function heldRegistryDump(): Promise<{ dump: Dump; sweptAt: number }> {
  const h = await makeSqliteRegistry({ pool: 'w-[0-3]\n', rules: { maxFraction: 0.5, minHold: 0, guardedRatePerMinute: 0 } });
  await h.registry.allocate('vm-a');
  await h.registry.allocate('vm-b');
  h.clock.advance(DEFAULT_RULES.ttlMs + SECOND);
  const swept = await h.registry.reap();
  expect(swept.held, 'the source registry is held by the guard').to.equal(true);
  const before = await h.http.get('/health');
  expect(before.body.status).to.equal('degraded');
  expect(before.body.reaper.last_run_at).to.equal(new Date(h.clock.now()).toISOString());
  const dump = parseDump(dumpLines(dumpSqlite(h.store.db, h.clock.now())));
  const sweptAt = h.clock.now();
  await h.registry.close();
  await h.store.close();
  return { dump, sweptAt };
}

/** What an export made before this fix carried: the source's sweep report among the meta values. */
function withOldReaperState(d: Dump, sweptAt: number): Dump {
  const state = JSON.stringify({ lastRunAt: sweptAt, lastReclaimed: 7, held: true, reason: 'mass expiry: from the old registry' });
  return { ...d, meta: [...d.meta.filter((m) => m.key !== 'reaper_state'), { key: 'reaper_state', value: state }] };
}

for (const engine of ENGINES) {
  describe(`idreg import into ${engine}: /health shows this registry's own sweeps`, function () {
    this.timeout(60_000);

    for (const [label, make] of [
      ['an export of today', (d: Dump): Dump => d],
      ['an export that still carries the old registry\'s sweep report', (d: Dump, at: number): Dump => withOldReaperState(d, at)],
    ] as const) {
      it(`${label}: no sweep yet, healthy, until this registry sweeps; then its own time`, async () => {
        const { dump: exported, sweptAt } = await heldRegistryDump();
        const dump = make(exported, sweptAt);
        const clock = new FakeClock(sweptAt + 3600 * SECOND); // an hour later, elsewhere
        const t = await openTestStore(clock, { engine });
        if (t.sqlite) loadSqlite(t.sqlite.db, dump);
        else if ('load' in t.store && typeof t.store.load === 'function') await t.store.load(dump);
        else throw new Error('no loader for this engine');
        const registry = new Registry({ store: t.store, rules: { ...DEFAULT_RULES, graceMs: 0 } });
        await registry.open();
        const http = request(createApp({ registry, metrics: new Metrics(), auth: { agentTokens: [], adminTokens: [] } }).callback());

        const after = await http.get('/health');
        expect(after.status).to.equal(200);
        expect(after.body.status).to.equal('healthy');
        expect(after.body.reaper).to.deep.equal({ last_run_at: null, last_reclaimed: 0, held: false, reason: null });
        // The state itself did move: the two leases are here.
        expect(after.body.pool).to.include({ total: 4, leased: 2 });

        await registry.reap({ force: true });
        const swept = await http.get('/health');
        expect(swept.body.reaper).to.deep.equal({ last_run_at: new Date(clock.now()).toISOString(), last_reclaimed: 2, held: false, reason: null });
        await registry.close();
      });
    }
  });
}
