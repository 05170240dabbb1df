/**
 * The registry's reads and writes in PostgreSQL's idiom. A `PgTx` runs inside one transaction
 * on one pooled connection (see store.ts); rows it returns for a decision are locked
 * (FOR UPDATE), the allocator and the reaper skip rows another instance holds (SKIP LOCKED),
 * and only one instance sweeps at a time (a transaction-scoped advisory lock). Statements are
 * named, so each connection parses and plans each one once.
 */
import type { PoolClient } from 'pg';
import { recordOf } from '../../domain/lease.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, RecordTuple, Status } from '../../domain/types.js';
import { instanceColumn } from '../columns.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { FreeEntry, GrantClaim, HeldProof, HistoryRows, InstanceBeat, ListQuery, PoolRow, RawCounts, Reader, Tx } from '../types.js';
import type { ClockReading, HostMark } from './clock.js';
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, TUPLE_COLUMNS, asRow, bool, int, recordTuples, scalar, toBeat, toHistoryEntry, toHistoryRows, toPoolRow, toRecord } from './rows.js';

/** The advisory-lock namespace of this registry ("idrg"), and the locks in it. */
export const LOCK_NAMESPACE = 0x69647267;
export const LOCK_MIGRATE = 1;
export const LOCK_SWEEP = 2;
export const LOCK_IMPORT = 3;

/** An instance that has not beaten for this long (crashed long ago) is dropped from the table. */
const INSTANCE_FORGOTTEN_MS = 24 * 3600_000;

/** Rows a bulk insert sends per statement. */
const INSERT_CHUNK = 5000;

const STATUS_WHERE: Readonly<Record<Status | 'all', string>> = {
  all: 'true',
  leased: 'client_id IS NOT NULL',
  free: 'client_id IS NULL AND NOT retired AND available_at <= @now',
  cooling: 'client_id IS NULL AND NOT retired AND available_at > @now',
  retired: 'retired',
};

/** The server's clock in epoch milliseconds (clock_timestamp: not frozen at the transaction's start). */
export const SERVER_MS = 'floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint';

/**
 * One reading of the server's clock with the stored offset and its generation (see clock.ts):
 * registry time is `clock_raw + clock_offset`. The row always exists (the migration made it);
 * were it missing, the offset would read as 0 rather than the statement doing nothing.
 */
export const CLOCK_READING = `SELECT ${SERVER_MS} AS clock_raw, coalesce(k.offset_ms, 0) AS clock_offset, coalesce(k.gen, 0) AS clock_gen
  FROM (SELECT 1) AS one LEFT JOIN registry_clock k ON k.id = 1`;

/** The reading in a row that carries one (see CLOCK_READING); null when it does not. */
export function readingOf(raw: unknown): ClockReading | null {
  const r = asRow(raw);
  if (r['clock_raw'] === undefined || r['clock_raw'] === null) return null;
  return { raw: int(r, 'clock_raw'), offset: int(r, 'clock_offset'), gen: int(r, 'clock_gen') };
}

/** The time a one-statement write runs at: `now` when injected (tests), else the server's, held within [lo, hi]. */
export interface StatementTime {
  readonly now: number | null;
  readonly lo: number;
  readonly hi: number;
}

const RECORD_COLUMNS_OF_I = RECORD_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ');

/**
 * What only the holder may do, over a list of asks so one statement serves a whole batch: the
 * rows `name` where `client_id` still holds it, under the epoch it sent when it sent one, with
 * the key it was granted with (as its hash; none for none). The WHERE is re-checked on the
 * newest version of a row another transaction changed meanwhile (READ COMMITTED), so a lease
 * reclaimed, released or granted again since is never touched. `idx` (from 1) says which ask a
 * row answers; an ask without a row changed nothing. $1-$3 the names, clients and epochs, $4 the
 * cool-down of the fence window a renewal announces, $5 the key hashes, $6 the watermarks.
 */
const HELD_ASKS = `unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[])
        WITH ORDINALITY AS r(name, client_id, epoch, fence, key_hash, watermark, idx)`;
