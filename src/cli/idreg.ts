#!/usr/bin/env node
/**
 * idreg: the operator command. It talks HTTP to a registry (IDREG_URL, IDREG_TOKEN), except
 * `pool sync` and `backup`, which work on the database file (DB_PATH) and are safe with the
 * registry running or stopped: SQLite's locks order them with the registry's writes; and
 * `export` / `import`, which move the whole state between stores. `pool sync`, `export` and
 * `import` work on the PostgreSQL database instead when DATABASE_URL is set (and no --db).
 */
import { createWriteStream, existsSync, linkSync, readFileSync, realpathSync, renameSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { systemTimeSource } from '../clock.js';
import { ConfigError, checkRegistryUrl, loadCliConfig, loadConfig, processEnv } from '../config.js';
import type { CliConfig } from '../config.js';
import { isRegistryError } from '../domain/errors.js';
import { parsePoolFile, readPoolText } from '../pool/load.js';
import { Registry } from '../registry.js';
import { DumpError, dumpLines, parseDump } from '../store/dump.js';
import type { Dump, Translation } from '../store/dump.js';
import { openPostgresStore } from '../store/postgres/store.js';
import { backupDatabase } from '../store/sqlite/backup.js';
import { exportSqliteFile, importSqliteFile } from '../store/sqlite/dump.js';
import { explainDbOpenError, inspectDbPath } from '../store/explain.js';
import { SqliteStore } from '../store/sqlite/store.js';
import type { Store } from '../store/types.js';
import { packageVersion } from '../version.js';
import { ago, table } from './format.js';

const STATUSES = ['leased', 'free', 'cooling', 'retired'] as const;
const MAX_LIMIT = 10_000;
/** Entries `history` asks for a page: a history of any length comes in bounded answers. */
const HISTORY_PAGE = 1000;

const USAGE = `usage: idreg [--url URL] [--token TOKEN] COMMAND
       idreg --help | --version

  list [--status leased|free|cooling|retired] [--limit N]   who holds what
  show IDENTIFIER|CLIENT_ID                                   one identifier, or one client's lease
  history IDENTIFIER                                          ownership changes, oldest first
  release IDENTIFIER                                          force release (admin; cools down)
  reap [--force]                                              sweep now (--force: past grace and guard)
  pool sync [--db PATH] [--pool FILE] [--force] [--create]   bring the database in line with the pool file
                                                              (--force: even if it retires more than half of the pool;
                                                               --create: make the database if it does not exist)
  backup FILE [--db PATH] [--force]                           online backup of the database file, into one file
  export FILE [--db PATH] [--force]                           the whole state (leases, epochs, cool-downs, history) to FILE
                                                              (both refuse to replace an existing FILE unless --force)
  import FILE [--db PATH]                                     load an export into an empty store (refused otherwise),
                                                              its times moved onto this store's clock (each lease and
                                                              cool-down keeps what it had left)

environment: IDREG_URL (default http://127.0.0.1:8080; http:// or https:// and a host),
IDREG_TOKEN (an admin token, when the registry has ADMIN_TOKENS), DB_PATH, POOL_FILE,
DATABASE_URL (pool sync, export and import work on PostgreSQL when it is set and --db is not)

exit status:
  0  done
  1  refused: by the registry (an HTTP 4xx: no such identifier or client, a wrong or missing
     token), or a pool file or dump that cannot be used (pool sync, import; nothing changed)
  2  usage: an unknown command or option, a missing or extra argument, a malformed IDREG_URL,
     --url or DATABASE_URL, an output FILE that exists (backup, export; nothing written)
  3  the registry cannot be reached or answered 5xx, or the database cannot be opened or read`;

/** Printed under every usage error, instead of the whole usage. */
const USAGE_HINT = 'see idreg --help';

class CliError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/** Every message idreg prints about a failure starts with this. */
const PREFIX = 'idreg: ';

/** A failure (not a usage error): one line saying what, and why. */
const failure = (what: string, status: number): CliError => new CliError(`${PREFIX}${what}`, status);

/** A usage error: what is wrong, in one line, then where the usage is (exit 2). */
const usageError = (what: string): CliError => new CliError(`${PREFIX}${what}\n${USAGE_HINT}`, 2);

/**
 * parseArgs's own errors are long and capitalised ("Unknown option '--colour'. To specify a
 * positional argument …"): the first sentence, as a usage error of the command.
 */
function parseArgsError(cmd: string, e: unknown): CliError | null {
  if (!(e instanceof Error) || !('code' in e) || !String(e.code).startsWith('ERR_PARSE_ARGS')) return null;
  const missing = /^Option '(-[^ ']+)[^']*' argument missing/.exec(e.message);
  if (missing) return usageError(`${cmd}: ${missing[1] ?? ''} needs a value`);
  const first = e.message.split(/\.(?:\s|$)/)[0] ?? e.message;
  return usageError(`${cmd}: ${first.charAt(0).toLowerCase()}${first.slice(1).replace(/'/g, '')}`);
}

