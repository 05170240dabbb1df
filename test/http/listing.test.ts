/**
 * The full listing is streamed page by page (src/http/listing.ts): it must say exactly what
 * the paged listing says, and a 100,000-identifier listing must not stall the fleet's liveness.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { Agent, get } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { LISTING_PAGE_SIZE } from '../../src/http/listing.js';
import { createHttpServer } from '../../src/http/server.js';
import { iso } from '../../src/http/views.js';
import { SECOND, makeRegistry, tempDir } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';
import { call } from '../support/process-helpers.js';

interface View { identifier: string; status: string }

/** Follows the Link headers from the first page to the last. */
async function paged(h: Harness, query: string): Promise<View[]> {
  const out: View[] = [];
  let next: string | null = `/identifiers?limit=${LISTING_PAGE_SIZE}${query ? `&${query}` : ''}`;
  while (next !== null) {
    const res: { body: unknown; headers: Record<string, string> } = await h.http.get(next).expect(200);
    out.push(...(res.body as View[]));
    next = /^<([^>]+)>; rel="next"$/.exec(String(res.headers['link'] ?? ''))?.[1] ?? null;
  }
  return out;
}

describe('GET /identifiers without limit: the streamed listing', function () {
  this.timeout(60_000);
  let h: Harness;

  // Each test its own registry: the run's root hook closes every test store after each test.
  beforeEach(async () => {
    // Several pages, every status, and a retired identifier that is still held.
    h = await makeRegistry({ pool: 'w-[0000-2499]\n', rules: { cooldownMs: 60 * SECOND } });
    for (let i = 0; i < 1200; i++) await h.registry.allocate(`vm-${i}`);
    for (let i = 0; i < 300; i++) await h.registry.forceRelease(`w-${String(i * 2).padStart(4, '0')}`);
    h.clock.advance(SECOND);
    // w-0001 (held) and w-2400... (free) leave the pool file.
    await h.registry.syncPool(Array.from({ length: 2400 }, (_, i) => `w-${String(i).padStart(4, '0')}`).filter((n) => n !== 'w-0001'));
  });

  it('is the paged listing, page after page, for every status filter', async () => {
    for (const status of ['', 'status=leased', 'status=free', 'status=cooling', 'status=retired']) {
      const res = await h.http.get(`/identifiers${status ? `?${status}` : ''}`).expect(200);
      expect(res.headers['content-type']).to.equal('application/json; charset=utf-8');
      expect(res.headers['link'], status).to.equal(undefined);
      const streamed = res.body as View[];
      expect(streamed, status).to.deep.equal(await paged(h, status));
      expect(streamed.length, status).to.be.greaterThan(0);
    }
    const all = (await h.http.get('/identifiers')).body as View[];
    expect(new Set(all.map((v) => v.identifier)).size).to.equal(2500);
    const count = (s: string): number => all.filter((v) => v.status === s).length;
    expect([count('leased'), count('cooling'), count('free'), count('retired')]).to.deep.equal([900, 300, 1200, 100]);
    expect(all.find((v) => v.identifier === 'w-0001')).to.include({ status: 'leased', retired: true });
  });

  it('starts after `after`, and an empty result is []', async () => {
    const rest = (await h.http.get('/identifiers?after=w-1999').expect(200)).body as View[];
    expect(rest.map((v) => v.identifier)).to.deep.equal(Array.from({ length: 500 }, (_, i) => `w-${2000 + i}`));
    expect((await h.http.get('/identifiers?after=w-2499').expect(200)).text).to.equal('[]');
    const empty = await makeRegistry({ pool: 'a\n' });
    expect((await empty.http.get('/identifiers?status=leased').expect(200)).text).to.equal('[]');
  });

  it('a bad query is still a 400 naming the field, before anything is streamed', async () => {
    for (const [q, field] of [['after=nobody', 'after'], ['status=busy', 'status']]) {
      const res = await h.http.get(`/identifiers?${q}`);
      expect(res.status).to.equal(400);
      expect(res.body.error).to.include({ code: 'invalid_request' });
      expect(res.body.error.message).to.include(field);
    }
  });

  it('paged listings keep their Link header', async () => {
    const res = await h.http.get('/identifiers?status=free&limit=10').expect(200);
    expect(res.body).to.have.length(10);
    expect(String(res.headers['link'])).to.match(/^<\/identifiers\?status=free&limit=10&after=w-\d{4}>; rel="next"$/);
  });
});