/** How many parameters HELD_ASKS takes: a statement's time comes after them. */
const HELD_ASK_ARRAYS = 6;
const HELD_WHERE = 'i.name = r.name AND i.client_id = r.client_id AND (r.epoch IS NULL OR i.epoch = r.epoch) AND i.key_hash IS NOT DISTINCT FROM r.key_hash';
/** A watermark only ever raises the identifier's (greatest ignores NULL). */
const RAISE_WATERMARK = 'watermark = greatest(i.watermark, r.watermark)';

/** A statement's time: $7 (after the six ask arrays) inside a use case's transaction; alone, see `alone`. */
interface StatementClock { readonly with: string; readonly now: string; readonly from: string; readonly reading: string }
const IN_TX: StatementClock = { with: 'WITH ', now: `$${HELD_ASK_ARRAYS + 1}::bigint`, from: '', reading: '' };

/**
 * A statement of its own, so its own transaction: one round trip. Its time is registry time read
 * on the server (its clock plus the stored offset), held between this instance's bounds (the two
 * parameters after `nowParam`: see ServerTime.bounds), or `nowParam` (by default $7, after the
 * six HELD_ASKS arrays) when the registry's time is injected (tests). Its rows carry the reading, so the instance checks it.
 * `synchronous_commit` is set for this statement's transaction only: on for an ownership change,
 * off for a liveness, which must be visible to every instance before its answer, not fsynced (docs/safety.md, "What an answer means");
 * so is `lockTimeout` when given (`set_config(..., true)` is SET LOCAL: in autocommit the
 * statement is its own transaction, and the pooled connection's next use has its own setting
 * back — test/store/postgres-allocate.test.ts holds it to that).
 */
function alone(durable: boolean, nowParam = HELD_ASK_ARRAYS + 1, lockTimeout?: string): StatementClock {
  const lockLimit = lockTimeout === undefined ? '' : `,
             set_config('lock_timeout', '${lockTimeout}', true) AS lock_limit`;
  return {
    with: `WITH c AS MATERIALIZED (${CLOCK_READING}), t AS MATERIALIZED (
      SELECT coalesce($${nowParam}::bigint, greatest($${nowParam + 1}::bigint, least($${nowParam + 2}::bigint, c.clock_raw + c.clock_offset))) AS now,
             c.clock_raw, c.clock_offset, c.clock_gen,
             set_config('synchronous_commit', '${durable ? 'on' : 'off'}', true) AS commit_mode${lockLimit}
      FROM c
    ), `,
    now: 't.now',
    from: ', t',
    reading: ', t.clock_raw, t.clock_offset, t.clock_gen',
  };
}

/**
 * The renewal rule on PostgreSQL, written once: last_seen = max(last_seen, now) where the client
 * holds the lease, and the fence window kept with it never shorter than the one announced now.
 */
function renewHeldSql(clock: StatementClock): string {
  return `${clock.with}renewed AS (
      UPDATE identifiers i SET last_seen = greatest(i.last_seen, ${clock.now}), fence_cooldown_ms = greatest(i.fence_cooldown_ms, r.fence),
        ${RAISE_WATERMARK}
      FROM ${HELD_ASKS}${clock.from}
      WHERE ${HELD_WHERE}
      RETURNING ${RECORD_COLUMNS_OF_I}, r.idx, ${clock.now} AS now${clock.reading}
    )
    SELECT * FROM renewed`;
}

/** The release rule on PostgreSQL, written once: the holder frees it, allocatable at once, with its history entry. */
function releaseHeldSql(clock: StatementClock): string {
  return `${clock.with}released AS (
      UPDATE identifiers i SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL, available_at = ${clock.now},
        key_hash = NULL, instance = NULL, ${RAISE_WATERMARK}
      FROM ${HELD_ASKS}${clock.from}
      WHERE ${HELD_WHERE}
      RETURNING ${RECORD_COLUMNS_OF_I}, r.idx, r.client_id AS released_by, ${clock.now} AS now${clock.reading}
    ), logged AS (
      INSERT INTO history (identifier_id, at, event, client_id, epoch)
      SELECT id, now, 'released', released_by, epoch FROM released ORDER BY idx
    )
    SELECT * FROM released`;
}

export type HeldKind = 'renew' | 'release';
const HELD_SQL: Readonly<Record<HeldKind, { readonly inTx: string; readonly alone: string }>> = {
  renew: { inTx: renewHeldSql(IN_TX), alone: renewHeldSql(alone(false)) },
  release: { inTx: releaseHeldSql(IN_TX), alone: releaseHeldSql(alone(true)) },
};