/** parseArgs, strict, with its errors as one-line usage errors naming the command. */
function parse<T extends ParseArgsConfig>(cmd: string, config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    throw parseArgsError(cmd, e) ?? e;
  }
}

type Json = unknown;

interface Reply {
  status: number;
  body: Json;
  date: number;
  /** The next page's path, from a `Link: <…>; rel="next"` header; null without one. */
  next: string | null;
}

function field(o: Json, k: string): Json {
  return typeof o === 'object' && o !== null && !Array.isArray(o) ? Object.fromEntries(Object.entries(o))[k] : undefined;
}

const text = (v: Json): string => (v === null || v === undefined ? '-' : String(v));

async function call(cfg: CliConfig, method: string, path: string): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (cfg.token) headers['authorization'] = `Bearer ${cfg.token}`;
  let res: Response;
  try {
    res = await fetch(cfg.url.replace(/\/$/, '') + path, { method, headers });
  } catch (e) {
    throw failure(`cannot reach the registry at ${cfg.url}: ${e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e)}`, 3);
  }
  const raw = await res.text();
  let body: Json = raw;
  try { body = JSON.parse(raw); } catch { /* not JSON */ }
  // The registry's own clock says what "now" is, so "12s ago" does not depend on this machine's.
  const date = Date.parse(res.headers.get('date') ?? '');
  return { status: res.status, body, date: Number.isNaN(date) ? systemTimeSource.wall() : date, next: nextPath(res.headers.get('link')) };
}

/** The path of a `Link: <…>; rel="next"` header; only a path on the registry asked (never another host). */
function nextPath(link: string | null): string | null {
  const target = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link ?? '')?.[1];
  return target !== undefined && target.startsWith('/') && !target.startsWith('//') ? target : null;
}

/** What to do about a refusal that the operator's own setup causes. */
function hint(status: number, cfg: CliConfig): string {
  if (status === 401 && cfg.token === null) return '\nthe registry needs a token: set IDREG_TOKEN (or --token) to one of its ADMIN_TOKENS';
  if (status === 401) return '\nthe registry refused the token: set IDREG_TOKEN (or --token) to one of its ADMIN_TOKENS';
  if (status === 403) return '\nthis token may not do that (an agent token?): set IDREG_TOKEN (or --token) to one of the registry\'s ADMIN_TOKENS';
  return '';
}

function ok(r: Reply, cfg: CliConfig): Reply {
  if (r.status >= 200 && r.status < 300) return r;
  const err = field(r.body, 'error');
  throw failure(`${text(field(err, 'code'))}: ${text(field(err, 'message'))} (HTTP ${r.status})${hint(r.status, cfg)}`, r.status >= 500 ? 3 : 1);
}

