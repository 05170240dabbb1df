/**
 * The SQL texts of the PostgreSQL engine that are more than a line: the statements the rules
 * decide with (held leases, the one-statement grant, the claim, the reaper), the clock reading
 * every transaction and statement carries, and the listing filters. Built from ../sql.ts, so a
 * rule reads the same in both engines. Parameter numbers are part of each text: every caller
 * passes its values in the order written here.
 */
import type { Status } from '../../domain/types.js';
import { RECORD_COLUMNS } from '../columns.js';
import { ALLOCATION_ORDER, POSTGRES, REAP_ORDER, STICKY_ORDER, allocatable, statusWhere } from '../sql.js';

/** The advisory-lock namespace of this registry ("idrg"), and the locks in it. */
export const LOCK_NAMESPACE = 0x69647267;
export const LOCK_MIGRATE = 1;
export const LOCK_SWEEP = 2;
export const LOCK_IMPORT = 3;

/**
 * Each listing filter (`?status=`) at `@now`, which the listing replaces with its parameter's
 * number (see PgReader.listRows).
 */
export const STATUS_WHERE: Readonly<Record<Status | 'all', string>> = statusWhere(POSTGRES, '@now');

/** The server's clock in epoch milliseconds (clock_timestamp: not frozen at the transaction's start). */
export const SERVER_MS = 'floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint';

/**
 * One reading of the server's clock with the stored offset and its generation (see clock.ts):
 * registry time is `clock_raw + clock_offset`. The row always exists (the migration made it);
 * were it missing, the offset would read as 0 rather than the statement doing nothing.
 */
export const CLOCK_READING = `SELECT ${SERVER_MS} AS clock_raw, coalesce(k.offset_ms, 0) AS clock_offset, coalesce(k.gen, 0) AS clock_gen
  FROM (SELECT 1) AS one LEFT JOIN registry_clock k ON k.id = 1`;

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
export const HELD_SQL: Readonly<Record<HeldKind, { readonly inTx: string; readonly alone: string }>> = {
  renew: { inTx: renewHeldSql(IN_TX), alone: renewHeldSql(alone(false)) },
  release: { inTx: releaseHeldSql(IN_TX), alone: releaseHeldSql(alone(true)) },
};

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
 *    pending is not allocatable), the one free the longest first (available_at, pool_order, id),
 *    both as ../sql.ts writes them (allocatable, ALLOCATION_ORDER);
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
export const GRANT_NEXT_SQL = `${alone(true, 5, GRANT_LOCK_TIMEOUT).with}asks AS MATERIALIZED (
      SELECT a.client_id, a.fence, a.key_hash, a.instance, a.idx, row_number() OVER (ORDER BY a.idx) AS k
      FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY AS a(client_id, fence, key_hash, instance, idx)
      WHERE NOT EXISTS (SELECT FROM identifiers h WHERE h.client_id = a.client_id)
        -- A client whose sticky identifier is allocatable is left to the full use case, which grants it that one.
        AND NOT EXISTS (
          SELECT FROM (
            SELECT client_id, retired, available_at FROM identifiers
            WHERE last_client_id = a.client_id ORDER BY ${STICKY_ORDER} LIMIT 1
          ) sticky
          WHERE ${allocatable(POSTGRES, '(SELECT now FROM t)')}
        )
    ), picked AS MATERIALIZED (
      SELECT f.id, row_number() OVER (ORDER BY ${ALLOCATION_ORDER}) AS k FROM (
        SELECT id, available_at, pool_order FROM identifiers
        WHERE ${allocatable(POSTGRES, '(SELECT now FROM t)')}
        ORDER BY ${ALLOCATION_ORDER}
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
 * Allocate's claim in a use case's transaction, in one round trip: the client's own row
 * (locked), else its sticky row if allocatable, else the next allocatable one. SKIP LOCKED: a row
 * another transaction is granting is not waited for; the next one is taken. $1 the client, $2 now.
 */
export const CLAIM_FOR_SQL = `WITH held AS (
         SELECT ${RECORD_COLUMNS}, true AS held FROM identifiers WHERE client_id = $1 FOR UPDATE
       ), last AS (
         SELECT id FROM identifiers WHERE last_client_id = $1 AND NOT EXISTS (SELECT FROM held)
         ORDER BY ${STICKY_ORDER} LIMIT 1
       ), sticky AS (
         SELECT ${RECORD_COLUMNS}, false AS held FROM identifiers
         WHERE id = (SELECT id FROM last) AND ${allocatable(POSTGRES, '$2')}
         FOR UPDATE SKIP LOCKED
       ), next AS (
         SELECT ${RECORD_COLUMNS}, false AS held FROM identifiers
         WHERE ${allocatable(POSTGRES, '$2')} AND NOT EXISTS (SELECT FROM held) AND NOT EXISTS (SELECT FROM sticky)
         ORDER BY ${ALLOCATION_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED
       )
       SELECT * FROM held UNION ALL SELECT * FROM sticky UNION ALL SELECT * FROM next`;

/**
 * The reaper's statement: lock the oldest expired leases no other sweep holds, append their
 * history, free them, each cooling for the longer of the setting and the window its holder was
 * told (domain leaseCooldownMs). A lease renewed since this statement's snapshot is re-checked
 * on its newest version by the row lock (READ COMMITTED), so it is not taken; one freed by
 * another sweep no longer matches. Set-based whatever the batch size. $1 the cutoff, $2 the
 * limit, $3 now, $4 the cool-down setting.
 */
export const RECLAIM_EXPIRED_SQL = `WITH picked AS (
         SELECT ${RECORD_COLUMNS} FROM identifiers
         WHERE client_id IS NOT NULL AND last_seen <= $1
         ORDER BY ${REAP_ORDER} LIMIT $2 FOR UPDATE SKIP LOCKED
       ), logged AS (
         INSERT INTO history (identifier_id, at, event, client_id, epoch)
         SELECT id, $3, 'reclaimed', client_id, epoch FROM picked ORDER BY ${REAP_ORDER}
       ), freed AS (
         UPDATE identifiers i SET client_id = NULL, allocated_at = NULL, last_seen = NULL, fence_cooldown_ms = NULL,
           available_at = $3::bigint + greatest(picked.fence_cooldown_ms, $4::bigint), key_hash = NULL, instance = NULL
         FROM picked WHERE i.id = picked.id
       )
       SELECT * FROM picked ORDER BY ${REAP_ORDER}`;

/** What opens a use case's transaction: one round trip, with the server's clock when `readClock`. */
export function beginSql(durable: boolean, readClock: boolean): string {
  // Ownership changes wait for the commit to be flushed (and replicated to a synchronous
  // standby); a renewal only needs to be visible to every instance, as docs/safety.md
  // ("What an answer means") allows.
  const parts = ['BEGIN', `SET LOCAL synchronous_commit = ${durable ? 'on' : 'off'}`];
  // The server's clock in the transaction (clock_timestamp: not frozen at its start), with the offset.
  if (readClock) parts.push(CLOCK_READING);
  return parts.join('; ');
}
