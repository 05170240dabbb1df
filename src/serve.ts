/**
 * Wiring only: config -> db -> store -> registry -> http app -> listen -> reaper.
 * A reload (SIGHUP, through main.ts) re-reads the pool file and the TLS certificate;
 * SIGTERM/SIGINT stop the reaper, stop accepting, finish in-flight requests and close the
 * database.
 */
import type { Server } from 'node:http';
import { Server as TlsServer } from 'node:tls';
import { systemTimeSource } from './clock.js';
import { ConfigError, loadConfig, processEnv } from './config.js';
import type { Config } from './config.js';
import { isRegistryError } from './domain/errors.js';
import { createApp } from './http/app.js';
import { createHttpServer, DEFAULT_LIMITS } from './http/server.js';
import { startReaper } from './jobs/reaper.js';
import { createLogger, logRegistryEvent, stdoutDestination } from './log.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics.js';
import { parsePoolFile, readPoolText } from './pool/load.js';
import type { PoolFile } from './pool/load.js';
import { openRegistry } from './registry.js';
import type { Registry } from './registry.js';
import { Store } from './store/store.js';
import { readTls } from './tls.js';
import type { TlsMaterial } from './tls.js';

/** Exit status for a bad setting or pool file (sysexits EX_CONFIG): systemd will not restart-loop on it. */
const EX_CONFIG = 78;

export interface Signals {
  /** `reload` runs on every SIGHUP from now on (and at once for one that came during start-up). */
  onReload(reload: () => void): void;
}

function die(message: string, status = 1): never {
  process.stderr.write(`asg-id-registry: ${message}\n`);
  process.exit(status);
}

const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function configure(): { config: Config; tls: TlsMaterial | null } {
  try {
    const config = loadConfig(processEnv());
    return { config, tls: config.tls ? readTls(config.tls) : null };
  } catch (e) {
    if (e instanceof ConfigError) die(`configuration error: ${e.message}`, EX_CONFIG);
    throw e;
  }
}

function listen(server: Server, config: Config): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Syncs the pool unless the file is the one last synced. Throws PoolFileError for a bad file. */
async function syncIfChanged(registry: Registry, path: string, file: PoolFile, log: Logger): Promise<void> {
  if ((await registry.poolFingerprint()) === file.fingerprint) {
    log.info({ pool: path }, 'pool file unchanged since the last sync');
    return;
  }
  await registry.syncPool(parsePoolFile(path, file), file.fingerprint);
}

/**
 * A failed or refused reload leaves the pool as it was and the registry degraded, with the
 * reason on /health, until a reload or sync succeeds.
 */
async function reloadPool(registry: Registry, config: Config, log: Logger): Promise<void> {
  try {
    await syncIfChanged(registry, config.poolFile, readPoolText(config.poolFile), log);
    registry.notePoolReload(null);
  } catch (e) {
    const refused = isRegistryError(e) && e.code === 'pool_sync_refused';
    const reason = `pool reload ${refused ? 'refused' : 'failed'}: ${messageOf(e)}`;
    registry.notePoolReload(reason);
    if (refused) log.warn({ pool: config.poolFile, reason }, 'pool reload refused; the pool is unchanged');
    else log.error({ pool: config.poolFile, err: messageOf(e) }, 'pool reload failed; the pool is unchanged');
  }
}

/** New connections get the new certificate; a bad pair is logged and the old one kept. */
function reloadTls(server: Server, config: Config, log: Logger): void {
  if (!config.tls || !(server instanceof TlsServer)) return;
  try {
    const { cert, key } = readTls(config.tls);
    server.setSecureContext({ cert, key });
    log.info({ cert: config.tls.certFile }, 'TLS certificate reloaded');
  } catch (e) {
    log.error({ err: messageOf(e) }, 'TLS certificate reload failed; the previous certificate stays in use');
  }
}

function listenProblem(e: unknown, config: Config): string {
  const code = e instanceof Error && 'code' in e ? String(e.code) : '';
  if (code === 'EADDRINUSE') return `PORT: ${config.port} on ${config.host} is already in use`;
  if (code === 'EACCES') return `PORT: ${config.port} needs privileges this process does not have`;
  return `HOST: cannot listen on ${config.host}:${config.port} (${code || messageOf(e)})`;
}

