/**
 * AWS events racing the fleet, in every order fast-check's scheduler finds, on SQLite and on
 * two PostgreSQL instances sharing one database: "terminated" and "terminating" events (each
 * possibly delivered twice, through either instance) race allocations, liveness, releases and
 * sweeps of attested and unattested instances. After every request, besides the race
 * invariants of test/support/race-invariants.ts (no identifier granted while its previous holder may use
 * it: an unattested instance named in an event is taken to keep running until a 409; an
 * attested one stopped when the event was sent):
 *  - nothing is released twice: a lease (identifier and epoch) ends at most once, by one of
 *    release, reclaim, force release or terminated;
 *  - what the events were answered is what history says: `terminated` entries of each instance
 *    = the `released` it was answered, `terminating` entries = the `noted`; a redelivery counts 0;
 *  - an event ends only a lease of the instance it names.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import type { AwsEvent } from '../../src/aws/events.js';
import { FakeClock } from '../../src/clock.js';
import type { InstanceInfo } from '../../src/domain/types.js';
import { Registry } from '../../src/registry.js';
import type { RegistryRules } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { DEFAULT_RULES } from '../support/helpers.js';
import { checkRaceInvariants } from '../support/race-invariants.js';
import type { Ack } from '../support/race-invariants.js';
import { freshDatabase } from '../support/postgres.js';

const SEC = 1000;
const POOL = ['a', 'b', 'c'];
/** Instance ids as client ids; the first two claim attested. */
const CLIENTS = ['i-00000000', 'i-11111111', 'i-22222222', 'i-33333333'];
const ATTESTED = new Set(['i-00000000', 'i-11111111']);
const FACTS: InstanceInfo = { accountId: '111122223333', region: 'us-east-1', availabilityZone: 'us-east-1a', instanceType: 'm5.large', imageId: 'ami-0abcdef1234567890' };
const KEY = (client: string): string => `key-${client}-0123456789abcdef`;
const REFUSALS = new Set(['not_owner', 'stale_epoch', 'identifier_not_found', 'pool_exhausted']);
const ENDINGS = new Set(['released', 'reclaimed', 'force_released', 'terminated']);

const RULES: RegistryRules = {
  ...DEFAULT_RULES, ttlMs: 10 * SEC, cooldownMs: 10 * SEC, graceMs: 0, maxFraction: 1, minHold: 0, reapBatchSize: 2,
};

type Op =
  | { t: 'allocate'; c: number; on: number }
  | { t: 'renew'; c: number; on: number }
  | { t: 'release'; c: number; on: number }
  /** Event `n` about instance c: `gone` (terminated) or a warning (terminating); the same n is the same event id. */
  | { t: 'event'; c: number; n: number; gone: boolean; on: number }
  | { t: 'reap'; force: boolean; on: number }
  | { t: 'advance'; ms: number };

const c = fc.integer({ min: 0, max: CLIENTS.length - 1 });
const on = fc.integer({ min: 0, max: 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('allocate' as const), c, on }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('renew' as const), c, on }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('release' as const), c, on }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('event' as const), c, n: fc.integer({ min: 0, max: 1 }), gone: fc.boolean(), on }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('reap' as const), force: fc.boolean(), on }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.constantFrom(1 * SEC, 4 * SEC, 11 * SEC) }) },
);

function awsEvent(client: string, n: number, gone: boolean): AwsEvent {
  return {
    kind: gone ? 'terminated' : 'terminating', type: gone ? 'state_change' : 'spot_interruption', instanceId: client,
    eventId: `${client}-${gone ? 'gone' : 'warn'}-${n}`, detailType: 'x', source: 'aws.ec2', time: '2026-01-08T10:00:00Z', note: 'race',
  };
}

interface Setup {
  readonly registries: readonly Registry[];
  readonly checkStore: Pick<Store, 'read'>;
  close(): Promise<void>;
}

async function sqliteSetup(s: fc.Scheduler, clock: FakeClock): Promise<Setup> {
  const store = new SqliteStore({ path: ':memory:', clock, defer: (run) => { void s.schedule(Promise.resolve(), 'store flush').then(run); } });
  return { registries: [new Registry({ store, rules: RULES })], checkStore: store, close: () => store.close() };
}

