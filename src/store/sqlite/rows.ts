/** SQLite's column types for the shared row mapping (../columns.ts): integers may come as bigints, booleans as 0/1. */
import { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, ROW_COLUMNS, asRow, columns, historyEntryFrom, historyRowsFrom, recordFrom, recordTuples } from '../columns.js';
import type { ColumnTypes } from '../columns.js';
import type { HistoryEntry, IdentifierRecord } from '../../domain/types.js';
import type { HistoryRows } from '../types.js';

const SQLITE: ColumnTypes = {
  int: (v) => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined),
  bool: (v) => (v === 1 ? true : v === 0 ? false : undefined),
};

export function toRecord(raw: unknown): IdentifierRecord {
  return recordFrom(columns(raw, SQLITE));
}

export function toHistoryEntry(raw: unknown): HistoryEntry {
  return historyEntryFrom(columns(raw, SQLITE));
}

/** A history page from up to `limit` + 1 rows of HISTORY_PAGE_COLUMNS. */
export function toHistoryRows(raw: readonly unknown[], limit: number): HistoryRows {
  return historyRowsFrom(raw, limit, SQLITE);
}

/** One integer column of a row. */
export function intColumn(row: unknown, k: string): number {
  return columns(row, SQLITE).int(k);
}

/** A single integer from `SELECT count(*) AS n` and the like; null stays null. */
export function scalar(raw: unknown, k = 'n'): number | null {
  if (raw === undefined) return null;
  return columns(raw, SQLITE).intOrNull(k);
}

export { HISTORY_PAGE_COLUMNS, RECORD_COLUMNS, ROW_COLUMNS, asRow, recordTuples };
