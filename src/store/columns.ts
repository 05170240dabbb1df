/**
 * Row -> domain mapping shared by the engines. Rows arrive as `unknown`; every column is
 * checked, never cast. An engine says only how its driver hands over integers and booleans
 * (SQLite: numbers or bigints and 0/1; PostgreSQL: numbers, BIGINT parsed exactly, booleans).
 */
import { HISTORY_EVENTS } from '../domain/types.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord } from '../domain/types.js';

export const RECORD_COLUMNS = 'id, name, pool_order, retired, epoch, client_id, allocated_at, last_seen, available_at';

type Row = Readonly<Record<string, unknown>>;

/** How an engine's driver represents integers and booleans; undefined for a value of another type. */
export interface ColumnTypes {
  int(v: unknown): number | undefined;
  bool(v: unknown): boolean | undefined;
}

/** Checked access to one row's columns. */
export interface Columns {
  int(k: string): number;
  intOrNull(k: string): number | null;
  text(k: string): string;
  textOrNull(k: string): string | null;
  bool(k: string): boolean;
}

function isRow(r: unknown): r is Row {
  return typeof r === 'object' && r !== null;
}

export function asRow(r: unknown): Row {
  if (!isRow(r)) throw new Error('expected a row');
  return r;
}

export function columns(raw: unknown, types: ColumnTypes): Columns {
  const r = asRow(raw);
  const int = (k: string): number => {
    const n = types.int(r[k]);
    if (n === undefined) throw new Error(`column ${k}: expected an integer, got ${typeof r[k]}`);
    return n;
  };
  const text = (k: string): string => {
    const v = r[k];
    if (typeof v !== 'string') throw new Error(`column ${k}: expected text, got ${typeof v}`);
    return v;
  };
  return {
    int,
    intOrNull: (k) => (r[k] === null ? null : int(k)),
    text,
    textOrNull: (k) => (r[k] === null ? null : text(k)),
    bool(k) {
      const b = types.bool(r[k]);
      if (b === undefined) throw new Error(`column ${k}: expected a boolean, got ${typeof r[k]}`);
      return b;
    },
  };
}

export function recordFrom(c: Columns): IdentifierRecord {
  const clientId = c.textOrNull('client_id');
  const allocatedAt = c.intOrNull('allocated_at');
  const lastSeen = c.intOrNull('last_seen');
  return {
    rowId: c.int('id'),
    name: c.text('name'),
    poolOrder: c.int('pool_order'),
    epoch: c.int('epoch'),
    retired: c.bool('retired'),
    holder: clientId !== null && allocatedAt !== null && lastSeen !== null ? { clientId, allocatedAt, lastSeen } : null,
    availableAt: c.int('available_at'),
  };
}

function historyEvent(v: string): HistoryEvent {
  const e = HISTORY_EVENTS.find((x) => x === v);
  if (!e) throw new Error(`history: unknown event ${v}`);
  return e;
}

export function historyEntryFrom(c: Columns): HistoryEntry {
  return { at: c.int('at'), event: historyEvent(c.text('event')), clientId: c.textOrNull('client_id'), epoch: c.int('epoch') };
}
