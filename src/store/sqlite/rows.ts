/** Row <-> domain mapping. Rows arrive as `unknown`; every column is checked, never cast. */
import { HISTORY_EVENTS } from '../../domain/types.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord } from '../../domain/types.js';

type Row = Readonly<Record<string, unknown>>;

function isRow(r: unknown): r is Row {
  return typeof r === 'object' && r !== null;
}

function asRow(r: unknown): Row {
  if (!isRow(r)) throw new Error('expected a row');
  return r;
}

function int(r: Row, k: string): number {
  const v = r[k];
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  throw new Error(`column ${k}: expected an integer, got ${typeof v}`);
}

function intOrNull(r: Row, k: string): number | null {
  return r[k] === null ? null : int(r, k);
}

function text(r: Row, k: string): string {
  const v = r[k];
  if (typeof v !== 'string') throw new Error(`column ${k}: expected text, got ${typeof v}`);
  return v;
}

function textOrNull(r: Row, k: string): string | null {
  return r[k] === null ? null : text(r, k);
}

export const RECORD_COLUMNS = 'id, name, pool_order, retired, epoch, client_id, allocated_at, last_seen, available_at';

export function toRecord(raw: unknown): IdentifierRecord {
  const r = asRow(raw);
  const clientId = textOrNull(r, 'client_id');
  const allocatedAt = intOrNull(r, 'allocated_at');
  const lastSeen = intOrNull(r, 'last_seen');
  return {
    rowId: int(r, 'id'),
    name: text(r, 'name'),
    poolOrder: int(r, 'pool_order'),
    epoch: int(r, 'epoch'),
    retired: int(r, 'retired') === 1,
    holder: clientId !== null && allocatedAt !== null && lastSeen !== null ? { clientId, allocatedAt, lastSeen } : null,
    availableAt: int(r, 'available_at'),
  };
}

function toEvent(v: string): HistoryEvent {
  const e = HISTORY_EVENTS.find((x) => x === v);
  if (!e) throw new Error(`history: unknown event ${v}`);
  return e;
}

export function toHistoryEntry(raw: unknown): HistoryEntry {
  const r = asRow(raw);
  return { at: int(r, 'at'), event: toEvent(text(r, 'event')), clientId: textOrNull(r, 'client_id'), epoch: int(r, 'epoch') };
}

/** A single integer from `SELECT count(*) AS n` and the like; null stays null. */
export function scalar(raw: unknown, k = 'n'): number | null {
  if (raw === undefined) return null;
  return intOrNull(asRow(raw), k);
}

export { int as intColumn, asRow };
