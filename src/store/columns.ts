/**
 * Row -> domain mapping shared by the engines. Rows arrive as `unknown`; every column is
 * checked, never cast. An engine says only how its driver hands over integers and booleans
 * (SQLite: numbers or bigints and 0/1; PostgreSQL: numbers, BIGINT parsed exactly, booleans).
 */
import { instanceJson, parseInstanceJson } from '../domain/instance.js';
import { HISTORY_EVENTS } from '../domain/types.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, InstanceInfo, RecordTuple } from '../domain/types.js';

/** The columns of a RecordTuple, in its order (a listing reads them as arrays). */
export const ROW_COLUMNS = 'id, name, pool_order, retired, epoch, client_id, allocated_at, last_seen, available_at, fence_cooldown_ms, watermark, instance';
/** The columns of a record: a tuple's, and the holder's key hash (never listed, never shown). */
export const RECORD_COLUMNS = `${ROW_COLUMNS}, key_hash`;

/** How an instance's facts are stored: their canonical JSON text (domain/instance.ts), or NULL. */
export function instanceColumn(i: InstanceInfo | null | undefined): string | null {
  return i ? instanceJson(i) : null;
}

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
  const instance = c.textOrNull('instance');
  return {
    rowId: c.int('id'),
    name: c.text('name'),
    poolOrder: c.int('pool_order'),
    epoch: c.int('epoch'),
    retired: c.bool('retired'),
    holder: clientId !== null && allocatedAt !== null && lastSeen !== null
      ? {
          clientId, allocatedAt, lastSeen, fenceCooldownMs: c.intOrNull('fence_cooldown_ms'),
          keyHash: c.textOrNull('key_hash'), instance: instance === null ? null : parseInstanceJson(instance),
        }
      : null,
    availableAt: c.int('available_at'),
    watermark: c.intOrNull('watermark'),
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

/** The SELECT list of a history page: the entry and its position. */
export const HISTORY_PAGE_COLUMNS = 'id, at, event, client_id, epoch';

/**
 * A history page from the rows read for it: `limit` entries and one more when another page
 * follows (that one tells only that it does). The position of the page's last entry is where
 * the next page starts.
 */
export function historyRowsFrom(raw: readonly unknown[], limit: number, types: ColumnTypes): { entries: HistoryEntry[]; next: number | null } {
  const page = raw.slice(0, limit).map((r) => columns(r, types));
  const last = page[page.length - 1];
  return { entries: page.map(historyEntryFrom), next: raw.length > limit && last ? last.int('id') : null };
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

/**
 * A row read as an array of RECORD_COLUMNS (retired as 0/1, integers as numbers) is a
 * RecordTuple: every column checked, the holder's three all null or all set. Checked in place,
 * not copied: a listing reads a million of them.
 */
export function isRecordTuple(r: unknown): r is RecordTuple {
  if (!Array.isArray(r) || r.length !== 12) return false;
  const c: unknown[] = r; // indexed, not destructured: this runs once a row
  const retired = c[3];
  const clientId = c[5];
  return isInt(c[0]) && typeof c[1] === 'string' && isInt(c[2]) && (retired === 0 || retired === 1) && isInt(c[4]) &&
    (clientId === null ? c[6] === null && c[7] === null : typeof clientId === 'string' && isInt(c[6]) && isInt(c[7])) &&
    isInt(c[8]) && (c[9] === null || isInt(c[9])) && (c[10] === null || isInt(c[10])) && (c[11] === null || typeof c[11] === 'string');
}

export function recordTuples(rows: unknown[]): RecordTuple[] {
  if (!rows.every(isRecordTuple)) throw new Error(`expected rows of ${ROW_COLUMNS}`);
  return rows;
}

/** What an engine reads rows with: the mappers above, bound to its driver's column types. */
export interface RowReaders {
  toRecord(raw: unknown): IdentifierRecord;
  toHistoryEntry(raw: unknown): HistoryEntry;
  /** A history page from up to `limit` + 1 rows of HISTORY_PAGE_COLUMNS. */
  toHistoryRows(raw: readonly unknown[], limit: number): { entries: HistoryEntry[]; next: number | null };
  /** One integer column of a row. */
  int(raw: unknown, k: string): number;
  /** The single value of `SELECT … AS n` and the like; null stays null, no row is null. */
  scalar(raw: unknown, k?: string): number | null;
}

export function rowReaders(types: ColumnTypes): RowReaders {
  return {
    toRecord: (raw) => recordFrom(columns(raw, types)),
    toHistoryEntry: (raw) => historyEntryFrom(columns(raw, types)),
    toHistoryRows: (raw, limit) => historyRowsFrom(raw, limit, types),
    int: (raw, k) => columns(raw, types).int(k),
    scalar: (raw, k = 'n') => (raw === undefined ? null : columns(raw, types).intOrNull(k)),
  };
}
