/**
 * Wiring only: config -> listen -> db -> store -> registry -> http app -> reaper.
 * A reload (SIGHUP, through main.ts) re-reads the pool file and the TLS certificate;
 * SIGTERM/SIGINT stop the reaper, stop accepting, finish in-flight requests and close the
 * database.
 */
import { lookup } from 'node:dns/promises';
import type { Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import type { Server as NetServer } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import { Attestation } from './aws/attestation.js';
import { IidCertificateError } from './aws/identity.js';
import { systemTimeSource } from './clock.js';
import { ConfigError, loadConfig, processEnv } from './config.js';
import type { Config } from './config.js';
import { errorMessage, isRegistryError } from './domain/errors.js';
import { createApp } from './http/app.js';
import { createHttpServer, DEFAULT_LIMITS } from './http/server.js';
import { startReaper } from './jobs/reaper.js';
import { createLogger, logRegistryEvent, stdoutDestination } from './log.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics.js';
import { notifyReady } from './notify.js';
import { parsePoolFile, readPoolText } from './pool/load.js';
import type { PoolFile } from './pool/load.js';
import { BEAT_INTERVAL_MS, Registry, storedPool } from './registry.js';
import { engineFor } from './store/engine.js';
import type { Engine, OpenedStore } from './store/engine.js';
import { readTls } from './tls.js';
import type { TlsMaterial } from './tls.js';
import { REGISTRY_USAGE, USAGE_EXIT_STATUS, registryCommand } from './usage.js';
import { packageVersion } from './version.js';

const DAY_MS = 86_400_000;

/** Exit status for every configuration problem (sysexits EX_CONFIG): systemd will not restart-loop on it. */
const EX_CONFIG = 78;

export interface Signals {
  /** `reload` runs on every SIGHUP from now on (and at once for one that came during start-up). */
  onReload(reload: () => void): void;
}

function die(message: string, status = 1): never {
  process.stderr.write(`asg-id-registry: ${message}\n`);
  process.exit(status);
}

/** --help and --version answer and exit before anything is read or opened. */
function answerCommandLine(): void {
  const cmd = registryCommand(process.argv.slice(2));
  if (cmd.kind === 'run') return;
  if (cmd.kind === 'help') process.stdout.write(`${REGISTRY_USAGE}\n`);
  if (cmd.kind === 'version') process.stdout.write(`asg-id-registry ${packageVersion()}\n`);
  // One line, like every other configuration problem: the help is one --help away.
  if (cmd.kind === 'usage_error') die(cmd.message, USAGE_EXIT_STATUS);
  process.exit(0);
}

/** A database that cannot be opened or written is a configuration problem: say why, exit 78. */
function dieOnDatabase(e: unknown, engine: Engine): never {
  die(engine.explain(e), EX_CONFIG);
}

function configure(): { config: Config; tls: TlsMaterial | null; attestation: Attestation | null } {
  try {
    const config = loadConfig(processEnv());
    return { config, tls: config.tls ? readTls(config.tls) : null, attestation: config.attestation ? new Attestation(config.attestation) : null };
  } catch (e) {
    if (e instanceof ConfigError) die(`configuration error: ${e.message}`, EX_CONFIG);
    if (e instanceof IidCertificateError) die(`configuration error: AWS_IID_CERT_FILE: ${e.message}`, EX_CONFIG);
    throw e;
  }
}

/** New claims are verified against the file's certificates as they are now; a bad file is logged and the old ones kept. */
function reloadIidCertificates(attestation: Attestation | null, log: Logger): void {
  if (!attestation) return;
  try {
    attestation.reload();
    log.info({ cert_file: attestation.settings.certFile, certificates: attestation.certificates }, 'AWS instance identity certificates reloaded');
  } catch (e) {
    log.error({ err: errorMessage(e) }, 'AWS instance identity certificates reload failed; the previous certificates stay in use');
  }
}

/** Where the socket cannot listen: a configuration problem naming HOST or PORT. */
function listenProblem(e: NodeJS.ErrnoException, config: Config): string {
  if (e.code === 'EADDRINUSE') return `PORT: ${config.port} on ${config.host} is already in use`;
  if (e.code === 'EACCES') return `PORT: ${config.port} needs privileges this process does not have`;
  return `HOST: cannot listen on ${config.host}:${config.port} (${e.code ?? e.message})`;
}

function listenOn(server: Server | NetServer, config: Config): Promise<void> {
  return new Promise<void>((resolve) => {
    server.once('error', (e: NodeJS.ErrnoException) => die(`configuration error: ${listenProblem(e, config)}`, EX_CONFIG));
    server.listen(config.port, config.host, () => resolve());
  });
}

/**
 * Checks, before anything touches the store, that HOST resolves and the port can be taken, so
 * such a failed start changes nothing. The probe socket is closed again: the registry listens
 * only once it can answer, so nobody (a probe, a load balancer) sees it half started.
 */
async function checkListen(config: Config): Promise<void> {
  try {
    await lookup(config.host);
  } catch (e) {
    die(`configuration error: HOST: cannot resolve "${config.host}" (${errorMessage(e)})`, EX_CONFIG);
  }
  if (config.port === 0) return; // any free port: nothing to check
  const probe = createNetServer();
  await listenOn(probe, config);
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}

/** How long start-up waits for an unreachable PostgreSQL (a failover in progress) before giving up. */
const DATABASE_WAIT_MS = 30_000;

/** The store, migrated; a store that cannot be opened stops start-up, saying why. */
async function openStore(engine: Engine, config: Config, log: Logger): Promise<OpenedStore> {
  try {
    return await engine.open({
      role: 'registry',
      name: `asg-id-registry ${config.host}:${config.port}`,
      busyTimeoutMs: config.dbBusyTimeoutMs,
      waitMs: DATABASE_WAIT_MS,
      onWait: (reason) => log.warn({ db: engine.location, err: reason }, 'waiting for the database'),
      onConnectionError: (reason) => log.warn({ err: reason }, 'a database connection failed; it is replaced on next use'),
      onClockStep: (e) => log.warn({ step_ms: e.stepMs, outcome: e.outcome, at_start: e.atStart, cooldowns_lengthened_ms: e.shiftMs },
        e.outcome === 'refused'
          ? "this host's monotonic clock lost time (a suspend?): the other instances agree with the database server's clock"
          : e.shiftMs !== null
            ? 'no instance was running to measure the time since the last one: cool-downs in progress resume from now'
            : "the database server's clock stepped; registry time is unaffected"),
    });
  } catch (e) {
    dieOnDatabase(e, engine);
  }
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
    const reason = `pool reload ${refused ? 'refused' : 'failed'}: ${errorMessage(e)}`;
    registry.notePoolReload(reason);
    if (refused) log.warn({ pool: config.poolFile, reason }, 'pool reload refused; the pool is unchanged');
    else log.error({ pool: config.poolFile, err: errorMessage(e) }, 'pool reload failed; the pool is unchanged');
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
    log.error({ err: errorMessage(e) }, 'TLS certificate reload failed; the previous certificate stays in use');
  }
}

