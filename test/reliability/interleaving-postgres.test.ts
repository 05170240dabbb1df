/**
 * Races on a real PostgreSQL, where renewals, releases and allocations are batched (each batch
 * one statement; an allocation the statement cannot decide runs the full use case): two registry instances
 * share one database. A history runs in steps, and within each step fast-check's scheduler
 * decides when each request starts, when each instance's free lane picks up what queued
 * meanwhile (renewals or releases in one statement, other writes in one group commit), when
 * each answer reaches its VM, and when the clock moves. Batched renewals race allocations,
 * releases, force releases and sweeps on both instances, and batched allocations race each other,
 * renewals, releases, sweeps and the same client allocating through both instances at once (both
 * answers that are leases name the same identifier and epoch). The instances are set to different
 * cool-downs (10 s and 3 s), so the fence window a VM was told depends on which answered it and
 * what the lease was told before; after every request:
 *  - an acknowledged liveness names the lease the VM asked for: its client, and its epoch when it
 *    sent one (a renewal never extends a lease the client no longer holds: reclaimed, released,
 *    or granted again, to another client or to a newer incarnation of the same one);
 *  - no acknowledged allocate/liveness is reclaimed less than a TTL after the last_seen it answered;
 *  - no identifier is granted while its previous holder may still use it (fence_after_ms, as it
 *    was told, after it sent the request that told it);
 *  - one client holds at most one identifier, and epochs only grow;
 *  - every acknowledged allocate has its `allocated` history entry (same identifier, epoch and
 *    client), and no identifier under one epoch was told to two different clients;
 * and at the end, no lease's last_seen is later than the last one its holder was answered.
 * The real I/O means a failing schedule does not replay exactly; the properties do not depend on it.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { FakeClock } from '../../src/clock.js';
import { Registry } from '../../src/registry.js';
import type { RegistryRules } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import type { PostgresStore } from '../../src/store/postgres/store.js';
import { DEFAULT_RULES } from '../support/helpers.js';
import { checkRaceInvariants } from '../support/race-invariants.js';
import type { Ack } from '../support/race-invariants.js';
import { freshDatabase } from '../support/postgres.js';

const SEC = 1000;
const POOL = ['a', 'b', 'c'];
const CLIENTS = ['vm-0', 'vm-1', 'vm-2', 'vm-3'];
/** Answers a VM may get in a race; anything else (internal, unavailable) fails the property. */
const REFUSALS = new Set(['not_owner', 'stale_epoch', 'identifier_not_found', 'pool_exhausted']);

function isRefusal(e: unknown): e is { code: string } {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' && REFUSALS.has(e.code);
}

type Op =
  | { t: 'allocate'; c: number; on: number }
  /** The same client through both instances at once (a VM retrying through another instance). */
  | { t: 'allocateBoth'; c: number }
  | { t: 'renew'; c: number; on: number; sendEpoch: boolean }
  | { t: 'renewOld'; c: number; on: number; sendEpoch: boolean }
  | { t: 'release'; c: number; on: number }
  | { t: 'force'; id: number; on: number }
  | { t: 'reap'; force: boolean; on: number }
  | { t: 'advance'; ms: number };

const c = fc.integer({ min: 0, max: CLIENTS.length - 1 });
const on = fc.integer({ min: 0, max: 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('allocate' as const), c, on }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('renew' as const), c, on, sendEpoch: fc.boolean() }) },
  // An old incarnation of a VM (same hostname, rebooted) still sending its first lease's liveness.
  { weight: 2, arbitrary: fc.record({ t: fc.constant('renewOld' as const), c, on, sendEpoch: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('release' as const), c, on }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('force' as const), id: fc.integer({ min: 0, max: POOL.length - 1 }), on }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('reap' as const), force: fc.boolean(), on }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.constantFrom(1 * SEC, 4 * SEC, 9 * SEC, 11 * SEC, 11 * SEC) }) },
);


/**
 * A step where a client allocates through both instances at once, beside allocations and
 * renewals of other clients: nothing in the step may take its lease away, so every lease it is
 * answered must be the same identifier and epoch.
 */
const bothStepArb: fc.Arbitrary<Op[]> = fc.tuple(
  c,
  fc.array(fc.oneof(
    fc.record({ t: fc.constant('allocate' as const), c, on }),
    fc.record({ t: fc.constant('renew' as const), c, on, sendEpoch: fc.boolean() }),
  ), { maxLength: 3 }),
).map(([client, others]) => [{ t: 'allocateBoth' as const, c: client }, ...others.filter((o) => o.c !== client)]);

/**
 * A drill the random histories may start with: vm-0 (holding a) renews through the instance with
 * the long cool-down, then a is force released through the one with the short cool-down, time
 * passes beyond the short one, and vm-3 (holding nothing) asks: a must still be cooling.
 */
