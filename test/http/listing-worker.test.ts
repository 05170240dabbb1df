/**
 * The full listing's pages read on worker threads (src/store/sqlite/listing-worker.ts, through
 * Registry.pagesAfter): the same bytes as the paged listing, each identifier once while writes
 * go on, no snapshot held for a client that stops reading or leaves, the listing read
 * in-process when there are no workers (in memory) or they fail, and a registry that closes
 * mid-listing ends it cleanly.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { get } from 'node:http';
import type { ClientRequest, IncomingMessage, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { FakeClock } from '../../src/clock.js';
import { createApp } from '../../src/http/app.js';
import { LISTING_PAGE_SIZE } from '../../src/http/listing.js';
import { createHttpServer } from '../../src/http/server.js';
import { identifierViewsJson } from '../../src/http/views.js';
import { Registry } from '../../src/registry.js';
import type { ListedPage } from '../../src/registry.js';
import type { Status } from '../../src/domain/types.js';
import { STATUS_WHERE, SqliteStore } from '../../src/store/sqlite/store.js';
import type { ListingReader } from '../../src/store/listing.js';
import { FAILED_RETRY_MS, ListingWorkers } from '../../src/store/sqlite/listing-worker.js';
import { pageSql } from '../../src/store/sqlite/listing-json.js';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { DEFAULT_RULES, SECOND, makeRegistry, tempDir } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

interface View { identifier: string; status: string }

function sqliteOf(h: Harness): SqliteStore {
  if (!h.sqlite) throw new Error('expected SQLite');
  return h.sqlite;
}

/** Every page of a listing: the first read in-process, the rest through pagesAfter, as the HTTP layer does. */
async function listAll(registry: Registry, status: Status | null, limit: number): Promise<{ text: string; pages: number }> {
  const first = await registry.listPage({ status, after: null, limit });
  const parts = [identifierViewsJson(first).toString('utf8')];
  let pages = 1;
  if (first.next) {
    for await (const page of registry.pagesAfter(status, first.next.cursor, { limit })) {
      parts.push(identifierViewsJson(page).toString('utf8'));
      pages++;
    }
  }
  return { text: `[${parts.filter((p) => p.length > 0).join(',')}]`, pages };
}

/** The listing as `list` reads it in one go: the reference. */
async function reference(registry: Registry, status: Status | null): Promise<string> {
  const { identifierView } = await import('../../src/http/views.js');
  return JSON.stringify((await registry.list({ status, after: null, limit: null })).items.map(identifierView));
}

/** Polls `ready` (real threads and sockets: their own time, not the test's clock) until true, or fails after `ms`. */
async function until(what: string, ready: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function serve(h: Harness): Promise<{ server: Server; base: string }> {
  const server = createHttpServer(h.app.callback());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

function stop(server: Server): void {
  server.closeAllConnections();
  server.close();
}

/** GET `path`, the whole body; `aborted` when the server cut it short. */
function fetchAll(base: string, path: string): Promise<{ status: number; body: string; aborted: boolean }> {
  return new Promise((resolve, reject) => {
    get(`${base}${path}`, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), aborted: false }));
      res.on('aborted', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), aborted: true }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), aborted: true }));
    }).on('error', reject);
  });
}

