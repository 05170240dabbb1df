/**
 * On SQLite, a filtered page is found through an index of just its status's rows in pool
 * order: never a walk of the whole pool's order, never every match by time and a sort of them
 * all. Free and cooling ones share the index of unheld identifiers, which holds the time, so
 * the rows a page skips are never read. (What that buys: test/http/large-pool.test.ts.)
 * A grant reads the allocatable index in allocation order, never a sort either.
 */
import { expect } from 'chai';
import { FakeClock } from '../../src/clock.js';
import { pageSql } from '../../src/store/sqlite/listing-json.js';
import { NEXT_ALLOCATABLE_SQL } from '../../src/store/sqlite/statements.js';
import { STATUS_WHERE, SqliteStore } from '../../src/store/sqlite/store.js';
import type { Status } from '../../src/domain/types.js';

const FILTERS: Array<[Status, RegExp]> = [
  ['free', /identifiers_unheld_by_order/],
  ['cooling', /identifiers_unheld_by_order/],
  ['leased', /identifiers_leased_by_order/],
  ['retired', /identifiers_retired_by_order/],
];

describe('[sqlite] the plans of filtered pages', () => {
  it('walk their status\'s pool-order index, the time read from the index, and never sort', async () => {
    const store = new SqliteStore({ path: ':memory:', clock: new FakeClock() });
    try {
      const sql = pageSql(STATUS_WHERE);
      const params = { now: 1, limit: 1, afterOrder: 0, afterId: 0, ttl: 1n, cooldown: 1n, fence: 1n, day0: 1n, date0: 'd', day1: 1n, date1: 'd', day2: 1n, date2: 'd' };
      for (const [status, index] of FILTERS) {
        for (const after of ['first', 'after']) {
          const statements = sql[`${status}:${after}`];
          if (!statements) throw new Error(`no statements for ${status}:${after}`);
          for (const [part, text] of Object.entries(statements)) {
            const plan = (store.db.prepare(`EXPLAIN QUERY PLAN ${text}`).all(params) as { detail: string }[]).map((r) => r.detail).join('; ');
            expect(plan, `${status}:${after} ${part}`).to.match(index).and.not.match(/TEMP B-TREE|identifiers_allocatable|identifiers_by_order\b/);
            if (status === 'free' || status === 'cooling') expect(plan, `${status}:${after} ${part}`).to.match(/identifiers_unheld_by_order_at/);
          }
        }
      }
    } finally {
      await store.close();
    }
  });
});

describe('[sqlite] the plan of a grant', () => {
  it('takes the next allocatable identifier from its index in allocation order, id tie-break included, without a sort', async () => {
    const store = new SqliteStore({ path: ':memory:', clock: new FakeClock() });
    try {
      expect(NEXT_ALLOCATABLE_SQL).to.match(/ORDER BY available_at, pool_order, id LIMIT 1$/);
      const plan = (store.db.prepare(`EXPLAIN QUERY PLAN ${NEXT_ALLOCATABLE_SQL}`).all({ now: 1 }) as { detail: string }[]).map((r) => r.detail).join('; ');
      expect(plan).to.match(/identifiers_allocatable/).and.not.match(/TEMP B-TREE/);
    } finally {
      await store.close();
    }
  });
});