function identifierRows(list: Json, now: number): string[][] {
  const items = Array.isArray(list) ? list : [];
  return items.map((x: Json) => [
    text(field(x, 'identifier')), text(field(x, 'client_id')), text(field(x, 'epoch')),
    ago(typeof field(x, 'last_seen') === 'string' ? String(field(x, 'last_seen')) : null, now), text(field(x, 'status')),
    text(field(field(x, 'instance'), 'availability_zone')),
  ]);
}

function describe(view: Json, now: number): string {
  const keys = ['identifier', 'status', 'client_id', 'epoch', 'allocated_at', 'last_seen', 'expires_at', 'watermark'];
  const lines = keys.filter((k) => field(view, k) !== undefined).map((k) => {
    const v = field(view, k);
    const extra = k === 'last_seen' && typeof v === 'string' ? ` (${ago(v, now)})` : '';
    return `${k}: ${text(v)}${extra}`;
  });
  const instance = field(view, 'instance');
  if (instance) {
    lines.push(`instance: ${['account_id', 'region', 'availability_zone', 'instance_type', 'image_id'].map((k) => text(field(instance, k))).join(' ')}`);
  }
  return lines.join('\n');
}

async function list(cfg: CliConfig, args: string[]): Promise<string> {
  const { values } = parse('list', { args, options: { status: { type: 'string' }, limit: { type: 'string' } } });
  const q = new URLSearchParams();
  const status = values.status;
  if (status !== undefined) {
    if (!STATUSES.some((x) => x === status)) throw usageError(`list: --status must be one of ${STATUSES.join(', ')} (not "${status}")`);
    q.set('status', status);
  }
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!/^\d+$/.test(values.limit) || n < 1 || n > MAX_LIMIT) throw usageError(`list: --limit must be a whole number from 1 to ${MAX_LIMIT} (not "${values.limit}")`);
    q.set('limit', values.limit);
  }
  const r = ok(await call(cfg, 'GET', `/identifiers${q.size ? `?${q}` : ''}`), cfg);
  return table(['IDENTIFIER', 'OWNER', 'EPOCH', 'LAST SEEN', 'STATUS', 'AZ'], identifierRows(r.body, r.date));
}

async function show(cfg: CliConfig, name: string): Promise<string> {
  const byId = await call(cfg, 'GET', `/identifier/${encodeURIComponent(name)}`);
  if (byId.status === 200) return describe(byId.body, byId.date);
  if (byId.status !== 404 && byId.status !== 400) ok(byId, cfg);
  const byClient = await call(cfg, 'GET', `/client/${encodeURIComponent(name)}`);
  if (byClient.status === 404 || byClient.status === 400) throw failure(`no identifier or client named ${name}`, 1);
  return describe(ok(byClient, cfg).body, byClient.date);
}

/** The whole history, page by page (each page's Link header says where the next starts). */
async function history(cfg: CliConfig, name: string): Promise<string> {
  const rows: string[][] = [];
  let path: string | null = `/identifier/${encodeURIComponent(name)}/history?limit=${HISTORY_PAGE}`;
  const seen = new Set<string>();
  while (path !== null) {
    // A registry that sent the same page twice would otherwise be followed for ever.
    if (seen.has(path)) throw new CliError(`error: the registry sent the page ${path} twice; the history shown would be incomplete`, 3);
    seen.add(path);
    const r = ok(await call(cfg, 'GET', path), cfg);
    for (const h of Array.isArray(r.body) ? r.body : []) {
      rows.push([text(field(h, 'at')), text(field(h, 'event')), text(field(h, 'client_id')), text(field(h, 'epoch'))]);
    }
    path = r.next;
  }
  return table(['AT', 'EVENT', 'CLIENT', 'EPOCH'], rows);
}

async function release(cfg: CliConfig, name: string): Promise<string> {
  const r = ok(await call(cfg, 'DELETE', `/identifier/${encodeURIComponent(name)}`), cfg);
  return `${name}: ${text(field(r.body, 'status'))} (epoch ${text(field(r.body, 'epoch'))})`;
}

