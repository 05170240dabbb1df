/**
 * Concurrency across two registry processes sharing one database file: uniqueness holds
 * through SQLite's write lock, never through a process's memory.
 */
import { expect } from 'chai';
import { Agent } from 'node:http';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { tempDir } from '../support/helpers.js';
import { call, startProcess } from '../support/process-helpers.js';
import type { Reply, RunningRegistry } from '../support/process-helpers.js';

const agent = new Agent({ keepAlive: true, maxSockets: 128 });

const post = (base: string, path: string, body: unknown): Promise<Reply> => call(agent, base, 'POST', path, body);

describe('concurrency: two processes, one database file', function () {
  this.timeout(120_000);
  let t: ReturnType<typeof tempDir>;
  let a: RunningRegistry;
  let b: RunningRegistry;
  const POOL = 1500;

  before(async () => {
    t = tempDir();
    const env = { DB_BUSY_TIMEOUT_MS: '20000', LOG_LEVEL: 'warn', REAPER_SCHEDULE: '0 0 1 1 *' };
    a = await startProcess({ dir: t.dir, pool: `w-[0000-${POOL - 1}]\n`, env });
    b = await startProcess({ dir: t.dir, env });
  });
  after(async () => {
    await Promise.all([a.stop(), b.stop()]);
    t.cleanup();
  });

  it('2,000 concurrent allocations from distinct clients: distinct identifiers up to the pool, then 503s', async () => {
    const results = await Promise.all(Array.from({ length: 2000 }, (_, i) => post(i % 2 ? a.base : b.base, '/allocate', { client_id: `vm-${i}` })));
    const ok = results.filter((r) => r.status === 200);
    const exhausted = results.filter((r) => r.status === 503 && (r.body['error'] as Record<string, unknown>)['code'] === 'pool_exhausted');
    expect(ok.length + exhausted.length, JSON.stringify(results.find((r) => r.status !== 200 && r.status !== 503))).to.equal(2000);
    expect(ok).to.have.length(POOL);
    expect(new Set(ok.map((r) => r.body['identifier'])).size).to.equal(POOL);
    expect(new Set(ok.map((r) => r.body['client_id'])).size).to.equal(POOL);
    const db = new Database(join(t.dir, 'registry.db'), { readonly: true });
    try {
      expect(db.prepare('SELECT count(*) AS n, count(DISTINCT client_id) AS c FROM identifiers WHERE client_id IS NOT NULL').get()).to.deep.equal({ n: POOL, c: POOL });
      expect(db.prepare(`SELECT count(*) AS n FROM history WHERE event = 'allocated'`).get()).to.deep.equal({ n: POOL });
    } finally {
      db.close();
    }
  });

  it('one client allocating from 50 connections at once gets one identifier, one epoch', async () => {
    // Free one identifier first: the pool is full from the test above.
    const held = await post(a.base, '/allocate', { client_id: 'vm-7' });
    expect((await post(b.base, '/release', { client_id: 'vm-7', identifier: held.body['identifier'] })).status).to.equal(200);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => post(i % 2 ? a.base : b.base, '/allocate', { client_id: 'the-one' })));
    expect(results.every((r) => r.status === 200), JSON.stringify(results.find((r) => r.status !== 200))).to.equal(true);
    expect(new Set(results.map((r) => `${String(r.body['identifier'])}#${String(r.body['epoch'])}`)).size).to.equal(1);
    const db = new Database(join(t.dir, 'registry.db'), { readonly: true });
    try {
      expect(db.prepare(`SELECT count(*) AS n FROM identifiers WHERE client_id = 'the-one'`).get()).to.deep.equal({ n: 1 });
      expect(db.prepare(`SELECT count(*) AS n FROM history WHERE client_id = 'the-one' AND event = 'allocated'`).get()).to.deep.equal({ n: 1 });
    } finally {
      db.close();
    }
  });
});
