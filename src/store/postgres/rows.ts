/**
 * Rows of PostgreSQL, read and mapped through the shared mapping (../columns.ts): node-postgres
 * hands over integers as numbers (BIGINT through `parseBigint`, installed as the pool's BIGINT
 * parser in connection.ts, which refuses any value past Number.MAX_SAFE_INTEGER instead of
 * rounding it) and booleans as booleans. And the few ways a statement is sent: named, so each
 * connection parses and plans it once.
 */
import type { PoolClient } from 'pg';
import { ROW_COLUMNS, columns, historyEntryFrom, recordFrom } from '../columns.js';
import type { ColumnTypes } from '../columns.js';
import type { HistoryEntry, IdentifierRecord } from '../../domain/types.js';
import type { InstanceBeat, PoolRow } from '../types.js';

/** BIGINT text from the wire to a number, exactly or not at all. */
export function parseBigint(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || !/^-?\d+$/.test(text)) throw new Error(`bigint ${text} does not fit a JavaScript number`);
  return n;
}

/** How node-postgres (with parseBigint) hands over integers and booleans. */
export const POSTGRES_TYPES: ColumnTypes = {
  int: (v) => (typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined),
  bool: (v) => (typeof v === 'boolean' ? v : undefined),
};

export function toRecord(raw: unknown): IdentifierRecord {
  return recordFrom(columns(raw, POSTGRES_TYPES));
}

export function toHistoryEntry(raw: unknown): HistoryEntry {
  return historyEntryFrom(columns(raw, POSTGRES_TYPES));
}

export function toPoolRow(raw: unknown): PoolRow {
  const c = columns(raw, POSTGRES_TYPES);
  return { rowId: c.int('id'), name: c.text('name'), poolOrder: c.int('pool_order'), retired: c.bool('retired'), clientId: c.textOrNull('client_id'), epoch: c.int('epoch') };
}

export function toBeat(raw: unknown): InstanceBeat {
  const c = columns(raw, POSTGRES_TYPES);
  return { id: c.text('id'), startedAt: c.int('started_at'), at: c.int('at'), fleetSeenAt: c.intOrNull('fleet_seen_at') };
}

/** The single value of `SELECT … AS n`; null stays null, no row is null. */
export function scalar(raw: unknown, k = 'n'): number | null {
  if (raw === undefined) return null;
  return columns(raw, POSTGRES_TYPES).intOrNull(k);
}

/** ROW_COLUMNS for a RecordTuple: `retired` as 0/1, as SQLite stores it. */
export const TUPLE_COLUMNS = ROW_COLUMNS.replace('retired', 'retired::int AS retired');

export async function rows(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<unknown[]> {
  const res = await client.query({ name, text, values });
  const out: unknown[] = res.rows;
  return out;
}

/** Rows as arrays of their columns, in the order selected. */
export async function arrays(client: PoolClient, name: string, text: string, values: unknown[]): Promise<unknown[]> {
  const res = await client.query({ name, text, values, rowMode: 'array' });
  const out: unknown[] = res.rows;
  return out;
}

export async function first(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<unknown> {
  return (await rows(client, name, text, values))[0];
}

export async function count(client: PoolClient, name: string, text: string, values: unknown[] = []): Promise<number> {
  return scalar(await first(client, name, text, values)) ?? 0;
}

/** The rows a statement changed. */
export async function changes(client: PoolClient, name: string, text: string, values: unknown[]): Promise<number> {
  const res = await client.query({ name, text, values });
  return res.rowCount ?? 0;
}
