/**
 * The rules that keep the promise when things go wrong, on every engine: the mass-expiry guard,
 * fencing and force release, the startup grace across instances. The rest, on SQLite files and
 * fake time sources (startup grace, clock jumps, several processes), is in
 * test/reliability/safety.test.ts.
 */
import { expect } from 'chai';
import { SECOND, errorCode, makeRegistry, serve } from '../support/helpers.js';

export function safety(): void {
  describe('safety: mass-expiry guard', () => {
    const rules = { maxFraction: 0.5, minHold: 10 };

    it('slows a sweep that would reclaim more than the fraction to the guarded rate, reports degraded, and force overrides it', async () => {
      const h = await makeRegistry({ pool: 'w-[0-29]', rules });
      for (let i = 0; i < 30; i++) await h.registry.allocate(`vm-${i}`);
      h.clock.advance(91 * SECOND);
      for (let i = 0; i < 5; i++) await h.registry.renew(`vm-${i}`, `w-${i}`);

      const held = await h.http.post('/admin/reap');
      expect(held.body).to.deep.include({ reclaimed: 1, held: true }); // REAPER_GUARDED_RATE 1 a minute, oldest first
      expect(held.body.reason).to.match(/25 of 30/);
      expect((await h.leasedCount())).to.equal(29);
      expect((await h.http.post('/admin/reap')).body).to.deep.include({ reclaimed: 0, held: true }); // this minute's one is spent

      const health = await h.http.get('/health');
      expect(health.status).to.equal(200);
      expect(health.body.status).to.equal('degraded');
      expect(health.body.reaper).to.include({ held: true, last_reclaimed: 0 });
      expect(health.body.reaper.reason).to.match(/mass expiry/);

      const forced = await h.http.post('/admin/reap?force=true');
      expect(forced.body).to.deep.equal({ reclaimed: 24, held: false, reason: null });
      expect((await h.leasedCount())).to.equal(5);
      expect((await h.http.get('/health')).body.status).to.equal('healthy');
    });

    it('looks again each sweep: once the fleet renews, it holds until the few that stay silent are gone, then rests', async () => {
      const h = await makeRegistry({ pool: 'w-[0-29]', rules });
      for (let i = 0; i < 30; i++) await h.registry.allocate(`vm-${i}`);
      h.clock.advance(91 * SECOND);
      expect((await h.registry.reap()).held).to.equal(true);
      for (let minute = 0; minute < 3; minute++) {
        for (let i = 0; i < 27; i++) await h.registry.renew(`vm-${i}`, `w-${i}`); // the network came back
        // Tripped, the guard stays so while any lease is left expired: one a minute (REAPER_GUARDED_RATE).
        expect(await h.registry.reap(), `minute ${minute}`).to.include({ reclaimed: 1, held: true });
        h.clock.advance(61 * SECOND);
      }
      for (let i = 0; i < 27; i++) await h.registry.renew(`vm-${i}`, `w-${i}`);
      expect(await h.registry.reap()).to.deep.equal({ reclaimed: 0, held: false, reason: null });
      expect((await h.registry.health()).reaper.held).to.equal(false);
      expect(await h.leasedCount()).to.equal(27);
    });

    it('does not hold when no more than REAPER_MIN_HOLD leases expire, whatever the fraction', async () => {
      const h = await makeRegistry({ pool: 'w-[0-9]', rules });
      for (let i = 0; i < 10; i++) await h.registry.allocate(`vm-${i}`);
      h.clock.advance(91 * SECOND);
      expect((await h.registry.reap()).reclaimed).to.equal(10);
    });

    it('REAPER_MAX_FRACTION=1 turns the guard off', async () => {
      const h = await makeRegistry({ pool: 'w-[0-29]', rules: { maxFraction: 1, minHold: 0 } });
      for (let i = 0; i < 30; i++) await h.registry.allocate(`vm-${i}`);
      h.clock.advance(91 * SECOND);
      expect((await h.registry.reap()).reclaimed).to.equal(30);
    });
  });

  describe('safety: fencing and force release', () => {
    it('an old incarnation of a VM cannot renew or release its successor\'s lease', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only', rules: { cooldownMs: 0 } });
      const old = await registry.allocate('vm-a');
      clock.advance(91 * SECOND);
      await registry.reap();
      const now = await registry.allocate('vm-a'); // same hostname, rebooted VM
      expect(now.epoch).to.equal(old.epoch + 1);
      expect(await errorCode(registry.renew('vm-a', 'only', old.epoch))).to.equal('stale_epoch');
      expect(await errorCode(registry.release('vm-a', 'only', old.epoch))).to.equal('stale_epoch');
      expect((await registry.leaseOfClient('vm-a')).epoch).to.equal(now.epoch);
    });

    it('a force-released identifier is not handed out before the cool-down, so its old holder has time to notice', async () => {
      const { registry, clock } = await makeRegistry({ pool: 'only', rules: { ttlMs: 90 * SECOND, cooldownMs: 90 * SECOND } });
      const a = await registry.allocate('vm-a');
      clock.advance(10 * SECOND);
      await registry.forceRelease('only');
      expect(await errorCode(registry.renew('vm-a', 'only', a.epoch))).to.equal('not_owner'); // vm-a fences itself
      clock.advance(89 * SECOND);
      expect(await errorCode(registry.allocate('vm-b'))).to.equal('pool_exhausted');
      clock.advance(SECOND);
      expect((await registry.allocate('vm-b')).epoch).to.equal(a.epoch + 1);
    });
  });

  describe('safety: startup grace across instances', () => {
    const rules = { ttlMs: 90 * SECOND, cooldownMs: 90 * SECOND, graceMs: 90 * SECOND, maxFraction: 1, minHold: 0 };

    it('an instance joining a serving one does not start the grace again; the service coming back does', async () => {
      const a = await makeRegistry({ shared: true, pool: 'w-[0-9]', rules });
      await a.registry.open();
      for (let i = 0; i < 3; i++) await a.registry.allocate(`vm-${i}`);
      for (let s = 0; s < 200; s++) { // a serves, beating every second: the grace is long over, the three leases expired
        a.clock.advance(SECOND);
        await a.registry.beat();
      }
      const b = await a.another();
      await b.open(); // a beat just now: the service is up, b restarting changes nothing
      expect((await b.reap()).reclaimed).to.equal(3);

      for (let i = 3; i < 6; i++) await b.allocate(`vm-${i}`);
      await b.close();
      await a.registry.close(); // every instance gone: the service is down
      a.clock.advance(200 * SECOND); // meanwhile no VM could renew
      const c = await a.another();
      await c.open();
      const held = await c.reap();
      expect(held.reclaimed).to.equal(0);
      expect(held.reason).to.match(/grace/);
      await serve(a.clock, c, 91 * SECOND);
      expect((await c.reap()).reclaimed).to.equal(3);
    });

    it('instances that stay up while their database is unreachable start the grace again when it comes back', async () => {
      const a = await makeRegistry({ pool: 'w-[0-9]', rules });
      await a.registry.open();
      for (let i = 0; i < 3; i++) await a.registry.allocate(`vm-${i}`);
      for (let s = 0; s < 100; s++) { // serving, beating every second
        a.clock.advance(SECOND);
        await a.registry.beat();
      }
      // The database is gone for two TTLs: no beat lands, no VM can renew. Then it is back.
      a.clock.advance(180 * SECOND);
      await a.registry.beat();
      const held = await a.registry.reap();
      expect(held).to.include({ reclaimed: 0 });
      expect(held.reason).to.match(/startup grace/);
      for (let s = 0; s < 91; s++) { // serving again, beating every second, through the grace
        a.clock.advance(SECOND);
        await a.registry.beat();
      }
      expect((await a.registry.reap()).reclaimed).to.equal(3);
    });
  });
}
