/** SQLite's column types for the shared row mapping (../columns.ts): integers may come as bigints, booleans as 0/1. */
import { rowReaders } from '../columns.js';

export const { toRecord, toHistoryEntry, toHistoryRows, int: intColumn, scalar } = rowReaders({
  int: (v) => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined),
  bool: (v) => (v === 1 ? true : v === 0 ? false : undefined),
});
