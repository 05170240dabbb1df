/**
 * The registry's whole state as a file, to move it between stores and engines (`idreg export`,
 * `idreg import`): identifiers with their leases, epochs and cool-downs, the history, the meta
 * values. Engine-neutral: identifiers are named, not numbered, and history entries name their
 * identifier; times are the source's registry time, epoch milliseconds as stored.
 *
 * Format (version 2): JSON lines. The first line is the header
 *   {"format":"asg-id-registry-dump","version":2,"engine":"sqlite","exported_at":…,"identifiers":n,"history":n,"meta":n}
 * where `exported_at` is the source's registry time at the export (the time every other time
 * in the file is measured against), then one line per record, identifiers (in pool order)
 * first, then history (oldest first), then meta:
 *   {"identifier":{"name","pool_order","retired","epoch","client_id","allocated_at","last_seen","available_at","fence_cooldown_ms",
 *                  "key_hash","instance","watermark","last_client_id","last_granted_at"}}
 * (the last five optional, null when absent: a file from before holder keys loads as it did).
 *   {"history":{"identifier","at","event","client_id","epoch"}}
 *   {"meta":{"key","value"}}
 * Lines, so a large registry streams instead of living in one string. The counts in the
 * header let a truncated file be told from a whole one.
 *
 * Two registries' times differ, so an import translates every time (dump-time.ts).
 *
 * Loading is only into a store with no identifiers and no history: a second import is refused,
 * so no epoch can go back.
 */
import { isHolderKeyHash } from '../domain/holder-key.js';
import { instanceView, parseInstanceJson } from '../domain/instance.js';
import { HISTORY_EVENTS } from '../domain/types.js';
import type { HistoryEvent, InstanceInfo } from '../domain/types.js';
import { errorMessage } from '../domain/errors.js';

export const DUMP_FORMAT = 'asg-id-registry-dump';
export const DUMP_VERSION = 2;
/** Versions this registry reads. */
const READABLE_VERSIONS: readonly number[] = [1, 2];

export interface DumpIdentifier {
  readonly name: string;
  readonly poolOrder: number;
  readonly retired: boolean;
  readonly epoch: number;
  readonly clientId: string | null;
  readonly allocatedAt: number | null;
  readonly lastSeen: number | null;
  readonly availableAt: number;
  /** As Holder.fenceCooldownMs: the fence window its holder was told; null when free or not recorded. */
  readonly fenceCooldownMs: number | null;
  /** The hash of the holder's key (never the key); null or absent: none. */
  readonly keyHash?: string | null;
  readonly instance?: InstanceInfo | null;
  /** The identifier's watermark, kept across holders; null or absent: none. */
  readonly watermark?: number | null;
  /** The client granted it last, and when (sticky identity). */
  readonly lastClientId?: string | null;
  readonly lastGrantedAt?: number | null;
}

export interface DumpHistory {
  readonly identifier: string;
  readonly at: number;
  readonly event: HistoryEvent;
  readonly clientId: string | null;
  readonly epoch: number;
}

export interface DumpMeta {
  readonly key: string;
  readonly value: string;
}

export interface Dump {
  readonly engine: 'sqlite' | 'postgres';
  /** The source's registry time at the export: every time in the dump is measured against it. */
  readonly exportedAt: number;
  /** Set when read from a version 1 file, whose `exported_at` cannot be trusted as registry time. */
  readonly legacyExportTime?: true;
  readonly identifiers: readonly DumpIdentifier[];
  readonly history: readonly DumpHistory[];
  readonly meta: readonly DumpMeta[];
}

/**
 * Meta values that belong to the store or the registry that wrote them, not to the state that
 * moves: SQLite's clock anchor is per machine boot and means nothing in another store; the
 * reaper's report of its last sweep (`reaper_state`: when, how many, held and why) is that
 * registry's, and carried over it would show on the new one's /health (an old last sweep, a
 * guard it is not under) until its own first sweep. Neither is exported, and neither is
 * loaded from a file that still has them (exports made before this rule).
 */
const ENGINE_PRIVATE_META = new Set(['clock_anchor', 'reaper_state']);

export function isPortableMeta(m: DumpMeta): boolean {
  return !ENGINE_PRIVATE_META.has(m.key);
}

/** A dump file that cannot be loaded, or a store that cannot take it; the message says why. */
export class DumpError extends Error {
  override readonly name = 'DumpError';
}

export type Fields = Readonly<Record<string, unknown>>;

