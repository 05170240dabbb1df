/**
 * The listing is written without building its views as objects: by SQLite in SQL
 * (src/store/sqlite/listing-json.ts) or, where the store does not, by identifierViewsText.
 * `identifierView` (http/views.ts) over `infoOf` stays the one definition of a view: these
 * properties hold both writers to the bytes JSON.stringify writes for it, over random
 * identifier states, times, rules, filters, cursors and page sizes, on both engines.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { FakeClock } from '../../src/clock.js';
import { instanceJson } from '../../src/domain/instance.js';
import { infoOf, recordOf } from '../../src/domain/lease.js';
import type { InstanceInfo } from '../../src/domain/types.js';
import type { RecordTuple, Status } from '../../src/domain/types.js';
import { STATUSES } from '../../src/domain/types.js';
import { createApp } from '../../src/http/app.js';
import { identifierView, identifierViewsJson, identifierViewsText } from '../../src/http/views.js';
import { Registry } from '../../src/registry.js';
import type { ListCursor, RegistryRules } from '../../src/registry.js';
import type { DumpIdentifier } from '../../src/store/dump.js';
import { PostgresStore } from '../../src/store/postgres/store.js';
import { loadSqlite } from '../../src/store/sqlite/dump.js';
import type { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { ENGINES, openTestStore, useEngine } from '../support/engines.js';
import type { EngineName } from '../support/engines.js';
import { DEFAULT_RULES } from '../support/helpers.js';
import request from 'supertest';

/** The last millisecond toISOString can write at all (±8.64e15 ms is the Date range). */
const DATE_LIMIT = 8_640_000_000_000_000;
/** The last millisecond of year 9999: the plain ISO form ends here. */
const PLAIN_LIMIT = 253_402_300_799_999;
const NOW_2026 = Date.parse('2026-01-08T10:00:00.000Z');
const DAY = 86_400_000;

/** UTF-8 (both stores' text) cannot hold half of a surrogate pair, so no store holds one. */
const LONE_SURROGATE = /\p{Cs}/u;

/** What docs/api.md "Names" allows, and what it does not but a store may still hold (an import, an old pool file). */
function text(engine: EngineName): fc.Arbitrary<string> {
  return fc.oneof(
    fc.stringMatching(/^[A-Za-z0-9._:-]{1,30}$/),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }),
    fc.string({ unit: 'grapheme-composite', minLength: 1, maxLength: 8 }),
    fc.constantFrom('"', '\\', '\\"', '\n\t\r\b\f', '\u001f\u007f', '\u2028\u2029', 'é😀', '</script>', '{"identifier":"x"}', ',{"identifier":'),
  ).filter((s) => !LONE_SURROGATE.test(s) && (engine === 'sqlite' || !s.includes('\u0000'))); // PostgreSQL text holds no NUL
}

/** Times a listing may show: around now (most), any plain ISO time, and some only toISOString's other form can write. */
function time(now: number): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: now - 3 * DAY, max: now + 3 * DAY }) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: PLAIN_LIMIT }) },
    { weight: 1, arbitrary: fc.constantFrom(0, 999, 1000, PLAIN_LIMIT, PLAIN_LIMIT + 1, -1, -1001, DATE_LIMIT - 10 * DAY, -DATE_LIMIT) },
  );
}

/** Watermarks: none, small, and up to the largest a JSON number holds exactly. */
const watermarkArb = fc.option(fc.oneof(fc.nat({ max: 1000 }), fc.constantFrom(0, Number.MAX_SAFE_INTEGER), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER })), { nil: null });

/** Instance facts, with text a signed document could carry (any string). */
function instanceArb(engine: EngineName): fc.Arbitrary<InstanceInfo | null> {
  return fc.option(fc.record({
    accountId: fc.constantFrom('111122223333', '444455556666'),
    region: fc.oneof(fc.constantFrom('us-east-1', 'eu-west-1'), text(engine)),
    availabilityZone: fc.oneof(fc.constantFrom('us-east-1a', 'eu-west-1c'), text(engine)),
    instanceType: fc.constantFrom('t3.micro', 'c7g.large'),
    imageId: fc.oneof(fc.constant('ami-0abcdef1234567890'), text(engine)),
  }), { nil: null });
}

