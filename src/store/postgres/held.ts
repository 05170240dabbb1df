/**
 * The writes that run as one statement of their own, over a batch of asks (see lanes.ts):
 * renewals and releases by the holder, and allocate's common case. Each row answers one ask
 * (by its index) and carries the time the statement ran at and, alone, its reading of the
 * server's clock. The statements themselves are in statements.ts.
 */
import type { PoolClient } from 'pg';
import type { IdentifierRecord } from '../../domain/types.js';
import { asRow, columns, instanceColumn, recordFrom } from '../columns.js';
import { NO_CLAIM } from '../types.js';
import type { GrantClaim, HeldProof } from '../types.js';
import type { ClockReading } from './clock.js';
import { POSTGRES_TYPES, first, rows, toRecord } from './rows.js';
import { GRANT_NEXT_SQL, HELD_SQL } from './statements.js';
import type { HeldKind } from './statements.js';

export type { HeldKind };

/** The reading in a row that carries one (see CLOCK_READING); null when it does not. */
export function readingOf(raw: unknown): ClockReading | null {
  const r = asRow(raw);
  if (r['clock_raw'] === undefined || r['clock_raw'] === null) return null;
  const c = columns(r, POSTGRES_TYPES);
  return { raw: c.int('clock_raw'), offset: c.int('clock_offset'), gen: c.int('clock_gen') };
}

/** The time a one-statement write runs at: `now` when injected (tests), else the server's, held within [lo, hi]. */
export interface StatementTime {
  readonly now: number | null;
  readonly lo: number;
  readonly hi: number;
}

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
  const c = columns(raw, POSTGRES_TYPES);
  return { index: c.int('idx') - 1, rec: recordFrom(c), now: c.int('now'), reading: readingOf(raw) };
}

/** HELD_ASKS' six arrays ($1-$6): names, clients, epochs, fence windows, key hashes, watermarks. */
function askArrays(asks: readonly HeldAsk[]): unknown[] {
  return [
    asks.map((a) => a.name), asks.map((a) => a.clientId), asks.map((a) => a.epoch), asks.map((a) => a.fenceCooldownMs),
    asks.map((a) => a.proof.keyHash), asks.map((a) => a.proof.watermark),
  ];
}

/** Renews or releases a batch of leases in one statement outside any transaction, at `time` ($7-$9). */
export async function heldAlone(client: PoolClient, kind: HeldKind, asks: readonly HeldAsk[], time: StatementTime): Promise<HeldRow[]> {
  return (await rows(client, `${kind}_held_alone`, HELD_SQL[kind].alone, [...askArrays(asks), time.now, time.lo, time.hi])).map(heldRowOf);
}

/** One renewal or release inside a use case's transaction, at `now` ($7). */
export async function heldInTx(client: PoolClient, kind: HeldKind, ask: HeldAsk, now: number): Promise<IdentifierRecord | null> {
  const r = await first(client, `${kind}_held`, HELD_SQL[kind].inTx, [...askArrays([ask]), now]);
  return r === undefined ? null : toRecord(r);
}

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
