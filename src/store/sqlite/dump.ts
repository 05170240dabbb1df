/**
 * Export and import of the whole state (see ../dump.ts for the format) on SQLite, on an open
 * better-sqlite3 handle whose schema is migrated. The export reads one read transaction; the
 * import is one write transaction into a database with no identifiers and no history.
 */
import type Database from 'better-sqlite3';
import { instanceColumn } from '../columns.js';
import { DUMP_IDENTIFIER_COLUMNS, isPortableMeta, notEmptyError, toDumpHistory, toDumpIdentifier, toDumpMeta } from '../dump.js';
import type { Dump } from '../dump.js';
import { openDatabase } from './store.js';

function count(db: Database.Database, table: 'identifiers' | 'history'): number {
  const r: unknown = db.prepare(`SELECT count(*) AS n FROM ${table}`).get();
  if (typeof r === 'object' && r !== null && 'n' in r && typeof r.n === 'number') return r.n;
  throw new Error(`count of ${table}: unexpected row`);
}

/** The whole state, read in one transaction. `exportedAt` is the registry time of the export. */
export function dumpSqlite(db: Database.Database, exportedAt: number): Dump {
  const read = db.transaction((): Dump => ({
    engine: 'sqlite',
    exportedAt,
    identifiers: db.prepare(
      `SELECT ${DUMP_IDENTIFIER_COLUMNS} FROM identifiers ORDER BY pool_order, id`,
    ).all().map((r) => toDumpIdentifier(r)),
    history: db.prepare(
      `SELECT i.name AS identifier, h.at, h.event, h.client_id, h.epoch
       FROM history h JOIN identifiers i ON i.id = h.identifier_id ORDER BY h.id`,
    ).all().map((r) => toDumpHistory(r)),
    meta: db.prepare('SELECT key, value FROM meta ORDER BY key').all().map((r) => toDumpMeta(r)).filter(isPortableMeta),
  }));
  return read.deferred();
}

/** `idreg export` on a database file: read-only, safe with a registry running on it. */
export function exportSqliteFile(path: string, exportedAt: number): Dump {
  const db = openDatabase({ path, readonly: true });
  try {
    return dumpSqlite(db, exportedAt);
  } finally {
    db.close();
  }
}

/** `idreg import` into a database file, created and migrated if need be. */
export function importSqliteFile(path: string, d: Dump): void {
  const db = openDatabase({ path });
  try {
    loadSqlite(db, d);
  } finally {
    db.close();
  }
}

/** Loads `d` in one transaction; refused (DumpError) when the database already holds state. */
export function loadSqlite(db: Database.Database, d: Dump): void {
  const insertIdentifier = db.prepare(
    `INSERT INTO identifiers (${DUMP_IDENTIFIER_COLUMNS})
     VALUES (@name, @poolOrder, @retired, @epoch, @clientId, @allocatedAt, @lastSeen, @availableAt,
             @keyHash, @instance, @watermark, @lastClientId, @lastGrantedAt)`,
  );
  const insertHistory = db.prepare(
    `INSERT INTO history (identifier_id, at, event, client_id, epoch)
     SELECT id, @at, @event, @clientId, @epoch FROM identifiers WHERE name = @identifier`,
  );
  const upsertMeta = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value');
  const load = db.transaction(() => {
    const held = count(db, 'identifiers');
    const logged = count(db, 'history');
    if (held > 0 || logged > 0) throw notEmptyError(held, logged);
    for (const i of d.identifiers) {
      insertIdentifier.run({
        ...i, retired: i.retired ? 1 : 0, keyHash: i.keyHash ?? null, instance: instanceColumn(i.instance), watermark: i.watermark ?? null,
        lastClientId: i.lastClientId ?? null, lastGrantedAt: i.lastGrantedAt ?? null,
      });
    }
    for (const h of d.history) {
      if (insertHistory.run(h).changes !== 1) throw new Error(`history of unknown identifier ${h.identifier}`);
    }
    for (const m of d.meta.filter(isPortableMeta)) upsertMeta.run(m.key, m.value);
    // The kept pool counts follow grants, frees and retirements, not inserts: recount once.
    db.exec(`UPDATE pool_counts SET total = (SELECT count(*) FROM identifiers),
      leased = (SELECT count(*) FROM identifiers WHERE client_id IS NOT NULL),
      retired = (SELECT count(*) FROM identifiers WHERE client_id IS NULL AND retired = 1)`);
  });
  load.immediate();
}