async function reap(cfg: CliConfig, args: string[]): Promise<string> {
  const { values } = parse('reap', { args, options: { force: { type: 'boolean', default: false } } });
  const r = ok(await call(cfg, 'POST', `/admin/reap${values.force ? '?force=true' : ''}`), cfg);
  const reason = field(r.body, 'reason');
  return `reclaimed ${text(field(r.body, 'reclaimed'))}${field(r.body, 'held') === true ? ' (held by the mass-expiry guard)' : ''}` +
    (typeof reason === 'string' ? `\n${reason}` : '');
}

interface FileOptions { db: string; pool: string; force: boolean; create: boolean; rest: string[] }

function fileOptions(cmd: string, cfg: CliConfig, args: string[]): FileOptions {
  const { values, positionals } = parse(cmd, {
    args, allowPositionals: true,
    options: {
      db: { type: 'string' }, pool: { type: 'string' },
      force: { type: 'boolean', default: false }, create: { type: 'boolean', default: false },
    },
  });
  return { db: values.db ?? cfg.dbPath, pool: values.pool ?? cfg.poolFile, force: values.force, create: values.create, rest: positionals };
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

/** The store a one-shot command works on: PostgreSQL when DATABASE_URL is set and --db is not. */
function usePostgres(cfg: CliConfig, args: string[]): string | null {
  const { values } = parseArgs({
    args, allowPositionals: true,
    options: { db: { type: 'string' }, pool: { type: 'string' }, force: { type: 'boolean' }, create: { type: 'boolean' } },
  });
  return values.db === undefined ? cfg.databaseUrl : null;
}

async function openStore(cfg: CliConfig, args: string[], db: string): Promise<Store> {
  const url = usePostgres(cfg, args);
  if (url === null) {
    try {
      return new SqliteStore({ path: db, source: systemTimeSource });
    } catch (e) {
      throw failure(explainDbOpenError(e, inspectDbPath(db)).replace(/^DB_PATH=/, 'DB_PATH or --db '), 3);
    }
  }
  try {
    return await openPostgresStore({ url, poolSize: 2, applicationName: 'idreg', clockRole: 'tool' });
  } catch (e) {
    throw failure(`DATABASE_URL: ${e instanceof Error ? e.message : String(e)}`, 3);
  }
}

function summary(d: Dump): string {
  const held = d.identifiers.filter((i) => i.clientId !== null).length;
  return `${d.identifiers.length} identifiers (${held} held), ${d.history.length} history entries, ${d.meta.length} settings`;
}

const errnoOf = (e: unknown): string => (e instanceof Error && 'code' in e ? String(e.code) : '');

const exists = (cmd: string, dest: string): CliError =>
  usageError(`${cmd}: ${dest} already exists; nothing written (--force replaces it)`);

/**
 * The checks on an output FILE, before any work, so a refusal writes nothing: not a folder,
 * not the database being read, and not an existing file unless --force.
 */
function checkOutput(cmd: string, dest: string, force: boolean, db: string | null): void {
  if (!existsSync(dest)) return;
  const real = realpathSync(dest);
  if (db !== null && existsSync(db) && real === realpathSync(db)) throw usageError(`${cmd}: ${dest} is the database itself; write elsewhere`);
  if (statSync(real).isDirectory()) throw usageError(`${cmd}: ${dest} is a folder; FILE names the file to write`);
  if (!force) throw exists(cmd, dest);
}

/**
 * Puts a finished `partial` file in place at `dest`, replacing `dest` only with --force.
 * Without, a hard link, which fails if `dest` appeared since the check: nothing is ever
 * replaced by accident, even by a race. (On a file system without hard links, the check
 * before the work stands alone.)
 */
function place(cmd: string, partial: string, dest: string, force: boolean): void {
  if (force) {
    renameSync(partial, dest);
    return;
  }
  try {
    linkSync(partial, dest);
  } catch (e) {
    if (errnoOf(e) === 'EEXIST') {
      rmSync(partial, { force: true });
      throw exists(cmd, dest);
    }
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes(errnoOf(e))) throw e;
    if (existsSync(dest)) {
      rmSync(partial, { force: true });
      throw exists(cmd, dest);
    }
    renameSync(partial, dest);
    return;
  }
  unlinkSync(partial);
}

