/**
 * The SQLite engine: one connection, statements prepared once. The writes queued in one
 * event-loop tick run in one BEGIN IMMEDIATE transaction, each use case in a savepoint of its
 * own (group commit), and the commit is fsynced off the event loop when any of them changed
 * ownership. Another process's write lock is waited for off the event loop: the connection's
 * busy timeout is zero and a locked write is retried on a timer, so reads and /health go on.
 */
import { closeSync, fsync as fsFsync, fsyncSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import type { Statement } from 'better-sqlite3';
import { anchorClock, anchoredClock, resumeAnchor, systemTimeSource } from '../../clock.js';
import type { Clock, ClockAnchor, TimeSource } from '../../clock.js';
import { RegistryError, isRegistryError } from '../../domain/errors.js';
import { recordOf } from '../../domain/lease.js';
import { HISTORY_EVENTS } from '../../domain/types.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, RecordTuple } from '../../domain/types.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { FreeEntry, GrantClaim, HeldProof, HistoryRows, InstanceBeat, ListJson, ListQuery, ListingReader, OffLoopPage, PoolRow, RawCounts, Reader, Store, Tx, ViewRules, WriteOptions } from '../types.js';
import { startCheckpointer } from './checkpointer.js';
import type { Checkpointer } from './checkpointer.js';
import { toRegistryError } from './errors.js';
import { ListingJson, edgeNext, finishPage, pageSql, planPage } from './listing-json.js';
import { ListingWorkers } from './listing-worker.js';
import type { ListingWorkerStats } from './listing-worker.js';
import { instanceColumn } from '../columns.js';
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, ROW_COLUMNS, asRow, intColumn, recordTuples, scalar, toHistoryEntry, toHistoryRows, toRecord } from './rows.js';
import { MIGRATIONS } from './schema.js';

export interface SqliteStoreOptions {
  /** File path, or `:memory:` for a throwaway database. */
  readonly path: string;
  /** How long a write may wait for another process's write lock before answering `unavailable`. */
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
  /** How a durable commit's WAL is made durable; tests hold it back. Default: fs.fsync. */
  readonly fsync?: (fd: number, done: (err: Error | null) => void) => void;
  /** Registry time. Default: the machine's clocks anchored through the database (see clock.ts). */
  readonly clock?: Clock;
  /** The machine's clocks, for the default clock; tests step them. */
  readonly source?: TimeSource;
  /**
   * How the next batch is deferred (default: setImmediate, so the requests of one tick share a
   * commit). Interleaving tests hand it to fast-check's scheduler.
   */
  readonly defer?: (run: () => void) => void;
  /** Whether the full listing's pages may be read on a worker thread (default true; never in memory). */
  readonly listingWorker?: boolean;
}

interface Queued {
  readonly fn: (tx: SqliteTx) => Promise<unknown>;
  readonly durable: boolean;
  readonly since: number;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

interface QueuedRead {
  readonly fn: (r: Reader) => Promise<unknown>;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: RegistryError };

/**
 * Each status filter of a listing, which pages it in pool order. Free and cooling compare
 * `+available_at`: the unary plus keeps SQLite from serving the time test with the allocatable
 * index (available_at first, so every match, then a sort of them all); the pool-order index of
 * unheld identifiers (identifiers_unheld_by_order_at) holds the time, so a page stops as soon
 * as it has its rows.
 */
export const STATUS_WHERE: Readonly<Record<string, string>> = {
  all: '1 = 1',
  leased: 'client_id IS NOT NULL',
  free: 'client_id IS NULL AND retired = 0 AND +available_at <= @now',
  cooling: 'client_id IS NULL AND retired = 0 AND +available_at > @now',
  retired: 'retired = 1',
};

/**
 * The pool's counts (Reader.counts): the totals a grant, a free or a retirement changes are kept
 * by triggers; cooling is time-dependent, so it is counted, through the allocatable index.
 */
const COUNTS_SQL = `SELECT total, leased, retired,
         (SELECT count(*) FROM identifiers WHERE client_id IS NULL AND retired = 0 AND available_at > @now) AS cooling
  FROM pool_counts WHERE id = 1`;

const CLOCK_KEY = 'clock_anchor';
/** An instance that has not beaten for this long (crashed long ago) is dropped from the table. */
const INSTANCE_FORGOTTEN_MS = 24 * 3600_000;
/** First wait before retrying a write that found the database locked; doubles up to the cap. */
const LOCK_RETRY_FIRST_MS = 2;
const LOCK_RETRY_MAX_MS = 50;
/** The listing workers stop after this long without a page to write. */
const LISTING_IDLE_MS = 60_000;
/**
 * Listing worker threads: two, so the next page is written while this one is (each page tells
 * where it ends before it is written, see listing-worker.ts).
 */
const LISTING_WORKERS = 2;
/** Identifiers a bulk insert sends per statement. */
const INSERT_CHUNK = 10_000;

/** A count a worker read (a number, or a bigint from a very large table). */
function countOf(v: unknown): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new Error(`counts: expected a count, got ${typeof v}`);
  return n;
}

