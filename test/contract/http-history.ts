/**
 * GET /identifier/:identifier/history, paged (`?limit=&after=`, a Link to the next page) and,
 * without `limit`, streamed a page at a time (src/http/history.ts): the pages say exactly what
 * the whole history says, oldest first, a bad query is a 400 naming its field, and a history
 * of 100,000 entries never holds the event loop for 20 ms.
 */
import { expect } from 'chai';
import { get } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HISTORY_PAGE_SIZE } from '../../src/http/history.js';
import { createHttpServer } from '../../src/http/server.js';
import { currentEngine } from '../support/engines.js';
import { SECOND, makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';
import { longestHold } from '../support/event-loop.js';

interface Entry { at: string; event: string; client_id: string | null; epoch: number }

const LINK = /^<([^>]+)>; rel="next"$/;

/** Appends `n` entries to `name`'s history in one statement (allocated/released in turn, one a millisecond from `at`). */
async function appendHistory(h: Harness, name: string, n: number, at: number): Promise<void> {
  if (currentEngine() === 'postgres') {
    await h.sql(`INSERT INTO history (identifier_id, at, event, client_id, epoch)
      SELECT (SELECT id FROM identifiers WHERE name = $1), $2::bigint + i, CASE i % 2 WHEN 1 THEN 'allocated' ELSE 'released' END, 'vm-' || i, (i + 1) / 2
      FROM generate_series(1, $3::int) AS i`, [name, at, n]);
  } else {
    await h.sql(`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)
      INSERT INTO history (identifier_id, at, event, client_id, epoch)
      SELECT (SELECT id FROM identifiers WHERE name = ?), ? + i, CASE i % 2 WHEN 1 THEN 'allocated' ELSE 'released' END, 'vm-' || i, (i + 1) / 2 FROM c`,
    [n, name, at]);
  }
}

/** Follows the Link headers from `first` to the last page; the pages' entries and how many pages. */
async function follow(h: Harness, first: string): Promise<{ entries: Entry[]; pages: number; links: string[] }> {
  const entries: Entry[] = [];
  const links: string[] = [];
  let next: string | null = first;
  let pages = 0;
  while (next !== null) {
    const res: { body: unknown; headers: Record<string, string> } = await h.http.get(next).expect(200);
    entries.push(...(res.body as Entry[]));
    pages++;
    const link = res.headers['link'];
    if (link !== undefined) links.push(link);
    next = link === undefined ? null : LINK.exec(link)?.[1] ?? 'malformed';
  }
  return { entries, pages, links };
}

export const historyPaged = (): Mocha.Suite => describe('GET /identifier/:identifier/history, paged', function () {
  this.timeout(60_000);

  /** Seven ownership changes of `only`, with changes of `other` between them (so its positions are not contiguous). */
  async function sevenChanges(): Promise<Harness> {
    const h = await makeRegistry({ pool: 'only\nother\n', rules: { cooldownMs: 0 } });
    const r = h.registry;
    for (let i = 0; i < 3; i++) {
      await r.allocate(`vm-${i}`); // only
      await r.allocate(`bystander-${i}`); // other
      h.clock.advance(SECOND);
      if (i === 1) await r.forceRelease('only');
      else await r.release(`vm-${i}`, 'only');
      await r.release(`bystander-${i}`, 'other');
      h.clock.advance(SECOND);
    }
    await r.allocate('vm-last');
    return h;
  }

  it('with limit: oldest first, a Link to the next page until the last; the pages make the whole history', async () => {
    const h = await sevenChanges();
    const whole = (await h.http.get('/identifier/only/history').expect(200)).body as Entry[];
    expect(whole.map((e) => [e.event, e.client_id, e.epoch])).to.deep.equal([
      ['allocated', 'vm-0', 1], ['released', 'vm-0', 1], ['allocated', 'vm-1', 2], ['force_released', 'vm-1', 2],
      ['allocated', 'vm-2', 3], ['released', 'vm-2', 3], ['allocated', 'vm-last', 4],
    ]);
    const first = await h.http.get('/identifier/only/history?limit=3').expect(200);
    expect(first.headers['content-type']).to.equal('application/json; charset=utf-8');
    expect(first.body).to.deep.equal(whole.slice(0, 3));
    expect(String(first.headers['link'])).to.match(/^<\/identifier\/only\/history\?limit=3&after=\d+>; rel="next"$/);

    const byThree = await follow(h, '/identifier/only/history?limit=3');
    expect(byThree.entries).to.deep.equal(whole);
    expect(byThree.pages).to.equal(3); // 3 + 3 + 1: the last page has no Link
    for (const limit of [1, 2, 6, 7, 8, 10_000]) {
      const got = await follow(h, `/identifier/only/history?limit=${limit}`);
      expect(got.entries, `limit ${limit}`).to.deep.equal(whole);
      expect(got.pages, `limit ${limit}`).to.equal(Math.max(1, Math.ceil(whole.length / limit)));
    }
    // The other identifier's entries never show on this one's pages, whatever the cursor.
    const other = await follow(h, '/identifier/other/history?limit=2');
    expect(other.entries.map((e) => e.client_id)).to.deep.equal(['bystander-0', 'bystander-0', 'bystander-1', 'bystander-1', 'bystander-2', 'bystander-2']);
    // `after` works without `limit` too: the rest of the history, streamed.
    const after = LINK.exec(String(first.headers['link']))?.[1]?.replace(/^.*after=/, '');
    expect((await h.http.get(`/identifier/only/history?after=${after}`).expect(200)).body).to.deep.equal(whole.slice(3));
  });

  it('after past the end is an empty page without a Link; after=0 starts at the first entry', async () => {
    const h = await sevenChanges();
    const whole = (await h.http.get('/identifier/only/history').expect(200)).body as Entry[];
    for (const q of [`limit=5&after=${Number.MAX_SAFE_INTEGER}`, `after=${Number.MAX_SAFE_INTEGER}`]) {
      const res = await h.http.get(`/identifier/only/history?${q}`).expect(200);
      expect(res.text, q).to.equal('[]');
      expect(res.headers['link'], q).to.equal(undefined);
    }
    expect((await h.http.get('/identifier/only/history?limit=10&after=0').expect(200)).body).to.deep.equal(whole);
    // The last entry's own position: nothing after it.
    const last = await h.http.get('/identifier/only/history?limit=6').expect(200);
    const tail = LINK.exec(String(last.headers['link']))?.[1] ?? '';
    const end = await h.http.get(tail).expect(200);
    expect(end.body).to.deep.equal(whole.slice(6));
    expect(end.headers['link']).to.equal(undefined);
    // A page that ends exactly at the last entry says there is no next one.
    expect((await h.http.get('/identifier/only/history?limit=7').expect(200)).headers['link']).to.equal(undefined);
    // An identifier with no history yet.
    const empty = await makeRegistry({ pool: 'fresh\n' });
    expect((await empty.http.get('/identifier/fresh/history?limit=3').expect(200)).text).to.equal('[]');
    expect((await empty.http.get('/identifier/fresh/history').expect(200)).text).to.equal('[]');
  });

  it('a bad limit or after is a 400 naming the field, paged or streamed; an unknown identifier a 404', async () => {
    const h = await sevenChanges();
    const cases: Array<[string, string]> = [
      ['limit=0', 'limit'], ['limit=10001', 'limit'], ['limit=abc', 'limit'], ['limit=1.5', 'limit'], ['limit=-3', 'limit'], ['limit=', 'limit'],
      ['after=-1', 'after'], ['after=abc', 'after'], ['after=1.5', 'after'], ['after=9007199254740992', 'after'], ['after=1&after=2', 'after'],
      ['limit=2&after=x', 'after'], ['after=3&limit=0', 'limit'], ['page=2', 'page'],
    ];
    for (const [q, field] of cases) {
      const res = await h.http.get(`/identifier/only/history?${q}`);
      expect(res.status, q).to.equal(400);
      expect(res.body.error, q).to.include({ code: 'invalid_request' });
      expect(res.body.error.message, q).to.match(new RegExp(`^${field}\\b`));
      expect(res.headers['link'], q).to.equal(undefined);
    }
    for (const q of ['', '?limit=2', '?after=3']) {
      const res = await h.http.get(`/identifier/nobody/history${q}`);
      expect(res.status, q).to.equal(404);
      expect(res.body.error.code, q).to.equal('identifier_not_found');
    }
  });

  it('without limit: a history of several pages comes whole, oldest first, as the pages give it', async () => {
    const h = await makeRegistry({ pool: 'busy\nquiet\n' });
    await h.registry.allocate('vm-first');
    const n = 2 * HISTORY_PAGE_SIZE + 345;
    await appendHistory(h, 'busy', n, h.clock.now());
    h.clock.advance(10 * n);
    await h.registry.forceRelease('busy');
    const res = await h.http.get('/identifier/busy/history').expect(200);
    expect(res.headers['content-type']).to.equal('application/json; charset=utf-8');
    const whole = res.body as Entry[];
    expect(whole).to.have.length(n + 2);
    expect(whole[0]).to.include({ event: 'allocated', client_id: 'vm-first', epoch: 1 });
    expect(whole[1]).to.include({ event: 'allocated', client_id: 'vm-1' });
    expect(whole[n]).to.include({ client_id: `vm-${n}` });
    expect(whole[n + 1]).to.include({ event: 'force_released', client_id: 'vm-first' });
    const ats = whole.map((e) => Date.parse(e.at));
    expect(ats.every((t, i) => i === 0 || t >= (ats[i - 1] ?? 0)), 'oldest first').to.equal(true);
    expect((await follow(h, `/identifier/busy/history?limit=${HISTORY_PAGE_SIZE}`)).entries).to.deep.equal(whole);
    expect((await follow(h, '/identifier/busy/history?limit=999')).entries).to.deep.equal(whole);
    expect((await h.http.get('/identifier/quiet/history').expect(200)).text).to.equal('[]');
  });

  it('entries written between two pages come on a later page: none is repeated or skipped', async () => {
    const h = await makeRegistry({ pool: 'only\n', rules: { cooldownMs: 0 } });
    await h.registry.allocate('vm-0');
    await h.registry.release('vm-0', 'only');
    const first = await h.http.get('/identifier/only/history?limit=2').expect(200);
    expect(first.headers['link']).to.equal(undefined); // the whole history, for now
    await h.registry.allocate('vm-1');
    const full = await h.http.get('/identifier/only/history?limit=1').expect(200);
    const link = LINK.exec(String(full.headers['link']))?.[1] ?? '';
    await h.registry.release('vm-1', 'only');
    const rest = await follow(h, link);
    expect([...(full.body as Entry[]), ...rest.entries].map((e) => [e.event, e.client_id])).to.deep.equal([
      ['allocated', 'vm-0'], ['released', 'vm-0'], ['allocated', 'vm-1'], ['released', 'vm-1'],
    ]);
  });
});

async function serve(h: Harness): Promise<{ server: Server; base: string }> {
  const server = createHttpServer(h.app.callback());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** GET `path` over a real socket; the body's chunks are kept, joined only once the monitor has stopped. */
function fetchChunks(base: string, path: string): Promise<{ status: number; chunks: Buffer[] }> {
  return new Promise((resolve, reject) => {
    get(`${base}${path}`, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, chunks }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

export const historyLong = (): Mocha.Suite => describe('a history of 100,000 entries', function () {
  this.timeout(120_000);

  it('is served whole without holding the event loop for 20 ms at a time', async () => {
    const h = await makeRegistry({ pool: 'hot\n', shared: true });
    const N = 100_000;
    await appendHistory(h, 'hot', N, h.clock.now() - 2 * N);
    const { server, base } = await serve(h);
    try {
      let last: { status: number; chunks: Buffer[] } = { status: 0, chunks: [] };
      await fetchChunks(base, '/identifier/hot/history'); // unmeasured: this process's first compilation of the path
      const held = await longestHold(async () => {
        last = await fetchChunks(base, '/identifier/hot/history');
      });
      expect(last.status).to.equal(200);
      const entries = JSON.parse(Buffer.concat(last.chunks).toString('utf8')) as Entry[];
      expect(entries).to.have.length(N);
      expect(entries[0]).to.include({ client_id: 'vm-1', event: 'allocated' });
      expect(entries[N - 1]).to.include({ client_id: `vm-${N}`, event: 'released' });
      expect(held.ms, `longest hold of the event loop, per run: ${held.shown}`).to.be.below(20);
      // And a page of the most a limit allows, on its own.
      const page = await longestHold(async () => {
        last = await fetchChunks(base, '/identifier/hot/history?limit=10000&after=0');
      });
      expect(JSON.parse(Buffer.concat(last.chunks).toString('utf8'))).to.have.length(10_000);
      expect(page.ms, `a page of 10,000, per run: ${page.shown}`).to.be.below(20);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
