/**
 * The listing's pages written as JSON by SQLite itself, in C: one statement a page returns the
 * page's identifier views as one UTF-8 blob (`group_concat` of one `printf` a row), and a second
 * one where the next page starts. Reading a row into JavaScript (a value at a time, an array
 * a row) cost more than everything else a listing does; this way a page crosses into
 * JavaScript as one Buffer, already what goes on the wire.
 *
 * The definition of an identifier view stays `identifierView` in http/views.ts (with
 * domain/lease.ts's status and expiry): this is a faster way to write the same bytes, and
 * test/http/listing-json.test.ts holds it to them over random states, times, filters and
 * cursors. Times are formatted with integer arithmetic only (never through a float): the
 * date by a lookup of the three days around now (nearly every time a listing shows) or else
 * strftime on whole days, the time of day by printf on the millisecond count. A page with a
 * time outside the years 0000-9999 (where toISOString has another form), or with view rules
 * that are not whole milliseconds, is not written here: `write` answers null and the caller
 * writes it in JavaScript.
 */
import type Database from 'better-sqlite3';
import type { Statement } from 'better-sqlite3';
import { ROW_COLUMNS } from '../columns.js';
import { fenceAfterMs } from '../../domain/lease.js';
import type { ListJson, ViewRules } from '../listing.js';
import type { ListQuery } from '../types.js';

const DAY_MS = 86_400_000;
/** The last millisecond toISOString writes in its plain 24-character form (9999-12-31T23:59:59.999Z). */
const MAX_PLAIN_ISO_MS = 253_402_300_799_999;

/** printf arguments for `YYYY-MM-DD` and `THH:MM:SS.mmmZ` of the time `ms` (an SQL expression, whole ms, in range). */
function isoArgs(ms: string): string {
  const day = `${ms} / ${DAY_MS}`;
  const date = `CASE ${day} WHEN @day0 THEN @date0 WHEN @day1 THEN @date1 WHEN @day2 THEN @date2 ` +
    `ELSE strftime('%Y-%m-%d', ${day} * 86400, 'unixepoch') END`;
  return `${date}, ${ms} / 3600000 % 24, ${ms} / 60000 % 60, ${ms} / 1000 % 60, ${ms} % 1000`;
}
const ISO = '"%sT%02d:%02d:%02d.%03dZ"';

/** A time is written here only within the plain ISO range; otherwise the row is NULL and the page falls back. */
const inRange = (ms: string): string => `${ms} BETWEEN 0 AND ${MAX_PLAIN_ISO_MS}`;

/** The watermark as a JSON number (an INTEGER prints as one), or null. */
const WATERMARK = `coalesce(watermark, 'null')`;

/**
 * A leased row's fence_after_ms: domain fenceAfterMs of leaseCooldownMs (the longer of the window
 * kept with the lease and today's cool-down, less 1 %), in integer arithmetic as there; @fence
 * is today's, computed once a page (the common case: no longer window kept).
 */
const FENCE = 'CASE WHEN fence_cooldown_ms > @cooldown THEN fence_cooldown_ms * 99 / 100 ELSE @fence END';

/** One row's identifier view as JSON text, or NULL when a time of it is out of range. Same keys, same order as identifierView. */
const ROW_JSON = `CASE
  WHEN client_id IS NOT NULL THEN CASE WHEN ${inRange('allocated_at')} AND ${inRange('last_seen')} AND ${inRange('last_seen + @ttl')} THEN
    printf('{"identifier":%s,"status":"leased","client_id":%s,"epoch":%d,"allocated_at":${ISO},"last_seen":${ISO},"expires_at":${ISO},"fence_after_ms":%d,"available_at":null,"watermark":%s,"instance":%s%s}',
      json_quote(name), json_quote(client_id), epoch, ${isoArgs('allocated_at')}, ${isoArgs('last_seen')}, ${isoArgs('(last_seen + @ttl)')},
      ${FENCE}, ${WATERMARK}, coalesce(instance, 'null'), CASE WHEN retired = 1 THEN ',"retired":true' ELSE '' END) END
  WHEN retired = 0 AND available_at > @now THEN CASE WHEN ${inRange('available_at')} THEN
    printf('{"identifier":%s,"status":"cooling","client_id":null,"epoch":%d,"allocated_at":null,"last_seen":null,"expires_at":null,"fence_after_ms":null,"available_at":${ISO},"watermark":%s,"instance":null}',
      json_quote(name), epoch, ${isoArgs('available_at')}, ${WATERMARK}) END
  ELSE printf('{"identifier":%s,"status":"%s","client_id":null,"epoch":%d,"allocated_at":null,"last_seen":null,"expires_at":null,"fence_after_ms":null,"available_at":null,"watermark":%s,"instance":null}',
    json_quote(name), CASE WHEN retired = 1 THEN 'retired' ELSE 'free' END, epoch, ${WATERMARK})
END`;

interface PageStatements {
  /** The page's views joined by commas (rows arrive in the subquery's order), how many rows, how many written. */
  readonly body: Statement;
  /** The page's last row and the one after it, if any: where the next page starts, and whether there is one. */
  readonly edge: Statement;
}

/**
 * The SQL of a page's statements, by `status:first` / `status:after` (also what the listing
 * worker prepares): the body and the edge, and the page's rows for when SQL cannot write them.
 */
export type PageSql = Readonly<Record<string, { readonly body: string; readonly edge: string; readonly rows: string }>>;