function isBusy(e: unknown): boolean {
  return e instanceof Database.SqliteError && /^SQLITE_(BUSY|LOCKED)/.test(e.code);
}

export function openDatabase(opts: SqliteStoreOptions): Database.Database {
  if (opts.path !== ':memory:' && !opts.readonly) mkdirSync(dirname(opts.path), { recursive: true });
  // Opening and migrating may wait for the lock (start-up, one-shot tools); serving never does.
  const db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 5000, readonly: opts.readonly ?? false });
  if (!opts.readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    // Commits never fsync on the event loop: a batch with an ownership change fsyncs the WAL
    // on libuv's thread pool and answers after (see flushWrites). NORMAL + that fsync is FULL.
    db.pragma('synchronous = NORMAL');
    migrate(db);
  }
  return db;
}

function migrate(db: Database.Database): void {
  const run = db.transaction(() => {
    const version = Number(db.pragma('user_version', { simple: true }));
    for (let v = version; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v] ?? '');
      db.pragma(`user_version = ${v + 1}`);
    }
  });
  run.immediate();
}

/** Every time the store holds that a process wrote as "now": registry time must not go back below any. */
function floorOf(db: Database.Database): number {
  // A table a file not yet migrated lacks (idreg export opens it read-only, without migrating) holds no time.
  const latest = (table: string, sql: string): number =>
    db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(table) === undefined ? 0 : scalar(db.prepare(sql).get()) ?? 0;
  return Math.max(
    latest('identifiers', `SELECT max(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`),
    latest('history', `SELECT at AS n FROM history ORDER BY id DESC LIMIT 1`),
    latest('instances', `SELECT max(at) AS n FROM instances`),
    latest('fleet', `SELECT seen_at AS n FROM fleet WHERE id = 1`),
    latest('refusals', `SELECT max(at) AS n FROM refusals`),
  );
}

function storedAnchor(db: Database.Database): ClockAnchor | null {
  const row: unknown = db.prepare('SELECT value FROM meta WHERE key = ?').get(CLOCK_KEY);
  return parseAnchor(row === undefined ? null : String(asRow(row)['value']));
}

/**
 * A database file's registry time now, as a registry running on it on this machine computes it,
 * read without writing anything (idreg export): the anchor the first process of this boot
 * recorded, driven by the monotonic clock, never below the floor. On another boot (or with no
 * anchor) a registry would resume cool-downs from the floor, the latest time written (see
 * SqliteStore.anchor): so does this, which makes each at least as long as it was.
 */
export function registryTimeOf(db: Database.Database, source: TimeSource): number {
  const floor = floorOf(db);
  const d = resumeAnchor(storedAnchor(db), floor, source);
  if (d.fresh) return floor > 0 ? floor : Math.floor(source.wall());
  return anchorClock(source, d.anchor, floor).now();
}

function parseAnchor(raw: string | null): ClockAnchor | null {
  if (raw === null) return null;
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v === 'object' && v !== null && 'bootId' in v && 'offset' in v &&
        typeof v.bootId === 'string' && typeof v.offset === 'number' && Number.isFinite(v.offset)) {
      return { bootId: v.bootId, offset: v.offset };
    }
  } catch {
    // a damaged anchor is a new one
  }
  return null;
}