describe('views: times', () => {
  it('iso() is Date#toISOString for every millisecond it may see', () => {
    fc.assert(fc.property(fc.oneof(fc.integer({ min: 0, max: 4_102_444_800_000 }), fc.integer({ min: -1e15, max: 1e15 })), (ms) => {
      expect(iso(ms)).to.equal(new Date(ms).toISOString());
    }), { numRuns: 20_000 });
    for (const ms of [0, 999, 1000, 86_399_999, 253_402_300_799_999, 253_402_300_800_000, -1, 1.5]) expect(iso(ms)).to.equal(new Date(ms).toISOString());
  });
});

describe('a 100,000-identifier listing', function () {
  this.timeout(120_000);
  // On 2 shared cores the machine itself stalls a process now and then (an idle process saw
  // 50 ms gaps; this test, 20-30 ms typically, once 120 ms under a load average of 4). The old
  // listing held the loop ~850 ms every time, so a retry cannot hide a real regression.
  this.retries(2);

  it('liveness keeps answering within 100 ms while it streams', async () => {
    const t = tempDir();
    const h = await makeRegistry({ path: join(t.dir, 'registry.db'), pool: 'p-[000000-099999]\n' });
    const server = createHttpServer(h.app.callback());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const base = `http://127.0.0.1:${port}`;
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await call(agent, base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
      // One listing first, unmeasured: it pays for this test process's one-time costs (the
      // first compilation of the listing path; collecting the 100,000-row sync's garbage
      // from a heap that holds the whole suite's), which a running registry does not have.
      await new Promise<void>((resolve, reject) => get(`${base}/identifiers`, (res) => res.resume().on('end', resolve)).on('error', reject));
      const body = { client_id: 'vm-a', identifier: 'p-000000', epoch: 1 };
      let listed = false;
      // node:http rather than fetch: the client's own work shares this event loop.
      const listing = new Promise<{ status: number; chunks: Buffer[] }>((resolve, reject) => {
        get(`${base}/identifiers`, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c)); // joined and parsed after, not while we measure
          res.on('end', () => {
            listed = true;
            resolve({ status: res.statusCode ?? 0, chunks });
          });
          res.on('error', reject);
        }).on('error', reject);
      });
      // Latency from when a liveness was due (the client shares this event loop, so a held
      // loop shows as a late send, which a VM elsewhere would have sent on time and waited for).
      const latencies: number[] = [];
      let due = performance.now();
      while (!listed) {
        const r = await call(agent, base, 'POST', '/liveness', body);
        latencies.push(performance.now() - due);
        expect(r.status).to.equal(200);
        due = performance.now() + 2;
        await new Promise((r) => setTimeout(r, 2));
      }
      const { status, chunks } = await listing;
      expect(status).to.equal(200);
      const views = JSON.parse(Buffer.concat(chunks).toString('utf8')) as View[];
      expect(views).to.have.length(100_000);
      expect(views[0]).to.include({ identifier: 'p-000000', status: 'leased', client_id: 'vm-a' });
      expect(views[99_999]).to.include({ identifier: 'p-099999', status: 'free' });
      expect(latencies.length, 'liveness calls made during the listing').to.be.greaterThan(5);
      expect(Math.max(...latencies), `liveness latencies (ms): ${latencies.map((l) => l.toFixed(0)).join(' ')}`).to.be.below(100);
    } finally {
      agent.destroy();
      server.closeAllConnections();
      server.close();
      await h.registry.close();
      await h.store.close();
      t.cleanup();
    }
  });
});