const FENCE_DRILL: Op[][] = [
  [{ t: 'renew', c: 0, on: 0, sendEpoch: true }],
  [{ t: 'force', id: 0, on: 1 }],
  [{ t: 'advance', ms: 4 * SEC }],
  [{ t: 'allocate', c: 3, on: 1 }],
];

const RULES: RegistryRules = {
  ...DEFAULT_RULES, ttlMs: 10 * SEC, cooldownMs: 10 * SEC, graceMs: 0, maxFraction: 1, minHold: 0, reapBatchSize: 2,
};
const SHORT_COOLDOWN = 3 * SEC;
const RUNS = Number(process.env['RACE_RUNS_PG'] ?? 100);
/** Renewal statements and the renewals they carried, over every run: batches must have formed. */
const batching = { statements: 0, renewals: 0, grantStatements: 0, grantAsks: 0, granted: 0, bothAgreed: 0 };

async function runRace(s: fc.Scheduler, steps: readonly (readonly Op[])[]): Promise<void> {
  const clock = new FakeClock();
  const url = await freshDatabase();
  const defer = (run: () => void): void => { void s.schedule(Promise.resolve(), 'lane picks up its batch').then(run); };
  // Two lanes each: writes queue behind a busy lane and renewals behind the one renewal lane.
  const stores: PostgresStore[] = [];
  try {
    for (let i = 0; i < 2; i++) stores.push(await openPostgresStore({ url, clock, poolSize: 4, defer, applicationName: `race-${i}` }));
    const [first, second] = stores;
    if (!first || !second) throw new Error('no stores');
    // The second instance is set to a shorter cool-down: a lease answered through either keeps the
    // longer window it was told, and no identifier is granted before it ends (the acks record it).
    const registries = [new Registry({ store: first, rules: RULES }), new Registry({ store: second, rules: { ...RULES, cooldownMs: SHORT_COOLDOWN } })];
    const registryOn = (i: number): Registry => registries[i] ?? registries[0] ?? new Registry({ store: first, rules: RULES });
    await s.waitFor(registryOn(0).syncPool(POOL));

    const acks: Ack[] = [];
    const releasedAt = new Map<string, number>(); // identifier#epoch -> when its holder sent the release
    const held = new Map<string, { identifier: string; epoch: number }>(); // what each VM believes it holds
    const firstLease = new Map<string, { identifier: string; epoch: number }>(); // what its first incarnation was granted
    // Leases to renew from the first step on: the race starts with three VMs holding one each.
    for (const client of CLIENTS.slice(0, POOL.length)) {
      const sentAt = clock.now();
      const l = await s.waitFor(registryOn(0).allocate(client));
      acks.push({ op: 'allocate', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen, fence: l.fenceAfterMs });
      held.set(client, { identifier: l.identifier, epoch: l.epoch });
      firstLease.set(client, { identifier: l.identifier, epoch: l.epoch });
    }

    const check = (where: string): Promise<void> => checkRaceInvariants(first, { pool: POOL, acks, releasedAt, rules: RULES }, where);

    const run = async (op: Op, i: number): Promise<void> => {
      await s.schedule(Promise.resolve(), `start ${i} ${JSON.stringify(op)}`);
      const client = 'c' in op ? (CLIENTS[op.c] ?? '') : '';
      const registry = registryOn('on' in op ? op.on : 0);
      const sentAt = clock.now();
      try {
        switch (op.t) {
          case 'allocate': {
            const l = await registry.allocate(client);
            await s.schedule(Promise.resolve(), `answer ${i}`);
            expect(l.clientId, `op ${i}: allocate answered another client's lease`).to.equal(client);
            acks.push({ op: 'allocate', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen, fence: l.fenceAfterMs });
            held.set(client, { identifier: l.identifier, epoch: l.epoch });
            if (!firstLease.has(client)) firstLease.set(client, { identifier: l.identifier, epoch: l.epoch });
            return;
          }
          case 'allocateBoth': {
            const answers = await Promise.all(registries.map((r) => r.allocate(client).catch((e: unknown) => {
              if (isRefusal(e) && e.code === 'pool_exhausted') return null; // the other's grant not yet committed, its row skipped
              throw e;
            })));
            await s.schedule(Promise.resolve(), `answer ${i}`);
            const leases = answers.flatMap((l) => (l ? [l] : []));
            for (const l of leases) {
              expect(l.clientId, `op ${i}: allocate answered another client's lease`).to.equal(client);
              acks.push({ op: 'allocate', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen, fence: l.fenceAfterMs });
            }
            expect(new Set(leases.map((l) => `${l.identifier}#${l.epoch}`)).size, `op ${i}: ${client} through two instances got two different leases`)
              .to.be.at.most(1);
            if (leases.length === 2) batching.bothAgreed++;
            const l = leases[0];
            if (l) {
              held.set(client, { identifier: l.identifier, epoch: l.epoch });
              if (!firstLease.has(client)) firstLease.set(client, { identifier: l.identifier, epoch: l.epoch });
            }
            return;
          }
          case 'renew':
          case 'renewOld': {
            const h = op.t === 'renew' ? held.get(client) : firstLease.get(client);
            if (!h) return;
            const epoch = op.sendEpoch ? h.epoch : undefined;
            try {
              const l = await registry.renew(client, h.identifier, epoch);
              await s.schedule(Promise.resolve(), `answer ${i}`);
              const asked = { client, identifier: h.identifier, epoch: epoch ?? l.epoch };
              expect({ client: l.clientId, identifier: l.identifier, epoch: l.epoch }, `op ${i}: a liveness of ${client} for ${h.identifier}#${String(epoch)} was answered with a lease it does not hold`)
                .to.deep.equal(asked);
              acks.push({ op: 'renew', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen, fence: l.fenceAfterMs });
            } catch (e) {
              if (op.t === 'renewOld' && isRefusal(e)) return; // the old incarnation stops; the current one is not told
              throw e;
            }
            return;
          }
          case 'release': {
            const h = held.get(client);
            if (!h) return;
            releasedAt.set(`${h.identifier}#${h.epoch}`, sentAt); // it stopped using it before sending
            held.delete(client);
            await registry.release(client, h.identifier, h.epoch);
            return;
          }
          case 'force':
            await registry.forceRelease(POOL[op.id] ?? '');
            return;
          case 'reap':
            await registry.reap({ force: op.force });
            return;
          case 'advance':
            clock.advance(op.ms);
            return;
        }
      } catch (e) {
        if (!isRefusal(e)) throw e;
        if (e.code === 'not_owner' || e.code === 'stale_epoch') held.delete(client); // a 409: the VM stops at once
      } finally {
        await check(`after op ${i} ${JSON.stringify(op)}`);
      }
    };
    let n = 0;
    for (const step of steps) await s.waitFor(Promise.all(step.map((op) => run(op, n++))));
    await s.waitFor(check('at the end'));

    // Nobody's renewal moved a lease past what its holder was told.
    for (const rec of await first.read((r) => r.list({ status: 'leased', now: r.now, after: null, limit: null }))) {
      const told = acks.filter((a) => a.client === rec.holder?.clientId && a.identifier === rec.name && a.epoch === rec.epoch);
      expect(told, `${rec.name}#${rec.epoch} is leased to ${rec.holder?.clientId ?? '?'} who was never told`).not.to.be.empty;
      expect(rec.holder?.lastSeen, `${rec.name}#${rec.epoch}: last_seen beyond what ${rec.holder?.clientId ?? '?'} was answered`)
        .to.equal(Math.max(...told.map((a) => a.lastSeen)));
    }
  } finally {
    for (const st of stores) {
      batching.statements += st.heldStats.renew.statements;
      batching.renewals += st.heldStats.renew.asks;
      batching.grantStatements += st.grantStats.statements;
      batching.grantAsks += st.grantStats.asks;
      batching.granted += st.grantStats.granted;
    }
    await Promise.all(stores.map((st) => st.close()));
  }
}

