/**
 * Model-based property test. Random sequences of allocate, liveness, release, force release,
 * reaper sweeps, clock advances and wall-clock jumps, restarts and pool edits run against
 * the real registry on a real SQLite file and against a small in-memory model of the lease rules (docs/safety.md, "The lease rules").
 * After every step the two agree on every identifier, and no identifier is believed held by
 * two live VMs (each VM fencing itself as docs/vm.md tells it to).
 *
 * The same histories run on PostgreSQL too, where registry time is the database server's
 * clock: real time, which neither the registry host's wall-clock jumps nor its reboots touch.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import fc from 'fast-check';
import { FakeTimeSource } from '../../src/clock.js';
import { Registry } from '../../src/registry.js';
import { fenceAfterMs } from '../../src/domain/lease.js';
import type { RegistryRules } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Clock } from '../../src/clock.js';
import type { Store } from '../../src/store/types.js';
import type { Status } from '../../src/domain/types.js';
import type { EngineName } from '../support/engines.js';
import { tempDir } from '../support/helpers.js';
import { freshDatabase } from '../support/postgres.js';

const SEC = 1000;
// Small on purpose: few identifiers and clients make reuse, contention and exhaustion common.
const UNIVERSE = Array.from({ length: 5 }, (_, i) => `u-${i}`);
const INITIAL_POOL = UNIVERSE.slice(0, 3);
const CLIENTS = Array.from({ length: 4 }, (_, i) => `vm-${i}`);

// ---------------------------------------------------------------- the model of the lease rules (docs/safety.md)

interface MIdent {
  /** Insertion order, as the store's row id. */
  rowId: number;
  order: number;
  retired: boolean;
  epoch: number;
  holder: { client: string; allocatedAt: number; lastSeen: number } | null;
  availableAt: number;
  /** The client granted it last, and when (sticky identity). */
  last?: { client: string; at: number };
}

type Outcome = { ok: true; value: unknown } | { ok: false; code: string };
const ok = (value: unknown): Outcome => ({ ok: true, value });
const fail = (code: string): Outcome => ({ ok: false, code });

class Model {
  readonly ids = new Map<string, MIdent>();
  private lastHistoryAt = 0;
  private offset: number | null = null;
  private floorNow = 0;
  startedAt = 0;
  /** The guard's memory, as the store keeps it: reclaims, whether it is tripped, where its count starts. */
  private reclaims: number[] = [];
  private tripped = false;
  private countFrom = 0;
  private refusals: { client: string; at: number }[] = [];
  private fleetSeenAt: number | null = null;
  private clockStepAt: number | null = null;
  private skew = 0;

  /** `server`: PostgreSQL's clock (registry time there); null for SQLite's anchored host clock. */
  constructor(readonly rules: RegistryRules, readonly src: FakeTimeSource, pool: readonly string[], readonly server: Clock | null = null) {
    this.boot(false);
    this.sync(pool);
  }

  /** Registry time: offset + monotonic, the offset kept in the store for the whole boot (src/clock.ts, restated); the server's on PostgreSQL. */
  now(): number {
    if (this.server) return this.server.now();
    return Math.max(this.floorNow, Math.floor((this.offset ?? 0) + this.src.monotonic()));
  }

  /** A process starts: the same boot keeps time and cool-downs exactly; a new boot anchors anew (SQLite). */
  boot(rebooted: boolean): void {
    if (this.server) {
      this.startedAt = this.now(); // the only instance: the service starts with it
      this.skew = this.src.wall() - this.now();
      return;
    }
    // Every time the store holds: history, liveness, the last VM request seen, refusals.
    let floor = Math.max(this.lastHistoryAt, this.fleetSeenAt ?? 0, ...this.refusals.map((r) => r.at));
    for (const i of this.ids.values()) if (i.holder) floor = Math.max(floor, i.holder.lastSeen);
    if (this.offset === null || rebooted) {
      this.offset = Math.max(this.src.wall(), floor) - this.src.monotonic();
      this.floorNow = floor;
      // Nobody can tell how much real time the reboot took: a running cool-down counts its remaining part again.
      const shift = this.now() - floor;
      if (rebooted && shift > 0) for (const i of this.ids.values()) if (!i.holder && i.availableAt > floor) i.availableAt += shift;
    }
    this.startedAt = this.now(); // the only instance: the service starts with it
    this.skew = this.src.wall() - this.now();
  }

  private seen(): void {
    this.fleetSeenAt = this.now();
  }

  private history(): void {
    this.lastHistoryAt = this.now();
  }