/** One liveness or release by the holder: see Tx.renewHeld and Tx.releaseHeld. */
export interface HeldAsk {
  readonly name: string;
  readonly clientId: string;
  readonly epoch: number | null;
  /** A renewal: the cool-down of the fence window it announces (see Tx.renewHeld); null for a release. */
  readonly fenceCooldownMs: number | null;
  readonly proof: HeldProof;
}

export interface HeldRow {
  /** The index in the list asked of the ask this row answers. */
  readonly index: number;
  /** The record as the statement left it. */
  readonly rec: IdentifierRecord;
  /** The time the statement ran at. */
  readonly now: number;
  /** What it read of the server's clock (a statement alone); null in a transaction. */
  readonly reading: ClockReading | null;
}

function heldRowOf(raw: unknown): HeldRow {
  const r = asRow(raw);
  return { index: int(r, 'idx') - 1, rec: toRecord(raw), now: int(r, 'now'), reading: readingOf(raw) };
}

function askArrays(asks: readonly HeldAsk[]): unknown[] {
  return [
    asks.map((a) => a.name), asks.map((a) => a.clientId), asks.map((a) => a.epoch), asks.map((a) => a.fenceCooldownMs),
    asks.map((a) => a.proof.keyHash), asks.map((a) => a.proof.watermark),
  ];
}

/** Renews or releases a batch of leases in one statement outside any transaction, at `time`. */
export async function heldAlone(client: PoolClient, kind: HeldKind, asks: readonly HeldAsk[], time: StatementTime): Promise<HeldRow[]> {
  return (await rows(client, `${kind}_held_alone`, HELD_SQL[kind].alone, [...askArrays(asks), time.now, time.lo, time.hi])).map(heldRowOf);
}

/**
 * How long the grant statement waits for a lock: only a grant to one of its clients in flight on
 * another instance makes it wait (its rows are taken SKIP LOCKED). Short, so a batch that meets
 * such a race fails (55P03) and gives up its rows within a fraction of a second, instead of
 * holding them, and its other clients, for the connection's lock_timeout.
 */
const GRANT_LOCK_TIMEOUT = '50ms';

/**
 * Allocate's common case on PostgreSQL, over a list of clients so one statement serves a whole
 * batch, in autocommit with `synchronous_commit` on (see `alone`): each client that holds
 * nothing is granted one of the allocatable identifiers free the longest, under its next epoch,
 * with its `allocated` history entry. It restates, for speed, rules written in domain/ and
 * registry.ts (Registry.allocate, Tx.claimFor, Tx.grant) — the test "the one-statement grant and
 * the full use case give the same answers" in test/store/postgres-allocate.test.ts holds both to
 * the same answers:
 *  - allocatable: `client_id IS NULL AND NOT retired AND available_at <= now` (a cool-down
 *    pending is not allocatable), the one free the longest first (available_at, pool_order, id);
 *  - a client that holds an identifier keeps it (same client, same answer): such a client gets
 *    no row here, and the full use case answers it; a grant by another instance not in this
 *    statement's snapshot is caught by the unique index on client_id: committed, the statement
 *    fails (23505); still in flight, the statement waits for it at most GRANT_LOCK_TIMEOUT (its
 *    own lock_timeout, then 55P03), so one client's race never holds the batch's rows locked
 *    for long. Either way (or a deadlock, 40P01) the statement changed nothing, and the caller
 *    leaves every client of the batch to the full use case, which waits, retries and sees the
 *    holder;
 *  - a new grant takes the row's epoch + 1 (the trigger refuses anything else).
 * The rows are taken FOR UPDATE SKIP LOCKED: a row another transaction is granting, freeing or
 * reclaiming is skipped, never waited for, and the free check is re-checked on the newest
 * version of a row changed since the snapshot (READ COMMITTED). A client without a row (it holds
 * one, or nothing allocatable was left unlocked) changed nothing: the caller runs the full use
 * case, which says pool_exhausted or renews the held lease.
 * The k-th client of $1 that holds nothing is paired with the k-th row picked (the join on k),
 * so the clients are served in the order of the list.
 * $1: the clients (distinct), `idx` (from 1) says which each returned row answers; $2 the
 * cool-down of the fence window each grant announces (kept with the lease, as Tx.grant); $3 the
 * hash of each client's key and $4 its instance facts (as Tx.grant); $5-$7 the statement's time
 * (see `alone`).
 */