/** The statements, prepared once. Plain synchronous calls; the Tx/Reader wrap them. */
class Statements {
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
  readonly shiftCooldowns: Statement;
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
    this.nextAllocatable = p(
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id IS NULL AND retired = 0 AND available_at <= ?
       ORDER BY available_at, pool_order LIMIT 1`,
    );
    // Sticky identity: the row the client was granted last, if nobody was granted it since, and only if allocatable now.
    this.sticky = p(
      `SELECT ${RECORD_COLUMNS} FROM (
         SELECT * FROM identifiers WHERE last_client_id = @clientId ORDER BY last_granted_at DESC, id DESC LIMIT 1
       ) WHERE client_id IS NULL AND retired = 0 AND available_at <= @now`,
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
       ORDER BY last_seen, id LIMIT @limit`,
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
      lists.set(`${status}:first`, p(`${base} ORDER BY pool_order, id LIMIT @limit`).raw());
      lists.set(`${status}:after`, p(`${base} AND (pool_order, id) > (@afterOrder, @afterId) ORDER BY pool_order, id LIMIT @limit`).raw());
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
    this.shiftCooldowns = p(`UPDATE identifiers SET available_at = available_at + @shift WHERE client_id IS NULL AND available_at > @floor`);
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

function toBeat(raw: unknown): InstanceBeat | null {
  if (raw === undefined) return null;
  const r = asRow(raw);
  const seen = r['fleet_seen_at'];
  return {
    id: String(r['id']),
    startedAt: intColumn(r, 'started_at'),
    at: intColumn(r, 'at'),
    fleetSeenAt: typeof seen === 'number' && seen > 0 ? seen : null,
  };
}

/** Reads on the connection; every method runs synchronously and resolves at once. */
class SqliteReader implements Reader {
  constructor(protected readonly s: Statements, readonly now: number) {}

  async byName(name: string): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.byName.get(name);
    return r === undefined ? null : toRecord(r);
  }

  async byClient(clientId: string): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.byClient.get(clientId);
    return r === undefined ? null : toRecord(r);
  }

  async history(rowId: number): Promise<HistoryEntry[]> {
    return this.s.history.all(rowId).map(toHistoryEntry);
  }

  async historyPage(rowId: number, after: number | null, limit: number): Promise<HistoryRows> {
    // One row past the page tells whether another follows.
    return toHistoryRows(this.s.historyPage.all({ rowId, after: after ?? 0, limit: limit + 1 }), limit);
  }

  async list(q: ListQuery): Promise<IdentifierRecord[]> {
    return (await this.listRows(q)).map(recordOf);
  }

  async listRows(q: ListQuery): Promise<RecordTuple[]> {
    const stmt = this.s.lists.get(`${q.status ?? 'all'}:${q.after ? 'after' : 'first'}`);
    if (!stmt) throw new Error('no list statement');
    const params: Record<string, number> = { now: q.now, limit: q.limit ?? -1 };
    if (q.after) {
      params['afterOrder'] = q.after.poolOrder;
      params['afterId'] = q.after.rowId;
    }
    return recordTuples(stmt.all(params));
  }

  async listJson(q: ListQuery, view: ViewRules): Promise<ListJson | null> {
    return this.s.listingJson.write(q, view);
  }

  async counts(now: number): Promise<RawCounts> {
    const r = asRow(this.s.counts.get({ now }));
    return {
      total: intColumn(r, 'total'),
      leased: intColumn(r, 'leased'),
      cooling: intColumn(r, 'cooling'),
      retired: intColumn(r, 'retired'),
    };
  }

  async oldestLastSeen(): Promise<number | null> {
    return scalar(this.s.oldestLastSeen.get());
  }

  async meta(key: string): Promise<string | null> {
    const r: unknown = this.s.metaGet.get(key);
    if (r === undefined) return null;
    const v = asRow(r)['value'];
    return typeof v === 'string' ? v : null;
  }

  async latestBeat(exceptId: string | null): Promise<InstanceBeat | null> {
    return toBeat(exceptId === null ? this.s.latestBeatAny.get() : this.s.latestBeatOther.get(exceptId));
  }

  async fleetSeenAt(): Promise<number | null> {
    const n = scalar(this.s.fleetSeenAt.get());
    return n !== null && n > 0 ? n : null;
  }
}

/** A use case's view of the write transaction. */
class SqliteTx extends SqliteReader implements Tx {
  async claimFor(clientId: string, now: number): Promise<{ rec: IdentifierRecord; held: boolean } | null> {
    const held: unknown = this.s.byClient.get(clientId);
    if (held !== undefined) return { rec: toRecord(held), held: true };
    const sticky: unknown = this.s.sticky.get({ clientId, now });
    if (sticky !== undefined) return { rec: toRecord(sticky), held: false };
    const next: unknown = this.s.nextAllocatable.get(now);
    return next === undefined ? null : { rec: toRecord(next), held: false };
  }