  status(i: MIdent): Status {
    if (i.holder) return 'leased';
    if (i.retired) return 'retired';
    return i.availableAt > this.now() ? 'cooling' : 'free';
  }

  allocate(client: string): Outcome {
    this.seen();
    const t = this.now();
    for (const [name, i] of this.ids) {
      if (i.holder?.client === client) {
        i.holder.lastSeen = Math.max(i.holder.lastSeen, t);
        return ok({ identifier: name, epoch: i.epoch });
      }
    }
    const allocatable = (i: MIdent): boolean => !i.holder && !i.retired && i.availableAt <= t;
    // Sticky identity: the identifier it was granted last, if nobody was granted it since, and only if allocatable now.
    let sticky: [string, MIdent] | null = null;
    for (const [name, i] of this.ids) {
      const mine = i.last?.client === client ? i.last.at : null;
      const theirs = sticky?.[1].last?.at ?? -Infinity;
      if (mine !== null && (!sticky || mine > theirs || (mine === theirs && i.rowId > sticky[1].rowId))) sticky = [name, i];
    }
    let best: [string, MIdent] | null = sticky && allocatable(sticky[1]) ? sticky : null;
    for (const [name, i] of this.ids) {
      if (sticky && best === sticky) break;
      if (!allocatable(i)) continue;
      if (!best || i.availableAt < best[1].availableAt || (i.availableAt === best[1].availableAt && i.order < best[1].order)) best = [name, i];
    }
    if (!best) {
      this.refusals.push({ client, at: t });
      return fail('pool_exhausted');
    }
    const [name, i] = best;
    i.epoch += 1;
    i.holder = { client, allocatedAt: t, lastSeen: t };
    i.last = { client, at: t };
    this.history();
    return ok({ identifier: name, epoch: i.epoch });
  }

  private owned(client: string, name: string, epoch: number | undefined): MIdent | Outcome {
    const i = this.ids.get(name);
    if (!i) return fail('identifier_not_found');
    if (i.holder?.client !== client) return fail('not_owner');
    if (epoch !== undefined && epoch !== i.epoch) return fail('stale_epoch');
    return i;
  }

  renew(client: string, name: string, epoch: number | undefined): Outcome {
    this.seen();
    const i = this.owned(client, name, epoch);
    if ('ok' in i) return i;
    if (i.holder) i.holder.lastSeen = Math.max(i.holder.lastSeen, this.now());
    return ok({ identifier: name, epoch: i.epoch });
  }

  release(client: string, name: string, epoch: number | undefined): Outcome {
    this.seen();
    const i = this.owned(client, name, epoch);
    if ('ok' in i) return i;
    i.holder = null;
    i.availableAt = this.now();
    this.history();
    return ok({ identifier: name, epoch: i.epoch });
  }

  forceRelease(name: string): Outcome {
    const i = this.ids.get(name);
    if (!i) return fail('identifier_not_found');
    if (i.holder) {
      i.holder = null;
      i.availableAt = this.now() + this.rules.cooldownMs;
      this.history();
    }
    return ok({ identifier: name, epoch: i.epoch });
  }

  reap(force: boolean): Outcome {
    const t = this.now();
    const skew = this.src.wall() - t;
    if (Math.abs(skew - this.skew) > 1000) this.clockStepAt = t;
    this.skew = skew;
    const ttl = this.rules.ttlMs;
    const held = [...this.ids.values()].filter((i) => i.holder);
    const expired = held
      .filter((i) => i.holder && i.holder.lastSeen <= t - ttl)
      .sort((a, b) => (a.holder?.lastSeen ?? 0) - (b.holder?.lastSeen ?? 0) || a.rowId - b.rowId);
    // Reclaims made while it was tripped never count toward tripping it again.
    const inTtl = this.reclaims.filter((at) => at >= Math.max(t - ttl, this.countFrom)).length;
    const inMinute = this.reclaims.filter((at) => at >= t - 60_000).length;
    const refused = new Set(this.refusals.filter((r) => r.at >= t - 60_000).map((r) => r.client)).size;
    this.refusals = this.refusals.filter((r) => r.at >= t - 120_000);
    let allowance = Infinity;
    let guarded = false;
    const inWindow = expired.length + inTtl;
    if (!force && this.startedAt + this.rules.graceMs - t > 0) {
      allowance = 0;
    } else if (!force && expired.length === 0) {
      if (this.tripped) this.countFrom = t; // nothing left expired: the guard rests
      this.tripped = false;
    } else if (!force && (this.tripped || (inWindow > this.rules.minHold && inWindow > this.rules.maxFraction * (held.length + inTtl)))) {
      // Once tripped, it holds until a sweep finds nothing expired.
      this.tripped = true;
      guarded = true;
      const lostFleet = this.fleetSeenAt === null || t - this.fleetSeenAt >= ttl;
      const lostTime = this.clockStepAt !== null && t - this.clockStepAt < ttl;
      if (lostFleet || lostTime || this.rules.guardedRatePerMinute === 0) allowance = 0;
      else allowance = Math.max(0, Math.max(this.rules.guardedRatePerMinute, refused) - inMinute);
    }
    const take = expired.slice(0, allowance === Infinity ? expired.length : allowance);
    for (const i of take) {
      i.holder = null;
      i.availableAt = t + this.rules.cooldownMs;
      this.reclaims.push(t);
      this.history();
    }
    return ok({ reclaimed: take.length, held: guarded });
  }