/** Removes what a failed write left beside its FILE: the partial file, and SQLite's side files of one. */
function discard(partial: string): void {
  for (const f of [partial, `${partial}-journal`, `${partial}-wal`, `${partial}-shm`]) rmSync(f, { force: true });
}

async function exportState(cfg: CliConfig, args: string[]): Promise<string> {
  const { db, force, rest } = fileOptions('export', cfg, args);
  const dest = rest[0];
  if (!dest) throw usageError('export: missing FILE (where to write the state)');
  if (rest.length > 1) throw usageError('export: one FILE only');
  const url = usePostgres(cfg, args);
  checkOutput('export', dest, force, url === null ? db : null);
  let dump: Dump;
  try {
    if (url === null) {
      dump = exportSqliteFile(db, systemTimeSource);
    } else {
      const store = await openPostgresStore({ url, poolSize: 2, applicationName: 'idreg', clockRole: 'tool' });
      try {
        dump = await store.dump();
      } finally {
        await store.close();
      }
    }
  } catch (e) {
    throw failure(`${url === null ? db : 'DATABASE_URL'}: ${e instanceof Error ? e.message : String(e)}`, 3);
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
    throw failure(`export: cannot write ${dest}: ${e instanceof Error ? e.message : String(e)}`, 3);
  }
  return `exported ${summary(dump)} from ${dump.engine} to ${dest}`;
}

async function importState(cfg: CliConfig, args: string[]): Promise<string> {
  const { db, rest } = fileOptions('import', cfg, args);
  const src = rest[0];
  if (!src) throw usageError('import: missing FILE (an export to load)');
  if (rest.length > 1) throw usageError('import: one FILE only');
  let dump: Dump;
  try {
    dump = parseDump(readFileSync(src, 'utf8').split('\n'));
  } catch (e) {
    throw failure(`${src}: ${e instanceof Error ? e.message : String(e)}; nothing imported`, 1);
  }
  const url = usePostgres(cfg, args);
  let moved: Translation;
  try {
    if (url === null) {
      moved = await importSqliteFile(db, dump, systemTimeSource);
    } else {
      const store = await openPostgresStore({ url, poolSize: 2, applicationName: 'idreg', clockRole: 'tool' });
      try {
        moved = await store.load(dump);
      } finally {
        await store.close();
      }
    }
  } catch (e) {
    if (e instanceof DumpError) throw failure(`${e.message}; nothing imported`, 1);
    throw failure(`${e instanceof Error ? e.message : String(e)}; nothing imported`, 3);
  }
  const shift = `${moved.shiftMs >= 0 ? '+' : ''}${moved.shiftMs} ms`;
  const base = dump.legacyExportTime ? ' (a version 1 dump: measured from the latest time written in it)' : '';
  return `imported ${summary(dump)} into ${url === null ? db : 'PostgreSQL (DATABASE_URL)'}; ` +
    `times moved ${shift} onto the target's clock, each lease and cool-down keeping what it had left${base}`;
}

async function poolSync(cfg: CliConfig, args: string[]): Promise<string> {
  const { db, pool, force, create } = fileOptions('pool sync', cfg, args);
  let names: string[];
  let fingerprint: string;
  try {
    const file = readPoolText(pool);
    fingerprint = file.fingerprint;
    names = parsePoolFile(pool, file);
  } catch (e) {
    throw failure(`${e instanceof Error ? e.message : String(e)}; the database is unchanged`, 1);
  }
  if (usePostgres(cfg, args) === null) mustExist(db, create);
  const store = await openStore(cfg, args, db);
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

async function backup(cfg: CliConfig, args: string[]): Promise<string> {
  const { db, force, rest } = fileOptions('backup', cfg, args);
  const dest = rest[0];
  if (!dest) throw usageError('backup: missing FILE (where to write the copy)');
  if (rest.length > 1) throw usageError('backup: one FILE only');
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
    throw failure(`backup: ${e instanceof Error ? e.message : String(e)}`, 3);
  }
}