describe('races on PostgreSQL: batched renewals and allocations against sweeps, releases, force releases and each other on two instances', function () {
  this.timeout(600_000);

  it('no renewal extends a lease its client no longer holds, none acknowledged is reclaimed within a TTL, no identifier has two live holders', async () => {
    // Steps one after another, the requests of a step at once: a history (a lease forced away,
    // the cool-down passing, the identifier granted to another) with races at every step.
    const step = fc.oneof({ weight: 4, arbitrary: fc.array(opArb, { minLength: 1, maxLength: 4 }) }, { weight: 1, arbitrary: bothStepArb });
    const steps = fc.tuple(fc.boolean(), fc.array(step, { minLength: 3, maxLength: 10 }))
      .map(([drill, rest]) => (drill ? [...FENCE_DRILL, ...rest] : rest));
    await fc.assert(fc.asyncProperty(fc.scheduler(), steps, runRace), { numRuns: RUNS });
    expect(batching.renewals, 'renewals must have shared statements in some schedules').to.be.above(batching.statements);
    expect(batching.grantAsks, 'allocations must have shared statements in some schedules').to.be.above(batching.grantStatements);
    expect(batching.granted, 'the one-statement grant must have granted').to.be.above(0);
    expect(batching.bothAgreed, 'a client must have been answered through both instances in some schedules').to.be.above(0);
  });
});