export async function serve(signals: Signals): Promise<void> {
  answerCommandLine();
  const { config, tls, attestation } = configure();
  const logOut = stdoutDestination();
  const log = createLogger(config.logLevel, logOut);
  let pool: PoolFile;
  try {
    pool = readPoolText(config.poolFile);
  } catch (e) {
    die(errorMessage(e), EX_CONFIG);
  }
  await checkListen(config);
  const engine = engineFor(config);
  const opened = await openStore(engine, config, log);
  const store = opened.store;
  if (opened.rebooted) log.warn('the machine rebooted since the registry last ran: cool-downs in progress resume from now');
  // The file is parsed only when it differs from the one last synced.
  const stored = await storedPool(store).catch((e: unknown) => dieOnDatabase(e, engine));
  let names: string[] | null = null;
  if (stored.fingerprint === pool.fingerprint) {
    log.info({ pool: config.poolFile }, 'pool file unchanged since the last sync');
  } else {
    try {
      names = parsePoolFile(config.poolFile, pool);
    } catch (e) {
      die(errorMessage(e), EX_CONFIG);
    }
  }
  const poolSize = names?.length ?? stored.inService;
  const metrics = new Metrics({ processMetrics: true });
  const registry = new Registry({
    store,
    source: systemTimeSource,
    rules: {
      ttlMs: config.leaseTtlMs,
      cooldownMs: config.reuseCooldownMs,
      graceMs: config.startupGraceMs,
      maxFraction: config.reaperMaxFraction,
      minHold: config.reaperMinHold,
      guardedRatePerMinute: config.reaperGuardedRate ?? Math.max(1, Math.floor(poolSize / 100)),
      reapBatchSize: config.reaperBatchSize,
    },
    observe: (e) => {
      logRegistryEvent(log, e);
      metrics.onRegistryEvent(e);
    },
  });
  metrics.watch(() => registry.health());
  try {
    if (names) await registry.syncPool(names, pool.fingerprint);
  } catch (e) {
    logOut.flushSync();
    if (isRegistryError(e) && e.code === 'unavailable') dieOnDatabase(e, engine);
    die(errorMessage(e), EX_CONFIG); // a malformed file, or one that would retire more than half of the pool
  }
  await registry.open({ serviceRestarted: opened.rebooted }).catch((e: unknown) => dieOnDatabase(e, engine));
  opened.upkeep((message) => log.warn({ err: message }, 'WAL checkpoint failed'));

  const app = createApp({
    registry,
    auth: { agentTokens: config.agentTokens, adminTokens: config.adminTokens, eventTokens: config.eventTokens },
    metrics,
    log,
    claims: { holderKeys: config.holderKeys, attestation },
  });
  const server = createHttpServer(app.callback(), DEFAULT_LIMITS, tls);
  await listenOn(server, config);
  if (config.agentTokens.length > 0 && config.adminTokens.length === 0) {
    log.warn('AGENT_TOKENS is set and ADMIN_TOKENS is not: listing, inspection and admin routes refuse every caller (403)');
  } else if (config.adminTokens.length === 0) {
    log.warn('no tokens are set: every route is open');
  } else if (config.agentTokens.length === 0) {
    log.warn('AGENT_TOKENS is unset: allocate, liveness and release take admin tokens only');
  }
  if (attestation) {
    log.info({ cert_file: attestation.settings.certFile, certificates: attestation.certificates, accounts: attestation.settings.accountIds,
      regions: attestation.settings.regions, match_source_ip: attestation.settings.matchSourceIp }, 'attested claims: allocate requires a verified identity document and a key');
  } else if (config.holderKeys === 'optional') {
    log.info('HOLDER_KEYS=optional: a VM that sends no key shares its lease with anyone presenting its client id; the shipped scripts send one (set HOLDER_KEYS=required)');
  }
  if (!tls) log.warn('TLS_CERT_FILE/TLS_KEY_FILE unset: serving plain HTTP (tokens cross the network in the clear unless a proxy or the network protects them)');
  if (config.reuseCooldownSeconds === 0) {
    log.warn('REUSE_COOLDOWN_SECONDS is 0: a reclaimed or force-released identifier can be handed out while its old holder ' +
      'still uses it (its fence window is 0); set a cool-down of at least the lease TTL');
  }
  log.info({ host: config.host, port: config.port, https: tls !== null, db: engine.location, engine: store.engine, pool: config.poolFile }, 'asg-id-registry listening');
  logOut.flushSync(); // the start-up lines, with the pid to signal, are out before the first answer is read

  const beats = setInterval(() => {
    registry.beat().catch((e: unknown) => log.warn({ err: errorMessage(e) }, 'instance beat failed'));
  }, BEAT_INTERVAL_MS);
  const retentionMs = config.historyRetentionDays * DAY_MS;
  const stopReaper = startReaper({
    schedule: config.reaperSchedule,
    clock: store.clock,
    // History is pruned on the sweep's schedule, after it, in bounded batches of its own.
    sweep: async () => {
      const swept = await registry.reap();
      await registry.pruneHistory({ retentionMs }).then(
        (pruned) => { if (pruned > 0) log.info({ pruned, retention_days: config.historyRetentionDays }, 'history pruned'); },
        (e: unknown) => log.warn({ err: errorMessage(e) }, 'history pruning failed; it is tried again after the next sweep'),
      );
      return swept;
    },
    onError: (e) => log.error({ err: errorMessage(e) }, 'reaper sweep failed'),
  });

  // Reloads run one after another, in the order the signals came.
  let reloads = Promise.resolve();
  signals.onReload(() => {
    log.info('SIGHUP: re-reading the pool file' + (tls ? ' and the TLS certificate' : '') + (attestation ? ' and the AWS certificates' : ''));
    reloadTls(server, config, log);
    reloadIidCertificates(attestation, log);
    reloads = reloads.then(() => reloadPool(registry, config, log));
  });
  // Ready (systemd's Type=notify) only now: it serves, and a SIGHUP is a reload (main.ts takes
  // it from its first line; Node's default would be to die of it), so a `systemctl reload` that
  // systemd holds until this notice cannot kill the registry.
  void notifyReady(processEnv()['NOTIFY_SOCKET']).then((n) => {
    if (n.sent) log.info('ready: READY=1 sent to systemd');
    else if (n.problem !== null) log.error({ err: n.problem }, 'cannot tell systemd the registry is ready: a Type=notify unit will time out its start');
  });

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: finishing in-flight requests');
    stopReaper();
    clearInterval(beats);
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

