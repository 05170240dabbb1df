/** The SQLite Engine (see ../engine.ts): a database file, opened, exported and imported in this process. */
import { systemTimeSource } from '../../clock.js';
import type { Engine } from '../engine.js';
import { explainDbOpenError, inspectDbPath } from '../explain.js';
import { exportSqliteFile, importSqliteFile } from './dump.js';
import { SqliteStore } from './store.js';

export function sqliteEngine(path: string): Engine {
  return {
    file: path,
    setting: path,
    title: path,
    location: path,
    explain: (e) => explainDbOpenError(e, inspectDbPath(path)),
    async open(how) {
      const busy = how.role === 'registry' ? { busyTimeoutMs: how.busyTimeoutMs } : {};
      const store = new SqliteStore({ path, ...busy, source: systemTimeSource });
      return { store, rebooted: store.rebooted, upkeep: (warn) => store.checkpointInBackground(warn) };
    },
    exportDump: async () => exportSqliteFile(path, systemTimeSource),
    importDump: (d) => importSqliteFile(path, d, systemTimeSource),
  };
}