  sync(pool: readonly string[]): void {
    const inFile = new Set(pool);
    pool.forEach((name, order) => {
      const i = this.ids.get(name);
      if (!i) {
        this.ids.set(name, { rowId: this.ids.size + 1, order, retired: false, epoch: 0, holder: null, availableAt: 0 });
        return;
      }
      if (i.retired) this.history();
      i.retired = false;
      i.order = order;
    });
    for (const [name, i] of this.ids) {
      if (!inFile.has(name) && !i.retired) {
        i.retired = true;
        this.history();
      }
    }
  }
}

// ---------------------------------------------------------------- the commands

type Cmd =
  | { t: 'allocate'; c: number }
  | { t: 'renew'; c: number; target: number | null; epoch: 'none' | 'current' | 'stale' }
  | { t: 'release'; c: number; target: number | null; epoch: 'none' | 'current' | 'stale' }
  | { t: 'force'; id: number | null; c: number }
  | { t: 'reap'; force: boolean }
  | { t: 'advance'; ms: number }
  | { t: 'jump'; ms: number }
  | { t: 'restart'; downMs: number; jumpMs: number; reboot: boolean }
  | { t: 'pool'; names: string[] };

const client = fc.integer({ min: 0, max: CLIENTS.length - 1 });
const ident = fc.integer({ min: 0, max: UNIVERSE.length - 1 });
const epochMode = fc.constantFrom<'none' | 'current' | 'stale'>('none', 'current', 'current', 'stale');
const target = fc.option(ident, { freq: 4 }); // mostly the identifier the VM believes it holds
const HOUR = 3600 * SEC;

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ t: fc.constant('allocate' as const), c: client }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('renew' as const), c: client, target, epoch: epochMode }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('release' as const), c: client, target, epoch: epochMode }) },
  // An operator force-releases a VM's identifier (null: the one client c holds) or any identifier.
  { weight: 2, arbitrary: fc.record({ t: fc.constant('force' as const), id: fc.option(ident, { freq: 2 }), c: client }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('reap' as const), force: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.oneof(fc.integer({ min: 0, max: 20 * SEC }), fc.integer({ min: 0, max: 90 * SEC })) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('jump' as const), ms: fc.integer({ min: -6 * HOUR, max: 6 * HOUR }) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant('restart' as const),
      downMs: fc.oneof(fc.integer({ min: 0, max: 5 * SEC }), fc.integer({ min: 0, max: 5 * 60 * SEC })),
      jumpMs: fc.oneof(fc.constant(0), fc.integer({ min: -6 * HOUR, max: 6 * HOUR })),
      reboot: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('pool' as const), names: fc.shuffledSubarray(UNIVERSE, { minLength: 1 }) }) },
);

// ---------------------------------------------------------------- the real system

class Real {
  store!: Store;
  registry!: Registry;
  /** A SQLite file, or on PostgreSQL a database URL and the server's clock. */
  constructor(readonly path: string, readonly rules: RegistryRules, readonly src: FakeTimeSource, readonly pg: { url: string; clock: Clock } | null) {}
  async start(pool: readonly string[]): Promise<void> {
    this.store = this.pg
      ? await openPostgresStore({ url: this.pg.url, clock: this.pg.clock, poolSize: 2 })
      : new SqliteStore({ path: this.path, source: this.src });
    this.registry = new Registry({ store: this.store, source: this.src, rules: this.rules });
    await this.registry.syncPool(pool);
    await this.registry.open();
  }
  async stop(): Promise<void> {
    await this.registry.close();
    await this.store.close();
  }
}

