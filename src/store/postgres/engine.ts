/** The PostgreSQL Engine (see ../engine.ts): one database shared by every instance, named by its URL. */
import { systemTimeSource } from '../../clock.js';
import { errorMessage, isRegistryError } from '../../domain/errors.js';
import type { Engine, OpenedStore, RegistryOpen } from '../engine.js';
import { openPostgresStore } from './store.js';
import type { PostgresStore } from './store.js';

/** A database URL fit for a log line: the password blanked. */
export function redact(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = '***';
  return u.toString();
}

const opened = (store: PostgresStore): OpenedStore => ({ store, rebooted: false, upkeep: () => undefined });

/** idreg's connection: a small pool, reading registry time without recording the server clock's steps. */
const openTool = (url: string): Promise<PostgresStore> => openPostgresStore({ url, poolSize: 2, applicationName: 'idreg', clockRole: 'tool' });

/**
 * The registry's store, migrated. A database that does not answer may be failing over: this
 * waits for it (the registry answering 503 meanwhile) up to `waitMs`, then gives up with the
 * last failure.
 */
async function openRegistry(url: string, how: RegistryOpen): Promise<PostgresStore> {
  const deadline = systemTimeSource.monotonic() + how.waitMs;
  for (let wait = 250; ; wait = Math.min(wait * 2, 4000)) {
    try {
      return await openPostgresStore({ url, applicationName: how.name, onConnectionError: how.onConnectionError, onClockStep: how.onClockStep });
    } catch (e) {
      const unavailable = isRegistryError(e) && e.code === 'unavailable';
      if (!unavailable || systemTimeSource.monotonic() + wait > deadline) throw e;
      how.onWait(errorMessage(e));
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/** Runs `fn` on a store opened for one idreg command, closed after. */
async function withTool<T>(url: string, fn: (store: PostgresStore) => Promise<T>): Promise<T> {
  const store = await openTool(url);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export function postgresEngine(url: string): Engine {
  return {
    file: null,
    setting: 'DATABASE_URL',
    title: 'PostgreSQL (DATABASE_URL)',
    location: redact(url),
    explain: (e) => `configuration error: DATABASE_URL: cannot use ${redact(url)}: ${errorMessage(e)}`,
    open: async (how) => opened(how.role === 'registry' ? await openRegistry(url, how) : await openTool(url)),
    exportDump: () => withTool(url, (store) => store.dump()),
    importDump: (d) => withTool(url, (store) => store.load(d)),
  };
}
