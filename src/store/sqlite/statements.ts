/**
 * SQLite's statements, prepared once on the connection: plain synchronous calls that the
 * reader and the transaction (tx.ts) wrap. The rules they share with PostgreSQL (what each
 * status means, which rows can be granted, in which order) are built from ../sql.ts.
 */
import type Database from 'better-sqlite3';
import type { Statement } from 'better-sqlite3';
import { HISTORY_EVENTS } from '../../domain/types.js';
import type { HistoryEvent } from '../../domain/types.js';
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, ROW_COLUMNS } from '../columns.js';
import { ALLOCATION_ORDER, POOL_ORDER, REAP_ORDER, SQLITE, STICKY_ORDER, allocatable, cooling, statusWhere } from '../sql.js';
import { ListingJson } from './listing-json.js';

/**
 * Each status filter of a listing, which pages it in pool order. Free and cooling compare
 * `+available_at`: the unary plus keeps SQLite from serving the time test with the allocatable
 * index (available_at first, so every match, then a sort of them all); the pool-order index of
 * unheld identifiers (identifiers_unheld_by_order_at) holds the time, so a page stops as soon
 * as it has its rows.
 */
export const STATUS_WHERE: Readonly<Record<string, string>> = statusWhere(SQLITE, '@now', '+available_at');

/**
 * The pool's counts (Reader.counts): the totals a grant, a free or a retirement changes are kept
 * by triggers; cooling is time-dependent, so it is counted, through the allocatable index.
 */
export const COUNTS_SQL = `SELECT total, leased, retired,
         (SELECT count(*) FROM identifiers WHERE ${cooling(SQLITE, '@now')}) AS cooling
  FROM pool_counts WHERE id = 1`;

/**
 * The identifier a grant takes when the client holds none and has none to come back to: read
 * from the allocatable index in its order, no sort. The id that breaks the order's last tie is
 * the rowid, which ends every index entry (test/store/listing-plans.test.ts checks the plan).
 */
export const NEXT_ALLOCATABLE_SQL = `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE ${allocatable(SQLITE, '@now')} ORDER BY ${ALLOCATION_ORDER} LIMIT 1`;

/** The statements, prepared once. Plain synchronous calls; the Tx/Reader wrap them. */
export class Statements {
  readonly byName: Statement;
  readonly byClient: Statement;
  readonly nextAllocatable: Statement;
  readonly sticky: Statement;
  readonly grant: Statement;
  readonly renewHeld: Statement;
  readonly releaseHeld: Statement;
  readonly free: Statement;
  readonly historyInsert: Statement;
  readonly history: Statement;
  readonly historyPage: Statement;
  readonly historyPrune: Statement;
  readonly expired: Statement;
  readonly countExpired: Statement;
  readonly countLeased: Statement;
  readonly countEvents: Readonly<Record<HistoryEvent, Statement>>;
  readonly counts: Statement;
  readonly lists: ReadonlyMap<string, Statement>;
  readonly listingJson: ListingJson;
  readonly poolRows: Statement;
  readonly insert: Statement;
  readonly setRetired: Statement;
  readonly setOrder: Statement;
  readonly metaGet: Statement;
  readonly metaSet: Statement;
  readonly latestLastSeen: Statement;
  readonly oldestLastSeen: Statement;
  readonly latestHistory: Statement;
  readonly latestBeatAny: Statement;
  readonly latestBeatOther: Statement;
  readonly fleetSeenAt: Statement;
  readonly beat: Statement;
  readonly fleetSeen: Statement;
  readonly pruneInstances: Statement;
  readonly forgetInstance: Statement;
  readonly ping: Statement;
  readonly reclaimHistory: Statement;
  readonly reclaimFree: Statement;
  readonly refusalInsert: Statement;
  readonly refusedClients: Statement;
  readonly refusalsPrune: Statement;
  readonly awsEventInsert: Statement;
  readonly awsEventsPrune: Statement;
  readonly addToTotal: Statement;
  /** Transaction control, prepared once: db.exec parses its SQL on every call, twice per use case. */
  readonly begin: Statement;
  readonly beginImmediate: Statement;
  readonly commit: Statement;
  readonly savepoint: Statement;
  readonly release: Statement;
  readonly rollbackTo: Statement;

