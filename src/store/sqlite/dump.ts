/**
 * Export and import of the whole state (see ../dump.ts for the format) on SQLite, on an open
 * better-sqlite3 handle whose schema is migrated. The export reads one read transaction; the
 * import is one write transaction into a database with no identifiers and no history.
 */
import type Database from 'better-sqlite3';
import type { TimeSource } from '../../clock.js';
import { instanceColumn } from '../columns.js';
import { isPortableMeta, notEmptyError, toDumpHistory, toDumpIdentifier, toDumpMeta, translateDump } from '../dump.js';
import { DUMP_IDENTIFIER_COLUMNS, DUMP_SELECT } from '../sql.js';
import type { Dump, Translation } from '../dump.js';
import { openDatabase } from './migrate.js';
import { SqliteStore } from './store.js';
import { registryTimeOf } from './time.js';

function count(db: Database.Database, table: 'identifiers' | 'history'): number {
  const r: unknown = db.prepare(`SELECT count(*) AS n FROM ${table}`).get();
  if (typeof r === 'object' && r !== null && 'n' in r && typeof r.n === 'number') return r.n;
  throw new Error(`count of ${table}: unexpected row`);
}

/** The whole state, read in one transaction. `exportedAt` is the registry time of the export. */
export function dumpSqlite(db: Database.Database, exportedAt: number): Dump {
  // A file not yet migrated (idreg export opens it read-only) has no fence windows, key hashes,
  // watermarks or last holders to export: those columns read as NULL.
  const present = new Set(db.prepare('SELECT name FROM pragma_table_info(?)').all('identifiers')
    .map((c) => (typeof c === 'object' && c !== null && 'name' in c ? c.name : null)));
  const select = DUMP_IDENTIFIER_COLUMNS.split(', ').map((c) => (present.has(c) ? c : `NULL AS ${c}`)).join(', ');
  const read = db.transaction((): Dump => ({
    engine: 'sqlite',
    exportedAt,
    identifiers: db.prepare(DUMP_SELECT.identifiers(select)).all().map((r) => toDumpIdentifier(r)),
    history: db.prepare(DUMP_SELECT.history).all().map((r) => toDumpHistory(r)),
    meta: db.prepare(DUMP_SELECT.meta).all().map((r) => toDumpMeta(r)).filter(isPortableMeta),
  }));
  return read.deferred();
}

/**
 * `idreg export` on a database file: read-only, safe with a registry running on it. The dump's
 * times are measured against the file's registry time now (its clock anchor, see time.ts
 * registryTimeOf), not this host's wall clock, which may be far from it.
 */
export function exportSqliteFile(path: string, source: TimeSource): Dump {
  const db = openDatabase({ path, readonly: true });
  try {
    // Read before the export's snapshot: a time written meanwhile is later, so what it starts
    // comes out longer, never shorter.
    return dumpSqlite(db, registryTimeOf(db, source));
  } finally {
    db.close();
  }
}

/**
 * `idreg import` into a database file, created and migrated if need be: its registry clock is
 * anchored as a registry starting on it would be (and kept for the registry that starts there
 * on this boot), and the dump's times are moved onto it (see ../dump.ts, translateDump).
 */
export async function importSqliteFile(path: string, d: Dump, source: TimeSource): Promise<Translation> {
  // Refused before the store is opened: opening one may record a clock anchor, and a refused
  // import changes nothing.
  const db = openDatabase({ path });
  try {
    const held = count(db, 'identifiers');
    const logged = count(db, 'history');
    if (held > 0 || logged > 0) throw notEmptyError(held, logged);
  } finally {
    db.close();
  }
  const store = new SqliteStore({ path, source, listingWorker: false });
  try {
    const moved = translateDump(d, store.clock.now());
    loadSqlite(store.db, moved.dump);
    return moved;
  } finally {
    await store.close();
  }
}

/**
 * Loads `d` as it is, times included, in one transaction; refused (DumpError) when the database
 * already holds state. An import translates the times first (importSqliteFile).
 */
export function loadSqlite(db: Database.Database, d: Dump): void {
  const insertIdentifier = db.prepare(
    `INSERT INTO identifiers (${DUMP_IDENTIFIER_COLUMNS})
     VALUES (@name, @poolOrder, @retired, @epoch, @clientId, @allocatedAt, @lastSeen, @availableAt, @fenceCooldownMs,
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
