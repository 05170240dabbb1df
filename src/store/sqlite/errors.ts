/** Turns SQLite's failures into registry errors that never carry SQL or a stack to a client. */
import Database from 'better-sqlite3';
import { RegistryError, isRegistryError } from '../../domain/errors.js';

/** SQLite result codes that mean "the database cannot serve this right now", not "a bug". */
const UNAVAILABLE: ReadonlyArray<[prefix: string, message: string]> = [
  ['SQLITE_BUSY', 'the database is locked by another writer; try again'],
  ['SQLITE_LOCKED', 'the database is locked; try again'],
  ['SQLITE_READONLY', 'the database is read-only'],
  ['SQLITE_IOERR', 'the database could not be read or written'],
  ['SQLITE_CANTOPEN', 'the database file cannot be opened'],
  ['SQLITE_FULL', 'the disk holding the database is full'],
  ['SQLITE_CORRUPT', 'the database file is damaged'],
  ['SQLITE_NOTADB', 'the database file is not a database'],
  ['SQLITE_PROTOCOL', 'the database lock protocol failed; try again'],
];

export function toRegistryError(e: unknown): RegistryError {
  if (isRegistryError(e)) return e;
  if (e instanceof Database.SqliteError) {
    for (const [prefix, message] of UNAVAILABLE) {
      if (e.code.startsWith(prefix)) return new RegistryError('unavailable', message, { cause: e });
    }
  }
  if (e instanceof TypeError && /database connection is not open/.test(e.message)) {
    return new RegistryError('unavailable', 'the database is closed', { cause: e });
  }
  return new RegistryError('internal', 'internal error', { cause: e });
}