type State = 'never_used' | 'free' | 'cooling' | 'leased' | 'expired' | 'retired' | 'retired_held';

function identifiers(engine: EngineName, now: number, ttlMs: number): fc.Arbitrary<DumpIdentifier[]> {
  const one = fc.record({
    name: text(engine),
    poolOrder: fc.integer({ min: 0, max: 12 }), // ties: the row id breaks them
    state: fc.constantFrom<State>('never_used', 'free', 'cooling', 'leased', 'expired', 'retired', 'retired_held'),
    epoch: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.constant(Number.MAX_SAFE_INTEGER)),
    clientId: text(engine),
    allocatedAt: time(now),
    lastSeen: time(now),
    availableAt: time(now),
    // The fence window kept with a lease: none recorded, shorter or longer than today's cool-down.
    fenceCooldownMs: fc.option(fc.integer({ min: 0, max: 30 * DAY }), { nil: null }),
    watermark: watermarkArb,
    instance: instanceArb(engine),
  });
  return fc.uniqueArray(one, { maxLength: 30, selector: (i) => i.name }).map((rows) => {
    const clients = new Set<string>();
    return rows.map((r): DumpIdentifier => {
      const held = r.state === 'leased' || r.state === 'expired' || r.state === 'retired_held';
      // One client, one identifier (the store refuses a second); a client id taken already frees this one.
      const holder = held && !clients.has(r.clientId) ? r.clientId : null;
      if (holder !== null) clients.add(holder);
      // Keep `last_seen + ttl` a time toISOString can write (the view of such a lease is an error on every path).
      const lastSeen = Math.floor(Math.min(r.state === 'expired' ? Math.min(r.lastSeen, now - ttlMs - 1) : r.lastSeen, DATE_LIMIT - ttlMs));
      return {
        name: r.name,
        poolOrder: r.poolOrder,
        retired: r.state === 'retired' || r.state === 'retired_held',
        epoch: r.state === 'never_used' ? 0 : r.epoch,
        clientId: holder,
        allocatedAt: holder === null ? null : r.allocatedAt,
        lastSeen: holder === null ? null : lastSeen,
        availableAt: r.state === 'never_used' ? 0 : r.state === 'cooling' ? Math.max(r.availableAt, now + 1) : r.state === 'free' ? Math.min(r.availableAt, now) : r.availableAt,
        fenceCooldownMs: holder === null ? null : r.fenceCooldownMs,
        watermark: r.watermark,
        instance: holder === null ? null : r.instance,
      };
    });
  });
}

interface Case {
  /** SQLite on a file: the pages after the first are read by the listing workers too. */
  readonly onFile: boolean;
  readonly now: number;
  readonly rules: RegistryRules;
  readonly rows: DumpIdentifier[];
  readonly queries: readonly { readonly status: Status | null; readonly after: number | null; readonly limit: number | null }[];
}

function cases(engine: EngineName): fc.Arbitrary<Case> {
  const nowArb = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: NOW_2026 - 400 * DAY, max: NOW_2026 + 400 * DAY }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: PLAIN_LIMIT }) },
    { weight: 1, arbitrary: fc.constantFrom(0, DAY - 1, PLAIN_LIMIT, PLAIN_LIMIT + 1) },
  );
  // Whole milliseconds: configuration reads durations so, and the registry refuses anything else.
  const ttlArb = fc.integer({ min: 1, max: 30 * DAY });
  return fc.tuple(nowArb, ttlArb, fc.integer({ min: 0, max: 30 * DAY })).chain(([now, ttlMs, cooldownMs]) =>
    fc.record({
      onFile: fc.boolean(),
      now: fc.constant(now),
      rules: fc.constant({ ...DEFAULT_RULES, ttlMs, cooldownMs }),
      rows: identifiers(engine, now, ttlMs),
      queries: fc.array(fc.record({
        status: fc.constantFrom<Status | null>(null, ...STATUSES),
        after: fc.option(fc.nat({ max: 40 }), { nil: null }),
        limit: fc.option(fc.integer({ min: 1, max: 32 }), { nil: null }),
      }), { minLength: 1, maxLength: 6 }),
    }));
}

