/**
 * The only reader of the environment. Returns a frozen, validated Config, or throws a
 * ConfigError whose message is one line naming the variable.
 */
import cron from 'node-cron';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly dbPath: string;
  /** postgres://… to share one PostgreSQL database between instances; null for SQLite at dbPath. */
  readonly databaseUrl: string | null;
  readonly poolFile: string;
  readonly leaseTtlSeconds: number;
  readonly reaperSchedule: string;
  readonly reuseCooldownSeconds: number;
  readonly startupGraceSeconds: number;
  /** The three durations above in whole milliseconds, exactly: what the registry and its store compute with. */
  readonly leaseTtlMs: number;
  readonly reuseCooldownMs: number;
  readonly startupGraceMs: number;
  readonly reaperMaxFraction: number;
  readonly reaperMinHold: number;
  /** Reclaims a minute while the guard limits; null: 1 % of the pool, at least 1. */
  readonly reaperGuardedRate: number | null;
  readonly reaperBatchSize: number;
  readonly dbBusyTimeoutMs: number;
  readonly agentTokens: readonly string[];
  readonly adminTokens: readonly string[];
  /** EVENT_TOKENS: bearer tokens for POST /events/aws only (an EventBridge connection's). */
  readonly eventTokens: readonly string[];
  /** Both set or both null: HTTPS with this certificate chain and key (PEM files). */
  readonly tls: { readonly certFile: string; readonly keyFile: string } | null;
  /** The explicit way out of protected mode: serve a non-loopback address with no tokens. */
  readonly allowOpen: boolean;
  /** Ownership history older than this many days is pruned; 0 keeps it forever. */
  readonly historyRetentionDays: number;
  readonly logLevel: LogLevel;
  /** `required`: an allocate must carry a holder key (HOLDER_KEYS). */
  readonly holderKeys: 'optional' | 'required';
  /** Attested claims (AWS_IID_CERT_FILE and AWS_ACCOUNT_IDS set), else null. */
  readonly attestation: {
    readonly certFile: string;
    readonly accountIds: readonly string[];
    readonly regions: readonly string[] | null;
    readonly matchSourceIp: boolean;
  } | null;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly variable: string, reason: string) {
    super(`${variable}: ${reason}`);
  }
}

type Env = Readonly<Record<string, string | undefined>>;

/**
 * The longest TTL, cool-down or grace: 30 days. Times are epoch milliseconds written as ISO
 * 8601, which ends in the year 275760; far shorter bounds keep every deadline representable
 * and catch a unit mistake (milliseconds given for seconds).
 */
const MAX_SECONDS = 30 * 24 * 3600;
/** The longest history retention: a century (a longer one is "forever", which is 0). */
const MAX_RETENTION_DAYS = 36_500;
/** The most identifiers a count setting can sensibly name. */
const MAX_COUNT = 1_000_000_000;

