/**
 * History pruning (HISTORY_RETENTION_DAYS): entries older than the retention go, recent ones
 * stay, 0 keeps everything, and nothing that reads history is fooled — the guard still counts
 * the reclaims of its window, the pool's counts and leases are untouched, registry time keeps
 * its floor. In bounded batches on both engines; a real registry prunes on its sweep schedule.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ENGINES, currentEngine, useEngine } from '../support/engines.js';
import { SECOND, makeRegistry, tempDir } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';
import { json, startProcess } from '../support/process-helpers.js';
import { longestHold } from '../support/event-loop.js';

const DAY = 86_400_000;

interface Entry { at: string; event: string; client_id: string | null; epoch: number }

async function historyOf(h: Harness, name: string): Promise<Entry[]> {
  return (await h.http.get(`/identifier/${name}/history`).expect(200)).body as Entry[];
}

async function historyRows(h: Harness): Promise<number> {
  const [r] = await h.sql('SELECT count(*) AS n FROM history');
  return Number(r?.['n']);
}

/** What an operator sees of the pool: every identifier view, and the counts of /health. */
async function poolState(h: Harness): Promise<unknown> {
  const health = (await h.http.get('/health').expect(200)).body as { pool: unknown };
  return { views: (await h.http.get('/identifiers').expect(200)).body, counts: health.pool };
}