export async function serve(signals: Signals): Promise<void> {
  const { config, tls } = configure();
  const logOut = stdoutDestination();
  const log = createLogger(config.logLevel, logOut);
  let pool: PoolFile;
  let store: Store;
  try {
    pool = readPoolText(config.poolFile);
  } catch (e) {
    die(messageOf(e), EX_CONFIG);
  }
  try {
    store = new Store({ path: config.dbPath, busyTimeoutMs: config.dbBusyTimeoutMs });
  } catch (e) {
    die(`database ${config.dbPath}: ${messageOf(e)}`);
  }
  const metrics = new Metrics({ processMetrics: true });
  const registry = await openRegistry({
    store,
    source: systemTimeSource,
    rules: {
      ttlMs: config.leaseTtlSeconds * 1000,
      cooldownMs: config.reuseCooldownSeconds * 1000,
      graceMs: config.startupGraceSeconds * 1000,
      maxFraction: config.reaperMaxFraction,
      minHold: config.reaperMinHold,
      reapBatchSize: config.reaperBatchSize,
    },
    observe: (e) => {
      logRegistryEvent(log, e);
      metrics.onRegistryEvent(e);
    },
  });
  metrics.watch(() => registry.health());
  try {
    await syncIfChanged(registry, config.poolFile, pool, log);
  } catch (e) {
    logOut.flushSync();
    die(messageOf(e), EX_CONFIG);
  }
  store.checkpointInBackground((message) => log.warn({ err: message }, 'WAL checkpoint failed'));

  const app = createApp({
    registry,
    auth: { agentTokens: config.agentTokens, adminTokens: config.adminTokens },
    metrics,
    log,
  });
  const server = createHttpServer(app.callback(), DEFAULT_LIMITS, tls);
  try {
    await listen(server, config);
  } catch (e) {
    logOut.flushSync();
    die(`configuration error: ${listenProblem(e, config)}`, EX_CONFIG);
  }
  if (config.agentTokens.length > 0 && config.adminTokens.length === 0) {
    log.warn('AGENT_TOKENS is set and ADMIN_TOKENS is not: listing, inspection and admin routes refuse every caller (403)');
  } else if (config.adminTokens.length === 0) {
    log.warn('no tokens are set: every route is open');
  } else if (config.agentTokens.length === 0) {
    log.warn('AGENT_TOKENS is unset: allocate, liveness and release are open');
  }
  if (!tls) log.warn('TLS_CERT_FILE/TLS_KEY_FILE unset: serving plain HTTP (tokens cross the network in the clear unless a proxy or the network protects them)');
  log.info({ host: config.host, port: config.port, https: tls !== null, db: config.dbPath, pool: config.poolFile }, 'asg-id-registry listening');

  const stopReaper = startReaper({
    schedule: config.reaperSchedule,
    sweep: () => registry.reap(),
    onError: (e) => log.error({ err: messageOf(e) }, 'reaper sweep failed'),
  });

  // Reloads run one after another, in the order the signals came.
  let reloads = Promise.resolve();
  signals.onReload(() => {
    log.info('SIGHUP: re-reading the pool file' + (tls ? ' and the TLS certificate' : ''));
    reloadTls(server, config, log);
    reloads = reloads.then(() => reloadPool(registry, config, log));
  });

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: finishing in-flight requests');
    stopReaper();
    server.close(() => {
      void registry.close().then(() => store.close()).then(() => {
        log.info('database closed; bye');
        logOut.flushSync();
        process.exit(0);
      });
    });
    // Connections that finish their last request after close() would otherwise linger until
    // their keep-alive timeout.
    server.closeIdleConnections();
    setInterval(() => server.closeIdleConnections(), 100).unref();
    // In-flight requests get 10 s; then the database is closed anyway (committed writes are safe).
    setTimeout(() => {
      log.warn('in-flight requests did not finish in 10 s; closing');
      server.closeAllConnections();
    }, 10_000).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}