const GRANT_NEXT_SQL = `${alone(true, 5, GRANT_LOCK_TIMEOUT).with}asks AS MATERIALIZED (
      SELECT a.client_id, a.fence, a.key_hash, a.instance, a.idx, row_number() OVER (ORDER BY a.idx) AS k
      FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY AS a(client_id, fence, key_hash, instance, idx)
      WHERE NOT EXISTS (SELECT FROM identifiers h WHERE h.client_id = a.client_id)
        -- A client whose sticky identifier is allocatable is left to the full use case, which grants it that one.
        AND NOT EXISTS (
          SELECT FROM (
            SELECT s.client_id, s.retired, s.available_at FROM identifiers s
            WHERE s.last_client_id = a.client_id ORDER BY s.last_granted_at DESC, s.id DESC LIMIT 1
          ) s
          WHERE s.client_id IS NULL AND NOT s.retired AND s.available_at <= (SELECT now FROM t)
        )
    ), picked AS MATERIALIZED (
      SELECT f.id, row_number() OVER (ORDER BY f.available_at, f.pool_order, f.id) AS k FROM (
        SELECT id, available_at, pool_order FROM identifiers
        WHERE client_id IS NULL AND NOT retired AND available_at <= (SELECT now FROM t)
        ORDER BY available_at, pool_order, id
        LIMIT (SELECT count(*) FROM asks)
        FOR UPDATE SKIP LOCKED
      ) f
    ), granted AS (
      UPDATE identifiers i SET client_id = a.client_id, epoch = i.epoch + 1, allocated_at = t.now, last_seen = t.now,
        fence_cooldown_ms = a.fence, key_hash = a.key_hash, instance = a.instance, last_client_id = a.client_id, last_granted_at = t.now
      FROM picked p JOIN asks a ON a.k = p.k, t
      WHERE i.id = p.id AND i.client_id IS NULL
      RETURNING ${RECORD_COLUMNS_OF_I}, a.idx, t.now AS now, t.clock_raw, t.clock_offset, t.clock_gen
    ), logged AS (
      INSERT INTO history (identifier_id, at, event, client_id, epoch)
      SELECT id, now, 'allocated', client_id, epoch FROM granted ORDER BY idx
    )
    SELECT * FROM granted`;

/**
 * Grants each of `clientIds` (distinct) that holds nothing the next allocatable identifier, in
 * one statement outside any transaction (see GRANT_NEXT_SQL), at `time`. Rows only for the
 * clients granted.
 */
export async function grantNextAlone(
  client: PoolClient,
  asks: readonly { readonly clientId: string; readonly fenceCooldownMs: number; readonly claim?: GrantClaim }[],
  time: StatementTime,
): Promise<HeldRow[]> {
  const claim = (a: { readonly claim?: GrantClaim }): GrantClaim => a.claim ?? NO_CLAIM;
  const values = [
    asks.map((a) => a.clientId), asks.map((a) => a.fenceCooldownMs),
    asks.map((a) => claim(a).keyHash), asks.map((a) => instanceColumn(claim(a).instance)),
    time.now, time.lo, time.hi,
  ];
  return (await rows(client, 'grant_next_alone', GRANT_NEXT_SQL, values)).map(heldRowOf);
}

async function heldInTx(client: PoolClient, kind: HeldKind, ask: HeldAsk, now: number): Promise<IdentifierRecord | null> {
  const r = await first(client, `${kind}_held`, HELD_SQL[kind].inTx, [...askArrays([ask]), now]);
  return r === undefined ? null : toRecord(r);
}

