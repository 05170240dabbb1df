/**
 * The SQL both engines are built from: what each status means, which rows can be granted, the
 * orders the rules depend on, and the dump's reads. A rule written here cannot drift between
 * dialects; an engine supplies only how it spells a boolean column and a named parameter.
 * (The lease rules themselves are in domain/lease.ts; this is their translation into WHERE and
 * ORDER BY.)
 */
import type { Status } from '../domain/types.js';

/** How an engine spells what differs: `retired` is 0/1 on SQLite and BOOLEAN on PostgreSQL. */
export interface Dialect {
  readonly retired: string;
  readonly notRetired: string;
  readonly always: string;
}

export const SQLITE: Dialect = { retired: 'retired = 1', notRetired: 'retired = 0', always: '1 = 1' };
export const POSTGRES: Dialect = { retired: 'retired', notRetired: 'NOT retired', always: 'true' };

/**
 * An identifier that can be granted at `now` (an SQL expression: a parameter or a column):
 * unheld, in the pool, its cool-down over. `availableAt` is the column as the statement should
 * read it (SQLite's listing writes `+available_at` to keep the planner on the pool-order index).
 */
export function allocatable(d: Dialect, now: string, availableAt = 'available_at'): string {
  return `client_id IS NULL AND ${d.notRetired} AND ${availableAt} <= ${now}`;
}

/** Unheld, in the pool, still cooling at `now`. */
export function cooling(d: Dialect, now: string, availableAt = 'available_at'): string {
  return `client_id IS NULL AND ${d.notRetired} AND ${availableAt} > ${now}`;
}

/** Each listing filter (`?status=`) as a condition at `now`; `all` for no filter. */
export function statusWhere(d: Dialect, now: string, availableAt = 'available_at'): Readonly<Record<Status | 'all', string>> {
  return {
    all: d.always,
    leased: 'client_id IS NOT NULL',
    free: allocatable(d, now, availableAt),
    cooling: cooling(d, now, availableAt),
    retired: d.retired,
  };
}

/**
 * The allocation order: the identifier free the longest first (never-used ones have
 * available_at 0, so they come first, in pool-file order); `id` breaks the last tie, so two
 * engines, or two statements of one, pick the same row.
 */
export const ALLOCATION_ORDER = 'available_at, pool_order, id';
/** The order of listings and of the dump: the pool file's. */
export const POOL_ORDER = 'pool_order, id';
/** Sticky identity: the row a client was granted last. */
export const STICKY_ORDER = 'last_granted_at DESC, id DESC';
/** The reaper's order: the longest silent first. */
export const REAP_ORDER = 'last_seen, id';

/** The columns an export reads and an import writes, in both engines. */
export const DUMP_IDENTIFIER_COLUMNS =
  'name, pool_order, retired, epoch, client_id, allocated_at, last_seen, available_at, fence_cooldown_ms, key_hash, instance, watermark, last_client_id, last_granted_at';

/** The dump's reads, identical in both engines (`identifiers` given the columns an old file has). */
export const DUMP_SELECT = {
  identifiers: (columns = DUMP_IDENTIFIER_COLUMNS): string => `SELECT ${columns} FROM identifiers ORDER BY ${POOL_ORDER}`,
  history: `SELECT i.name AS identifier, h.at, h.event, h.client_id, h.epoch
       FROM history h JOIN identifiers i ON i.id = h.identifier_id ORDER BY h.id`,
  meta: 'SELECT key, value FROM meta ORDER BY key',
} as const;