function read(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function number(env: Env, name: string, fallback: number, check: { min: number; max?: number; integer?: boolean; minExclusive?: boolean }): number {
  const raw = read(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  const kind = check.integer ? 'a whole number' : 'a number';
  const range = `${check.minExclusive ? 'above' : 'at least'} ${check.min}${check.max !== undefined ? ` and at most ${check.max}` : ''}`;
  if (!/^-?\d+(\.\d+)?$/.test(raw) || !Number.isFinite(n) || (check.integer && !Number.isInteger(n))) {
    throw new ConfigError(name, `"${raw}" is not ${kind} (expected ${kind} ${range})`);
  }
  if ((check.minExclusive ? n <= check.min : n < check.min) || (check.max !== undefined && n > check.max)) {
    throw new ConfigError(name, `${raw} is out of range (expected ${range})`);
  }
  return n;
}

/**
 * A duration in seconds, as whole milliseconds: at most three decimals. Read from its digits, never
 * through a float (2.001 * 1000 is 2000.9999999999998), so the store, whose times are integer
 * milliseconds, can hold every deadline computed from it.
 */
function durationMs(env: Env, name: string, fallbackMs: number, check: { max: number; minExclusive?: boolean }): number {
  const raw = read(env, name);
  if (raw === undefined) return fallbackMs;
  const range = `${check.minExclusive ? 'above' : 'at least'} 0 and at most ${check.max}`;
  const m = /^(\d+)(?:\.(\d+))?$/.exec(raw);
  if (!m) throw new ConfigError(name, `"${raw}" is not a number of seconds (expected a number ${range})`);
  const whole = m[1] ?? '0';
  const fraction = m[2] ?? '';
  if (fraction.length > 3 && /[1-9]/.test(fraction.slice(3))) {
    throw new ConfigError(name, `${raw} is finer than a millisecond (durations are whole milliseconds: at most three decimals, e.g. ${whole}.${fraction.slice(0, 3)})`);
  }
  const ms = Number(whole) * 1000 + Number(fraction.slice(0, 3).padEnd(3, '0'));
  if ((check.minExclusive ? ms <= 0 : ms < 0) || ms > check.max * 1000) {
    throw new ConfigError(name, `${raw} is out of range (expected ${range})`);
  }
  return ms;
}

function tokens(env: Env, name: string): string[] {
  const raw = read(env, name);
  if (raw === undefined) return [];
  const list = raw.split(',').map((t) => t.trim());
  if (list.some((t) => t === '')) throw new ConfigError(name, 'has an empty token (comma-separated, no empty entries)');
  if (list.some((t) => !/^[\x21-\x7e]+$/.test(t))) throw new ConfigError(name, 'tokens must be printable ASCII without spaces');
  if (list.some((t) => t.length < 16)) throw new ConfigError(name, 'every token must be at least 16 characters long');
  // The shipped registry.env.example's placeholders: a copied example must not go live.
  if (list.some((t) => /^replace-me/i.test(t))) {
    throw new ConfigError(name, 'is still the placeholder from registry.env.example; put a secret there (e.g. `openssl rand -hex 32`)');
  }
  return list;
}

function bool(env: Env, name: string): boolean {
  const raw = read(env, name);
  if (raw === undefined) return false;
  if (raw === 'true' || raw === 'false') return raw === 'true';
  throw new ConfigError(name, `"${raw}" is not true or false`);
}

function tlsFiles(env: Env): Config['tls'] {
  const certFile = read(env, 'TLS_CERT_FILE');
  const keyFile = read(env, 'TLS_KEY_FILE');
  if (certFile === undefined && keyFile === undefined) return null;
  if (keyFile === undefined) throw new ConfigError('TLS_KEY_FILE', 'is unset while TLS_CERT_FILE is set (HTTPS needs both, or neither)');
  if (certFile === undefined) throw new ConfigError('TLS_CERT_FILE', 'is unset while TLS_KEY_FILE is set (HTTPS needs both, or neither)');
  return Object.freeze({ certFile, keyFile });
}

/** Comma-separated values each matching `re`; null when unset. */
function list(env: Env, name: string, re: RegExp, what: string): string[] | null {
  const raw = read(env, name);
  if (raw === undefined) return null;
  const items = raw.split(',').map((t) => t.trim());
  const bad = items.find((t) => !re.test(t));
  if (bad !== undefined) throw new ConfigError(name, `"${bad}" is not ${what} (comma-separated)`);
  return items;
}

function holderKeys(env: Env): Config['holderKeys'] {
  const raw = read(env, 'HOLDER_KEYS') ?? 'optional';
  if (raw === 'optional' || raw === 'required') return raw;
  throw new ConfigError('HOLDER_KEYS', `"${raw}" is not optional or required`);
}

/** Attested claims: AWS_IID_CERT_FILE turns them on, and then AWS_ACCOUNT_IDS must say whose instances may claim. */
function attestation(env: Env): Config['attestation'] {
  const certFile = read(env, 'AWS_IID_CERT_FILE');
  const accountIds = list(env, 'AWS_ACCOUNT_IDS', /^\d{12}$/, 'a 12-digit AWS account id');
  const regions = list(env, 'AWS_REGIONS', /^[a-z]{2}(-[a-z]+)+-\d+$/, 'an AWS region (e.g. eu-west-1)');
  const matchSourceIp = bool(env, 'AWS_IID_MATCH_SOURCE_IP');
  if (certFile === undefined) {
    const stray = accountIds !== null ? 'AWS_ACCOUNT_IDS' : regions !== null ? 'AWS_REGIONS' : matchSourceIp ? 'AWS_IID_MATCH_SOURCE_IP' : null;
    if (stray !== null) throw new ConfigError('AWS_IID_CERT_FILE', `is unset while ${stray} is set (attested claims need AWS's certificates; set both, or neither)`);
    return null;
  }
  if (accountIds === null) {
    throw new ConfigError('AWS_ACCOUNT_IDS', 'is required with AWS_IID_CERT_FILE: the AWS accounts whose instances may claim (comma-separated 12-digit ids)');
  }
  return Object.freeze({ certFile, accountIds: Object.freeze(accountIds), regions: regions === null ? null : Object.freeze(regions), matchSourceIp });
}

/** 127.0.0.0/8, ::1 and localhost. Anything else (0.0.0.0, ::, a name) may be reachable from the network. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

/** A PostgreSQL URL, checked without ever echoing it: it may carry a password. */
function databaseUrl(env: Env): string | null {
  const raw = read(env, 'DATABASE_URL');
  if (raw === undefined) return null;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError('DATABASE_URL', 'is not a URL (expected postgres://user:password@host:5432/database)');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new ConfigError('DATABASE_URL', `must start with postgres:// or postgresql:// (not ${url.protocol}//)`);
  }
  if (url.hostname === '' && !url.searchParams.has('host')) throw new ConfigError('DATABASE_URL', 'names no host');
  return raw;
}

export function loadConfig(env: Env): Config {
  const host = read(env, 'HOST') ?? '127.0.0.1';
  const port = number(env, 'PORT', 8080, { min: 0, max: 65535, integer: true });
  const leaseTtlMs = durationMs(env, 'LEASE_TTL_SECONDS', 90_000, { max: MAX_SECONDS, minExclusive: true });
  const reuseCooldownMs = durationMs(env, 'REUSE_COOLDOWN_SECONDS', leaseTtlMs, { max: MAX_SECONDS });
  const startupGraceMs = durationMs(env, 'STARTUP_GRACE_SECONDS', leaseTtlMs, { max: MAX_SECONDS });
  const reaperSchedule = read(env, 'REAPER_SCHEDULE') ?? '*/10 * * * * *';
  if (!cron.validate(reaperSchedule)) {
    throw new ConfigError('REAPER_SCHEDULE', `"${reaperSchedule}" is not a valid cron expression (e.g. "*/10 * * * * *")`);
  }
  const logLevel = read(env, 'LOG_LEVEL') ?? 'info';
  const level = LOG_LEVELS.find((l) => l === logLevel);
  if (!level) throw new ConfigError('LOG_LEVEL', `"${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  const agentTokens = tokens(env, 'AGENT_TOKENS');
  const adminTokens = tokens(env, 'ADMIN_TOKENS');
  const shared = agentTokens.find((t) => adminTokens.includes(t));
  if (shared !== undefined) throw new ConfigError('AGENT_TOKENS', 'a token may not be both an agent and an admin token');
  const eventTokens = tokens(env, 'EVENT_TOKENS');
  if (eventTokens.some((t) => agentTokens.includes(t) || adminTokens.includes(t))) {
    throw new ConfigError('EVENT_TOKENS', 'a token may not be both an event token and an agent or admin token');
  }
  const tls = tlsFiles(env);
  const allowOpen = bool(env, 'ALLOW_OPEN');
  // Protected mode (as Redis has it): an open registry on the network is a mistake far more
  // often than a choice, so it takes an explicit one.
  if (!isLoopback(host) && agentTokens.length === 0 && adminTokens.length === 0 && !allowOpen) {
    throw new ConfigError('HOST', `${host} is not a loopback address and neither AGENT_TOKENS nor ADMIN_TOKENS is set: ` +
      'anyone who can reach it could take and release identifiers; set the tokens, or ALLOW_OPEN=true to serve it open anyway');
  }
  return Object.freeze({
    host,
    port,
    dbPath: read(env, 'DB_PATH') ?? './data/registry.db',
    databaseUrl: databaseUrl(env),
    poolFile: read(env, 'POOL_FILE') ?? 'seed/identifiers.txt',
    leaseTtlSeconds: leaseTtlMs / 1000,
    reaperSchedule,
    reuseCooldownSeconds: reuseCooldownMs / 1000,
    startupGraceSeconds: startupGraceMs / 1000,
    leaseTtlMs,
    reuseCooldownMs,
    startupGraceMs,
    reaperMaxFraction: number(env, 'REAPER_MAX_FRACTION', 0.5, { min: 0, max: 1, minExclusive: true }),
    reaperMinHold: number(env, 'REAPER_MIN_HOLD', 10, { min: 0, max: MAX_COUNT, integer: true }),
    reaperGuardedRate: read(env, 'REAPER_GUARDED_RATE') === undefined
      ? null
      : number(env, 'REAPER_GUARDED_RATE', 0, { min: 0, max: MAX_COUNT, integer: true }),
    reaperBatchSize: number(env, 'REAPER_BATCH_SIZE', 750, { min: 1, max: 100_000, integer: true }),
    dbBusyTimeoutMs: number(env, 'DB_BUSY_TIMEOUT_MS', 2000, { min: 0, max: 60_000, integer: true }),
    agentTokens: Object.freeze(agentTokens),
    adminTokens: Object.freeze(adminTokens),
    eventTokens: Object.freeze(eventTokens),
    tls,
    allowOpen,
    historyRetentionDays: number(env, 'HISTORY_RETENTION_DAYS', 90, { min: 0, max: MAX_RETENTION_DAYS, integer: true }),
    logLevel: level,
    holderKeys: holderKeys(env),
    attestation: attestation(env),
  });
}

/** The environment, for main.ts: nothing else touches process.env. */
export function processEnv(): Env {
  return process.env;
}

/**
 * The registry's address for `idreg` (IDREG_URL or --url, named by `name`): http:// or
 * https:// with a host. Anything else is a mistake in how idreg was called, not a registry
 * that cannot be reached. Echoed in the reason only when it carries no credentials.
 */
export function checkRegistryUrl(raw: string, name: string): string {
  const shown = /@/.test(raw) ? 'the URL' : `"${raw}"`;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(raw)) {
    throw new ConfigError(name, `${shown} has no scheme: write it as http://${/@/.test(raw) ? 'host:port' : raw} (or https://…)`);
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, `${shown} is not a URL (expected http://host:port or https://host:port)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(name, `must start with http:// or https:// (not ${url.protocol}//)`);
  }
  if (url.hostname === '') throw new ConfigError(name, `${shown} names no host`);
  if (url.username !== '' || url.password !== '') {
    throw new ConfigError(name, 'must not carry a user or password (the token goes in IDREG_TOKEN or --token)');
  }
  if (url.search !== '' || url.hash !== '') throw new ConfigError(name, `${shown} must not carry a query or fragment`);
  return raw;
}

/** What the `idreg` operator command needs; flags override these. */
export interface CliConfig {
  readonly url: string;
  readonly token: string | null;
  readonly dbPath: string;
  /** Set: `pool sync`, `export` and `import` work on this PostgreSQL database instead of DB_PATH. */
  readonly databaseUrl: string | null;
  readonly poolFile: string;
}

export function loadCliConfig(env: Env): CliConfig {
  return Object.freeze({
    url: read(env, 'IDREG_URL') ?? 'http://127.0.0.1:8080',
    token: read(env, 'IDREG_TOKEN') ?? null,
    dbPath: read(env, 'DB_PATH') ?? './data/registry.db',
    databaseUrl: databaseUrl(env),
    poolFile: read(env, 'POOL_FILE') ?? 'seed/identifiers.txt',
  });
}
