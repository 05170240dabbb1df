/** Online backup of a registry database (SQLite's backup API), checked after it is written. */
import Database from 'better-sqlite3';

export class BackupError extends Error {
  override readonly name = 'BackupError';
}

/** Copies `source` to `dest` while writers may be running; returns the pages copied. */
export async function backupDatabase(source: string, dest: string): Promise<number> {
  const src = new Database(source, { readonly: true, fileMustExist: true });
  try {
    const { totalPages } = await src.backup(dest);
    const copy = new Database(dest, { readonly: true });
    try {
      const check: unknown = copy.pragma('integrity_check', { simple: true });
      if (check !== 'ok') throw new BackupError(`the backup at ${dest} failed its integrity check: ${String(check)}`);
    } finally {
      copy.close();
    }
    return totalPages;
  } finally {
    src.close();
  }
}