async function postgresSetup(s: fc.Scheduler, clock: FakeClock): Promise<Setup> {
  const url = await freshDatabase();
  const defer = (run: () => void): void => { void s.schedule(Promise.resolve(), 'lane picks up its batch').then(run); };
  const stores = [
    await openPostgresStore({ url, clock, poolSize: 4, defer, applicationName: 'aws-0' }),
    await openPostgresStore({ url, clock, poolSize: 4, defer, applicationName: 'aws-1' }),
  ];
  const [first] = stores;
  if (!first) throw new Error('no store');
  return {
    registries: stores.map((store) => new Registry({ store, rules: RULES })),
    checkStore: first,
    close: async () => { await Promise.all(stores.map((st) => st.close())); },
  };
}

async function checkEvents(store: Pick<Store, 'read'>, answered: ReadonlyMap<string, { released: number; noted: number }>, complete: boolean, where: string): Promise<void> {
  const entries = (await Promise.all(POOL.map((id) => store.read(async (r) => (await r.history((await r.byName(id))?.rowId ?? -1)).map((e) => ({ ...e, id })))))).flat();
  const ends = new Map<string, string>();
  for (const e of entries.filter((x) => ENDINGS.has(x.event))) {
    const lease = `${e.id}#${e.epoch}`;
    expect(ends.get(lease), `${where}: lease ${lease} ended twice (${ends.get(lease) ?? ''}, then ${e.event})`).to.equal(undefined);
    ends.set(lease, e.event);
  }
  for (const client of CLIENTS) {
    const terminated = entries.filter((e) => e.event === 'terminated' && e.clientId === client).length;
    const terminating = entries.filter((e) => e.event === 'terminating' && e.clientId === client).length;
    const told = answered.get(client) ?? { released: 0, noted: 0 };
    // While events are in flight, history may be ahead of the answers, never behind; at the end, equal.
    if (complete) {
      expect(terminated, `${where}: ${client}: terminated entries vs released answered`).to.equal(told.released);
      expect(terminating, `${where}: ${client}: terminating entries vs noted answered`).to.equal(told.noted);
    } else {
      expect(terminated, `${where}: ${client}: fewer terminated entries than released answered`).to.be.at.least(told.released);
      expect(terminating, `${where}: ${client}: fewer terminating entries than noted answered`).to.be.at.least(told.noted);
    }
  }
}

