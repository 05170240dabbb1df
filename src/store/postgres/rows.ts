/**
 * Row <-> domain mapping for PostgreSQL. Rows arrive as `unknown`; every column is checked,
 * never cast. BIGINT columns arrive as numbers through `parseBigint` (installed as the pool's BIGINT parser in store.ts), which
 * refuses any value past Number.MAX_SAFE_INTEGER instead of rounding it.
 */
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, ROW_COLUMNS, columns, historyEntryFrom, historyRowsFrom, recordFrom, recordTuples } from '../columns.js';
import type { ColumnTypes } from '../columns.js';
import type { HistoryEntry, IdentifierRecord } from '../../domain/types.js';
import type { HistoryRows, InstanceBeat, PoolRow } from '../types.js';

type Row = Readonly<Record<string, unknown>>;

/** BIGINT text from the wire to a number, exactly or not at all. */
export function parseBigint(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || !/^-?\d+$/.test(text)) throw new Error(`bigint ${text} does not fit a JavaScript number`);
  return n;
}

function isRow(r: unknown): r is Row {
  return typeof r === 'object' && r !== null;
}

export function asRow(r: unknown): Row {
  if (!isRow(r)) throw new Error('expected a row');
  return r;
}

export function int(r: Row, k: string): number {
  const v = r[k];
  if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
  throw new Error(`column ${k}: expected an integer, got ${typeof v}`);
}

export function intOrNull(r: Row, k: string): number | null {
  return r[k] === null ? null : int(r, k);
}

export function text(r: Row, k: string): string {
  const v = r[k];
  if (typeof v !== 'string') throw new Error(`column ${k}: expected text, got ${typeof v}`);
  return v;
}

export function textOrNull(r: Row, k: string): string | null {
  return r[k] === null ? null : text(r, k);
}

export function bool(r: Row, k: string): boolean {
  const v = r[k];
  if (typeof v !== 'boolean') throw new Error(`column ${k}: expected a boolean, got ${typeof v}`);
  return v;
}

const POSTGRES: ColumnTypes = {
  int: (v) => (typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined),
  bool: (v) => (typeof v === 'boolean' ? v : undefined),
};

export function toRecord(raw: unknown): IdentifierRecord {
  return recordFrom(columns(raw, POSTGRES));
}

export function toHistoryEntry(raw: unknown): HistoryEntry {
  return historyEntryFrom(columns(raw, POSTGRES));
}

/** A history page from up to `limit` + 1 rows of HISTORY_PAGE_COLUMNS. */
export function toHistoryRows(raw: readonly unknown[], limit: number): HistoryRows {
  return historyRowsFrom(raw, limit, POSTGRES);
}

export function toPoolRow(raw: unknown): PoolRow {
  const r = asRow(raw);
  return {
    rowId: int(r, 'id'),
    name: text(r, 'name'),
    poolOrder: int(r, 'pool_order'),
    retired: bool(r, 'retired'),
    clientId: textOrNull(r, 'client_id'),
    epoch: int(r, 'epoch'),
  };
}

export function toBeat(raw: unknown): InstanceBeat {
  const r = asRow(raw);
  return { id: text(r, 'id'), startedAt: int(r, 'started_at'), at: int(r, 'at'), fleetSeenAt: intOrNull(r, 'fleet_seen_at') };
}

/** The single value of `SELECT … AS n`; null stays null, no row is null. */
export function scalar(raw: unknown, k = 'n'): number | null {
  if (raw === undefined) return null;
  return intOrNull(asRow(raw), k);
}

/** ROW_COLUMNS for a RecordTuple: `retired` as 0/1, as SQLite stores it. */
export const TUPLE_COLUMNS = ROW_COLUMNS.replace('retired', 'retired::int AS retired');

export { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, recordTuples };