describe('the listing read on worker threads', function () {
  this.timeout(120_000);

  describe('a pool in every state, on a file', () => {
    let h: Harness;
    beforeEach(async () => {
      h = await makeRegistry({ shared: true, pool: 'w-[0000-2499]\n', rules: { cooldownMs: 60 * SECOND } });
      for (let i = 0; i < 1200; i++) await h.registry.allocate(`vm-${i}`);
      for (let i = 0; i < 300; i++) await h.registry.forceRelease(`w-${String(i * 2).padStart(4, '0')}`);
      h.clock.advance(SECOND);
      await h.registry.syncPool(Array.from({ length: 2400 }, (_, i) => `w-${String(i).padStart(4, '0')}`).filter((n) => n !== 'w-0001'));
    });

    it('writes the bytes `list` does, for every filter and page size, its pages written by the workers', async () => {
      const store = sqliteOf(h);
      expect(await store.startListingWorkers()).to.equal(true);
      expect(store.listingWorkerStats().running).to.equal(2);
      for (const status of [null, 'leased', 'free', 'cooling', 'retired'] as const) {
        const ref = await reference(h.registry, status);
        for (const limit of [1, 7, 300, LISTING_PAGE_SIZE]) {
          const before = store.listingWorkerStats().pages;
          const got = await listAll(h.registry, status, limit);
          expect(got.text, `${status} by ${limit}`).to.equal(ref);
          // Every page after the first came from a worker; the first too (listPage, as a paged
          // request reads it) for free and cooling ones, whose rows may lie far apart.
          const offLoopFirst = status === 'free' || status === 'cooling' ? 1 : 0;
          expect(store.listingWorkerStats().pages - before, `${status} by ${limit}`).to.equal(got.pages - 1 + offLoopFirst);
        }
      }
      // And over HTTP, the streamed listing.
      const { server, base } = await serve(h);
      try {
        const before = store.listingWorkerStats().pages;
        const res = await fetchAll(base, '/identifiers');
        expect(res).to.include({ status: 200, aborted: false });
        expect(res.body).to.equal(await reference(h.registry, null));
        expect(store.listingWorkerStats().pages - before).to.equal(1); // 2,500 rows: the first page here, the second there
      } finally {
        stop(server);
      }
    });

    it('a page with a time SQL cannot write comes as rows from the same worker, the same bytes', async () => {
      const store = sqliteOf(h);
      expect(await store.startListingWorkers()).to.equal(true);
      // A cool-down ending after the year 9999: toISOString's other form, written in JavaScript.
      store.db.prepare(`UPDATE identifiers SET available_at = 253402300800000 WHERE name = 'w-2000'`).run();
      const before = store.listingWorkerStats().pages;
      const got = await listAll(h.registry, null, 300);
      expect(got.text).to.equal(await reference(h.registry, null));
      expect(got.text).to.include('"available_at":"+010000-01-01T00:00:00.000Z"');
      expect(store.listingWorkerStats().pages - before).to.equal(got.pages - 1);
      // Pages of cooling ones, the first too, read there.
      const beforeCooling = store.listingWorkerStats().pages;
      const cooling = await listAll(h.registry, 'cooling', 50);
      expect(cooling.text).to.equal(await reference(h.registry, 'cooling')).and.include('"available_at":"+010000-01-01T00:00:00.000Z"');
      expect(store.listingWorkerStats().pages - beforeCooling).to.equal(cooling.pages);
    });

    it('workers that fail mid-listing: the rest is read in-process, every identifier once', async () => {
      const store = sqliteOf(h);
      expect(await store.startListingWorkers()).to.equal(true);
      const first = await h.registry.listPage({ status: null, after: null, limit: 100 });
      if (!first.next) throw new Error('expected more pages');
      const parts = [identifierViewsJson(first).toString('utf8')];
      const pages = h.registry.pagesAfter(null, first.next.cursor, { limit: 100 });
      const taking = pages.next(); // asks the workers for the second page (and, once it tells where it ends, the third)
      expect(store.listingWorkerStats().pending, 'pages asked of the workers').to.be.greaterThan(0);
      await store.stopListingWorkers(); // the pages asked of them are refused
      for (let r = await taking; !r.done; r = await pages.next()) parts.push(identifierViewsJson(r.value).toString('utf8'));
      expect(`[${parts.join(',')}]`).to.equal(await reference(h.registry, null));
      expect(store.listingWorkerStats().running).to.equal(0);
      // The next listing starts them again.
      expect(await store.startListingWorkers()).to.equal(true);
      expect((await listAll(h.registry, null, 500)).text).to.equal(await reference(h.registry, null));
    });
  });

  describe('the counts behind /health and /metrics, read by the workers', () => {
    let h: Harness;
    beforeEach(async () => {
      h = await makeRegistry({ shared: true, pool: 'w-[000-299]\n', rules: { cooldownMs: 60 * SECOND } });
      for (let i = 0; i < 200; i++) await h.registry.allocate(`vm-${i}`);
      for (let i = 0; i < 50; i++) await h.registry.forceRelease(`w-${String(i * 2).padStart(3, '0')}`);
      for (let i = 1; i < 40; i += 2) await h.registry.release(`vm-${i}`, `w-${String(i).padStart(3, '0')}`);
      await h.registry.syncPool(Array.from({ length: 290 }, (_, i) => `w-${String(i).padStart(3, '0')}`)); // retires w-290..w-299
    });

    /** The counts as a scan of the table says them. */
    async function scanned(): Promise<Record<string, number>> {
      const now = h.clock.now();
      const [r] = await h.sql(`SELECT count(*) AS total, count(client_id) AS leased,
        sum(client_id IS NULL AND retired = 1) AS retired,
        sum(client_id IS NULL AND retired = 0 AND available_at > ${now}) AS cooling,
        sum(client_id IS NULL AND retired = 0 AND available_at <= ${now}) AS free FROM identifiers`);
      return Object.fromEntries(Object.entries(r ?? {}).map(([k, v]) => [k, Number(v)]));
    }

    it('are what a scan of the table says, as the clock moves cool-downs on, each read once by a worker', async () => {
      const store = sqliteOf(h);
      for (const step of [0, 30 * SECOND, 31 * SECOND]) {
        h.clock.advance(step);
        const before = store.listingWorkerStats().reads;
        const health = (await h.http.get('/health').expect(200)).body as { pool: Record<string, number> };
        expect(health.pool, `after ${step} ms`).to.deep.equal(await scanned());
        expect(store.listingWorkerStats().reads - before, 'counts read by a worker').to.equal(1);
      }
      expect((await scanned())['cooling'], 'the cool-downs have ended').to.equal(0);
      const metrics = (await h.http.get('/metrics').expect(200)).text;
      for (const [status, n] of Object.entries(await scanned())) {
        if (status !== 'total') expect(metrics).to.include(`asg_id_registry_pool_identifiers{status="${status}"} ${n}\n`);
      }
    });

    it('a reader that fails: /health, /metrics and every page are read in-process, the same', async () => {
      const pages = await Promise.all((['cooling', 'free', 'leased', 'retired', null] as const).map((status) => h.registry.listPage({ status, after: 'w-010', limit: 7 })));
      const expected = { health: (await h.http.get('/health').expect(200)).body.pool, pages: pages.map((p) => [identifierViewsJson(p).toString(), p.next?.name]) };
      // The same database through a store whose listing reader refuses everything.
      const failing: ListingReader = {
        ready: true,
        whenReady: async () => true,
        page: async () => { throw new Error('the reader failed'); },
        counts: async () => { throw new Error('the reader failed'); },
      };
      const store = new Proxy(h.store, {
        get: (target, key) => (key === 'listing' ? { ...target.listing, offLoop: () => failing } : Reflect.get(target, key, target)),
      });
      const registry = new Registry({ store, rules: { ...DEFAULT_RULES, cooldownMs: 60 * SECOND } });
      const health = await registry.health();
      expect(health.pool).to.deep.equal(expected.health);
      const again = await Promise.all((['cooling', 'free', 'leased', 'retired', null] as const).map((status) => registry.listPage({ status, after: 'w-010', limit: 7 })));
      expect(again.map((p) => [identifierViewsJson(p).toString(), p.next?.name])).to.deep.equal(expected.pages);
      const missing = await registry.listPage({ status: 'free', after: 'nobody', limit: 3 }).catch((e: unknown) => e);
      expect(missing).to.include({ code: 'invalid_request' });
    });
  });

  it('in memory, or opened without them: no workers, the same listing, in-process', async () => {
    const mem = await makeRegistry({ pool: 'w-[000-999]\n' });
    for (let i = 0; i < 300; i++) await mem.registry.allocate(`vm-${i}`);
    const store = sqliteOf(mem);
    expect(store.listing.offLoop()).to.equal(null);
    expect(await store.startListingWorkers()).to.equal(false);
    const got = await listAll(mem.registry, null, 64);
    expect(got.pages).to.be.greaterThan(10);
    expect(got.text).to.equal(await reference(mem.registry, null));
    expect(store.listingWorkerStats()).to.deep.equal({ running: 0, pending: 0, pages: 0, reads: 0 });

    const t = tempDir();
    const clock = new FakeClock();
    const off = new SqliteStore({ path: `${t.dir}/registry.db`, clock, listingWorker: false });
    try {
      const registry = new Registry({ store: off, rules: DEFAULT_RULES });
      await registry.syncPool(Array.from({ length: 500 }, (_, i) => `p-${i}`));
      expect(off.listing.offLoop()).to.equal(null);
      const all = await listAll(registry, null, 64);
      expect(all.text).to.equal(await reference(registry, null));
      expect(off.listingWorkerStats().pages).to.equal(0);
    } finally {
      await off.close();
      t.cleanup();
    }
  });

  it('writes interleaved with the pages: each identifier exactly once, in pool order', async () => {
    const POOL = Array.from({ length: 40 }, (_, i) => `p-${String(i).padStart(2, '0')}`);
    const CLIENTS = 12;
    type Op = { t: 'allocate' | 'release'; c: number } | { t: 'force'; id: number } | { t: 'advance'; ms: number } | { t: 'reap' };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ t: fc.constantFrom<'allocate' | 'release'>('allocate', 'release'), c: fc.nat({ max: CLIENTS - 1 }) }),
      fc.record({ t: fc.constant<'force'>('force'), id: fc.nat({ max: POOL.length - 1 }) }),
      fc.record({ t: fc.constant<'advance'>('advance'), ms: fc.integer({ min: 1, max: 200 * SECOND }) }),
      fc.record({ t: fc.constant<'reap'>('reap') }),
    );
    let offLoop = 0;
    await fc.assert(fc.asyncProperty(fc.scheduler(), fc.array(op, { maxLength: 25 }), fc.constantFrom<Status | null>(null, null, 'leased', 'free'), fc.integer({ min: 1, max: 6 }),
      async (s, ops, status, limit) => {
        const t = tempDir();
        const clock = new FakeClock();
        const store = new SqliteStore({ path: `${t.dir}/registry.db`, clock, defer: (run) => { void s.schedule(Promise.resolve(), 'store flush').then(run); } });
        try {
          const registry = new Registry({ store, rules: { ...DEFAULT_RULES, ttlMs: 60 * SECOND, cooldownMs: 30 * SECOND } });
          await s.waitFor(registry.syncPool(POOL));
          for (let c = 0; c < CLIENTS / 2; c++) await s.waitFor(registry.allocate(`vm-${c}`));
          expect(await s.waitFor(store.startListingWorkers())).to.equal(true);
          const before = store.listingWorkerStats().pages;
          const seen: string[] = [];
          const take = (page: ListedPage): void => {
            const text = identifierViewsJson(page).toString('utf8');
            if (text) seen.push(...(JSON.parse(`[${text}]`) as View[]).map((v) => v.identifier));
          };
          const listing = (async () => {
            await s.schedule(Promise.resolve(), 'first page');
            const first = await registry.listPage({ status, after: null, limit });
            take(first);
            if (!first.next) return;
            const pages = registry.pagesAfter(status, first.next.cursor, { limit });
            for (;;) {
              await s.schedule(Promise.resolve(), 'take a page');
              const r = await pages.next();
              if (r.done) return;
              take(r.value);
            }
          })();
          const run = async (o: Op, i: number): Promise<void> => {
            await s.schedule(Promise.resolve(), `op ${i} ${JSON.stringify(o)}`);
            if (o.t === 'advance') return void clock.advance(o.ms);
            const p = o.t === 'allocate' ? registry.allocate(`vm-${o.c}`)
              : o.t === 'release' ? registry.leaseOfClient(`vm-${o.c}`).then((l) => registry.release(l.clientId, l.identifier))
                : o.t === 'force' ? registry.forceRelease(POOL[o.id] ?? '')
                  : registry.reap({ force: true });
            await p.catch(() => undefined); // refusals (not held, pool exhausted) are answers too
          };
          await s.waitFor(Promise.all([listing, ...ops.map(run)]));
          offLoop += store.listingWorkerStats().pages - before;
          // No identifier twice, never out of pool order; unfiltered, every one of the pool.
          const ordered = [...seen].sort();
          expect(seen, String(s)).to.deep.equal(ordered);
          expect(new Set(seen).size, String(s)).to.equal(seen.length);
          if (status === null) expect(seen, String(s)).to.deep.equal(POOL);
        } finally {
          await store.close();
          t.cleanup();
        }
      }), { numRuns: 40 });
    expect(offLoop, 'pages the workers read').to.be.greaterThan(40);
  });

  it('a listing during a stream of writes over HTTP: each identifier exactly once', async () => {
    const h = await makeRegistry({ shared: true, pool: 'p-[00000-19999]\n' });
    const store = sqliteOf(h);
    expect(await store.startListingWorkers()).to.equal(true);
    const { server, base } = await serve(h);
    try {
      for (let round = 0; round < 3; round++) {
        let done = false;
        const listing = fetchAll(base, '/identifiers').finally(() => { done = true; });
        let writes = 0;
        while (!done) {
          const c = `vm-${writes % 500}`;
          await (writes % 3 === 2 ? h.registry.leaseOfClient(c).then((l) => h.registry.release(c, l.identifier)) : h.registry.allocate(c)).catch(() => undefined);
          writes++;
          await new Promise((r) => setImmediate(r));
        }
        const res = await listing;
        expect(res).to.include({ status: 200, aborted: false });
        const names = (JSON.parse(res.body) as View[]).map((v) => v.identifier);
        expect(names).to.have.length(20_000);
        expect(new Set(names).size).to.equal(20_000);
        expect(names).to.deep.equal([...names].sort());
        expect(writes, 'writes during the listing').to.be.greaterThan(0);
      }
      expect(store.listingWorkerStats().pages).to.be.greaterThan(0);
    } finally {
      stop(server);
    }
  });

  it('a client that stops reading holds no snapshot; one that leaves stops the pages being read', async () => {
    const h = await makeRegistry({ shared: true, pool: 'p-[00000-59999]\n' });
    const store = sqliteOf(h);
    expect(await store.startListingWorkers()).to.equal(true);
    const { server, base } = await serve(h);
    let req: ClientRequest | null = null;
    try {
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        req = get(`${base}/identifiers`, resolve).on('error', () => undefined);
        req.on('error', reject);
      });
      expect(res.statusCode).to.equal(200);
      res.pause(); // reads nothing more: the listing waits on the socket
      // The pages read ahead are bounded: the listing stops asking, and the workers go idle.
      let stable = -1;
      await until('the listing to stall', () => {
        const s = store.listingWorkerStats();
        const idle = s.pending === 0 && s.pages === stable;
        stable = s.pages;
        return idle;
      });
      expect(store.listingWorkerStats().pages).to.be.below(30); // 60,000 rows are 30 pages
      // No read transaction is open: writes go on, and a full checkpoint completes and empties the WAL.
      for (let i = 0; i < 50; i++) await h.registry.allocate(`vm-${i}`);
      const [cp] = store.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number; log: number; checkpointed: number }[];
      expect(cp).to.deep.equal({ busy: 0, log: 0, checkpointed: 0 });
      // The client leaves: nothing more is asked of the workers, and none of them is busy.
      const pagesAtLeave = store.listingWorkerStats().pages;
      res.destroy();
      await until('the listing to end', () => store.listingWorkerStats().pending === 0);
      // A new listing is served in full by the same workers: nothing was left waiting on them.
      const again = await fetchAll(base, '/identifiers?status=leased');
      expect(JSON.parse(again.body)).to.have.length(50);
      expect(store.listingWorkerStats().pages - pagesAtLeave).to.be.at.most(2);
      expect(store.listingWorkerStats().running).to.equal(2);
    } finally {
      (req as ClientRequest | null)?.destroy();
      stop(server);
    }
    await h.store.close();
    expect(store.listingWorkerStats()).to.include({ running: 0, pending: 0 });
  });

  it('the registry closing mid-listing: the response is cut short, the workers stop', async () => {
    const h = await makeRegistry({ shared: true, pool: 'p-[00000-59999]\n' });
    const store = sqliteOf(h);
    expect(await store.startListingWorkers()).to.equal(true);
    const { server, base } = await serve(h);
    try {
      const res = await new Promise<IncomingMessage>((resolve, reject) => {
        get(`${base}/identifiers`, resolve).on('error', reject);
      });
      const chunks: Buffer[] = [];
      const ended = new Promise<boolean>((resolve) => {
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(false));
        res.on('aborted', () => resolve(true));
        res.on('error', () => resolve(true));
      });
      res.pause();
      await until('pages read', () => store.listingWorkerStats().pages > 0);
      await h.registry.close();
      await h.store.close();
      expect(store.listingWorkerStats()).to.deep.include({ running: 0, pending: 0 });
      res.resume();
      expect(await ended, 'the response was aborted').to.equal(true);
      const body = Buffer.concat(chunks).toString('utf8');
      expect(body.startsWith('[{"identifier":"p-00000"')).to.equal(true);
      expect(() => JSON.parse(body), 'never a complete-looking array').to.throw();
    } finally {
      stop(server);
    }
  });
});