async function outcome(p: Promise<{ identifier: string; epoch: number }>): Promise<Outcome> {
  try {
    const v = await p;
    return ok({ identifier: v.identifier, epoch: v.epoch });
  } catch (e) {
    if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return fail(e.code);
    throw e;
  }
}

/** What each VM believes it holds, and until when by its own (real-time) clock. */
interface Belief { identifier: string; epoch: number; sentAt: number }

async function runScenario(engine: EngineName, rules: RegistryRules, cmds: Cmd[], checkBeliefs: boolean): Promise<void> {
  const t = tempDir();
  const src = new FakeTimeSource();
  let pool: string[] = [...INITIAL_POOL];
  // The VMs' clocks: they run at the rate of real time, and the registry host's reboot does not reset them.
  let elapsed = 0;
  const realTime = (): number => elapsed;
  // PostgreSQL's clock: real time too, on another machine than the registry's.
  const serverStart = src.wall();
  const server: Clock = { now: () => serverStart + elapsed };
  const real = new Real(join(t.dir, 'model.db'), rules, src, engine === 'postgres' ? { url: await freshDatabase(), clock: server } : null);
  try {
    await real.start(pool);
    const model = new Model(rules, src, pool, engine === 'postgres' ? server : null);
    const beliefs = new Map<string, Belief>();
    const lastEpoch = new Map<string, number>();

    for (const [step, cmd] of cmds.entries()) {
      const where = `step ${step} ${JSON.stringify(cmd)}`;
      switch (cmd.t) {
        case 'allocate': {
          const c = CLIENTS[cmd.c] ?? '';
          const sentAt = realTime();
          const got = await outcome(real.registry.allocate(c));
          expect(got, where).to.deep.equal(model.allocate(c));
          if (got.ok && typeof got.value === 'object' && got.value && 'identifier' in got.value && 'epoch' in got.value) {
            beliefs.set(c, { identifier: String(got.value.identifier), epoch: Number(got.value.epoch), sentAt });
          }
          break;
        }
        case 'renew':
        case 'release': {
          const c = CLIENTS[cmd.c] ?? '';
          const belief = beliefs.get(c);
          const name = cmd.target === null ? (belief?.identifier ?? UNIVERSE[0] ?? '') : (UNIVERSE[cmd.target] ?? '');
          const current = belief && belief.identifier === name ? belief.epoch : 1;
          const epoch = cmd.epoch === 'none' ? undefined : cmd.epoch === 'current' ? current : current + 1;
          const sentAt = realTime();
          const got = cmd.t === 'renew'
            ? await outcome(real.registry.renew(c, name, epoch))
            : await outcome(real.registry.release(c, name, epoch).then((i) => ({ identifier: i.identifier, epoch: i.epoch })));
          expect(got, where).to.deep.equal(cmd.t === 'renew' ? model.renew(c, name, epoch) : model.release(c, name, epoch));
          // The VM's side: a success renews its belief (or ends it, on release); a 409 on what it holds ends it.
          if (got.ok && cmd.t === 'renew') beliefs.set(c, { identifier: name, epoch: model.ids.get(name)?.epoch ?? 0, sentAt });
          if (got.ok && cmd.t === 'release') beliefs.delete(c);
          if (!got.ok && belief?.identifier === name && cmd.epoch !== 'stale' && got.code === 'not_owner') beliefs.delete(c);
          break;
        }
        case 'force': {
          const name = cmd.id === null ? (beliefs.get(CLIENTS[cmd.c] ?? '')?.identifier ?? UNIVERSE[0] ?? '') : (UNIVERSE[cmd.id] ?? '');
          const got = await outcome(real.registry.forceRelease(name));
          expect(got, where).to.deep.equal(model.forceRelease(name));
          break;
        }
        case 'reap': {
          const r = await real.registry.reap({ force: cmd.force });
          expect(ok({ reclaimed: r.reclaimed, held: r.held }), where).to.deep.equal(model.reap(cmd.force));
          break;
        }
        case 'advance':
          // The registry serves meanwhile, beating (every second in a real process; every two
          // is enough here to show no gap in service). Time passing without a beat is an outage.
          for (let left = cmd.ms; left > 0; left -= 2 * SEC) {
            const step = Math.min(2 * SEC, left);
            src.advance(step);
            elapsed += step;
            await real.registry.beat();
          }
          break;
        case 'jump':
          src.jumpWall(cmd.ms);
          break;
        case 'restart':
          await real.stop();
          src.advance(cmd.downMs);
          elapsed += cmd.downMs;
          src.jumpWall(cmd.jumpMs);
          if (cmd.reboot) src.reboot();
          await real.start(pool);
          model.sync(pool);
          model.boot(cmd.reboot);
          break;
        case 'pool':
          pool = cmd.names;
          await real.registry.syncPool(pool, null, { force: true }); // the model has no sync guard: test/domain/pool-sync.test.ts
          model.sync(pool);
          break;
      }

      // The two agree on time and on every identifier.
      expect(real.registry.now(), `${where}: registry time`).to.equal(model.now());
      for (const name of UNIVERSE) {
        const m = model.ids.get(name);
        let r;
        try {
          r = await real.registry.identifier(name);
        } catch (e) {
          expect(m, `${where}: ${name} missing from the registry`).to.equal(undefined);
          expect(e).to.have.property('code', 'identifier_not_found');
          continue;
        }
        expect(m, `${where}: ${name} missing from the model`).to.not.equal(undefined);
        if (!m) continue;
        expect({
          status: r.status, epoch: r.epoch, client: r.lease?.clientId ?? null,
          allocatedAt: r.lease?.allocatedAt ?? null, lastSeen: r.lease?.lastSeen ?? null,
        }, `${where}: ${name}`).to.deep.equal({
          status: model.status(m), epoch: m.epoch, client: m.holder?.client ?? null,
          allocatedAt: m.holder?.allocatedAt ?? null, lastSeen: m.holder?.lastSeen ?? null,
        });
        // Epochs never go back.
        expect(r.epoch, `${where}: epoch of ${name} went back`).to.be.at.least(lastEpoch.get(name) ?? 0);
        lastEpoch.set(name, r.epoch);
      }
      // One client, one identifier.
      const holders = (await real.registry.list({ status: 'leased', after: null, limit: null })).items.map((i) => i.lease?.clientId);
      expect(new Set(holders).size, `${where}: a client holds two identifiers`).to.equal(holders.length);

      // The promise: no identifier is believed held by two live VMs. A VM stops using its
      // identifier fence_after_ms after it sent its last successful allocate or liveness.
      if (checkBeliefs) {
        const live = new Map<string, string[]>();
        for (const [c, b] of beliefs) {
          if (realTime() < b.sentAt + fenceAfterMs(rules)) live.set(b.identifier, [...(live.get(b.identifier) ?? []), c]);
        }
        for (const [name, cs] of live) expect(cs, `${where}: ${name} believed held by ${cs.join(', ')}`).to.have.length(1);
      }
    }
  } finally {
    try { await real.stop(); } catch { /* already closed */ }
    t.cleanup();
  }
}