  async grant(rowId: number, clientId: string, epoch: number, now: number, fenceCooldownMs: number, claim: GrantClaim = NO_CLAIM): Promise<void> {
    const r = this.s.grant.run({ rowId, clientId, epoch, now, fence: fenceCooldownMs, keyHash: claim.keyHash, instance: instanceColumn(claim.instance) });
    if (r.changes !== 1) throw new Error(`grant of row ${rowId} changed ${r.changes} rows`);
    this.s.historyInsert.run({ rowId, at: now, event: 'allocated', clientId, epoch });
  }

  async renewHeld(name: string, clientId: string, epoch: number | null, now: number, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.renewHeld.get({ name, clientId, epoch, now, fence: fenceCooldownMs, keyHash: proof.keyHash, watermark: proof.watermark });
    return r === undefined ? null : toRecord(r);
  }

  async releaseHeld(name: string, clientId: string, epoch: number | null, now: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.releaseHeld.get({ name, clientId, epoch, now, keyHash: proof.keyHash, watermark: proof.watermark });
    if (r === undefined) return null;
    const rec = toRecord(r);
    this.s.historyInsert.run({ rowId: rec.rowId, at: now, event: 'released', clientId, epoch: rec.epoch });
    return rec;
  }

  async free(rowId: number, availableAt: number, entry: FreeEntry): Promise<void> {
    this.s.free.run({ rowId, availableAt });
    this.s.historyInsert.run({ rowId, ...entry });
  }

  async appendHistory(rowId: number, at: number, event: HistoryEvent, clientId: string | null, epoch: number): Promise<void> {
    this.s.historyInsert.run({ rowId, at, event, clientId, epoch });
  }

  async pruneHistory(before: number, limit: number): Promise<number> {
    return this.s.historyPrune.run({ before, limit }).changes;
  }

  async noteAwsEvent(eventId: string, at: number): Promise<boolean> {
    return this.s.awsEventInsert.run(eventId, at).changes === 1;
  }

  async pruneAwsEvents(before: number): Promise<void> {
    this.s.awsEventsPrune.run(before);
  }

  async trySweepLock(): Promise<boolean> {
    return true; // BEGIN IMMEDIATE: this transaction is the only writer of the file
  }

  async countExpired(cutoff: number): Promise<number> {
    return scalar(this.s.countExpired.get(cutoff)) ?? 0;
  }

  async countLeased(): Promise<number> {
    return scalar(this.s.countLeased.get()) ?? 0;
  }

  async countEvents(event: HistoryEvent, since: number): Promise<number> {
    return scalar(this.s.countEvents[event].get(since)) ?? 0;
  }

  async reclaimExpired(cutoff: number, limit: number, now: number, cooldownMs: number): Promise<IdentifierRecord[]> {
    const recs = this.s.expired.all({ cutoff, limit }).map(toRecord);
    if (recs.length === 0) return recs;
    const ids = JSON.stringify(recs.map((r) => r.rowId));
    this.s.reclaimHistory.run({ ids, now });
    this.s.reclaimFree.run({ ids, now, cooldown: cooldownMs });
    return recs;
  }

  async recordRefusal(clientId: string, at: number): Promise<void> {
    this.s.refusalInsert.run(clientId, at);
  }

  async countRefusedClients(since: number): Promise<number> {
    return scalar(this.s.refusedClients.get(since)) ?? 0;
  }

  async pruneRefusals(before: number): Promise<void> {
    this.s.refusalsPrune.run(before);
  }

  async poolRows(): Promise<PoolRow[]> {
    return this.s.poolRows.all().map((raw) => {
      const r = asRow(raw);
      const clientId = r['client_id'];
      return {
        rowId: intColumn(r, 'id'),
        name: String(r['name']),
        poolOrder: intColumn(r, 'pool_order'),
        retired: intColumn(r, 'retired') === 1,
        clientId: typeof clientId === 'string' ? clientId : null,
        epoch: intColumn(r, 'epoch'),
      };
    });
  }

  async insertIdentifiers(rows: readonly { readonly name: string; readonly poolOrder: number }[]): Promise<void> {
    for (let i = 0; i < rows.length; i += INSERT_CHUNK) {
      this.s.insert.run(JSON.stringify(rows.slice(i, i + INSERT_CHUNK).map((r) => [r.name, r.poolOrder])));
    }
    if (rows.length > 0) this.s.addToTotal.run(rows.length); // new rows are free: only the total moves
  }

  async setRetired(rowId: number, retired: boolean, poolOrder: number): Promise<void> {
    this.s.setRetired.run({ rowId, retired: retired ? 1 : 0, poolOrder });
  }

