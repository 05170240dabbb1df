/**
 * The rules that keep the promise when things go wrong, one example each: startup grace,
 * the mass-expiry guard, clock jumps, force release through the cool-down, fencing epochs.
 * Those that run on every engine are in test/contract/safety.ts.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import { FakeTimeSource } from '../../src/clock.js';
import { createApp } from '../../src/http/app.js';
import { openRegistry } from '../../src/registry.js';
import type { Registry } from '../../src/registry.js';
import type { RegistryRules } from '../../src/registry.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import request from 'supertest';
import { DEFAULT_RULES, SECOND, errorCode, makeRegistry, serve, tempDir } from '../support/helpers.js';

const HOUR = 3600 * SECOND;
const POOL = Array.from({ length: 30 }, (_, i) => `w-${i}`);

/** A registry process on a file, on a fake machine whose clocks the test controls; restartable. */
class Deployment {
  readonly source = new FakeTimeSource();
  registry!: Registry;
  private store!: SqliteStore;
  constructor(readonly path: string, readonly rules: RegistryRules) {}

  async start(): Promise<this> {
    this.store = new SqliteStore({ path: this.path, source: this.source });
    this.registry = await openRegistry({ store: this.store, source: this.source, rules: this.rules }, { serviceRestarted: this.store.rebooted });
    await this.registry.syncPool(POOL);
    return this;
  }

  /** The process stops, `downMs` of real time pass, and it starts again (after a reboot of the machine, if told). */
  async restart(downMs: number, wallJumpMs = 0, reboot = false): Promise<void> {
    await this.stop();
    this.source.advance(downMs);
    this.source.jumpWall(wallJumpMs);
    if (reboot) this.source.reboot();
    await this.start();
  }

  async stop(): Promise<void> {
    await this.registry.close();
    await this.store.close();
  }

  /** `ms` of real time pass while the registry serves: it beats every second, as its timer does. */
  async serve(ms: number): Promise<void> {
    await serve(this.source, this.registry, ms);
  }

  /** The machine loses power: no clean shutdown, the instance's last beat stays in the database. */
  async powerCut(downMs: number, wallJumpMs: number): Promise<void> {
    await this.store.close();
    this.source.advance(downMs);
    this.source.jumpWall(wallJumpMs);
    this.source.reboot();
    await this.start();
  }
}

describe('safety: startup grace', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('reclaims nothing until STARTUP_GRACE_SECONDS of uptime, however long the registry was down', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), { ...DEFAULT_RULES, ttlMs: 90 * SECOND, graceMs: 90 * SECOND, maxFraction: 1 }).start();
    try {
      await d.registry.allocate('vm-a');
      await d.restart(6 * HOUR); // down for six hours: every lease looks long dead
      const during = await d.registry.reap();
      expect(during.reclaimed).to.equal(0);
      expect(during.reason).to.match(/startup grace/);
      expect((await d.registry.health()).reaper.held).to.equal(false); // grace is normal, not degraded
      await d.serve(90 * SECOND - 1);
      expect((await d.registry.reap()).reclaimed).to.equal(0);
      d.source.advance(1);
      expect((await d.registry.reap()).reclaimed).to.equal(1);
    } finally {
      await d.stop();
    }
  });

  it('applies after a power cut and a reboot even when the wall clock came back behind the latest time in the database', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), { ...DEFAULT_RULES, ttlMs: 90 * SECOND, graceMs: 90 * SECOND, maxFraction: 1 }).start();
    try {
      await d.registry.allocate('vm-a');
      await d.serve(60 * SECOND);
      await d.registry.renew('vm-a', 'w-0');
      await d.serve(40 * SECOND);
      expect(await d.registry.reap()).to.include({ reclaimed: 0, reason: null }); // grace over; nothing expired
      // Power cut: the instance's beat is left in the database; the machine comes back with its wall clock an hour behind.
      await d.powerCut(5 * SECOND, -HOUR);
      const r = await d.registry.reap({});
      expect(r.reason).to.match(/startup grace/);
      d.source.advance(60 * SECOND);
      expect((await d.registry.reap()).reclaimed).to.equal(0);
    } finally {
      await d.stop();
    }
  });

  it('a VM that renews during the grace keeps its identifier', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), { ...DEFAULT_RULES, graceMs: 90 * SECOND }).start();
    try {
      const l = await d.registry.allocate('vm-a');
      await d.restart(2 * HOUR);
      d.source.advance(30 * SECOND);
      await d.registry.renew('vm-a', l.identifier, l.epoch);
      d.source.advance(60 * SECOND);
      expect((await d.registry.reap()).reclaimed).to.equal(0);
      expect((await d.registry.leaseOfClient('vm-a')).epoch).to.equal(l.epoch);
    } finally {
      await d.stop();
    }
  });
});

