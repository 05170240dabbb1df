/**
 * Opening a database file and bringing its schema up to date. `PRAGMA user_version` counts the
 * migrations applied (schema.ts); they run in one IMMEDIATE transaction, so processes that
 * start together take turns: the first migrates, the others find it done. A file migrated by a
 * newer registry is refused untouched, as PostgreSQL's is (../postgres/migrate.ts).
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './schema.js';

export interface OpenOptions {
  /** File path, or `:memory:` for a throwaway database. */
  readonly path: string;
  /** How long opening and migrating may wait for another process's lock (default 5 s). */
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
}

export class SchemaTooNewError extends Error {
  override readonly name = 'SchemaTooNewError';
}

export function openDatabase(opts: OpenOptions): Database.Database {
  if (opts.path !== ':memory:' && !opts.readonly) mkdirSync(dirname(opts.path), { recursive: true });
  // Opening and migrating may wait for the lock (start-up, one-shot tools); serving never does.
  const db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 5000, readonly: opts.readonly ?? false });
  try {
    if (opts.readonly) {
      schemaVersion(db); // read, not migrated (idreg export): but never a schema this build does not know
    } else {
      db.pragma('journal_mode = WAL');
      db.pragma('foreign_keys = ON');
      // Commits never fsync on the event loop: a batch with an ownership change fsyncs the WAL
      // on libuv's thread pool and answers after (see durability.ts). NORMAL + that fsync is FULL.
      db.pragma('synchronous = NORMAL');
      migrate(db);
    }
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

/** The migrations a file has had; refused when a newer registry migrated it further than this one knows. */
function schemaVersion(db: Database.Database): number {
  const version = Number(db.pragma('user_version', { simple: true }));
  if (version > MIGRATIONS.length) {
    throw new SchemaTooNewError(
      `the database schema is at version ${version}, newer than this registry knows (${MIGRATIONS.length}); upgrade the registry`,
    );
  }
  return version;
}

/** Applies the missing migrations; returns the schema version now in force. */
export function migrate(db: Database.Database): number {
  const run = db.transaction(() => {
    const version = schemaVersion(db);
    for (let v = version; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v] ?? '');
      db.pragma(`user_version = ${v + 1}`);
    }
  });
  run.immediate();
  return MIGRATIONS.length;
}
