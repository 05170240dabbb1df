/**
 * Why the database at DB_PATH cannot be opened, as one line an operator can act on.
 * SQLite and mkdir say only "unable to open database file", "attempt to write a readonly
 * database" or "EEXIST … mkdir", with no path and no user: the facts about the path are
 * gathered once (inspectDbPath, the only part that touches the file system) and the
 * explanation is a pure function of them and the error.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { errorMessage } from '../domain/errors.js';

export interface DbPathFacts {
  /** DB_PATH as configured. */
  readonly dbPath: string;
  /** It resolved against the working directory. */
  readonly absolute: string;
  /** Who the registry runs as: "nobody (uid 65534)". */
  readonly user: string;
  readonly file: 'missing' | 'file' | 'directory';
  readonly fileWritable: boolean;
  /** An existing path above the file that is not a folder, so the file's folder cannot exist. */
  readonly blocker: string | null;
  /** The deepest existing folder on the way to the file (its own folder when that exists). */
  readonly nearestDir: string;
  readonly nearestDirWritable: boolean;
}

function kindOf(path: string): 'missing' | 'file' | 'directory' {
  try {
    return statSync(path).isDirectory() ? 'directory' : 'file';
  } catch {
    return 'missing';
  }
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function whoAmI(): string {
  const uid = process.getuid?.() ?? -1;
  try {
    return `${userInfo().username} (uid ${uid})`;
  } catch {
    return `uid ${uid}`; // a uid with no name (DynamicUser= names it; a bare container may not)
  }
}

/** Looks at DB_PATH and its folders as the registry's user sees them. */
export function inspectDbPath(dbPath: string): DbPathFacts {
  const absolute = resolve(dbPath);
  let blocker: string | null = null;
  let nearestDir = '/';
  for (let p = dirname(absolute); ; p = dirname(p)) {
    const kind = kindOf(p);
    if (kind === 'directory') {
      nearestDir = p;
      break;
    }
    if (kind === 'file') blocker = p; // the highest one wins: it is the one in the way
    if (p === dirname(p)) break;
  }
  const file = kindOf(absolute);
  return {
    dbPath, absolute, user: whoAmI(), file,
    fileWritable: file === 'file' && writable(absolute),
    blocker, nearestDir, nearestDirWritable: writable(nearestDir),
  };
}

/** The error's own code, or its cause's (the registry wraps SQLite's errors). */
function codeOf(e: unknown): string {
  for (let x: unknown = e, depth = 0; x instanceof Error && depth < 5; x = x.cause, depth++) {
    if ('code' in x && typeof x.code === 'string' && /^(SQLITE_|E[A-Z]+$)/.test(x.code)) return x.code;
  }
  return '';
}

function messageOf(e: unknown): string {
  const cause = e instanceof Error && e.cause instanceof Error ? ` (${e.cause.message})` : '';
  return (errorMessage(e) + cause).replace(/\s+/g, ' ').trim();
}

/** One line naming DB_PATH, the path and, for a permission problem, the user. */
export function explainDbOpenError(e: unknown, f: DbPathFacts): string {
  const where = `DB_PATH=${f.dbPath}`;
  const dir = dirname(f.absolute);
  const code = codeOf(e);
  if (f.blocker === dir) {
    return `${where}: ${dir} is a file, not a folder, so the database cannot be created in it; point DB_PATH elsewhere or move that file`;
  }
  if (f.blocker !== null) {
    return `${where}: ${f.blocker} is a file, not a folder, so the database's folder ${dir} cannot be created; point DB_PATH elsewhere or move that file`;
  }
  if (f.file === 'directory') {
    return `${where}: ${f.absolute} is a folder; DB_PATH names the database file itself (e.g. ${join(f.absolute, 'registry.db')})`;
  }
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
    return `${where}: ${f.absolute} is not a usable SQLite database (${messageOf(e)}); restore it from a backup or point DB_PATH at another file`;
  }
  const permission = code === 'EACCES' || code === 'EPERM' || code.startsWith('SQLITE_CANTOPEN') || code.startsWith('SQLITE_READONLY') ||
    code.startsWith('SQLITE_PERM') || code.startsWith('SQLITE_AUTH');
  if (permission) {
    if (f.file === 'missing' && !f.nearestDirWritable) {
      const create = f.nearestDir === dir ? `create ${basename(f.absolute)} in ${dir}` : `create the folder ${dir} under ${f.nearestDir}`;
      return `${where}: user ${f.user} may not ${create} (permission denied); make ${f.nearestDir} writable for that user or point DB_PATH elsewhere`;
    }
    if (f.file === 'file' && !f.fileWritable) {
      return `${where}: ${f.absolute} is read-only for user ${f.user}; the registry writes to it (make it writable for that user)`;
    }
    if (f.file === 'file' && !f.nearestDirWritable) {
      return `${where}: user ${f.user} may write ${f.absolute} but not its folder ${dir}, where SQLite creates ${basename(f.absolute)}-wal and ${basename(f.absolute)}-shm; make the folder writable for that user`;
    }
  }
  return `${where}: cannot open the database ${f.absolute} as user ${f.user}: ${messageOf(e)}`;
}