async function runRace(s: fc.Scheduler, steps: readonly (readonly Op[])[], setup: Setup, clock: FakeClock): Promise<void> {
  const registryOn = (i: number): Registry => setup.registries[i % setup.registries.length] ?? setup.registries[0] as Registry;
  try {
    await s.waitFor(registryOn(0).syncPool(POOL));
    const acks: Ack[] = [];
    const releasedAt = new Map<string, number>();
    const held = new Map<string, { identifier: string; epoch: number }>();
    /** Instances AWS said terminated: they ask for nothing new (an unattested one may still renew what it holds). */
    const gone = new Set<string>();
    /** When AWS said an attested instance terminated: it uses nothing from then on. */
    const goneAt = new Map<string, number>();
    const answered = new Map<string, { released: number; noted: number }>();
    /** Event ids answered with an effect: a redelivery must have none. */
    const acted = new Set<string>();
    const check = async (where: string, complete = false): Promise<void> => {
      // The answers so far, before history is read: an event answered while the check reads is
      // committed, but may be missing from what it already read.
      const told = new Map(answered);
      await checkRaceInvariants(setup.checkStore, { pool: POOL, acks, releasedAt, rules: RULES }, where);
      await checkEvents(setup.checkStore, told, complete, where);
    };

    const run = async (op: Op, i: number): Promise<void> => {
      await s.schedule(Promise.resolve(), `start ${i} ${JSON.stringify(op)}`);
      const client = 'c' in op ? (CLIENTS[op.c] ?? '') : '';
      const registry = registryOn('on' in op ? op.on : 0);
      const sentAt = clock.now();
      try {
        switch (op.t) {
          case 'allocate': {
            if (gone.has(client)) return;
            const l = await registry.allocate(client, { key: KEY(client), instance: ATTESTED.has(client) ? FACTS : null });
            await s.schedule(Promise.resolve(), `answer ${i}`);
            acks.push({ op: 'allocate', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen });
            const deadAt = goneAt.get(client);
            if (deadAt !== undefined) releasedAt.set(`${l.identifier}#${l.epoch}`, deadAt); // granted to an instance already gone
            else held.set(client, { identifier: l.identifier, epoch: l.epoch });
            return;
          }
          case 'renew': {
            const h = held.get(client);
            if (!h) return;
            const l = await registry.renew(client, h.identifier, h.epoch, { key: KEY(client) });
            await s.schedule(Promise.resolve(), `answer ${i}`);
            acks.push({ op: 'renew', client, identifier: l.identifier, epoch: l.epoch, sentAt, lastSeen: l.lastSeen });
            return;
          }
          case 'release': {
            const h = held.get(client);
            if (!h) return;
            releasedAt.set(`${h.identifier}#${h.epoch}`, sentAt);
            held.delete(client);
            await registry.release(client, h.identifier, h.epoch, { key: KEY(client) });
            return;
          }
          case 'event': {
            if (op.gone) {
              gone.add(client);
              // An attested instance is provably gone: it stopped using what it held (or was
              // about to be granted) when AWS said so.
              if (ATTESTED.has(client)) {
                if (!goneAt.has(client)) goneAt.set(client, sentAt);
                const h = held.get(client);
                if (h) releasedAt.set(`${h.identifier}#${h.epoch}`, Math.min(releasedAt.get(`${h.identifier}#${h.epoch}`) ?? Infinity, sentAt));
                held.delete(client);
              }
            }
            const event = awsEvent(client, op.n, op.gone);
            const r = await registry.awsEvent(event);
            expect(r.released + r.noted, `op ${i}: an event did two things`).to.be.at.most(1);
            if (r.released + r.noted > 0) {
              expect(acted.has(event.eventId), `op ${i}: event ${event.eventId} acted on twice (a redelivery must change nothing)`).to.equal(false);
              acted.add(event.eventId);
            }
            const t = answered.get(client) ?? { released: 0, noted: 0 };
            answered.set(client, { released: t.released + r.released, noted: t.noted + r.noted });
            return;
          }
          case 'reap':
            await registry.reap({ force: op.force });
            return;
          case 'advance':
            clock.advance(op.ms);
            return;
        }
      } catch (e) {
        const code = typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' && REFUSALS.has(e.code) ? e.code : null;
        if (code === null) throw e;
        if (code === 'not_owner' || code === 'stale_epoch') held.delete(client); // a 409: the VM stops at once
      } finally {
        await check(`after op ${i} ${JSON.stringify(op)}`);
      }
    };
    let n = 0;
    for (const step of steps) await s.waitFor(Promise.all(step.map((op) => run(op, n++))));
    await s.waitFor(check('at the end', true));
  } finally {
    await setup.close();
  }
}

const steps = fc.array(fc.array(opArb, { minLength: 1, maxLength: 5 }), { minLength: 2, maxLength: 8 });
const RUNS = Number(process.env['RACE_RUNS'] ?? 300);
const RUNS_PG = Number(process.env['RACE_RUNS_PG'] ?? 30);

describe('races: AWS events against liveness, allocations, releases and sweeps', function () {
  this.timeout(600_000);

  it('SQLite: nothing is released twice, history matches the answers, no early grant', async () => {
    await fc.assert(fc.asyncProperty(fc.scheduler(), steps, async (s, st) => {
      const clock = new FakeClock();
      await runRace(s, st, await sqliteSetup(s, clock), clock);
    }), { numRuns: RUNS });
  });

  it('PostgreSQL, two instances: nothing is released twice, history matches the answers, no early grant', async () => {
    await fc.assert(fc.asyncProperty(fc.scheduler(), steps, async (s, st) => {
      const clock = new FakeClock();
      await runRace(s, st, await postgresSetup(s, clock), clock);
    }), { numRuns: RUNS_PG });
  });
});