export function isFields(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fields(v: unknown, what: string): Fields {
  if (!isFields(v)) throw new DumpError(`${what}: expected an object`);
  return v;
}

function integer(f: Fields, k: string, what: string): number {
  const v = f[k];
  if (typeof v === 'bigint' && v >= Number.MIN_SAFE_INTEGER && v <= Number.MAX_SAFE_INTEGER) return Number(v);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new DumpError(`${what}: ${k} must be a whole number ≥ 0`);
  return v;
}

function integerOrNull(f: Fields, k: string, what: string): number | null {
  return f[k] === null ? null : integer(f, k, what);
}

/** A field version 1 files do not have: absent reads as null. */
function integerOrAbsent(f: Fields, k: string, what: string): number | null {
  return f[k] === undefined ? null : integerOrNull(f, k, what);
}

function str(f: Fields, k: string, what: string): string {
  const v = f[k];
  if (typeof v !== 'string') throw new DumpError(`${what}: ${k} must be a string`);
  return v;
}

function strOrNull(f: Fields, k: string, what: string): string | null {
  return f[k] === null ? null : str(f, k, what);
}

/** SQLite stores a flag as 0/1, PostgreSQL as a boolean; the file says true/false. */
function flag(f: Fields, k: string, what: string): boolean {
  const v = f[k];
  if (v === true || v === 1) return true;
  if (v === false || v === 0) return false;
  throw new DumpError(`${what}: ${k} must be true or false`);
}

function optional<T>(f: Fields, k: string, read: (f: Fields, k: string, what: string) => T, what: string): T | null {
  return f[k] === undefined || f[k] === null ? null : read(f, k, what);
}

/** An instance's facts as a file has them (an object) or a row (its JSON text); canonical either way. */
function instanceOf(f: Fields, k: string, what: string): InstanceInfo {
  const v = f[k];
  try {
    return parseInstanceJson(typeof v === 'string' ? v : JSON.stringify(v));
  } catch (e) {
    throw new DumpError(`${what}: ${k}: ${errorMessage(e)}`);
  }
}

function keyHashOf(f: Fields, k: string, what: string): string {
  const v = str(f, k, what);
  if (!isHolderKeyHash(v)) throw new DumpError(`${what}: ${k} must be "sha256:" and 64 hexadecimal digits (the hash, never a key)`);
  return v;
}

function watermarkOf(f: Fields, k: string, what: string): number {
  const v = integer(f, k, what);
  if (v > Number.MAX_SAFE_INTEGER) throw new DumpError(`${what}: ${k} must be below 2^53`);
  return v;
}

/** An identifier from a file record or a database row (snake_case columns either way). */
export function toDumpIdentifier(raw: unknown, what = 'identifier'): DumpIdentifier {
  const f = fields(raw, what);
  const d: DumpIdentifier = {
    name: str(f, 'name', what),
    poolOrder: integer(f, 'pool_order', what),
    retired: flag(f, 'retired', what),
    epoch: integer(f, 'epoch', what),
    clientId: strOrNull(f, 'client_id', what),
    allocatedAt: integerOrNull(f, 'allocated_at', what),
    lastSeen: integerOrNull(f, 'last_seen', what),
    availableAt: integer(f, 'available_at', what),
    fenceCooldownMs: integerOrAbsent(f, 'fence_cooldown_ms', what),
    keyHash: optional(f, 'key_hash', keyHashOf, what),
    instance: optional(f, 'instance', instanceOf, what),
    watermark: optional(f, 'watermark', watermarkOf, what),
    lastClientId: optional(f, 'last_client_id', str, what),
    lastGrantedAt: optional(f, 'last_granted_at', integer, what),
  };
  const held = [d.clientId, d.allocatedAt, d.lastSeen].filter((v) => v !== null).length;
  if (held !== 0 && held !== 3) throw new DumpError(`${what} ${d.name}: client_id, allocated_at and last_seen must be all set or all null`);
  if (d.clientId === null && (d.keyHash != null || d.instance != null)) {
    throw new DumpError(`${what} ${d.name}: key_hash and instance belong to a holder: null when client_id is`);
  }
  if (d.clientId !== null && d.epoch === 0) throw new DumpError(`${what} ${d.name}: a held identifier must have an epoch ≥ 1`);
  return d;
}

export function toDumpHistory(raw: unknown, what = 'history'): DumpHistory {
  const f = fields(raw, what);
  const event = HISTORY_EVENTS.find((e) => e === f['event']);
  if (!event) throw new DumpError(`${what}: event must be one of ${HISTORY_EVENTS.join(', ')}`);
  return {
    identifier: str(f, 'identifier', what),
    at: integer(f, 'at', what),
    event,
    clientId: strOrNull(f, 'client_id', what),
    epoch: integer(f, 'epoch', what),
  };
}

export function toDumpMeta(raw: unknown, what = 'meta'): DumpMeta {
  const f = fields(raw, what);
  return { key: str(f, 'key', what), value: str(f, 'value', what) };
}

function identifierLine(d: DumpIdentifier): string {
  return JSON.stringify({
    identifier: {
      name: d.name, pool_order: d.poolOrder, retired: d.retired, epoch: d.epoch, client_id: d.clientId,
      allocated_at: d.allocatedAt, last_seen: d.lastSeen, available_at: d.availableAt, fence_cooldown_ms: d.fenceCooldownMs,
      key_hash: d.keyHash ?? null, instance: d.instance ? instanceView(d.instance) : null, watermark: d.watermark ?? null,
      last_client_id: d.lastClientId ?? null, last_granted_at: d.lastGrantedAt ?? null,
    },
  });
}

function historyLine(h: DumpHistory): string {
  return JSON.stringify({ history: { identifier: h.identifier, at: h.at, event: h.event, client_id: h.clientId, epoch: h.epoch } });
}

/** The file, one line at a time (each without its newline). */
export function* dumpLines(d: Dump): Generator<string> {
  yield JSON.stringify({
    format: DUMP_FORMAT, version: DUMP_VERSION, engine: d.engine, exported_at: d.exportedAt,
    identifiers: d.identifiers.length, history: d.history.length, meta: d.meta.length,
  });
  for (const i of d.identifiers) yield identifierLine(i);
  for (const h of d.history) yield historyLine(h);
  for (const m of d.meta) yield JSON.stringify({ meta: { key: m.key, value: m.value } });
}

function engineOf(v: unknown): 'sqlite' | 'postgres' {
  if (v === 'sqlite' || v === 'postgres') return v;
  throw new DumpError('header: engine must be "sqlite" or "postgres"');
}

/** Reads a dump file's lines, checking every record and the counts; throws DumpError naming the line. */
export function parseDump(lines: Iterable<string>): Dump {
  let header: Fields | null = null;
  const identifiers: DumpIdentifier[] = [];
  const history: DumpHistory[] = [];
  const meta: DumpMeta[] = [];
  let n = 0;
  for (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new DumpError(`line ${n}: not JSON`);
    }
    const f = fields(value, `line ${n}`);
    if (header === null) {
      if (f['format'] !== DUMP_FORMAT) throw new DumpError(`line ${n}: not an asg-id-registry dump (no "format":"${DUMP_FORMAT}" header)`);
      if (!READABLE_VERSIONS.some((v) => v === f['version'])) {
        throw new DumpError(`line ${n}: dump version ${String(f['version'])} is not one this registry reads (${READABLE_VERSIONS.join(', ')})`);
      }
      header = f;
    } else if ('identifier' in f) identifiers.push(toDumpIdentifier(f['identifier'], `line ${n}`));
    else if ('history' in f) history.push(toDumpHistory(f['history'], `line ${n}`));
    else if ('meta' in f) meta.push(toDumpMeta(f['meta'], `line ${n}`));
    else throw new DumpError(`line ${n}: unknown record`);
  }
  if (header === null) throw new DumpError('the file is empty');
  const expect = (k: string, got: number): void => {
    if (header?.[k] !== got) throw new DumpError(`the header announces ${String(header?.[k])} ${k} records, the file has ${got}: truncated?`);
  };
  expect('identifiers', identifiers.length);
  expect('history', history.length);
  expect('meta', meta.length);
  const base = { engine: engineOf(header['engine']), exportedAt: integer(header, 'exported_at', 'header'), identifiers, history, meta };
  const dump: Dump = header['version'] === 1 ? { ...base, legacyExportTime: true } : base;
  checkConsistent(dump);
  return dump;
}

/** What no store would hold: two identifiers of one name, a client holding two, history of an unknown identifier. */
export function checkConsistent(d: Dump): void {
  const names = new Set<string>();
  const holders = new Set<string>();
  for (const i of d.identifiers) {
    if (names.has(i.name)) throw new DumpError(`identifier ${i.name} appears twice`);
    names.add(i.name);
    if (i.clientId !== null) {
      if (holders.has(i.clientId)) throw new DumpError(`client ${i.clientId} holds two identifiers`);
      holders.add(i.clientId);
    }
  }
  for (const h of d.history) {
    if (!names.has(h.identifier)) throw new DumpError(`history names identifier ${h.identifier}, which the dump does not have`);
  }
}


/** The refusal for a target store that already holds state. */
export function notEmptyError(identifiers: number, history: number): DumpError {
  return new DumpError(
    `the target store already holds ${identifiers} identifiers and ${history} history entries; ` +
      'import only into a new, empty database (a second import could take epochs back)',
  );
}

export { IMPORT_META, latestTimeIn, timeBase, translateDump } from './dump-time.js';
export type { Translation } from './dump-time.js';