// About 4 s a property on this machine; MODEL_RUNS=2000 for a long hunt.
const RUNS = Number(process.env['MODEL_RUNS'] ?? 250);

// PostgreSQL: fewer histories (each opens a database and its connections), the same commands.
const PG_RUNS = Number(process.env['MODEL_PG_RUNS'] ?? 40);

for (const engine of ['sqlite', 'postgres'] as const) {
  describe(`model [${engine}]: the registry agrees with the lease rules under random histories`, function () {
    this.timeout(300_000);
    const numRuns = engine === 'sqlite' ? RUNS : PG_RUNS;

    it('with the documented defaults (cool-down and grace = TTL): agreement, and never two live holders', async () => {
      const rules: RegistryRules = {
        ttlMs: 30 * SEC, cooldownMs: 30 * SEC, graceMs: 30 * SEC, maxFraction: 0.5, minHold: 1, guardedRatePerMinute: 1, reapBatchSize: 2,
      };
      await fc.assert(
        fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 50, size: 'max' }), (cmds) => runScenario(engine, rules, cmds, true)),
        { numRuns },
      );
    });

    it('with random timing rules: agreement with the model', async () => {
      const rulesArb = fc.record({
        ttlMs: fc.integer({ min: 1, max: 60 }).map((s) => s * SEC),
        cooldownMs: fc.integer({ min: 0, max: 60 }).map((s) => s * SEC),
        graceMs: fc.integer({ min: 0, max: 60 }).map((s) => s * SEC),
        maxFraction: fc.constantFrom(0.25, 0.5, 1),
        minHold: fc.integer({ min: 0, max: 3 }),
        guardedRatePerMinute: fc.integer({ min: 0, max: 3 }),
        reapBatchSize: fc.integer({ min: 1, max: 4 }),
      });
      await fc.assert(
        fc.asyncProperty(rulesArb, fc.array(cmdArb, { minLength: 1, maxLength: 50, size: 'max' }), (rules, cmds) => runScenario(engine, rules, cmds, false)),
        { numRuns },
      );
    });
  });
}