  async setPoolOrder(rowId: number, poolOrder: number): Promise<void> {
    this.s.setOrder.run(poolOrder, rowId);
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.s.metaSet.run(key, value);
  }

  async beat(b: InstanceBeat): Promise<void> {
    this.s.beat.run({ id: b.id, startedAt: b.startedAt, at: b.at, fleetSeenAt: b.fleetSeenAt });
    if (b.fleetSeenAt !== null) this.s.fleetSeen.run({ seenAt: b.fleetSeenAt });
    this.s.pruneInstances.run(b.at - INSTANCE_FORGOTTEN_MS);
  }

  async forgetInstance(id: string): Promise<void> {
    this.s.forgetInstance.run(id);
  }

  async lostAcknowledgedWrites(): Promise<boolean> {
    return false; // a commit is in the WAL before it is acknowledged: only the host can lose it, and a reboot is found at open
  }
}

export class SqliteStore implements Store {
  readonly engine = 'sqlite' as const;
  readonly db: Database.Database;
  readonly clock: Clock;
  /** Set when this process found a previous boot's anchor: cool-downs were resumed from the floor. */
  readonly rebooted: boolean;
  private readonly s: Statements;
  private writes: Queued[] = [];
  private reads: QueuedRead[] = [];
  private pumping = false;
  private pumpScheduled = false;
  /** A write batch found the database locked by another process: retry at this timer. */
  private lockRetry: NodeJS.Timeout | null = null;
  private lockWaitMs = LOCK_RETRY_FIRST_MS;
  private readonly busyTimeoutMs: number;
  private walFd: number | null = null;
  private syncsInFlight = 0;
  /** Durable batches committed while an fsync runs: answered by the next one. */
  private syncWaiters: { readonly then: (err: RegistryError | null) => void; readonly failed: (err: Error) => void }[] = [];
  private syncsDone: (() => void) | null = null;
  private readonly fsync: (fd: number, done: (err: Error | null) => void) => void;
  private checkpointer: Checkpointer | null = null;
  /** The database file as opened; null in memory. */
  private readonly file: { readonly path: string; readonly dev: number; readonly ino: number } | null;
  /** The last storage failure of a write, until a write succeeds again. */
  private storageFault: string | null = null;
  /**
   * Set for good when an fsync of the WAL fails: the kernel may have dropped the pages it could
   * not write, so a later fsync that succeeds proves nothing about them, and a grant answered
   * after it could vanish in a crash (PostgreSQL stops for the same reason). Every write is
   * refused until the registry is restarted and SQLite recovers from what is on disk.
   */
  private syncFailure: string | null = null;
  private closed = false;
  private readonly defer: (run: () => void) => void;
  /** The full listing's reader threads (listing-worker.ts), made at the first listing. */
  private listing: ListingWorkers | null = null;
  /** False: the listing's pages are read in-process (the store was opened so). */
  private readonly listingOffLoop: boolean;

  constructor(opts: SqliteStoreOptions) {
    this.db = openDatabase(opts);
    this.defer = opts.defer ?? setImmediate;
    this.listingOffLoop = opts.listingWorker ?? true;
    this.fsync = opts.fsync ?? fsFsync;
    this.busyTimeoutMs = opts.busyTimeoutMs ?? 5000;
    const db = this.db;
    if (db.memory) {
      this.file = null;
    } else {
      const st = statSync(db.name);
      this.file = { path: db.name, dev: st.dev, ino: st.ino };
    }
    this.s = new Statements(db);
    if (opts.clock || opts.readonly) {
      this.clock = opts.clock ?? anchoredClock(opts.source ?? systemTimeSource, this.latestTime());
      this.rebooted = false;
    } else {
      const { clock, rebooted } = this.anchor(opts.source ?? systemTimeSource);
      this.clock = clock;
      this.rebooted = rebooted;
    }
    // From here on the event loop never waits for another process's lock: see flushWrites.
    db.pragma('busy_timeout = 0');
  }

