/**
 * One contract suite, every engine: the registry, API and safety tests build their store
 * through `openTestStore`, and run once per engine:
 *
 *   for (const engine of ENGINES) describe(engine, () => { useEngine(engine); … });
 *
 * SQLite runs in memory (or on a temp file when a test needs a second process on it);
 * PostgreSQL on a fresh database of the run's shared server (test/support/postgres.ts).
 * Both take the test's FakeClock, so time moves only when a test says so.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../src/clock.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { closeAfterTest, freshDatabase, sharedPostgres } from './postgres.js';

export type EngineName = 'sqlite' | 'postgres';
export const ENGINES: readonly EngineName[] = ['sqlite', 'postgres'];

let current: EngineName = 'sqlite';

/** The engine the enclosing describe runs on (before/after hooks). */
export function useEngine(engine: EngineName): void {
  let previous: EngineName = 'sqlite';
  before(() => {
    previous = current;
    current = engine;
  });
  after(() => {
    current = previous;
  });
}

export function currentEngine(): EngineName {
  return current;
}

/** A look at what a request left in the database, in SQL, whatever the engine. */
export interface RawLook {
  /** The identifier's row, columns as numbers/strings/null (retired as 0/1 on both engines). */
  row(name: string): Promise<Record<string, unknown> | undefined>;
  leasedCount(): Promise<number>;
  /** Raw SQL in the engine's own dialect and placeholders (`?` / `$1`): rows of a query, [] otherwise. */
  sql(text: string, params?: readonly unknown[]): Promise<Record<string, unknown>[]>;
}

export interface TestStore {
  readonly store: Store;
  readonly raw: RawLook;
  /** The SQLite store, for the tests that reach into its file; null on PostgreSQL. */
  readonly sqlite: SqliteStore | null;
  /** Another store on the same database, as a second process (or instance) would open it. */
  another(clock: Clock): Promise<Store>;
  /** Makes the database unreadable under the store (SQLite: closes the file; PostgreSQL: drops the database). */
  breakIt(): Promise<void>;
}

export function sqliteLookOf(s: SqliteStore): RawLook {
  const rowStmt = s.db.prepare('SELECT * FROM identifiers WHERE name = ?');
  const leasedStmt = s.db.prepare('SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL');
  return {
    row: async (name) => {
      const r: unknown = rowStmt.get(name);
      return typeof r === 'object' && r !== null ? Object.fromEntries(Object.entries(r)) : undefined;
    },
    leasedCount: async () => {
      const r: unknown = leasedStmt.get();
      return typeof r === 'object' && r !== null && 'n' in r && typeof r.n === 'number' ? r.n : -1;
    },
    sql: async (text, params = []) => {
      const stmt = s.db.prepare(text);
      if (!stmt.reader) {
        stmt.run(...params);
        return [];
      }
      return stmt.all(...params).map((r) => (typeof r === 'object' && r !== null ? Object.fromEntries(Object.entries(r)) : {}));
    },
  };
}

async function openSqlite(clock: Clock, shared: boolean): Promise<TestStore> {
  const dir = shared ? mkdtempSync(join(tmpdir(), 'idreg-test-')) : null;
  const path = dir ? join(dir, 'registry.db') : ':memory:';
  const store = new SqliteStore({ path, clock });
  const others: SqliteStore[] = [];
  closeAfterTest({
    close: async () => {
      await Promise.all([store, ...others].map((s) => s.close().catch(() => undefined)));
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  });
  return {
    store, sqlite: store, raw: sqliteLookOf(store),
    async another(c) {
      if (!dir) throw new Error('another store on an in-memory database: open the harness with shared: true');
      const s = new SqliteStore({ path, clock: c });
      others.push(s);
      return s;
    },
    async breakIt() {
      store.db.close();
    },
  };
}

/** Columns as the SQLite tests read them: BIGINT as numbers, booleans as 0/1. */
function normalise(row: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(row).map(([k, v]) => {
    if (typeof v === 'boolean') return [k, v ? 1 : 0];
    if (typeof v === 'string' && /^-?\d+$/.test(v) && k !== 'name' && k !== 'client_id') return [k, Number(v)];
    return [k, v];
  }));
}

async function openPostgres(clock: Clock): Promise<TestStore> {
  const url = await freshDatabase();
  const database = new URL(url).pathname.slice(1);
  const server = await sharedPostgres();
  const store = await openPostgresStore({ url, clock, poolSize: 4 });
  closeAfterTest(store);
  return {
    store, sqlite: null,
    raw: {
      row: async (name) => {
        const [r] = await server.sql('SELECT * FROM identifiers WHERE name = $1', [name], database);
        return r ? normalise(r) : undefined;
      },
      leasedCount: async () => {
        const [r] = await server.sql('SELECT count(*)::int AS n FROM identifiers WHERE client_id IS NOT NULL', [], database);
        return typeof r?.['n'] === 'number' ? r['n'] : -1;
      },
      sql: async (text, params = []) => server.sql(text, [...params], database),
    },
    async another(c) {
      const s = await openPostgresStore({ url, clock: c, poolSize: 4 });
      closeAfterTest(s);
      return s;
    },
    async breakIt() {
      await server.sql(`DROP DATABASE ${database} WITH (FORCE)`);
    },
  };
}

/** A store on a fresh database of the current engine. */
export function openTestStore(clock: Clock, opts: { shared?: boolean; engine?: EngineName } = {}): Promise<TestStore> {
  return (opts.engine ?? current) === 'postgres' ? openPostgres(clock) : openSqlite(clock, opts.shared ?? false);
}
