/** Builds a registry (and its app) on a fresh database for one test. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import type Koa from 'koa';
import { FakeClock } from '../../src/clock.js';
import type { Clock } from '../../src/clock.js';
import { createApp } from '../../src/http/app.js';
import { Metrics } from '../../src/metrics.js';
import type { Logger } from '../../src/log.js';
import type { AppDeps } from '../../src/http/app.js';
import { parsePool } from '../../src/pool/parse.js';
import { Registry } from '../../src/registry.js';
import type { RegistryEvent, RegistryRules } from '../../src/registry.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { openTestStore, sqliteLookOf } from './engines.js';
import type { EngineName, TestStore } from './engines.js';

export const SECOND = 1000;

export const DEFAULT_RULES: RegistryRules = {
  ttlMs: 90 * SECOND,
  cooldownMs: 90 * SECOND,
  graceMs: 0,
  maxFraction: 1,
  minHold: 10,
  guardedRatePerMinute: 1,
  reapBatchSize: 1000,
};

export interface Harness {
  readonly registry: Registry;
  readonly store: Store;
  /** The SQLite store, for tests that reach into its file; null on PostgreSQL. */
  readonly sqlite: SqliteStore | null;
  readonly clock: FakeClock;
  readonly events: RegistryEvent[];
  readonly app: Koa;
  readonly metrics: Metrics;
  readonly http: ReturnType<typeof request>;
  /** Raw SQL look at the database, for asserting what a request left behind. */
  row(name: string): Promise<Record<string, unknown> | undefined>;
  leasedCount(): Promise<number>;
  /** Raw SQL in the engine's own dialect (see RawLook.sql): to build large states fast, and to look at them. */
  sql(text: string, params?: readonly unknown[]): Promise<Record<string, unknown>[]>;
  /** A second registry on the same database, as another process or instance would run it. */
  another(clock?: Clock, rules?: Partial<RegistryRules>): Promise<Registry>;
  /** Makes the database unreadable under the registry. */
  breakStore(): Promise<void>;
}

export interface HarnessOptions {
  readonly pool?: string;
  readonly rules?: Partial<RegistryRules>;
  /** SQLite only: this file instead of memory (tests that reopen it). */
  readonly path?: string;
  /** A database another registry can open too (SQLite: a temp file instead of memory). */
  readonly shared?: boolean;
  readonly clock?: FakeClock;
  readonly auth?: AppDeps['auth'];
  readonly log?: Logger;
  /** Whether keys are required and claims attested (default: neither). */
  readonly claims?: AppDeps['claims'];
  /** This engine, whatever the enclosing suite runs on. */
  readonly engine?: EngineName;
}

/** A registry and its app on a fresh database of the engine the test runs on (see engines.ts). */
export async function makeRegistry(opts: HarnessOptions = {}): Promise<Harness> {
  const clock = opts.clock ?? new FakeClock();
  const events: RegistryEvent[] = [];
  const metrics = new Metrics();
  let t: TestStore;
  if (opts.path !== undefined) {
    const store = new SqliteStore({ path: opts.path, clock });
    const path = opts.path;
    t = {
      store, sqlite: store, raw: sqliteLookOf(store),
      another: async (c) => new SqliteStore({ path, clock: c }),
      breakIt: async () => { store.db.close(); },
    };
  } else {
    t = await openTestStore(clock, { shared: opts.shared ?? false, ...(opts.engine ? { engine: opts.engine } : {}) });
  }
  const rules = { ...DEFAULT_RULES, ...opts.rules };
  const registry = new Registry({
    store: t.store,
    rules,
    observe: (e) => {
      events.push(e);
      metrics.onRegistryEvent(e);
    },
  });
  await registry.syncPool(parsePool(opts.pool ?? 'w-[0-4]\n'));
  events.length = 0;
  metrics.watch(() => registry.health());
  const app = createApp({
    registry, metrics,
    auth: opts.auth ?? { agentTokens: [], adminTokens: [] },
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.claims ? { claims: opts.claims } : {}),
  });
  return {
    registry, store: t.store, sqlite: t.sqlite, clock, events, app, metrics,
    http: request(app.callback()),
    row: (name) => t.raw.row(name),
    leasedCount: () => t.raw.leasedCount(),
    sql: (text, params) => t.raw.sql(text, params),
    another: async (c = clock, r = {}) => new Registry({ store: await t.another(c), rules: { ...rules, ...r } }),
    breakStore: () => t.breakIt(),
  };
}

/** A harness on SQLite whatever the suite runs on, for the tests of the SQLite engine itself. */
export async function makeSqliteRegistry(opts: HarnessOptions = {}): Promise<Harness & { readonly store: SqliteStore }> {
  const h = await makeRegistry({ ...opts, engine: 'sqlite' });
  const store = h.sqlite;
  if (!store) throw new Error('expected a SQLite store');
  return { ...h, store };
}

/** A registry on the database file at `path`, with the given clock; for tests that restart it or run two. */
export function makeRegistryOn(path: string, clock: Clock, rules: Partial<RegistryRules> = {}): Registry {
  return new Registry({ store: new SqliteStore({ path, clock }), rules: { ...DEFAULT_RULES, ...rules } });
}

/**
 * Lanes that start only when the test says: a store given `defer` queues what is asked
 * meanwhile; `settle` runs the deferred lanes until `p` is answered.
 */
export function heldLanes(): { defer: (run: () => void) => void; settle: <T>(p: Promise<T>) => Promise<T> } {
  const runs: Array<() => void> = [];
  return {
    defer: (run) => { runs.push(run); },
    async settle<T>(p: Promise<T>): Promise<T> {
      let done = false;
      void p.finally(() => { done = true; }).catch(() => undefined);
      while (!done) {
        for (const run of runs.splice(0)) run();
        await new Promise((r) => setTimeout(r, 1));
      }
      return p;
    },
  };
}

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'idreg-test-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Resolves with the RegistryError code a promise rejects with; fails if it resolves. */
export async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return e.code;
    throw e;
  }
  throw new Error('expected a rejection, but it resolved');
}

/** Every identifier and history row of a database file, to compare before and after. */
export function snapshotDb(path: string): string {
  const db = new Database(path, { readonly: true });
  try {
    return JSON.stringify([db.prepare('SELECT * FROM identifiers ORDER BY id').all(), db.prepare('SELECT * FROM history ORDER BY id').all()]);
  } finally {
    db.close();
  }
}

/**
 * `ms` of time pass on `clock` while `registry` serves: it beats every second, as its timer
 * does in a real process (time passing without a beat is the service being down).
 */
export async function serve(clock: { advance(ms: number): void }, registry: Registry, ms: number): Promise<void> {
  for (let left = ms; left > 0; left -= SECOND) {
    clock.advance(Math.min(SECOND, left));
    await registry.beat();
  }
}