for (const engine of ENGINES) describe(`[${engine}] history pruning`, function () {
  useEngine(engine);
  this.timeout(60_000);

  /** Old changes of a, b and c (c left leased); 91 days later, recent ones of a and b (b left cooling). */
  async function oldAndRecent(): Promise<Harness> {
    const h = await makeRegistry({ pool: 'a\nb\nc\n', rules: { cooldownMs: 60 * SECOND, ttlMs: 90 * SECOND } });
    const r = h.registry;
    await r.allocate('vm-1'); // a
    await r.allocate('vm-2'); // b
    await r.release('vm-1', 'a');
    await r.forceRelease('b');
    await r.allocate('vm-3'); // c: never used, so before a
    h.clock.advance(91 * DAY);
    await r.allocate('vm-4'); // a, free the longest
    await r.release('vm-4', 'a');
    await r.allocate('vm-5'); // b
    await r.forceRelease('b');
    return h;
  }

  it('deletes entries older than the retention, keeps the recent ones; leases, epochs and counts as they were', async () => {
    const h = await oldAndRecent();
    const before = { a: await historyOf(h, 'a'), b: await historyOf(h, 'b'), c: await historyOf(h, 'c') };
    const cutoff = h.clock.now() - 90 * DAY;
    const recent = (es: Entry[]): Entry[] => es.filter((e) => Date.parse(e.at) >= cutoff);
    expect(Object.values(before).flat().length - Object.values(before).map(recent).flat().length, 'old entries to prune').to.equal(5);
    const state = await poolState(h);

    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY })).to.equal(5);

    expect(await historyOf(h, 'a')).to.deep.equal(recent(before.a));
    expect(await historyOf(h, 'b')).to.deep.equal(recent(before.b));
    expect(await historyOf(h, 'c')).to.deep.equal(recent(before.c));
    expect(await historyRows(h)).to.equal(Object.values(before).map(recent).flat().length);
    expect(await poolState(h)).to.deep.equal(state);
    // Nothing more is due: a second pass deletes nothing.
    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY })).to.equal(0);
    // The next grant of a takes the next epoch: epochs live with the identifier, not in its history.
    expect((await h.registry.identifier('a')).epoch).to.equal(2);
    expect(await h.registry.allocate('vm-6')).to.include({ identifier: 'a', epoch: 3 });
  });

  it('a retention of 0 keeps everything, however old', async () => {
    const h = await oldAndRecent();
    h.clock.advance(3650 * DAY);
    await h.registry.allocate('vm-late');
    const rows = await historyRows(h);
    expect(await h.registry.pruneHistory({ retentionMs: 0 })).to.equal(0);
    expect(await historyRows(h)).to.equal(rows);
  });

  it('keeps what the mass-expiry guard counts: reclaims within the last TTL stay, even past a shorter retention', async () => {
    // A TTL of two days, a retention of one: the guard looks back two days.
    const h = await makeRegistry({ pool: 'w-[0-9]\n', rules: { ttlMs: 2 * DAY, cooldownMs: 0, maxFraction: 1 } });
    for (let i = 0; i < 10; i++) await h.registry.allocate(`vm-${i}`);
    h.clock.advance(2 * DAY + SECOND);
    for (let i = 4; i < 10; i++) await h.registry.renew(`vm-${i}`, `w-${i}`);
    expect((await h.registry.reap({ force: true })).reclaimed).to.equal(4); // w-0..w-3
    h.clock.advance(1.5 * DAY); // the reclaims are a day and a half old: past the retention, within the TTL
    const countReclaims = (): Promise<number> => h.store.write((tx) => tx.countEvents('reclaimed', tx.now - 2 * DAY), { durable: false });
    expect(await countReclaims()).to.equal(4);
    const pruned = await h.registry.pruneHistory({ retentionMs: DAY });
    expect(pruned, 'the grants of 3.5 days ago are pruned').to.equal(10);
    expect(await countReclaims(), 'the guard still counts every reclaim of its window').to.equal(4);
    expect((await historyOf(h, 'w-0')).map((e) => e.event)).to.deep.equal(['reclaimed']);
    // Once past the TTL too, they go.
    h.clock.advance(DAY);
    expect(await h.registry.pruneHistory({ retentionMs: DAY })).to.equal(3); // the newest entry of all stays
    expect(await countReclaims()).to.equal(0);
  });

  it('never deletes the newest entry of all: registry time resumes from it', async () => {
    const h = await makeRegistry({ pool: 'a\nb\n' });
    await h.registry.allocate('vm-1');
    await h.registry.allocate('vm-2');
    h.clock.advance(400 * DAY);
    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY })).to.equal(1);
    expect(await historyOf(h, 'a')).to.deep.equal([]);
    expect((await historyOf(h, 'b')).map((e) => e.client_id)).to.deep.equal(['vm-2']);
  });

  it('works in bounded batches: a call runs at most maxBatches transactions of batch entries, the next goes on', async () => {
    const h = await makeRegistry({ pool: 'a\nb\n', rules: { cooldownMs: 0 } });
    for (let i = 0; i < 10; i++) {
      await h.registry.allocate(`vm-${i}`);
      await h.registry.release(`vm-${i}`, (await h.registry.leaseOfClient(`vm-${i}`)).identifier);
    }
    h.clock.advance(100 * DAY);
    await h.registry.allocate('vm-now'); // one recent entry
    expect(await historyRows(h)).to.equal(21);
    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY, batch: 3, maxBatches: 2 })).to.equal(6);
    expect(await historyRows(h)).to.equal(15);
    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY, batch: 3, maxBatches: 2 })).to.equal(6);
    expect(await h.registry.pruneHistory({ retentionMs: 90 * DAY, batch: 3 })).to.equal(8); // 3 + 3 + 2, then a batch with nothing due ends it
    expect(await historyRows(h)).to.equal(1);
    expect((await historyOf(h, 'a')).concat(await historyOf(h, 'b')).map((e) => e.client_id)).to.deep.equal(['vm-now']);
  });

  if (engine === 'postgres') {
    it('two instances pruning at once delete each entry once, and all that is due', async () => {
      const h = await makeRegistry({ pool: 'a\n', rules: { cooldownMs: 0 } });
      const n = 3000;
      await h.sql(`INSERT INTO history (identifier_id, at, event, client_id, epoch)
        SELECT (SELECT id FROM identifiers WHERE name = 'a'), $1::bigint + i, 'allocated', 'vm-' || i, i FROM generate_series(1, $2::int) AS i`,
      [h.clock.now() - 200 * DAY, n]);
      await h.registry.allocate('vm-now');
      const other = await h.another();
      const [x, y] = await Promise.all([
        h.registry.pruneHistory({ retentionMs: 90 * DAY, batch: 100 }),
        other.pruneHistory({ retentionMs: 90 * DAY, batch: 100 }),
      ]);
      expect(x, 'both took part').to.be.greaterThan(0);
      expect(y, 'both took part').to.be.greaterThan(0);
      // Should both passes have stopped short on each other's deletions, the next pass (the next sweep) takes the rest.
      const z = await h.registry.pruneHistory({ retentionMs: 90 * DAY, batch: 100 });
      expect(x + y + z).to.equal(n);
      expect(await historyRows(h)).to.equal(1);
    });
  }
});

