/**
 * idreg's commands that work on the store itself rather than through a registry: `pool sync`,
 * `export` and `import` on the engine DB_PATH or DATABASE_URL names (src/store/engine.ts; --db
 * names a SQLite file even with DATABASE_URL set), and `backup` of a database file. Each is safe
 * with a registry running on the store: SQLite's locks, or PostgreSQL's transactions, order them
 * with the registry's writes.
 */
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { loadConfig } from '../config.js';
import type { CliConfig } from '../config.js';
import { errorMessage, isRegistryError } from '../domain/errors.js';
import { parsePoolFile, readPoolText } from '../pool/load.js';
import { Registry } from '../registry.js';
import { DumpError, dumpLines, parseDump } from '../store/dump.js';
import type { Dump, Translation } from '../store/dump.js';
import { engineFor } from '../store/engine.js';
import type { Engine } from '../store/engine.js';
import { inspectDbPath } from '../store/explain.js';
import { backupDatabase } from '../store/sqlite/backup.js';
import type { Store } from '../store/types.js';
import { CliError, failure, parse, usageError } from './args.js';
import { checkOutput, discard, place } from './output.js';

interface FileOptions { db: string; engine: Engine; pool: string; force: boolean; create: boolean; rest: string[] }

function fileOptions(cmd: string, cfg: CliConfig, args: string[]): FileOptions {
  const { values, positionals } = parse(cmd, {
    args, allowPositionals: true,
    options: {
      db: { type: 'string' }, pool: { type: 'string' },
      force: { type: 'boolean', default: false }, create: { type: 'boolean', default: false },
    },
  });
  const db = values.db ?? cfg.dbPath;
  const engine = engineFor({ dbPath: db, databaseUrl: values.db === undefined ? cfg.databaseUrl : null });
  return { db, engine, pool: values.pool ?? cfg.poolFile, force: values.force, create: values.create, rest: positionals };
}

/**
 * A typo in --db, or a run from another folder with the default ./data/registry.db, must
 * not quietly start a new, empty registry: a database that does not exist is an error
 * unless `create`.
 */
function mustExist(db: string, create: boolean): void {
  // A path that cannot hold a database at all (a file where a folder should be) is explained by openStore.
  if (create || existsSync(db) || inspectDbPath(db).blocker !== null) return;
  throw failure(`database ${resolve(db)} does not exist (check --db or DB_PATH; --create makes a new one)`, 3);
}

async function openStore(engine: Engine): Promise<Store> {
  try {
    return (await engine.open({ role: 'tool' })).store;
  } catch (e) {
    throw failure(engine.explain(e).replace(/^DB_PATH=/, 'DB_PATH or --db '), 3);
  }
}

/** The one FILE a command names; none, or more than one, is a usage error saying what it is for. */
function oneFile(cmd: string, rest: readonly string[], what: string): string {
  const file = rest[0];
  if (!file) throw usageError(`${cmd}: missing FILE (${what})`);
  if (rest.length > 1) throw usageError(`${cmd}: one FILE only`);
  return file;
}

function summary(d: Dump): string {
  const held = d.identifiers.filter((i) => i.clientId !== null).length;
  return `${d.identifiers.length} identifiers (${held} held), ${d.history.length} history entries, ${d.meta.length} settings`;
}

export async function exportState(cfg: CliConfig, args: string[]): Promise<string> {
  const { engine, force, rest } = fileOptions('export', cfg, args);
  const dest = oneFile('export', rest, 'where to write the state');
  checkOutput('export', dest, force, engine.file);
  let dump: Dump;
  try {
    dump = await engine.exportDump();
  } catch (e) {
    throw failure(`${engine.setting}: ${errorMessage(e)}`, 3);
  }
  // Written beside, then put in place: a failed export never leaves a truncated file under the name.
  const partial = `${dest}.partial`;
  try {
    const lines = function* (): Generator<string> {
      for (const line of dumpLines(dump)) yield `${line}\n`;
    };
    await pipeline(Readable.from(lines()), createWriteStream(partial, { mode: 0o600 }));
    place('export', partial, dest, force);
  } catch (e) {
    discard(partial);
    if (e instanceof CliError) throw e;
    throw failure(`export: cannot write ${dest}: ${errorMessage(e)}`, 3);
  }
  return `exported ${summary(dump)} from ${dump.engine} to ${dest}`;
}

export async function importState(cfg: CliConfig, args: string[]): Promise<string> {
  const { engine, rest } = fileOptions('import', cfg, args);
  const src = oneFile('import', rest, 'an export to load');
  let dump: Dump;
  try {
    dump = parseDump(readFileSync(src, 'utf8').split('\n'));
  } catch (e) {
    throw failure(`${src}: ${errorMessage(e)}; nothing imported`, 1);
  }
  let moved: Translation;
  try {
    moved = await engine.importDump(dump);
  } catch (e) {
    if (e instanceof DumpError) throw failure(`${e.message}; nothing imported`, 1);
    throw failure(`${errorMessage(e)}; nothing imported`, 3);
  }
  const shift = `${moved.shiftMs >= 0 ? '+' : ''}${moved.shiftMs} ms`;
  const base = dump.legacyExportTime ? ' (a version 1 dump: measured from the latest time written in it)' : '';
  return `imported ${summary(dump)} into ${engine.title}; ` +
    `times moved ${shift} onto the target's clock, each lease and cool-down keeping what it had left${base}`;
}

export async function poolSync(cfg: CliConfig, args: string[]): Promise<string> {
  const { engine, pool, force, create } = fileOptions('pool sync', cfg, args);
  let names: string[];
  let fingerprint: string;
  try {
    const file = readPoolText(pool);
    fingerprint = file.fingerprint;
    names = parsePoolFile(pool, file);
  } catch (e) {
    throw failure(`${errorMessage(e)}; the database is unchanged`, 1);
  }
  if (engine.file !== null) mustExist(engine.file, create);
  const store = await openStore(engine);
  try {
    const c = loadConfig({});
    const registry = new Registry({
      store,
      rules: {
        ttlMs: c.leaseTtlMs, cooldownMs: 0, graceMs: 0, maxFraction: 1, minHold: 0, reapBatchSize: 1, guardedRatePerMinute: 0,
      },
    });
    const r = await registry.syncPool(names, fingerprint, { force }).catch((e: unknown) => {
      if (isRegistryError(e) && e.code === 'pool_sync_refused') throw failure(e.message, 1);
      throw e;
    });
    return `pool synced: ${r.total} identifiers in the file; ${r.added} added, ${r.retired} retired, ${r.restored} restored`;
  } finally {
    await store.close();
  }
}

export async function backup(cfg: CliConfig, args: string[]): Promise<string> {
  const { db, force, rest } = fileOptions('backup', cfg, args);
  const dest = oneFile('backup', rest, 'where to write the copy');
  if (!existsSync(db)) throw failure(`database ${resolve(db)} does not exist (check --db or DB_PATH)`, 3);
  checkOutput('backup', dest, force, db);
  // Copied beside, checked, then put in place: a failed backup never replaces a good one.
  const partial = `${dest}.partial`;
  discard(partial);
  try {
    const pages = await backupDatabase(db, partial);
    place('backup', partial, dest, force);
    return `backed up ${db} to ${dest} (${pages} pages, integrity ok)`;
  } catch (e) {
    discard(partial);
    if (e instanceof CliError) throw e;
    throw failure(`backup: ${errorMessage(e)}`, 3);
  }
}