/** `where` of each status filter (with @now), as SqliteStore lists them. */
export function pageSql(statusWhere: Readonly<Record<string, string>>): PageSql {
  const out: Record<string, { body: string; edge: string; rows: string }> = {};
  for (const [status, where] of Object.entries(statusWhere)) {
    for (const after of [false, true]) {
      const w = `${where}${after ? ' AND (pool_order, id) > (@afterOrder, @afterId)' : ''}`;
      out[`${status}:${after ? 'after' : 'first'}`] = {
        body: `SELECT CAST(group_concat(j, ',') AS BLOB), count(*), count(j) FROM (
               SELECT ${ROW_JSON} AS j FROM identifiers WHERE ${w} ORDER BY pool_order, id LIMIT @limit)`,
        edge: `SELECT id, name, pool_order FROM identifiers WHERE ${w} ORDER BY pool_order, id LIMIT 2 OFFSET @limit - 1`,
        rows: `SELECT ${ROW_COLUMNS} FROM identifiers WHERE ${w} ORDER BY pool_order, id LIMIT @limit`,
      };
    }
  }
  return out;
}

/**
 * A page to write: which statements, and their parameters. Plain data (integers as BigInt),
 * so the listing worker (listing-worker.ts) can run it on a connection of its own.
 */
export interface PagePlan {
  readonly key: string;
  readonly body: Readonly<Record<string, unknown>>;
  readonly edge: Readonly<Record<string, unknown>>;
  /** The page's row limit, -1 for none: the edge statement runs only when the page is full. */
  readonly limit: number;
}

/** What the plan's statements returned: the body's one row, and the edge's rows (null when not run). */
export interface PageResult {
  readonly row: unknown;
  readonly edge: unknown[] | null;
}

/** Where the page the edge statement looked at ends when another page follows it, else null. */
export function edgeNext(edge: unknown[] | null): ListJson['next'] {
  const [last, following] = edge ?? [];
  if (following === undefined || !Array.isArray(last)) return null;
  const [rowId, name, poolOrder]: unknown[] = last;
  if (typeof rowId !== 'number' || typeof name !== 'string' || typeof poolOrder !== 'number') throw new Error('listing: expected id, name, pool_order');
  return { name, poolOrder, rowId };
}

/** Whether the edge statement is needed after the body returned `row`: a full page, every row written. */
export function needsEdge(limit: number, row: unknown): boolean {
  return limit >= 0 && Array.isArray(row) && row[1] === limit && row[2] === row[1];
}

/** Runs a plan's statements (inside the caller's read transaction). */
export function runPlan(page: PageStatements, plan: PagePlan): PageResult {
  const row: unknown = page.body.get(plan.body);
  return { row, edge: needsEdge(plan.limit, row) ? page.edge.all(plan.edge) : null };
}

export class ListingJson {
  private readonly pages = new Map<string, PageStatements>();

  constructor(db: Database.Database, statusWhere: Readonly<Record<string, string>>) {
    for (const [key, sql] of Object.entries(pageSql(statusWhere))) {
      this.pages.set(key, { body: db.prepare(sql.body).raw(), edge: db.prepare(sql.edge).raw() });
    }
  }

  /** The rows `q` lists, written as identifier views; null when they cannot be written here (see above). */
  write(q: ListQuery, view: ViewRules): ListJson | null {
    const plan = planPage(q, view);
    if (plan === null) return null;
    const page = this.pages.get(plan.key);
    if (!page) throw new Error('no listing statement');
    return finishPage(q, runPlan(page, plan));
  }
}

/** The statements and parameters that write `q`; null when it cannot be written in SQL (see above). */
export function planPage(q: ListQuery, view: ViewRules): PagePlan | null {
  const { now } = q;
  const { ttlMs, cooldownMs } = view;
  if (!Number.isSafeInteger(now) || now < 0 || now > MAX_PLAIN_ISO_MS) return null;
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 0 || !Number.isSafeInteger(cooldownMs) || cooldownMs < 0) return null;
  const today = Math.floor(now / DAY_MS);
  const day = (d: number): string => new Date(d * DAY_MS).toISOString().slice(0, 10);
  const keyset = q.after ? { afterOrder: q.after.poolOrder, afterId: q.after.rowId } : {};
  const limit = q.limit ?? -1;
  return {
    key: `${q.status ?? 'all'}:${q.after ? 'after' : 'first'}`,
    limit,
    // Integers bound as BigInt are SQLite INTEGERs: the arithmetic on times stays integer.
    body: {
      ...keyset, limit, now: BigInt(now), ttl: BigInt(ttlMs), cooldown: BigInt(cooldownMs), fence: BigInt(fenceAfterMs({ cooldownMs })),
      day0: BigInt(today - 1), date0: day(today - 1), day1: BigInt(today), date1: day(today), day2: BigInt(today + 1), date2: day(today + 1),
    },
    edge: { ...keyset, limit, now },
  };
}

/** The page `q` asked for, from what its plan's statements returned; null when SQL could not write a row of it. */
export function finishPage(q: ListQuery, result: PageResult): ListJson | null {
  const { row, edge } = result;
  if (!Array.isArray(row)) throw new Error('listing: expected one row');
  const [members, listed, written]: unknown[] = row;
  if (written !== listed) return null;
  if (listed === 0) return { members: Buffer.alloc(0), next: null };
  if (!Buffer.isBuffer(members) || typeof listed !== 'number') throw new Error('listing: expected a blob and a count');
  if (q.limit === null || listed < q.limit) return { members, next: null };
  return { members, next: edgeNext(edge) };
}