/** The reference: the views as objects, stringified. */
function referenceText(items: Parameters<typeof identifierView>[0][]): string {
  return JSON.stringify(items.map(identifierView));
}

async function registryOn(engine: EngineName, c: Case): Promise<{ registry: Registry; clock: FakeClock; store: Store; sqlite: SqliteStore | null }> {
  const clock = new FakeClock(c.now);
  const t = await openTestStore(clock, { engine, shared: engine === 'sqlite' && c.onFile });
  const dump = { engine, exportedAt: c.now, identifiers: c.rows, history: [], meta: [] };
  if (t.sqlite) loadSqlite(t.sqlite.db, dump);
  else if (t.store instanceof PostgresStore) await t.store.load(dump);
  else throw new Error('unknown test store');
  return { registry: new Registry({ store: t.store, rules: c.rules }), clock, store: t.store, sqlite: t.sqlite };
}

for (const engine of ENGINES) {
  describe(`${engine}: the listing's JSON is identifierView's, byte for byte`, function () {
    this.timeout(240_000);
    useEngine(engine);

    it('for random states, times, rules, filters, cursors and page sizes (GET /identifiers paged and full included)', async () => {
      const written = { store: 0, here: 0, offLoop: 0, readAhead: 0 };
      await fc.assert(fc.asyncProperty(cases(engine), async (c) => {
        const { registry, store, sqlite } = await registryOn(engine, c);
        try {
          const names = c.rows.map((r) => r.name);
          const workers = sqlite !== null && c.onFile && (await sqlite.startListingWorkers());
          if (sqlite !== null && c.onFile) expect(workers, 'listing workers on a file').to.equal(true);
          for (const q of c.queries) {
            const afterName = q.after === null || names.length === 0 ? null : (names[q.after % names.length] ?? null);
            const filter = { status: q.status, after: afterName, limit: q.limit };
            const ref = await registry.list(filter);
            const page = await registry.listPage(filter);
            if (page.json !== null) written.store++;
            else written.here++;
            expect(`[${identifierViewsJson(page).toString('utf8')}]`, JSON.stringify(filter)).to.equal(referenceText(ref.items));
            expect(page.next?.name ?? null).to.equal(ref.next);
            // The next page from the cursor is the next page from the name.
            if (page.next !== null) {
              const byCursor = await registry.listPage({ ...filter, after: page.next.cursor });
              const byName = await registry.list({ ...filter, after: page.next.name });
              expect(`[${identifierViewsJson(byCursor).toString('utf8')}]`).to.equal(referenceText(byName.items));
            }
            // The whole listing as the streamed listing reads it (the pages after the first read
            // ahead, by the workers on a file), in small pages so that most of it is read ahead.
            const before = sqlite?.listingWorkerStats().pages ?? 0;
            const small = 1 + ((q.limit ?? 0) % 3);
            const head = await registry.listPage({ ...filter, limit: small });
            const parts = [identifierViewsJson(head).toString('utf8')];
            if (head.next) {
              for await (const p of registry.pagesAfter(filter.status, head.next.cursor, { limit: small })) {
                parts.push(identifierViewsJson(p).toString('utf8'));
                if (c.onFile) written.readAhead++;
              }
            }
            const whole = await registry.list({ ...filter, limit: null });
            expect(`[${parts.filter((x) => x.length > 0).join(',')}]`, `${JSON.stringify(filter)} read ahead by ${small}`).to.equal(referenceText(whole.items));
            written.offLoop += (sqlite?.listingWorkerStats().pages ?? 0) - before;
          }
          // Over HTTP: the full listing (streamed) and a page, as the contract's clients read them.
          const http = request(createApp({ registry, auth: { agentTokens: [], adminTokens: [] } }).callback());
          const status = c.queries[0]?.status ?? null;
          const all = await registry.list({ status, after: null, limit: null });
          const full = await http.get(`/identifiers${status ? `?status=${status}` : ''}`).buffer(true).parse((res, done) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => { body += d; });
            res.on('end', () => done(null, body));
          });
          expect(full.status).to.equal(200);
          expect(full.headers['content-type']).to.equal('application/json; charset=utf-8');
          expect(full.body).to.equal(referenceText(all.items));
          const paged = await http.get(`/identifiers?limit=5${status ? `&status=${status}` : ''}`).expect(200);
          expect(paged.headers['content-type']).to.equal('application/json; charset=utf-8');
          expect(paged.text).to.equal(referenceText(all.items.slice(0, 5)));
          expect(paged.headers['link'] !== undefined).to.equal(all.items.length > 5);
        } finally {
          await store.close(); // its listing workers with it, not at the end of the whole property
        }
      }), { numRuns: engine === 'sqlite' ? 150 : 25 });
      // Both writers were exercised: SQLite's in SQL, and the fallback (PostgreSQL: always).
      if (engine === 'sqlite') expect(written.store, 'pages SQLite wrote').to.be.greaterThan(50);
      // On a file, with the workers ready, the pages after the first are the workers'. How many pages there are depends
      // on the random states, so the check is a share of them, not a count.
      if (engine === 'sqlite') {
        expect(written.readAhead, 'pages read ahead on a file').to.be.greaterThan(0);
        expect(written.offLoop / written.readAhead, `pages the listing workers wrote: ${written.offLoop} of ${written.readAhead}`).to.be.greaterThan(0.5);
      }
      expect(written.here, 'pages written in JavaScript').to.be.greaterThan(0);
    });
  });
}

