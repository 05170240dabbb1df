/**
 * The mass-expiry guard against two real fleets (issue 10, finding 9), on a real process and
 * its cron reaper: a churning fleet must never stall the pool, and a real cut spread over
 * several sweeps must still trip the guard.
 */
import { expect } from 'chai';
import type { Lease } from '../../src/domain/types.js';
import type { RegistryRules } from '../../src/registry.js';
import { ENGINES, useEngine } from '../support/engines.js';
import { SECOND, makeRegistry, tempDir } from '../support/helpers.js';
import { eventually, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

type Body = Record<string, unknown>;
const asBody = (b: unknown): Body => (typeof b === 'object' && b !== null ? Object.fromEntries(Object.entries(b)) : {});
const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('the mass-expiry guard with a real fleet', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry | null = null;
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await reg?.stop();
    reg = null;
    t.cleanup();
  });

  it('a churning fleet (a new VM every 40 ms, none renewing) keeps getting identifiers', async () => {
    reg = await startProcess({
      dir: t.dir, pool: 'w-[0-49]\n',
      env: { LEASE_TTL_SECONDS: '2', STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '* * * * * *' },
    });
    const base = reg.base;
    const outcomes: Array<{ at: number; ok: boolean }> = [];
    const started = Date.now();
    const inflight: Promise<void>[] = [];
    for (let i = 0; Date.now() - started < 9000; i++) {
      inflight.push(json(base, 'POST', '/allocate', { client_id: `churn-${i}` }).then((r) => {
        outcomes.push({ at: Date.now() - started, ok: r.status === 200 });
      }));
      await tick(40);
    }
    await Promise.all(inflight);
    const late = outcomes.filter((o) => o.at >= 6000);
    const granted = late.filter((o) => o.ok).length;
    // Every lease expires (all at once, to the guard's eye), yet new VMs asking prove the fleet is
    // there: the guarded reaper keeps pace with them. Stalled, this would be 0. (Unguarded, TTL +
    // cool-down + the sweep's cadence let about a third through: the bound leaves room for a slow machine.)
    expect(granted, `${granted} of ${late.length} allocations granted in the last 3 s`).to.be.at.least(late.length / 6);
    for (let from = 5000; from < 8000; from += 1000) {
      const inSecond = outcomes.filter((o) => o.ok && o.at >= from && o.at < from + 1000).length;
      expect(inSecond, `grants between ${from} and ${from + 1000} ms`).to.be.above(0);
    }
    // The pool is not stalled at the end either: a new VM gets an identifier, and /health, read at
    // once (well within the 2 s TTL of that grant), counts it leased.
    let last: Body = {};
    await eventually(async () => {
      const r = await json(base, 'POST', '/allocate', { client_id: 'churn-last' });
      last = asBody(r.body);
      return r.status === 200;
    }, 5000, 'a grant after the churn');
    const health = asBody((await json(base, 'GET', '/health')).body);
    expect(asBody(health['pool'])['leased']).to.be.at.least(1);
    expect(asBody((await json(base, 'GET', `/identifier/${String(last['identifier'])}`)).body)).to.include({ status: 'leased', client_id: 'churn-last' });
  });

  it('a cut that silences 30 of 40 VMs in three groups, one sweep apart, trips the guard', async () => {
    reg = await startProcess({
      dir: t.dir, pool: 'w-[0-39]\n',
      env: { LEASE_TTL_SECONDS: '6', STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '* * * * * *', REAPER_MIN_HOLD: '5' },
    });
    const base = reg.base;
    const held = new Map<string, string>();
    for (let i = 0; i < 40; i++) {
      const l = asBody((await json(base, 'POST', '/allocate', { client_id: `vm-${i}` })).body);
      held.set(`vm-${i}`, String(l['identifier']));
    }
    const silencedAt = new Map<string, number>();
    const t0 = Date.now();
    // Group k (10 VMs) goes silent 1.2 s after group k-1: each group expires in a sweep of its own,
    // no group alone is more than half of what is leased, but all three within one TTL are.
    const group = (i: number): number => (i < 30 ? Math.floor(i / 10) : -1);
    let stop = false;
    const renewals = (async () => {
      while (!stop) {
        const now = Date.now() - t0;
        await Promise.all([...held].map(async ([c, id], i) => {
          const g = group(i);
          if (g >= 0 && now >= g * 1200) {
            if (!silencedAt.has(c)) silencedAt.set(c, now);
            return;
          }
          await json(base, 'POST', '/liveness', { client_id: c, identifier: id });
        }));
        await tick(500);
      }
    })();
    try {
      await eventually(async () => asBody((await json(base, 'GET', '/health')).body)['status'] === 'degraded', 20_000, 'the guard to trip');
      const health = asBody((await json(base, 'GET', '/health')).body);
      expect(String(asBody(health['reaper'])['reason'])).to.match(/mass expiry: 30 of 40 leases/);
      // The first two groups went (each under half); the third is held back.
      expect(asBody(health['pool'])['leased']).to.be.at.least(19);
      // Two TTLs on (issue 21, finding 7), the guard still remembers the cut: the third group goes
      // at the guarded rate (1 a minute, already spent on the first two), not at full speed.
      const tripped = Date.now();
      await eventually(async () => Date.now() - tripped >= 12_000, 20_000, 'two TTLs');
      const later = asBody((await json(base, 'GET', '/health')).body);
      expect(later['status']).to.equal('degraded');
      expect(String(asBody(later['reaper'])['reason'])).to.match(/mass expiry: 30 of 40 leases .* before the guard tripped/);
      expect(asBody(later['pool'])['leased']).to.be.at.least(19);
    } finally {
      stop = true;
      await renewals;
    }
    // The ten live VMs were never touched.
    for (let i = 30; i < 40; i++) {
      expect((await json(base, 'GET', `/client/vm-${i}`)).status).to.equal(200);
    }
  });
});