async function rows(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<unknown[]> {
  const res = await client.query({ name, text, values });
  const out: unknown[] = res.rows;
  return out;
}

/** Rows as arrays of their columns, in the order selected. */
async function arrays(client: PoolClient, name: string, text: string, values: unknown[]): Promise<unknown[]> {
  const res = await client.query({ name, text, values, rowMode: 'array' });
  const out: unknown[] = res.rows;
  return out;
}

async function first(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<unknown> {
  return (await rows(client, name, text, values))[0];
}

async function count(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<number> {
  return scalar(await first(client, name, text, values)) ?? 0;
}

async function changes(client: PoolClient, name: string, text: string, values: unknown[]): Promise<number> {
  const res = await client.query({ name, text, values });
  return res.rowCount ?? 0;
}

export class PgReader implements Reader {
  constructor(
    protected readonly client: PoolClient,
    readonly now: number,
    /** FOR UPDATE in a write transaction; nothing in a read. */
    private readonly lockClause: string,
  ) {}

  async byName(name: string): Promise<IdentifierRecord | null> {
    const r = await first(this.client, `by_name${this.lockClause ? '_lock' : ''}`,
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE name = $1 ${this.lockClause}`, [name]);
    return r === undefined ? null : toRecord(r);
  }

  async byClient(clientId: string): Promise<IdentifierRecord | null> {
    const r = await first(this.client, `by_client${this.lockClause ? '_lock' : ''}`,
      `SELECT ${RECORD_COLUMNS} FROM identifiers WHERE client_id = $1 ${this.lockClause}`, [clientId]);
    return r === undefined ? null : toRecord(r);
  }

  async history(rowId: number): Promise<HistoryEntry[]> {
    const rs = await rows(this.client, 'history', 'SELECT at, event, client_id, epoch FROM history WHERE identifier_id = $1 ORDER BY id', [rowId]);
    return rs.map(toHistoryEntry);
  }

  async historyPage(rowId: number, after: number | null, limit: number): Promise<HistoryRows> {
    // One row past the page tells whether another follows.
    const rs = await rows(this.client, 'history_page',
      `SELECT ${HISTORY_PAGE_COLUMNS} FROM history WHERE identifier_id = $1 AND id > $2 ORDER BY id LIMIT $3`, [rowId, after ?? 0, limit + 1]);
    return toHistoryRows(rs, limit);
  }

  async list(q: ListQuery): Promise<IdentifierRecord[]> {
    return (await this.listRows(q)).map(recordOf);
  }

  async listRows(q: ListQuery): Promise<RecordTuple[]> {
    const status = q.status ?? 'all';
    const values: unknown[] = [q.limit]; // LIMIT NULL is no limit
    let where = STATUS_WHERE[status];
    if (where.includes('@now')) {
      values.push(q.now);
      where = where.replace('@now', `$${values.length}`);
    }
    if (q.after) {
      values.push(q.after.poolOrder, q.after.rowId);
      where += ` AND (pool_order, id) > ($${values.length - 1}, $${values.length})`;
    }
    const text = `SELECT ${TUPLE_COLUMNS} FROM identifiers WHERE ${where} ORDER BY pool_order, id LIMIT $1`;
    return recordTuples(await arrays(this.client, `list_${status}${q.after ? '_after' : ''}`, text, values));
  }

  async counts(now: number): Promise<RawCounts> {
    const r = asRow(await first(this.client, 'counts',
      `SELECT count(*) AS total,
              count(client_id) AS leased,
              count(*) FILTER (WHERE client_id IS NULL AND NOT retired AND available_at > $1) AS cooling,
              count(*) FILTER (WHERE client_id IS NULL AND retired) AS retired
       FROM identifiers`, [now]));
    return { total: int(r, 'total'), leased: int(r, 'leased'), cooling: int(r, 'cooling'), retired: int(r, 'retired') };
  }

  async oldestLastSeen(): Promise<number | null> {
    return scalar(await first(this.client, 'oldest_last_seen', 'SELECT min(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL'));
  }

  async meta(key: string): Promise<string | null> {
    const r = await first(this.client, 'meta_get', 'SELECT value FROM meta WHERE key = $1', [key]);
    if (r === undefined) return null;
    const v = asRow(r)['value'];
    return typeof v === 'string' ? v : null;
  }

  async latestBeat(exceptId: string | null): Promise<InstanceBeat | null> {
    const r = await first(this.client, 'latest_beat',
      `SELECT id, started_at, at, fleet_seen_at FROM instances WHERE $1::text IS NULL OR id <> $1
       ORDER BY at DESC, id LIMIT 1`, [exceptId]);
    return r === undefined ? null : toBeat(r);
  }

  async fleetSeenAt(): Promise<number | null> {
    return scalar(await first(this.client, 'fleet_seen_at', 'SELECT seen_at AS n FROM fleet WHERE id = 1'));
  }
}

/** This host's mark of registry time, stored with each beat (see clock_hosts). */
export interface HostClock {
  readonly bootId: string;
  readonly mark: HostMark;
}

/** A host forgotten this long after its last mark (an instance that never came back). */
const HOST_FORGOTTEN_MS = 7 * 24 * 3600_000;

export class PgTx extends PgReader implements Tx {
  /** Whether this use case has written (or taken a lock past its rows): see store.ts, group commit. */
  wrote = false;

  constructor(client: PoolClient, now: number, private readonly host: HostClock | null = null) {
    super(client, now, 'FOR UPDATE');
  }

  async claimFor(clientId: string, now: number): Promise<{ rec: IdentifierRecord; held: boolean } | null> {
    // One round trip: the client's own row, else (only then) the next allocatable one. SKIP
    // LOCKED: a row another transaction is granting is not waited for; the next one is taken.
    const r = await first(this.client, 'claim_for',
      `WITH held AS (
         SELECT ${RECORD_COLUMNS}, true AS held FROM identifiers WHERE client_id = $1 FOR UPDATE
       ), last AS (
         SELECT id FROM identifiers WHERE last_client_id = $1 AND NOT EXISTS (SELECT FROM held)
         ORDER BY last_granted_at DESC, id DESC LIMIT 1
       ), sticky AS (
         SELECT ${RECORD_COLUMNS}, false AS held FROM identifiers
         WHERE id = (SELECT id FROM last) AND client_id IS NULL AND NOT retired AND available_at <= $2
         FOR UPDATE SKIP LOCKED
       ), next AS (
         SELECT ${RECORD_COLUMNS}, false AS held FROM identifiers
         WHERE client_id IS NULL AND NOT retired AND available_at <= $2 AND NOT EXISTS (SELECT FROM held) AND NOT EXISTS (SELECT FROM sticky)
         ORDER BY available_at, pool_order, id LIMIT 1 FOR UPDATE SKIP LOCKED
       )
       SELECT * FROM held UNION ALL SELECT * FROM sticky UNION ALL SELECT * FROM next`, [clientId, now]);
    return r === undefined ? null : { rec: toRecord(r), held: bool(asRow(r), 'held') };
  }

  async grant(rowId: number, clientId: string, epoch: number, now: number, fenceCooldownMs: number, claim: GrantClaim = NO_CLAIM): Promise<void> {
    this.wrote = true;
    // The grant and its history entry in one statement: one round trip, never one without the other.
    const n = await changes(this.client, 'grant',
      `WITH granted AS (
         UPDATE identifiers SET client_id = $2, epoch = $3, allocated_at = $4, last_seen = $4, fence_cooldown_ms = $5,
           key_hash = $6, instance = $7, last_client_id = $2, last_granted_at = $4
         WHERE id = $1 AND client_id IS NULL RETURNING id
       )
       INSERT INTO history (identifier_id, at, event, client_id, epoch) SELECT id, $4, 'allocated', $2, $3 FROM granted`,
      [rowId, clientId, epoch, now, fenceCooldownMs, claim.keyHash, instanceColumn(claim.instance)]);
    if (n !== 1) throw new Error(`grant of row ${rowId} changed ${n} rows`);
  }

  async renewHeld(name: string, clientId: string, epoch: number | null, now: number, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    this.wrote = true;
    return heldInTx(this.client, 'renew', { name, clientId, epoch, fenceCooldownMs, proof }, now);
  }

  async releaseHeld(name: string, clientId: string, epoch: number | null, now: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    this.wrote = true;
    return heldInTx(this.client, 'release', { name, clientId, epoch, fenceCooldownMs: null, proof }, now);
  }

  async free(rowId: number, availableAt: number, entry: FreeEntry): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'free',
      `WITH freed AS (
         UPDATE identifiers SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL, available_at = $2,
           key_hash = NULL, instance = NULL
         WHERE id = $1 RETURNING id
       )
       INSERT INTO history (identifier_id, at, event, client_id, epoch) SELECT id, $3::bigint, $4::text, $5::text, $6::bigint FROM freed`,
      [rowId, availableAt, entry.at, entry.event, entry.clientId, entry.epoch]);
  }

  async appendHistory(rowId: number, at: number, event: HistoryEvent, clientId: string | null, epoch: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'history_append',
      'INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES ($1, $2, $3, $4, $5)',
      [rowId, at, event, clientId, epoch]);
  }

  async pruneHistory(before: number, limit: number): Promise<number> {
    this.wrote = true;
    // As SQLite's: the oldest `limit` entries by position (never the newest of all), those written
    // before `before`. SKIP LOCKED: two instances pruning at once take different entries.
    return changes(this.client, 'history_prune',
      `WITH oldest AS (
         SELECT id FROM history WHERE id < (SELECT max(id) FROM history) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
       )
       DELETE FROM history h USING oldest WHERE h.id = oldest.id AND h.at < $1`, [before, limit]);
  }

  async noteAwsEvent(eventId: string, at: number): Promise<boolean> {
    this.wrote = true;
    // A concurrent transaction inserting the same id makes this one wait for its end: then no row.
    return await changes(this.client, 'aws_event_note', 'INSERT INTO aws_events (id, at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING', [eventId, at]) === 1;
  }

  async pruneAwsEvents(before: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'aws_events_prune', 'DELETE FROM aws_events WHERE at < $1', [before]);
  }

  async trySweepLock(): Promise<boolean> {
    this.wrote = true;
    const r = asRow(await first(this.client, 'sweep_lock', 'SELECT pg_try_advisory_xact_lock($1, $2) AS ok', [LOCK_NAMESPACE, LOCK_SWEEP]));
    return r['ok'] === true;
  }

  async countExpired(cutoff: number): Promise<number> {
    return count(this.client, 'count_expired', 'SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL AND last_seen <= $1', [cutoff]);
  }

  async countLeased(): Promise<number> {
    return count(this.client, 'count_leased', 'SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL');
  }

  async countEvents(event: HistoryEvent, since: number): Promise<number> {
    return count(this.client, 'count_events', 'SELECT count(*) AS n FROM history WHERE event = $1 AND at >= $2', [event, since]);
  }

  async reclaimExpired(cutoff: number, limit: number, now: number, cooldownMs: number): Promise<IdentifierRecord[]> {
    this.wrote = true;
    // One statement: lock the oldest expired leases no other sweep holds, append their history,
    // free them, each cooling for the longer of the setting and the window its holder was told
    // (domain leaseCooldownMs). A lease renewed since this statement's snapshot is re-checked on its newest
    // version by the row lock (READ COMMITTED), so it is not taken; one freed by another sweep
    // no longer matches. Set-based whatever the batch size.
    const rs = await rows(this.client, 'reclaim_expired',
      `WITH picked AS (
         SELECT ${RECORD_COLUMNS} FROM identifiers
         WHERE client_id IS NOT NULL AND last_seen <= $1
         ORDER BY last_seen, id LIMIT $2 FOR UPDATE SKIP LOCKED
       ), logged AS (
         INSERT INTO history (identifier_id, at, event, client_id, epoch)
         SELECT id, $3, 'reclaimed', client_id, epoch FROM picked ORDER BY last_seen, id
       ), freed AS (
         UPDATE identifiers i SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL,
           available_at = $3::bigint + greatest(picked.fence_cooldown_ms, $4::bigint), key_hash = NULL, instance = NULL
         FROM picked WHERE i.id = picked.id
       )
       SELECT * FROM picked ORDER BY last_seen, id`, [cutoff, limit, now, cooldownMs]);
    return rs.map(toRecord);
  }

  async recordRefusal(clientId: string, at: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'refusal_record', 'INSERT INTO refusals (client_id, at) VALUES ($1, $2)', [clientId, at]);
  }

  async countRefusedClients(since: number): Promise<number> {
    return count(this.client, 'refusals_count', 'SELECT count(DISTINCT client_id) AS n FROM refusals WHERE at >= $1', [since]);
  }

  async pruneRefusals(before: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'refusals_prune', 'DELETE FROM refusals WHERE at < $1', [before]);
  }

  async poolRows(): Promise<PoolRow[]> {
    // The sync decides on these rows and writes in one transaction, as SQLite's write lock
    // gives it: other writers wait (readers do not), without locking a million rows one by one.
    this.wrote = true;
    await this.client.query('LOCK TABLE identifiers IN EXCLUSIVE MODE');
    const rs = await rows(this.client, 'pool_rows', 'SELECT id, name, pool_order, retired, client_id, epoch FROM identifiers ORDER BY id');
    return rs.map(toPoolRow);
  }

  async insertIdentifiers(list: readonly { readonly name: string; readonly poolOrder: number }[]): Promise<void> {
    this.wrote = true;
    for (let i = 0; i < list.length; i += INSERT_CHUNK) {
      const chunk = list.slice(i, i + INSERT_CHUNK);
      await changes(this.client, 'identifiers_insert',
        'INSERT INTO identifiers (name, pool_order) SELECT * FROM unnest($1::text[], $2::bigint[])',
        [chunk.map((r) => r.name), chunk.map((r) => r.poolOrder)]);
    }
  }

  async setRetired(rowId: number, retired: boolean, poolOrder: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'set_retired', 'UPDATE identifiers SET retired = $2, pool_order = $3 WHERE id = $1', [rowId, retired, poolOrder]);
  }

  async setPoolOrder(rowId: number, poolOrder: number): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'set_pool_order', 'UPDATE identifiers SET pool_order = $2 WHERE id = $1', [rowId, poolOrder]);
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'meta_set',
      'INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async beat(b: InstanceBeat): Promise<void> {
    this.wrote = true;
    // One statement: the beat, the fleet's latest request (kept when instances come and go),
    // this host's mark of registry time (the newest reading of its monotonic clock wins), and
    // instances that stopped beating a day ago (crashed long since) dropped.
    const h = this.host;
    await changes(this.client, 'beat',
      `WITH beat AS (
         INSERT INTO instances (id, started_at, at, fleet_seen_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET at = greatest(instances.at, excluded.at),
           fleet_seen_at = greatest(instances.fleet_seen_at, excluded.fleet_seen_at)
       ), fleet AS (
         INSERT INTO fleet (id, seen_at) SELECT 1, $4 WHERE $4::bigint IS NOT NULL
         ON CONFLICT (id) DO UPDATE SET seen_at = greatest(fleet.seen_at, excluded.seen_at)
       ), host AS (
         INSERT INTO clock_hosts (boot_id, mono, lo, hi, gen) SELECT $6::text, $7::float8, $8::bigint, $9::bigint, $10::bigint WHERE $6::text IS NOT NULL
         ON CONFLICT (boot_id) DO UPDATE SET mono = excluded.mono, lo = excluded.lo, hi = excluded.hi, gen = excluded.gen
         WHERE excluded.mono >= clock_hosts.mono
       ), hosts_gone AS (
         DELETE FROM clock_hosts WHERE hi < $3::bigint - $11::bigint AND boot_id IS DISTINCT FROM $6::text
       )
       DELETE FROM instances WHERE at < $3::bigint - $5::bigint AND id <> $1`,
      [b.id, b.startedAt, b.at, b.fleetSeenAt, INSTANCE_FORGOTTEN_MS,
        h?.bootId ?? null, h?.mark.mono ?? null, h ? Math.floor(h.mark.lo) : null, h ? Math.ceil(h.mark.hi) : null, h?.mark.gen ?? null,
        HOST_FORGOTTEN_MS]);
  }

  async forgetInstance(id: string): Promise<void> {
    this.wrote = true;
    await changes(this.client, 'forget_instance', 'DELETE FROM instances WHERE id = $1', [id]);
  }

  async lostAcknowledgedWrites(): Promise<boolean> {
    // Found missing, the mark is put back in this transaction: a concurrent check-in waits for
    // its commit at the primary key, then finds it there (and reads what this one recorded).
    const put = await changes(this.client, 'incarnation_mark', 'INSERT INTO incarnation (id) VALUES (1) ON CONFLICT (id) DO NOTHING', []);
    if (put > 0) this.wrote = true;
    return put > 0;
  }
}