describe('[sqlite] pruning a long history', function () {
  this.timeout(120_000);

  it('deletes 100,000 old entries without holding the event loop for 20 ms at a time', async () => {
    expect(currentEngine()).to.equal('sqlite');
    const N = 100_000;
    const runs = [];
    for (let round = 0; round < 3; round++) {
      const h = await makeRegistry({ pool: 'old\nnow\n', shared: true });
      // Old entries, then a recent one (positions follow time, as the registry writes them).
      await h.sql(`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?)
        INSERT INTO history (identifier_id, at, event, client_id, epoch)
        SELECT (SELECT id FROM identifiers WHERE name = 'old'), ? + i, 'allocated', 'vm-' || i, i FROM c`, [N, h.clock.now() - 200 * DAY]);
      await h.registry.allocate('vm-now'); // `old`, first in pool order
      let pruned = 0;
      runs.push(await longestHold(async () => {
        pruned = await h.registry.pruneHistory({ retentionMs: 90 * DAY, maxBatches: 1000 });
      }, 1));
      expect(pruned).to.equal(N);
      expect((await historyOf(h, 'old')).map((e) => e.client_id)).to.deep.equal(['vm-now']);
    }
    const best = Math.min(...runs.map((r) => r.ms));
    expect(best, `longest hold per run: ${runs.map((r) => r.shown).join('; ')}`).to.be.below(20);
  });
});

describe('a registry prunes its history on its sweep schedule (HISTORY_RETENTION_DAYS)', function () {
  this.timeout(90_000);

  it('entries older than the retention go; recent ones stay', async () => {
    const t = tempDir();
    try {
      const reg = await startProcess({
        dir: t.dir, pool: 'w-[0-2]\n',
        env: { HISTORY_RETENTION_DAYS: '1', REAPER_SCHEDULE: '* * * * * *', STARTUP_GRACE_SECONDS: '0' },
      });
      try {
        expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-now' })).status).to.equal(200); // w-0, now
        // Two entries of w-2 from two and three days ago, written into the registry's file (WAL: seen at once).
        const db = new Database(join(t.dir, 'registry.db'));
        try {
          const add = db.prepare(`INSERT INTO history (identifier_id, at, event, client_id, epoch)
            VALUES ((SELECT id FROM identifiers WHERE name = 'w-2'), ?, ?, 'vm-old', 1)`);
          add.run(Date.now() - 3 * DAY, 'allocated');
          add.run(Date.now() - 2 * DAY, 'released');
        } finally {
          db.close();
        }
        // A newer entry than those, so they are not the newest of all.
        expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-later' })).status).to.equal(200);
        const deadline = Date.now() + 30_000;
        let old: unknown[] = [];
        // Until the entries are gone and the log says so (its line may come a moment after the commit).
        do {
          await new Promise((r) => setTimeout(r, 200));
          old = (await json(reg.base, 'GET', '/identifier/w-2/history')).body as unknown[];
        } while ((old.length > 0 || !/"pruned":2\b.*history pruned/.test(reg.output())) && Date.now() < deadline);
        expect(old, reg.output()).to.deep.equal([]);
        expect(reg.output()).to.match(/"pruned":2\b.*history pruned/);
        const kept = (await json(reg.base, 'GET', '/identifier/w-0/history')).body as Entry[];
        expect(kept.map((e) => [e.event, e.client_id])).to.deep.equal([['allocated', 'vm-now']]);
      } finally {
        await reg.stop();
      }
      // A bad value stops start-up naming it.
      const bad = await startProcess({ dir: t.dir, pool: 'w-[0-2]\n', env: { HISTORY_RETENTION_DAYS: '1.5' }, wait: false });
      expect((await bad.exited).code).to.equal(78);
      expect(bad.output()).to.match(/HISTORY_RETENTION_DAYS: "1\.5" is not a whole number/);
    } finally {
      t.cleanup();
    }
  });
});
