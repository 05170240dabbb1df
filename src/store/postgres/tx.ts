/**
 * The registry's reads and writes in PostgreSQL's idiom. A `PgTx` runs inside one transaction
 * on one pooled connection (see lanes.ts); rows it returns for a decision are locked
 * (FOR UPDATE), the allocator and the reaper skip rows another instance holds (SKIP LOCKED),
 * and only one instance sweeps at a time (a transaction-scoped advisory lock). Statements are
 * named, so each connection parses and plans each one once; the longer ones are in
 * statements.ts.
 */
import type { PoolClient } from 'pg';
import { recordOf } from '../../domain/lease.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, RecordTuple } from '../../domain/types.js';
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, asRow, columns, historyRowsFrom, instanceColumn, recordTuples } from '../columns.js';
import { POOL_ORDER, POSTGRES, cooling } from '../sql.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { FreeEntry, GrantClaim, HeldProof, HistoryRows, InstanceBeat, ListQuery, PoolRow, RawCounts, Reader, Tx } from '../types.js';
import type { HostMark } from './clock.js';
import { heldInTx } from './held.js';
import { POSTGRES_TYPES, TUPLE_COLUMNS, arrays, changes, count, first, rows, scalar, toBeat, toHistoryEntry, toPoolRow, toRecord } from './rows.js';
import { CLAIM_FOR_SQL, LOCK_NAMESPACE, LOCK_SWEEP, RECLAIM_EXPIRED_SQL, STATUS_WHERE } from './statements.js';

/** An instance that has not beaten for this long (crashed long ago) is dropped from the table. */
const INSTANCE_FORGOTTEN_MS = 24 * 3600_000;

/** Rows a bulk insert sends per statement. */
const INSERT_CHUNK = 5000;

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
    return historyRowsFrom(rs, limit, POSTGRES_TYPES);
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
    const text = `SELECT ${TUPLE_COLUMNS} FROM identifiers WHERE ${where} ORDER BY ${POOL_ORDER} LIMIT $1`;
    return recordTuples(await arrays(this.client, `list_${status}${q.after ? '_after' : ''}`, text, values));
  }

  async counts(now: number): Promise<RawCounts> {
    const c = columns(await first(this.client, 'counts',
      `SELECT count(*) AS total,
              count(client_id) AS leased,
              count(*) FILTER (WHERE ${cooling(POSTGRES, '$1')}) AS cooling,
              count(*) FILTER (WHERE client_id IS NULL AND ${POSTGRES.retired}) AS retired
       FROM identifiers`, [now]), POSTGRES_TYPES);
    return { total: c.int('total'), leased: c.int('leased'), cooling: c.int('cooling'), retired: c.int('retired') };
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
  /** Whether this use case has written (or taken a lock past its rows): see batches.ts, group commit. */
  wrote = false;

  constructor(client: PoolClient, now: number, private readonly host: HostClock | null = null) {
    super(client, now, 'FOR UPDATE');
  }

  async claimFor(clientId: string, now: number): Promise<{ rec: IdentifierRecord; held: boolean } | null> {
    // One round trip (see CLAIM_FOR_SQL): the client's own row, else its sticky one, else the next allocatable one.
    const r = await first(this.client, 'claim_for', CLAIM_FOR_SQL, [clientId, now]);
    return r === undefined ? null : { rec: toRecord(r), held: columns(r, POSTGRES_TYPES).bool('held') };
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
    // One statement (see RECLAIM_EXPIRED_SQL).
    const rs = await rows(this.client, 'reclaim_expired', RECLAIM_EXPIRED_SQL, [cutoff, limit, now, cooldownMs]);
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