interface GlobalFlags { url?: string; token?: string; help: boolean; version: boolean; rest: string[] }

/** Global flags (--url, --token, --help, --version) may stand anywhere; everything else is the command. */
function splitGlobal(argv: readonly string[]): GlobalFlags {
  const out: GlobalFlags = { help: false, version: false, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const m = /^--(url|token)(?:=(.*))?$/.exec(a);
    if (m) {
      const v = m[2] ?? argv[++i];
      if (v === undefined) throw usageError(`--${m[1]} needs a value`);
      if (m[1] === 'url') out.url = v;
      else out.token = v;
    } else if (a === '-h' || a === '--help') {
      out.help = true;
    } else if (a === '-V' || a === '--version') {
      out.version = true;
    } else {
      out.rest.push(a);
    }
  }
  return out;
}

/** The commands that talk HTTP to the registry: they need a usable URL before anything is sent. */
const HTTP_COMMANDS = new Set(['list', 'show', 'history', 'release', 'reap']);

/** The settings from the environment and the global flags; a malformed one is a usage error naming it. */
function settings(g: GlobalFlags, env: Parameters<typeof loadCliConfig>[0], cmd: string | undefined): CliConfig {
  try {
    const base = loadCliConfig(env);
    const url = g.url ?? base.url;
    return {
      ...base,
      url: cmd !== undefined && HTTP_COMMANDS.has(cmd) ? checkRegistryUrl(url, g.url !== undefined ? '--url' : 'IDREG_URL') : url,
      token: g.token ?? base.token,
    };
  } catch (e) {
    if (e instanceof ConfigError) throw usageError(e.message);
    throw e;
  }
}

export async function run(argv: readonly string[], env = processEnv()): Promise<string> {
  const g = splitGlobal(argv);
  const [cmd, ...rest] = g.rest;
  if (g.help || cmd === 'help') throw new CliError(USAGE, 0);
  if (g.version) throw new CliError(`idreg ${packageVersion()}`, 0);
  const cfg = settings(g, env, cmd);
  const arg = (what: string): string => {
    const a = rest.find((x) => !x.startsWith('-'));
    if (!a) throw usageError(`${cmd ?? ''}: missing ${what}`);
    return a;
  };
  switch (cmd) {
    case 'list': return list(cfg, rest);
    case 'show': return show(cfg, arg('IDENTIFIER or CLIENT_ID'));
    case 'history': return history(cfg, arg('IDENTIFIER'));
    case 'release': return release(cfg, arg('IDENTIFIER (the one to force release)'));
    case 'reap': return reap(cfg, rest);
    case 'pool':
      if (rest[0] !== 'sync') throw usageError(rest[0] === undefined ? 'pool: missing sync' : `pool: unknown subcommand ${rest[0]} (pool sync)`);
      return poolSync(cfg, rest.slice(1));
    case 'backup': return backup(cfg, rest);
    case 'export': return exportState(cfg, rest);
    case 'import': return importState(cfg, rest);
    case undefined: throw usageError('missing COMMAND');
    default: throw usageError(`unknown command ${cmd}`);
  }
}

async function main(): Promise<void> {
  try {
    process.stdout.write(`${await run(process.argv.slice(2))}\n`);
  } catch (e) {
    if (e instanceof CliError) {
      (e.status === 0 ? process.stdout : process.stderr).write(`${e.message}\n`);
      process.exitCode = e.status;
      return;
    }
    const err = parseArgsError(process.argv[2] ?? 'idreg', e) ?? failure(e instanceof Error ? e.message : String(e), 3);
    process.stderr.write(`${err.message}\n`);
    process.exitCode = err.status;
  }
}

await main();