  constructor(db: Database.Database) {
    const p = (sql: string): Statement => db.prepare(sql);
    this.byName = p(`SELECT ${RECORD_COLUMNS} FROM identifiers WHERE name = ?`);
    this.byClient = p(`SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id = ?`);
    this.nextAllocatable = p(NEXT_ALLOCATABLE_SQL);
    // Sticky identity: the row the client was granted last, if nobody was granted it since, and only if allocatable now.
    this.sticky = p(
      `SELECT ${RECORD_COLUMNS} FROM (
         SELECT * FROM identifiers WHERE last_client_id = @clientId ORDER BY ${STICKY_ORDER} LIMIT 1
       ) WHERE ${allocatable(SQLITE, '@now')}`,
    );
    this.grant = p(
      `UPDATE identifiers SET client_id = @clientId, epoch = @epoch, allocated_at = @now, last_seen = @now, fence_cooldown_ms = @fence,
         key_hash = @keyHash, instance = @instance, last_client_id = @clientId, last_granted_at = @now
       WHERE id = @rowId AND client_id IS NULL`,
    );
    // The holder's key is matched as its hash; a watermark only ever raises the identifier's.
    const raiseWatermark = 'watermark = max(coalesce(watermark, @watermark), coalesce(@watermark, watermark))';
    const held = 'name = @name AND client_id = @clientId AND (@epoch IS NULL OR epoch = @epoch) AND key_hash IS @keyHash';
    this.renewHeld = p(
      `UPDATE identifiers SET last_seen = max(last_seen, @now), fence_cooldown_ms = max(coalesce(fence_cooldown_ms, 0), @fence), ${raiseWatermark}
       WHERE ${held}
       RETURNING ${RECORD_COLUMNS}`,
    );
    this.releaseHeld = p(
      `UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL, available_at = @now,
         key_hash = NULL, instance = NULL, ${raiseWatermark}
       WHERE ${held}
       RETURNING ${RECORD_COLUMNS}`,
    );
    this.free = p(
      `UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL, available_at = @availableAt,
         key_hash = NULL, instance = NULL
       WHERE id = @rowId`,
    );
    this.historyInsert = p(
      `INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES (@rowId, @at, @event, @clientId, @epoch)`,
    );
    this.history = p(`SELECT at, event, client_id, epoch FROM history WHERE identifier_id = ? ORDER BY id`);
    // The oldest `limit` entries by position (never the newest of all), those written before `before`.
    this.historyPrune = p(
      `DELETE FROM history WHERE id IN (
         SELECT id FROM history WHERE id < (SELECT max(id) FROM history) ORDER BY id LIMIT @limit
       ) AND at < @before`,
    );
    this.historyPage = p(`SELECT ${HISTORY_PAGE_COLUMNS} FROM history WHERE identifier_id = @rowId AND id > @after ORDER BY id LIMIT @limit`);
    this.expired = p(
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id IS NOT NULL AND last_seen <= @cutoff
       ORDER BY ${REAP_ORDER} LIMIT @limit`,
    );
    this.countExpired = p(`SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL AND last_seen <= ?`);
    this.countLeased = p(`SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    // The event is written into the SQL, not bound: the statement is planned once on the
    // partial index of reclaims (with a bound event SQLite plans it again at every new value).
    this.countEvents = Object.fromEntries(HISTORY_EVENTS.map((e) => [e, p(`SELECT count(*) AS n FROM history WHERE event = '${e}' AND at >= ?`)])) as Record<HistoryEvent, Statement>;
    this.counts = p(COUNTS_SQL);
    const lists = new Map<string, Statement>();
    for (const [status, where] of Object.entries(STATUS_WHERE)) {
      const base = `SELECT ${ROW_COLUMNS} FROM identifiers WHERE ${where}`;
      lists.set(`${status}:first`, p(`${base} ORDER BY ${POOL_ORDER} LIMIT @limit`).raw());
      lists.set(`${status}:after`, p(`${base} AND (pool_order, id) > (@afterOrder, @afterId) ORDER BY ${POOL_ORDER} LIMIT @limit`).raw());
    }
    this.lists = lists;
    this.listingJson = new ListingJson(db, STATUS_WHERE);
    this.poolRows = p(`SELECT id, name, pool_order, retired, client_id, epoch FROM identifiers`);
    // Many rows a statement, as JSON: a million single-row statements cost three times as much.
    this.insert = p(`INSERT INTO identifiers (name, pool_order) SELECT value ->> 0, value ->> 1 FROM json_each(?)`);
    this.setRetired = p(`UPDATE identifiers SET retired = @retired, pool_order = @poolOrder WHERE id = @rowId`);
    this.setOrder = p(`UPDATE identifiers SET pool_order = ? WHERE id = ?`);
    this.metaGet = p(`SELECT value FROM meta WHERE key = ?`);
    this.metaSet = p(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`);
    this.latestLastSeen = p(`SELECT max(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    this.oldestLastSeen = p(`SELECT min(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`);
    this.latestHistory = p(`SELECT at AS n FROM history ORDER BY id DESC LIMIT 1`);
    this.latestBeatAny = p(`SELECT id, started_at, at, fleet_seen_at FROM instances ORDER BY at DESC LIMIT 1`);
    this.latestBeatOther = p(`SELECT id, started_at, at, fleet_seen_at FROM instances WHERE id <> ? ORDER BY at DESC LIMIT 1`);
    this.fleetSeenAt = p(`SELECT seen_at AS n FROM fleet WHERE id = 1`);
    this.beat = p(
      `INSERT INTO instances (id, started_at, at, fleet_seen_at) VALUES (@id, @startedAt, @at, @fleetSeenAt)
       ON CONFLICT (id) DO UPDATE SET at = max(at, excluded.at),
         fleet_seen_at = max(coalesce(fleet_seen_at, 0), coalesce(excluded.fleet_seen_at, 0))`,
    );
    this.fleetSeen = p(
      `INSERT INTO fleet (id, seen_at) VALUES (1, @seenAt) ON CONFLICT (id) DO UPDATE SET seen_at = max(seen_at, excluded.seen_at)`,
    );
    this.pruneInstances = p(`DELETE FROM instances WHERE at < ?`);
    this.forgetInstance = p(`DELETE FROM instances WHERE id = ?`);
    this.ping = p(`SELECT count(*) AS n FROM meta`);
    // Set-based: one statement for the history and one for the rows, whatever the batch size.
    this.reclaimHistory = p(
      `INSERT INTO history (identifier_id, at, event, client_id, epoch)
       SELECT id, @now, 'reclaimed', client_id, epoch FROM identifiers WHERE id IN (SELECT value FROM json_each(@ids))`,
    );
    // Each cools for the longer of the setting and the window its holder was told (domain leaseCooldownMs).
    this.reclaimFree = p(
      `UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL,
         available_at = @now + max(coalesce(fence_cooldown_ms, 0), @cooldown), key_hash = NULL, instance = NULL
       WHERE id IN (SELECT value FROM json_each(@ids))`,
    );
    this.refusalInsert = p(`INSERT INTO refusals (client_id, at) VALUES (?, ?)`);
    this.refusedClients = p(`SELECT count(DISTINCT client_id) AS n FROM refusals WHERE at >= ?`);
    this.refusalsPrune = p(`DELETE FROM refusals WHERE at < ?`);
    this.awsEventInsert = p(`INSERT INTO aws_events (id, at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING`);
    this.awsEventsPrune = p(`DELETE FROM aws_events WHERE at < ?`);
    this.addToTotal = p(`UPDATE pool_counts SET total = total + ?`);
    this.begin = p('BEGIN');
    this.beginImmediate = p('BEGIN IMMEDIATE');
    this.commit = p('COMMIT');
    this.savepoint = p('SAVEPOINT use_case');
    this.release = p('RELEASE use_case');
    this.rollbackTo = p('ROLLBACK TO use_case');
  }
}
