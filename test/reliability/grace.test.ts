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
import { ENGINES, useEngine } from '../engines.js';
import { SECOND, errorCode, makeRegistry, tempDir } from '../helpers.js';
import { builtMain, call, eventually, startProcess } from '../process-helpers.js';
import type { Reply, RunningRegistry } from '../process-helpers.js';
import { TestPostgres } from '../support/postgres.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const engine of ENGINES) {
  describe(`[${engine}] the start-up grace after a gap in service, whichever part notices it first`, function () {
    useEngine(engine);
    this.timeout(180_000);
    const rules = { ttlMs: 3 * SECOND, cooldownMs: 3 * SECOND, graceMs: 3 * SECOND, maxFraction: 1, minHold: 0 };

    it('a beat, the reaper, a plain POST /admin/reap and the VMs renewing, in any order after 5 s down: nothing live is reclaimed', async () => {
      await fc.assert(fc.asyncProperty(fc.scheduler(), async (s) => {
        const h = await makeRegistry({ pool: 'w-[0-2]', rules });
        await h.registry.open();
        const leases = [];
        for (let i = 0; i < 3; i++) leases.push(await h.registry.allocate(`vm-${i}`));
        // Serving: a beat and a renewal of every lease each second, until the grace is long over.
        for (let i = 0; i < 6; i++) {
          h.clock.advance(SECOND);
          await h.registry.beat();
          for (const l of leases) await h.registry.renew(l.clientId, l.identifier, l.epoch);
        }
        expect(await h.registry.reap()).to.deep.equal({ reclaimed: 0, held: false, reason: null });
        // The service stops for 5 s (the process frozen, its database unreachable): no beat, no renewal.
        h.clock.advance(5 * SECOND);
        const swept: unknown[] = [];
        const renewed: string[] = [];
        await s.waitFor(Promise.all([
          s.schedule(Promise.resolve(), 'beat').then(() => h.registry.beat()),
          s.schedule(Promise.resolve(), 'reaper').then(async () => { swept.push((await h.registry.reap()).reclaimed); }),
          s.schedule(Promise.resolve(), 'POST /admin/reap').then(async () => { swept.push((await h.http.post('/admin/reap')).body.reclaimed); }),
          ...leases.map((l) => s.schedule(Promise.resolve(), `renew ${l.clientId}`).then(async () => {
            renewed.push(await h.registry.renew(l.clientId, l.identifier, l.epoch).then(() => 'ok', (e: unknown) => errorCode(Promise.reject(e))));
          })),
        ]));
        expect(swept).to.deep.equal([0, 0]);
        expect(renewed).to.deep.equal(['ok', 'ok', 'ok']);
        expect(await h.leasedCount()).to.equal(3);
        // The grace runs again from the end of the gap: a sweep now says so.
        expect((await h.registry.reap()).reason).to.match(/startup grace/);
      }), { numRuns: engine === 'sqlite' ? 60 : 10 });
    });
  });
}