/**
 * The guard's memory (issue 21, finding 7), on both engines with a fake clock: once tripped it
 * holds until no expired lease is left, however long that takes, and what it reclaimed while
 * tripped does not trip it again.
 */
for (const engine of ENGINES) {
  describe(`[${engine}] the mass-expiry guard remembers a cut until it is over`, () => {
    useEngine(engine);
    const TTL = 60 * SECOND;
    const SWEEP_EVERY = 10 * SECOND;

    /** A fleet on a fake clock: each step, 10 s pass, the VMs still up renew, and the reaper sweeps. */
    async function fleet(n: number, rules: Partial<RegistryRules>) {
      const h = await makeRegistry({ shared: true, pool: `w-[0-${n - 1}]`, rules: { ttlMs: TTL, cooldownMs: TTL, graceMs: 0, ...rules } });
      const leases = new Map<string, Lease>();
      for (let i = 0; i < n; i++) leases.set(`vm-${i}`, await h.registry.allocate(`vm-${i}`));
      const up = new Set(leases.keys());
      let t = 0;
      const sweeps: Array<{ t: number; reclaimed: number; held: boolean; reason: string | null }> = [];
      return {
        h, up, leases, sweeps,
        now: () => t,
        /** Steps on to time `until` (ms since the grants), sweeping every 10 s. */
        async runTo(until: number): Promise<void> {
          while (t + SWEEP_EVERY <= until) {
            h.clock.advance(SWEEP_EVERY);
            t += SWEEP_EVERY;
            for (const c of up) {
              const l = leases.get(c);
              if (l) await h.registry.renew(c, l.identifier, l.epoch);
            }
            sweeps.push({ t, ...(await h.registry.reap()) });
          }
        },
        reclaimedBetween: (from: number, to: number) => sweeps.filter((s) => s.t > from && s.t <= to).reduce((n, s) => n + s.reclaimed, 0),
      };
    }

    it('30 of 40 going quiet in three groups trips it; a TTL and more later, the rest still go at the guarded rate, not at full speed', async () => {
      const f = await fleet(40, { maxFraction: 0.5, minHold: 5, guardedRatePerMinute: 1 });
      const group = (g: number): string[] => Array.from({ length: 10 }, (_, i) => `vm-${g * 10 + i}`);
      for (let g = 0; g < 3; g++) {
        await f.runTo(g * 20 * SECOND); // group g falls silent 20 s after group g-1: each expires in a sweep of its own
        for (const c of group(g)) f.up.delete(c);
      }
      await f.runTo(100 * SECOND); // groups 0 and 1 went (each a quarter); group 2 makes it 30 of 40 within a TTL
      expect(f.reclaimedBetween(0, 90 * SECOND)).to.equal(20);
      const tripped = f.sweeps.find((s) => s.t === 100 * SECOND);
      expect(tripped).to.include({ held: true, reclaimed: 0 });
      expect(tripped?.reason).to.match(/^mass expiry: 30 of 40 leases \(75%\)/);

      // Five minutes on, long past a TTL after the cut: group 2 goes one a minute, oldest first.
      await f.runTo(400 * SECOND);
      const afterTrip = f.sweeps.filter((s) => s.t > 100 * SECOND);
      expect(afterTrip.every((s) => s.held), 'every sweep after the trip is held').to.equal(true);
      for (let m = 100 * SECOND; m < 400 * SECOND; m += 60 * SECOND) {
        expect(f.reclaimedBetween(m, m + 60 * SECOND), `reclaims in the minute after ${m / 1000}s`).to.be.at.most(1);
      }
      expect(f.reclaimedBetween(100 * SECOND, 400 * SECOND)).to.be.within(4, 5);
      const health = await f.h.http.get('/health');
      expect(health.body.status).to.equal('degraded');
      expect(health.body.reaper.reason).to.match(/^mass expiry: 30 of 40 leases \(75%\) expired within the last TTL before the guard tripped 300s ago/);
      expect(await f.h.leasedCount()).to.equal(40 - 20 - f.reclaimedBetween(100 * SECOND, 400 * SECOND));
      // The trip is in the store: another instance's sweep holds as well (its guarded minute spent).
      const other = await f.h.another();
      expect(await other.reap()).to.include({ held: true, reclaimed: 0 });
      for (const c of group(3)) expect((await f.h.registry.leaseOfClient(c)).epoch).to.equal(f.leases.get(c)?.epoch); // the live ten, untouched

      // The rest of group 2 comes back: nothing is left expired, and the guard rests.
      for (const c of group(2)) {
        const l = f.leases.get(c);
        if (l && (await f.h.registry.leaseOfClient(c).then(() => true, () => false))) f.up.add(c);
      }
      await f.runTo(410 * SECOND);
      expect(f.sweeps.at(-1)).to.deep.include({ held: false, reclaimed: 0, reason: null });
      expect((await f.h.http.get('/health')).body.status).to.equal('healthy');
    });

    it('what it reclaimed while tripped does not trip it again once it rests', async () => {
      const f = await fleet(10, { maxFraction: 0.5, minHold: 2, guardedRatePerMinute: 3 });
      for (let i = 0; i < 6; i++) f.up.delete(`vm-${i}`); // 6 of 10 go quiet at once
      await f.runTo(60 * SECOND);
      expect(f.sweeps.at(-1)).to.include({ held: true, reclaimed: 3 }); // tripped: 3 a minute
      await f.runTo(90 * SECOND);
      f.up.delete('vm-6'); // two more go quiet: they expire at 150 s, after the guard rests at 140 s
      f.up.delete('vm-7');
      await f.runTo(140 * SECOND);
      expect(f.reclaimedBetween(60 * SECOND, 130 * SECOND)).to.equal(3);
      expect(f.sweeps.find((s) => s.t === 130 * SECOND)).to.include({ held: true, reclaimed: 3 }); // the last of the six
      expect(f.sweeps.find((s) => s.t === 140 * SECOND)).to.deep.include({ held: false, reclaimed: 0, reason: null }); // none left: it rests
      // 2 expired among 4 leases: not more than REAPER_MIN_HOLD, so not a mass expiry. Counted
      // with the 3 it reclaimed at 130 s (5 of 7), it would trip again and hold them.
      await f.runTo(150 * SECOND);
      expect(f.sweeps.at(-1)).to.deep.include({ held: false, reclaimed: 2, reason: null });
      expect(await f.h.leasedCount()).to.equal(2);
    });
  });
}
