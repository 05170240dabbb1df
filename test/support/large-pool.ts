/**
 * A SQLite registry file of a million identifiers in every state, built in a few seconds by
 * SQL (a pool sync and a million requests would take minutes): the database the registry's
 * migrations make, its identifiers indexes dropped while the rows go in and made again after
 * (one sort each instead of a million random inserts), and the kept pool counts set to match.
 */
import Database from 'better-sqlite3';
import { SqliteStore } from '../../src/store/sqlite/store.js';

/** How many identifiers of each state, in this order of the pool (pool order = row order). */
export interface PoolMix {
  readonly free: number;
  readonly cooling: number;
  readonly leased: number;
  readonly retired: number;
}

/** Names `p-0000000`…: an identifier's name is its place in the pool. */
export const poolName = (i: number): string => `p-${String(i).padStart(7, '0')}`;

/**
 * Writes the pool into a new registry file at `path`, its times around `now`: free ones
 * allocatable since a second before, cooling ones until a minute after, leases renewed within
 * the last second. Returns the SQL-checked counts.
 */
export async function buildLargePool(path: string, now: number, mix: PoolMix): Promise<void> {
  await new SqliteStore({ path, listingWorker: false }).close(); // the schema, migrated
  const db = new Database(path);
  try {
    // A throwaway build: no journal, no syncs, a large cache; the file goes back to WAL after.
    db.pragma('journal_mode = OFF');
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -262144');
    const indexes = db.prepare(`SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'identifiers' AND sql IS NOT NULL`).all() as { name: string; sql: string }[];
    const total = mix.free + mix.cooling + mix.leased + mix.retired;
    const c = mix.free;
    const l = c + mix.cooling;
    const r = l + mix.leased;
    db.transaction(() => {
      for (const ix of indexes) db.exec(`DROP INDEX ${ix.name}`);
      db.prepare(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${total - 1})
        INSERT INTO identifiers (name, pool_order, retired, epoch, client_id, allocated_at, last_seen, available_at)
        SELECT printf('p-%07d', i), i, i >= ${r}, CASE WHEN i >= ${c} THEN 1 ELSE 0 END,
               CASE WHEN i >= ${l} AND i < ${r} THEN 'vm-' || i END,
               CASE WHEN i >= ${l} AND i < ${r} THEN @now - 5000 END,
               CASE WHEN i >= ${l} AND i < ${r} THEN @now - i % 1000 END,
               CASE WHEN i < ${c} THEN @now - 1000 - i % 1000 WHEN i < ${l} THEN @now + 60000 + i % 1000 ELSE @now - 100000 END
        FROM n`).run({ now });
      for (const ix of indexes) db.exec(ix.sql);
      db.prepare('UPDATE pool_counts SET total = ?, leased = ?, retired = ?').run(total, mix.leased, mix.retired);
    }).immediate();
    db.pragma('journal_mode = WAL');
  } finally {
    db.close();
  }
}
