/** Builds a registry (and its app) on a fresh database for one test. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import type Koa from 'koa';
import { FakeClock } from '../src/clock.js';
import type { Clock } from '../src/clock.js';
import { createApp } from '../src/http/app.js';
import { Metrics } from '../src/metrics.js';
import type { Logger } from '../src/log.js';
import type { AppDeps } from '../src/http/app.js';
import { parsePool } from '../src/pool/parse.js';
import { Registry } from '../src/registry.js';
import type { RegistryEvent, RegistryRules } from '../src/registry.js';
import { SqliteStore } from '../src/store/sqlite/store.js';

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
  readonly store: SqliteStore;
  readonly clock: FakeClock;
  readonly events: RegistryEvent[];
  readonly app: Koa;
  readonly metrics: Metrics;
  readonly http: ReturnType<typeof request>;
  /** Raw SQL look at the database, for asserting what a request left behind. */
  row(name: string): Record<string, unknown> | undefined;
  leasedCount(): number;
}

export interface HarnessOptions {
  readonly pool?: string;
  readonly rules?: Partial<RegistryRules>;
  readonly path?: string;
  readonly clock?: FakeClock;
  readonly auth?: AppDeps['auth'];
  readonly log?: Logger;
}

export async function makeRegistry(opts: HarnessOptions = {}): Promise<Harness> {
  const clock = opts.clock ?? new FakeClock();
  const store = new SqliteStore({ path: opts.path ?? ':memory:', clock });
  const events: RegistryEvent[] = [];
  const metrics = new Metrics();
  const registry = new Registry({
    store,
    rules: { ...DEFAULT_RULES, ...opts.rules },
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
  });
  const rowStmt = store.db.prepare('SELECT * FROM identifiers WHERE name = ?');
  const leasedStmt = store.db.prepare('SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL');
  return {
    registry, store, clock, events, app, metrics,
    http: request(app.callback()),
    row: (name) => {
      const r: unknown = rowStmt.get(name);
      return typeof r === 'object' && r !== null ? Object.fromEntries(Object.entries(r)) : undefined;
    },
    leasedCount: () => {
      const r: unknown = leasedStmt.get();
      return typeof r === 'object' && r !== null && 'n' in r && typeof r.n === 'number' ? r.n : -1;
    },
  };
}

/** A registry on the database file at `path`, with the given clock; for tests that restart it or run two. */
export function makeRegistryOn(path: string, clock: Clock, rules: Partial<RegistryRules> = {}): Registry {
  return new Registry({ store: new SqliteStore({ path, clock }), rules: { ...DEFAULT_RULES, ...rules } });
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