  /**
   * Registry time for every process of this boot: the anchor recorded by the first process
   * of the boot. A new boot cannot know how much real time passed while the machine was
   * down (its wall clock may have been stepped), so cool-downs still running at the floor
   * count their remaining part again from now: never shorter, only longer by the downtime.
   */
  private anchor(source: TimeSource): { clock: Clock; rebooted: boolean } {
    const s = this.s;
    const run = this.db.transaction(() => {
      const floor = floorOf(this.db);
      const stored = storedAnchor(this.db);
      const d = resumeAnchor(stored, floor, source);
      const clock = anchorClock(source, d.anchor, floor);
      if (d.fresh) {
        s.metaSet.run(CLOCK_KEY, JSON.stringify(d.anchor));
        const shift = clock.now() - floor;
        if (d.rebooted && shift > 0) s.shiftCooldowns.run({ floor, shift });
      }
      return { clock, rebooted: d.rebooted };
    });
    return run.immediate();
  }

  write<T>(fn: (tx: Tx) => Promise<T>, opts: WriteOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the database is closed'));
      this.writes.push({ fn, durable: opts.durable, since: performance.now(), resolve: (v) => resolve(v as T), reject });
      this.schedule();
    });
  }

  /** A write like the others: SQLite commits the writes of a tick together anyway. */
  renewHeld(name: string, clientId: string, epoch: number | null, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.write((tx) => tx.renewHeld(name, clientId, epoch, tx.now, fenceCooldownMs, proof), { durable: false });
  }

  releaseHeld(name: string, clientId: string, epoch: number | null, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    return this.write((tx) => tx.releaseHeld(name, clientId, epoch, tx.now, proof), { durable: true });
  }

  read<T>(fn: (r: Reader) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new RegistryError('unavailable', 'the database is closed'));
      this.reads.push({ fn, resolve: (v) => resolve(v as T), reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.pumpScheduled || this.pumping) return;
    this.pumpScheduled = true;
    this.defer(() => {
      this.pumpScheduled = false;
      this.pump().catch((e: unknown) => this.failAll(e));
    });
  }

  /**
   * One batch at a time on the connection: the queued reads, then the queued writes in one
   * transaction. Whatever queued meanwhile waits for the next turn of the event loop: a chain
   * of writes that each start when the one before resolves (a sweep's batches) would otherwise
   * run back to back in one turn, and no request would be read until the chain ended.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      if (this.reads.length > 0) {
        const batch = this.reads;
        this.reads = [];
        await this.runReads(batch);
      }
      if (this.writes.length > 0 && this.lockRetry === null) {
        const batch = this.writes;
        this.writes = [];
        await this.flushWrites(batch);
      }
    } finally {
      this.pumping = false;
    }
    if (this.reads.length > 0 || (this.writes.length > 0 && this.lockRetry === null)) this.schedule();
  }

  private async runReads(batch: readonly QueuedRead[]): Promise<void> {
    const r = new SqliteReader(this.s, this.clock.now());
    try {
      this.s.begin.run();
    } catch (e) {
      for (const item of batch) item.reject(toRegistryError(e));
      return;
    }
    for (const item of batch) {
      try {
        item.resolve(await item.fn(r));
      } catch (e) {
        item.reject(toRegistryError(e));
      }
    }
    try {
      this.s.commit.run();
    } catch {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
    }
  }

  /** Commits `batch` in one transaction; a locked database puts it back and retries on a timer. */
  private async flushWrites(batch: Queued[]): Promise<void> {
    try {
      const moved = this.fileProblem();
      if (moved) throw new RegistryError('unavailable', moved);
      if (this.syncFailure) throw new RegistryError('unavailable', this.syncFailure);
      this.s.beginImmediate.run();
    } catch (e) {
      if (isBusy(e)) return this.waitForLock(batch);
      return this.fail(batch, e);
    }
    this.lockWaitMs = LOCK_RETRY_FIRST_MS;
    const outcomes: Outcome[] = [];
    try {
      for (const item of batch) outcomes.push(await this.runItem(item));
      this.s.commit.run();
    } catch (e) {
      // A storage failure, or the commit itself failed (disk full): nothing of the batch is kept
      // and nothing of it is acknowledged.
      try {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
      } catch {
        // SQLite may have rolled back already; the original error is the answer
      }
      return this.fail(batch, e);
    }
    this.storageFault = null;
    if (!batch.some((b, i) => b.durable && outcomes[i]?.ok)) return this.settle(batch, outcomes, null);
    this.syncWal((fsyncError) => this.settle(batch, outcomes, fsyncError));
  }

  /**
   * One use case in its own savepoint: its failure undoes only its own writes and is only its
   * own answer. If SQLite itself ended the transaction (an I/O error), the batch fails whole.
   */
  private async runItem(item: Queued): Promise<Outcome> {
    this.s.savepoint.run();
    try {
      const value = await item.fn(new SqliteTx(this.s, this.clock.now()));
      this.s.release.run();
      return { ok: true, value };
    } catch (e) {
      if (!this.db.inTransaction) throw e;
      this.s.rollbackTo.run();
      this.s.release.run();
      if (isRegistryError(e) && e.code !== 'unavailable') return { ok: false, error: e };
      if (isBusy(e) || (e instanceof Database.SqliteError && !/^SQLITE_(CONSTRAINT|ERROR|MISMATCH|RANGE)/.test(e.code))) throw e;
      return { ok: false, error: toRegistryError(e) };
    }
  }

  /** The pump itself failed (it should not): nothing queued is left hanging. */
  private failAll(e: unknown): void {
    this.pumping = false;
    try {
      if (this.db.open && this.db.inTransaction) this.db.exec('ROLLBACK');
    } catch {
      // the connection is gone; the answers below say so
    }
    const err = toRegistryError(e);
    for (const item of [...this.writes.splice(0), ...this.reads.splice(0)]) item.reject(err);
  }

  private waitForLock(batch: Queued[]): void {
    const now = performance.now();
    const expired = batch.filter((b) => now - b.since >= this.busyTimeoutMs);
    const waiting = batch.filter((b) => now - b.since < this.busyTimeoutMs);
    const err = new RegistryError('unavailable', 'the database is locked by another writer; try again');
    for (const item of expired) item.reject(err);
    this.writes = [...waiting, ...this.writes];
    if (this.writes.length === 0) return;
    this.lockRetry = setTimeout(() => {
      this.lockRetry = null;
      this.schedule();
    }, this.lockWaitMs);
    this.lockWaitMs = Math.min(this.lockWaitMs * 2, LOCK_RETRY_MAX_MS);
  }

  private fail(batch: readonly Queued[], e: unknown): void {
    const err = toRegistryError(e);
    if (err.code === 'unavailable' && !isBusy(e)) this.storageFault = err.message;
    for (const item of batch) item.reject(err);
  }

  /** Answers each item with its outcome; `durableError` overrides the durable ones' success. */
  private settle(batch: readonly Queued[], outcomes: readonly Outcome[], durableError: RegistryError | null): void {
    outcomes.forEach((o, i) => {
      const item = batch[i];
      if (!item) return;
      if (!o.ok) item.reject(o.error);
      else if (durableError && item.durable) item.reject(durableError);
      else item.resolve(o.value);
    });
  }

  /**
   * Makes every commit so far durable, off the event loop: fsync of the WAL file, which is
   * what synchronous=FULL does after each commit. One fsync covers all the commits before it.
   */
  private syncWal(then: (err: RegistryError | null) => void): void {
    const failed = (err: Error): void => {
      this.storageFault = `the database's log could not be synced to disk (${err.message})`;
      this.syncFailure = `${this.storageFault}; writes are refused until the registry is restarted`;
      then(new RegistryError('unavailable', this.storageFault, { cause: err }));
    };
    let fd: number | null;
    try {
      fd = this.walDescriptor();
    } catch (e) {
      return failed(e instanceof Error ? e : new Error(String(e)));
    }
    if (fd === null) return then(null); // in memory: nothing to make durable
    // One fsync at a time, shared: it covers every commit made before it started, so the
    // batches that commit while it runs wait for the next one, which they all share.
    this.syncWaiters.push({ then, failed });
    if (this.syncsInFlight === 0) this.startSync(fd);
  }

  private startSync(fd: number): void {
    const round = this.syncWaiters;
    this.syncWaiters = [];
    this.syncsInFlight++;
    this.fsync(fd, (err) => {
      this.syncsInFlight--;
      for (const w of round) {
        if (err) w.failed(err);
        else w.then(null);
      }
      if (this.syncWaiters.length > 0) this.startSync(fd);
      else if (this.syncsInFlight === 0) this.syncsDone?.();
    });
  }

  private walDescriptor(): number | null {
    if (this.walFd !== null || !this.file) return this.walFd;
    this.walFd = openSync(`${this.file.path}-wal`, 'r');
    // The WAL file's directory entry must be durable too (once).
    const dir = openSync(dirname(this.file.path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return this.walFd;
  }

  /**
   * Whether the file this connection writes to is still the one at its path. SQLite keeps
   * writing to a deleted or replaced file's inode, and everything written there is lost at
   * the next start-up, so such writes are refused.
   */
  fileProblem(): string | null {
    if (!this.file) return null;
    try {
      const st = statSync(this.file.path);
      if (st.ino !== this.file.ino || st.dev !== this.file.dev) return `the database file ${this.file.path} was replaced`;
      return null;
    } catch {
      return `the database file ${this.file.path} was removed`;
    }
  }

  async healthProblem(): Promise<string | null> {
    try {
      if (!this.db.open) return 'the database is closed';
      this.s.ping.get();
      if (this.db.readonly) return 'the database is open read-only';
      return this.fileProblem() ?? this.syncFailure ?? this.storageFault;
    } catch (e) {
      return toRegistryError(e).message;
    }
  }

  /** The latest registry time written to the database. */
  latestTime(): number {
    return Math.max(scalar(this.s.latestLastSeen.get()) ?? 0, scalar(this.s.latestHistory.get()) ?? 0);
  }

  /**
   * Moves WAL checkpoints to a worker thread (see checkpointer.ts). For a long-running
   * registry on a file; tests and one-shot commands keep SQLite's automatic checkpoint.
   */
  checkpointInBackground(onError?: (message: string) => void): void {
    if (this.checkpointer || this.db.memory) return;
    this.db.pragma('wal_autocheckpoint = 0');
    this.checkpointer = startCheckpointer(this.db.name, onError ? { onError } : {});
  }

  /**
   * The listing's worker threads (listing-worker.ts; started now if none run), or null: in
   * memory, closed, the file replaced or removed, or workers that could not open the database.
   */
  listingReader(): ListingReader | null {
    if (this.closed || !this.listingOffLoop || !this.file || this.fileProblem()) return null;
    this.listing ??= new ListingWorkers(this.file.path, pageSql(STATUS_WHERE), LISTING_WORKERS, LISTING_IDLE_MS, undefined, { counts: COUNTS_SQL });
    const workers = this.listing;
    if (workers.failed) return null;
    workers.start();
    return {
      get ready() { return workers.ready; },
      whenReady: () => workers.whenReady(),
      counts: async (now: number): Promise<RawCounts> => {
        const row = await workers.read('counts', { now });
        if (!Array.isArray(row)) throw new Error('counts: expected one row');
        const [total, leased, retired, cooling]: unknown[] = row;
        return { total: countOf(total), leased: countOf(leased), retired: countOf(retired), cooling: countOf(cooling) };
      },
      page: async (q: ListQuery, view: ViewRules, onNext: (next: ListJson['next']) => void): Promise<OffLoopPage | null> => {
        const plan = planPage(q, view);
        if (plan === null) return null;
        const r = await workers.run(plan, (edge) => onNext(edgeNext(edge)));
        const json = finishPage(q, r);
        if (json) return { members: json.members, rows: [], next: json.next };
        return { members: null, rows: recordTuples(r.rows ?? []), next: edgeNext(r.edge) };
      },
    };
  }

  /** Starts the listing workers now rather than at the first listing; true once one is ready to read pages. */
  async startListingWorkers(): Promise<boolean> {
    if (this.listingReader() === null || !this.listing) return false;
    return this.listing.whenReady();
  }

  /** For tests and the bench: the listing workers' state, and the pages and other reads they answered so far. */
  listingWorkerStats(): ListingWorkerStats {
    return this.listing?.stats ?? { running: 0, pending: 0, pages: 0, reads: 0 };
  }

  /** Stops the listing workers, as if they failed: pages waiting are refused (tests: workers gone mid-listing). */
  async stopListingWorkers(): Promise<void> {
    await this.listing?.stop(new RegistryError('unavailable', 'the listing workers were stopped'));
  }

  /** Commits what is queued, stops the checkpointer, then closes the database. */
  async close(): Promise<void> {
    // Writes waiting for another process's lock get their busy timeout, then are refused.
    while (this.pumping || this.reads.length > 0 || this.writes.length > 0) {
      if (this.lockRetry !== null || this.pumping) await new Promise((r) => setTimeout(r, LOCK_RETRY_FIRST_MS));
      else await this.pump();
    }
    this.closed = true;
    await this.listing?.stop(new RegistryError('unavailable', 'the database is closed'));
    if (this.syncsInFlight > 0) await new Promise<void>((resolve) => { this.syncsDone = resolve; });
    if (this.checkpointer) {
      await this.checkpointer.stop();
      this.checkpointer = null;
    }
    if (this.walFd !== null) closeSync(this.walFd);
    this.walFd = null;
    if (this.db.open) this.db.close();
  }
}
