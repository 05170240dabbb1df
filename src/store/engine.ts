/**
 * The one place the storage engine is chosen: PostgreSQL when a database URL is given
 * (DATABASE_URL), the SQLite file at DB_PATH otherwise. The registry (src/serve.ts) and idreg
 * (src/cli/) open, export and import through the Engine it returns, never asking which it is.
 */
import type { Dump, Translation } from './dump.js';
import type { ClockStepEvent } from './postgres/time.js';
import { postgresEngine } from './postgres/engine.js';
import { sqliteEngine } from './sqlite/engine.js';
import type { Store } from './types.js';

export interface EngineSettings {
  readonly dbPath: string;
  /** Set: PostgreSQL, and dbPath is not used. */
  readonly databaseUrl: string | null;
}

/** A registry opening its store to serve from it. */
export interface RegistryOpen {
  readonly role: 'registry';
  /** What the database server calls this instance's connections (PostgreSQL's application_name). */
  readonly name: string;
  /** How long a write waits for another process's write lock (SQLite) before answering `unavailable`. */
  readonly busyTimeoutMs: number;
  /** How long to wait for a database that does not answer (PostgreSQL failing over) before giving up. */
  readonly waitMs: number;
  /** Told of each such wait, with the reason. */
  readonly onWait: (reason: string) => void;
  /** Failures of idle connections (PostgreSQL), for the logs. */
  readonly onConnectionError: (reason: string) => void;
  /** Steps of the database server's clock (PostgreSQL; see postgres/clock.ts), for the logs. */
  readonly onClockStep: (e: ClockStepEvent) => void;
}

/** idreg opening the store for one command (a small pool; it reads registry time, never records a clock step). */
export interface ToolOpen {
  readonly role: 'tool';
}

export interface OpenedStore {
  readonly store: Store;
  /** The machine rebooted since a registry last ran on this store (SQLite): cool-downs in progress resume from now. */
  readonly rebooted: boolean;
  /** Starts the upkeep a long-running registry needs (SQLite's WAL checkpoints on a worker); failures go to `warn`. */
  upkeep(warn: (message: string) => void): void;
}

export interface Engine {
  /** The database file, for a store in one (SQLite); null for a server's. */
  readonly file: string | null;
  /** The store, as a message names it: the database file's path, or DATABASE_URL. */
  readonly setting: string;
  /** The store, as a sentence names it: the database file's path, or PostgreSQL (DATABASE_URL). */
  readonly title: string;
  /** Where the store is, for a log line: the file's path, or the URL with its password blanked. */
  readonly location: string;
  /** Why the store cannot be opened or used: one line naming the setting to fix. */
  explain(e: unknown): string;
  open(how: RegistryOpen | ToolOpen): Promise<OpenedStore>;
  /** The whole state (`idreg export`; see dump.ts), safe with a registry running on the store. */
  exportDump(): Promise<Dump>;
  /** Loads a dump into an empty store, its times moved onto the store's clock (`idreg import`); refused (DumpError) otherwise. */
  importDump(d: Dump): Promise<Translation>;
}

export function engineFor(settings: EngineSettings): Engine {
  return settings.databaseUrl !== null ? postgresEngine(settings.databaseUrl) : sqliteEngine(settings.dbPath);
}
