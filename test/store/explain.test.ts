/** The one-line explanation of a database that cannot be opened: what an operator reads in the journal. */
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { explainDbOpenError, inspectDbPath } from '../../src/store/explain.js';
import type { DbPathFacts } from '../../src/store/explain.js';
import { SchemaTooNewError } from '../../src/store/sqlite/migrate.js';
import { tempDir } from '../support/helpers.js';

const facts = (over: Partial<DbPathFacts> = {}): DbPathFacts => ({
  dbPath: './data/registry.db', absolute: '/srv/app/data/registry.db', user: 'idreg (uid 990)',
  file: 'missing', fileWritable: false, blocker: null, nearestDir: '/srv/app/data', nearestDirWritable: true, ...over,
});

function sqliteError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe('explainDbOpenError', () => {
  it('a file where a folder of DB_PATH should be (mkdir EEXIST / ENOTDIR) is named', () => {
    const e = Object.assign(new Error("EEXIST: file already exists, mkdir '/srv/app/data'"), { code: 'EEXIST' });
    expect(explainDbOpenError(e, facts({ blocker: '/srv/app/data', nearestDir: '/srv/app' })))
      .to.equal('DB_PATH=./data/registry.db: /srv/app/data is a file, not a folder, so the database cannot be created in it; point DB_PATH elsewhere or move that file');
    const deeper = Object.assign(new Error("ENOTDIR: not a directory, mkdir '/srv/app/data'"), { code: 'ENOTDIR' });
    expect(explainDbOpenError(deeper, facts({ blocker: '/srv/app', nearestDir: '/srv' })))
      .to.match(/^DB_PATH=\.\/data\/registry\.db: \/srv\/app is a file, not a folder, so the database's folder \/srv\/app\/data cannot be created/);
  });

  it('a folder given as DB_PATH says DB_PATH names the file', () => {
    const msg = explainDbOpenError(sqliteError('SQLITE_CANTOPEN', 'unable to open database file'), facts({ file: 'directory' }));
    expect(msg).to.equal('DB_PATH=./data/registry.db: /srv/app/data/registry.db is a folder; DB_PATH names the database file itself (e.g. /srv/app/data/registry.db/registry.db)');
  });

  it('"unable to open database file" in a folder the user may not write names the user and the folder', () => {
    const msg = explainDbOpenError(sqliteError('SQLITE_CANTOPEN', 'unable to open database file'), facts({ nearestDirWritable: false }));
    expect(msg).to.equal('DB_PATH=./data/registry.db: user idreg (uid 990) may not create registry.db in /srv/app/data (permission denied); make /srv/app/data writable for that user or point DB_PATH elsewhere');
  });

  it('a folder that cannot be created (mkdir EACCES) names the nearest existing folder and the user', () => {
    const e = Object.assign(new Error("EACCES: permission denied, mkdir '/srv/app/data'"), { code: 'EACCES' });
    expect(explainDbOpenError(e, facts({ nearestDir: '/srv/app', nearestDirWritable: false })))
      .to.match(/^DB_PATH=\.\/data\/registry\.db: user idreg \(uid 990\) may not create the folder \/srv\/app\/data under \/srv\/app \(permission denied\)/);
  });

  it('"the database is read-only" (wrapped by the registry) names the file and the user', () => {
    const wrapped = new Error('the database is read-only', { cause: sqliteError('SQLITE_READONLY', 'attempt to write a readonly database') });
    expect(explainDbOpenError(wrapped, facts({ file: 'file', fileWritable: false })))
      .to.equal('DB_PATH=./data/registry.db: /srv/app/data/registry.db is read-only for user idreg (uid 990); the registry writes to it (make it writable for that user)');
  });

  it('a writable file in a read-only folder says SQLite needs the folder for -wal and -shm', () => {
    const msg = explainDbOpenError(sqliteError('SQLITE_READONLY', 'attempt to write a readonly database'),
      facts({ file: 'file', fileWritable: true, nearestDirWritable: false }));
    expect(msg).to.match(/user idreg \(uid 990\) may write \/srv\/app\/data\/registry\.db but not its folder \/srv\/app\/data, where SQLite creates registry\.db-wal and registry\.db-shm/);
  });

  it('a file that is not a database says so; anything else keeps SQLite\'s words, with path and user', () => {
    expect(explainDbOpenError(sqliteError('SQLITE_NOTADB', 'file is not a database'), facts({ file: 'file', fileWritable: true })))
      .to.match(/^DB_PATH=\.\/data\/registry\.db: \/srv\/app\/data\/registry\.db is not a usable SQLite database \(file is not a database\)/);
    expect(explainDbOpenError(sqliteError('SQLITE_IOERR', 'disk I/O error'), facts({ file: 'file', fileWritable: true })))
      .to.equal('DB_PATH=./data/registry.db: cannot open the database /srv/app/data/registry.db as user idreg (uid 990): disk I/O error');
  });

  it('a database a newer registry migrated names both schema versions (the registry exits as for any file it cannot open)', () => {
    const e = new SchemaTooNewError('the database schema is at version 9, newer than this registry knows (8); upgrade the registry');
    expect(explainDbOpenError(e, facts({ file: 'file', fileWritable: true })))
      .to.equal('DB_PATH=./data/registry.db: cannot open the database /srv/app/data/registry.db as user idreg (uid 990): the database schema is at version 9, newer than this registry knows (8); upgrade the registry');
  });

  it('every explanation is one line', () => {
    const all = [
      explainDbOpenError(new Error('a\nb'), facts()),
      explainDbOpenError(sqliteError('SQLITE_CANTOPEN', 'x'), facts({ nearestDirWritable: false })),
    ];
    for (const m of all) expect(m.split('\n')).to.have.length(1, m);
  });
});

describe('inspectDbPath', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('finds the file in the way, the nearest folder, and what the path is', () => {
    writeFileSync(join(t.dir, 'plain'), '');
    mkdirSync(join(t.dir, 'folder'));
    const blocked = inspectDbPath(join(t.dir, 'plain', 'sub', 'registry.db'));
    expect(blocked).to.include({ blocker: join(t.dir, 'plain'), nearestDir: t.dir, file: 'missing' });
    expect(inspectDbPath(join(t.dir, 'folder'))).to.include({ file: 'directory', blocker: null, nearestDir: t.dir });
    expect(inspectDbPath(join(t.dir, 'new', 'deeper', 'registry.db'))).to.include({ file: 'missing', blocker: null, nearestDir: t.dir });
    expect(inspectDbPath(join(t.dir, 'plain')).file).to.equal('file');
    expect(inspectDbPath(join(t.dir, 'plain')).user).to.match(/uid \d+/);
  });
});