describe('safety: forced sweeps', () => {
  it('a forced sweep that arrives during a normal one is not answered with the normal one\'s result (finding 7)', async () => {
    const h = await makeRegistry({ pool: 'w-[0-3]', rules: { graceMs: 3600 * SECOND, maxFraction: 1 } });
    await h.registry.allocate('vm-a');
    h.clock.advance(91 * SECOND);
    const normal = h.registry.reap(); // in grace: reclaims nothing
    const forced = h.registry.reap({ force: true });
    const again = h.registry.reap({ force: true }); // shares the queued forced one
    expect(await normal).to.include({ reclaimed: 0 });
    expect((await normal).reason).to.match(/startup grace/);
    expect(await forced).to.deep.equal({ reclaimed: 1, held: false, reason: null });
    expect(await again).to.deep.equal({ reclaimed: 1, held: false, reason: null });
    expect(await h.leasedCount()).to.equal(0);
  });
});

describe('safety: clock jumps', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());
  const rules: RegistryRules = { ...DEFAULT_RULES, ttlMs: 90 * SECOND, cooldownMs: 90 * SECOND, graceMs: 0, maxFraction: 0.5, minHold: 10 };

  it('the wall clock jumping forward by hours while running frees nothing: leases age by real time', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), rules).start();
    try {
      for (let i = 0; i < 20; i++) await d.registry.allocate(`vm-${i}`);
      d.source.jumpWall(5 * HOUR);
      d.source.advance(10 * SECOND);
      expect((await d.registry.reap()).reclaimed).to.equal(0);
      expect((await d.registry.health()).pool.leased).to.equal(20);
    } finally {
      await d.stop();
    }
  });

  it('a restart on the same boot with the wall clock jumped forward: registry time goes on exactly, nothing expires', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), rules).start();
    try {
      for (let i = 0; i < 20; i++) await d.registry.allocate(`vm-${i}`);
      const before = d.registry.now();
      await d.restart(5 * SECOND, 5 * HOUR);
      expect(d.registry.now()).to.equal(before + 5 * SECOND);
      expect(await d.registry.reap()).to.include({ reclaimed: 0, held: false });
      expect((await d.registry.health()).pool.leased).to.equal(20);
    } finally {
      await d.stop();
    }
  });

  it('a reboot with the wall clock jumped forward: the guard holds every reclaim, since no VM has reached the registry', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), rules).start();
    try {
      for (let i = 0; i < 20; i++) await d.registry.allocate(`vm-${i}`);
      await d.restart(5 * SECOND, 5 * HOUR, true); // grace 0 here, to show the guard alone
      const r = await d.registry.reap();
      expect(r).to.include({ reclaimed: 0, held: true });
      expect(r.reason).to.match(/lost its fleet/);
      expect((await d.registry.health()).pool.leased).to.equal(20);
      // The fleet is there after all, but for five: the guard, tripped, holds until those five are
      // gone, at REAPER_GUARDED_RATE (1 a minute here), then rests.
      for (let minute = 0; minute < 5; minute++) {
        for (let i = 0; i < 15; i++) await d.registry.renew(`vm-${i}`, `w-${i}`);
        expect(await d.registry.reap(), `minute ${minute}`).to.include({ reclaimed: 1, held: true });
        d.source.advance(61 * SECOND);
      }
      for (let i = 0; i < 15; i++) await d.registry.renew(`vm-${i}`, `w-${i}`);
      expect(await d.registry.reap()).to.include({ reclaimed: 0, held: false });
      expect((await d.registry.health()).pool.leased).to.equal(15);
    } finally {
      await d.stop();
    }
  });

  it('the wall clock jumping back while running neither extends a lease nor a cool-down', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), { ...rules, minHold: 100 }).start();
    try {
      await d.registry.allocate('vm-a');
      d.source.jumpWall(-3 * HOUR);
      d.source.advance(90 * SECOND);
      expect((await d.registry.reap()).reclaimed).to.equal(1); // on time, by real time
      d.source.jumpWall(-3 * HOUR);
      d.source.advance(90 * SECOND);
      expect((await d.registry.allocate('vm-b')).identifier).to.equal('w-1'); // never-used first…
      for (let i = 2; i < POOL.length; i++) await d.registry.allocate(`vm-x${i}`);
      expect((await d.registry.allocate('vm-c')).identifier).to.equal('w-0'); // …and w-0's cool-down ended
    } finally {
      await d.stop();
    }
  });

  for (const reboot of [false, true]) {
    it(`a ${reboot ? 'reboot' : 'restart'} with the wall clock jumped forward neither cuts a cool-down short nor stretches it`, async () => {
      const d = await new Deployment(join(t.dir, 'r.db'), { ...rules, minHold: 100 }).start();
      try {
        await d.registry.allocate('vm-a');
        for (let i = 1; i < POOL.length; i++) await d.registry.allocate(`vm-x${i}`);
        await d.registry.forceRelease('w-0'); // vm-a may be partitioned: it keeps using w-0 for up to its fence window
        const cooling = (await d.registry.identifier('w-0')).availableAt;
        await d.restart(SECOND, 6 * HOUR, reboot);
        // Same boot: the stored anchor keeps time and the cool-down exactly. A reboot cannot know how long it
        // was down, so the remaining part counts again from start-up: the second it was down is added.
        if (!reboot) expect((await d.registry.identifier('w-0')).availableAt).to.equal(cooling);
        expect(await errorCode(d.registry.allocate('vm-b'))).to.equal('pool_exhausted');
        d.source.advance(88 * SECOND);
        expect(await errorCode(d.registry.allocate('vm-b'))).to.equal('pool_exhausted');
        d.source.advance(SECOND); // 90 s after the force release
        if (reboot) {
          expect(await errorCode(d.registry.allocate('vm-b'))).to.equal('pool_exhausted');
          d.source.advance(SECOND);
        }
        expect((await d.registry.allocate('vm-b')).identifier).to.equal('w-0');
      } finally {
        await d.stop();
      }
    });
  }

  it('a restart with the wall clock set back does not rewind registry time: expiry and cool-down still end', async () => {
    const d = await new Deployment(join(t.dir, 'r.db'), { ...rules, minHold: 100 }).start();
    try {
      const l = await d.registry.allocate('vm-a');
      d.source.advance(30 * SECOND);
      await d.registry.renew('vm-a', l.identifier);
      const before = d.registry.now();
      await d.restart(SECOND, -6 * HOUR);
      expect(d.registry.now()).to.be.at.least(before); // never back
      const seen = (await d.registry.leaseOfClient('vm-a')).lastSeen;
      expect(seen).to.be.at.most(d.registry.now());
      d.source.advance(90 * SECOND);
      expect((await d.registry.reap()).reclaimed).to.equal(1);
      expect((await d.registry.identifier(l.identifier)).status).to.equal('cooling');
      await d.restart(SECOND, -6 * HOUR);
      d.source.advance(90 * SECOND);
      expect((await d.registry.identifier(l.identifier)).status).to.equal('free');
    } finally {
      await d.stop();
    }
  });
});

describe('safety: several processes on one database file', () => {
  it('uniqueness comes from the database, not from a process\'s memory', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'shared.db');
      const source = new FakeTimeSource();
      const mk = (): Promise<Registry> => openRegistry({ store: new SqliteStore({ path, source }), source, rules: DEFAULT_RULES });
      const a = await mk();
      await a.syncPool(['w-0', 'w-1']);
      const b = await mk();
      const appB = request(createApp({ registry: b, auth: { agentTokens: [], adminTokens: [] } }).callback());
      await a.allocate('vm-1');
      expect((await appB.post('/allocate').send({ client_id: 'vm-1' })).body.identifier).to.equal('w-0'); // same client, same answer
      expect((await appB.post('/allocate').send({ client_id: 'vm-2' })).body.identifier).to.equal('w-1');
      expect(await errorCode(a.allocate('vm-3'))).to.equal('pool_exhausted');
    } finally {
      t.cleanup();
    }
  });
});