describe('identifierViewsText', () => {
  it('is JSON.stringify of identifierView for any row, time and rules', () => {
    const tuple = fc.record({
      retired: fc.constantFrom<0 | 1>(0, 1),
      epoch: fc.nat(),
      name: text('sqlite'),
      held: fc.option(fc.record({
        clientId: text('sqlite'), allocatedAt: time(NOW_2026), lastSeen: fc.integer({ min: -DATE_LIMIT, max: DATE_LIMIT - 31 * DAY }), instance: instanceArb('sqlite'),
        fenceCooldownMs: fc.option(fc.integer({ min: 0, max: 30 * DAY }), { nil: null }),
      })),
      availableAt: time(NOW_2026),
      watermark: watermarkArb,
    }).map((r): RecordTuple => [
      1, r.name, 0, r.retired, r.epoch, r.held?.clientId ?? null, r.held?.allocatedAt ?? null, r.held?.lastSeen ?? null, r.availableAt,
      r.held?.fenceCooldownMs ?? null, r.watermark, r.held?.instance ? instanceJson(r.held.instance) : null,
    ]);
    fc.assert(fc.property(fc.array(tuple, { maxLength: 20 }), time(NOW_2026), fc.integer({ min: 1, max: 30 * DAY }), fc.integer({ min: 0, max: 30 * DAY }),
      (rows, now, ttlMs, cooldownMs) => {
        const rules = { ttlMs, cooldownMs };
        expect(`[${identifierViewsText(rows, now, rules)}]`).to.equal(JSON.stringify(rows.map((r) => identifierView(infoOf(recordOf(r), now, rules)))));
      }), { numRuns: 2000 });
  });

  it('a page after a cursor starts after that row, whatever its name', async () => {
    // Rows with equal pool orders: the row id decides, as in the store's order.
    const c: Case = {
      onFile: false, now: NOW_2026, rules: DEFAULT_RULES, queries: [],
      rows: ['b', 'a', 'c', 'd'].map((name) => ({ name, poolOrder: 1, retired: false, epoch: 0, clientId: null, allocatedAt: null, lastSeen: null, availableAt: 0, fenceCooldownMs: null })),
    };
    const { registry } = await registryOn('sqlite', c);
    const first = await registry.listPage({ status: null, after: null, limit: 2 });
    const cursor: ListCursor | undefined = first.next?.cursor;
    expect(first.next?.name).to.equal('a');
    if (!cursor) throw new Error('expected a next page');
    const rest = await registry.listPage({ status: null, after: cursor, limit: 2 });
    expect(JSON.parse(`[${identifierViewsJson(rest).toString('utf8')}]`).map((v: { identifier: string }) => v.identifier)).to.deep.equal(['c', 'd']);
    expect(rest.next).to.equal(null);
  });
});