describe('listing workers: bounds, restarts and shutdown', function () {
  this.timeout(60_000);

  it('a reader that takes one page and stops: at most the next two are read ahead', async () => {
    const h = await makeRegistry({ shared: true, pool: 'p-[00000-59999]\n' });
    const store = sqliteOf(h);
    try {
      expect(await store.startListingWorkers()).to.equal(true);
      const first = await h.registry.listPage({ status: null, after: null, limit: 2000 });
      const before = store.listingWorkerStats().pages;
      if (!first.next) throw new Error('expected more than one page');
      const pages = h.registry.pagesAfter(null, first.next.cursor, { limit: 2000 });
      await pages.next();
      await until('the read-ahead to settle', () => store.listingWorkerStats().pending === 0);
      // The page taken and the two read ahead: 27 pages of the pool are left unread.
      expect(store.listingWorkerStats().pages - before).to.be.within(1, 3);
      await pages.return(undefined);
    } finally {
      await h.store.close();
    }
  });

  it('workers stopped for idleness are started again by the next page asked of them', async () => {
    const { dir, cleanup } = tempDir();
    const store = new SqliteStore({ path: `${dir}/r.db`, clock: new FakeClock() });
    const workers = new ListingWorkers(store.db.name, pageSql(STATUS_WHERE), 1, 1500);
    try {
      workers.start();
      await until('a worker ready', () => workers.ready);
      await until('the idle stop', () => workers.stats.running === 0);
      // A page asked now is refused (the listing reads it in-process), and the workers start again.
      const plan = { key: 'all', body: [], edge: [], limit: 10 } as unknown as Parameters<ListingWorkers['run']>[0];
      let refused = false;
      await workers.run(plan, () => undefined).catch(() => { refused = true; });
      expect(refused).to.equal(true);
      expect(workers.stats.running).to.equal(1);
      await until('a worker ready again', () => workers.ready);
    } finally {
      await workers.stop(new Error('done'));
      await store.close();
      cleanup();
    }
  });

  it('workers that could not open the database are tried again after FAILED_RETRY_MS, not never', async () => {
    const { dir, cleanup } = tempDir();
    let now = 0;
    const workers = new ListingWorkers(`${dir}/missing/r.db`, pageSql(STATUS_WHERE), 2, 60_000, () => now);
    try {
      workers.start();
      await until('the start to fail', () => workers.stats.running === 0);
      expect(workers.failed).to.be.instanceOf(Error);
      workers.start(); // off for now: nothing is started
      expect(workers.stats.running).to.equal(0);
      now += FAILED_RETRY_MS - 1;
      expect(workers.failed).to.be.instanceOf(Error);
      now += 1;
      expect(workers.failed).to.equal(null);
      workers.start();
      expect(workers.stats.running).to.equal(2);
      await until('the second start to fail too', () => workers.stats.running === 0);
      expect(workers.failed).to.be.instanceOf(Error);
    } finally {
      await workers.stop(new Error('done'));
      cleanup();
    }
  });

  it('a process with nothing else to do closes its store after a listing: the workers exit, the database is closed', () => {
    const { dir, cleanup } = tempDir();
    try {
      const src = (p: string): string => JSON.stringify(new URL(`../../src/${p}`, import.meta.url).href);
      const script = `${dir}/close.mts`;
      writeFileSync(script, [
        `import { FakeClock } from ${src('clock.ts')};`,
        `import { Registry } from ${src('registry.ts')};`,
        `import { SqliteStore } from ${src('store/sqlite/store.ts')};`,
        `const store = new SqliteStore({ path: ${JSON.stringify(`${dir}/r.db`)}, clock: new FakeClock() });`,
        `const registry = new Registry({ store, rules: ${JSON.stringify(DEFAULT_RULES)} });`,
        `await registry.syncPool(Array.from({ length: 5000 }, (_, i) => 'p-' + String(i).padStart(4, '0')));`,
        `if (!(await store.startListingWorkers())) throw new Error('no workers');`,
        `const first = await registry.listPage({ status: null, after: null, limit: 1000 });`,
        `let n = 1;`,
        `for await (const _ of registry.pagesAfter(null, first.next.cursor, { limit: 1000 })) n++;`,
        `await store.close();`,
        `console.log('closed', n, store.db.open, store.listingWorkerStats().running);`,
      ].join('\n'));
      const r = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 30_000 });
      expect(r.stdout.trim(), r.stderr).to.equal('closed 5 false 0');
      expect(r.status).to.equal(0);
    } finally {
      cleanup();
    }
  });
});
