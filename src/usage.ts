/**
 * The registry's command line: it takes no arguments (everything is configured through the
 * environment), but answers --help and --version and exits without starting anything.
 * Anything else on the command line, however it is spelled (`--port 19000`, `--port=19000`,
 * `serve`), is refused the same way: one line naming the first argument it does not take
 * (and, for a flag named like a setting, the variable to set instead), exit 78 like every
 * other configuration problem, so systemd does not restart it in a loop.
 */

export const REGISTRY_USAGE = `usage: asg-id-registry [--help | --version]
       (node dist/main.js; npm start runs it)

Hands each VM of an Auto Scaling Group a unique identifier from a pool, keeps it while the
VM sends liveness, and reclaims it when the VM goes quiet. No identifier is ever held by
two live VMs at once. It takes no other arguments: it is configured by environment
variables only (defaults in brackets):

  HOST, PORT                  listen address [127.0.0.1, 8080]
  DB_PATH                     SQLite file, created with its folder [./data/registry.db]
  DATABASE_URL                postgres://…: PostgreSQL instead, shared by several instances [unset]
  POOL_FILE                   the pool, one identifier or pattern a line [seed/identifiers.txt]
  LEASE_TTL_SECONDS           a lease expires this long after its last liveness [90]
  REAPER_SCHEDULE             node-cron expression, seconds field allowed [*/10 * * * * *]
  REUSE_COOLDOWN_SECONDS      wait after a reclaim or force release before reuse [= TTL]
  STARTUP_GRACE_SECONDS       no reclaim before this much uptime [= TTL]
  REAPER_MAX_FRACTION         mass-expiry guard: hold when more of the leases expire [0.5]
  REAPER_MIN_HOLD             ... and more than this many [10]
  REAPER_GUARDED_RATE         reclaims a minute while the guard limits; 0 holds all [1 % of the pool, at least 1]
  REAPER_BATCH_SIZE           leases reclaimed per transaction [750]
  DB_BUSY_TIMEOUT_MS          wait for another process's write lock before 503 [2000]
  AGENT_TOKENS, ADMIN_TOKENS  comma-separated bearer tokens, 16+ characters [unset: open]
  EVENT_TOKENS                bearer tokens for POST /events/aws only (an EventBridge connection's) [unset]
  ALLOW_OPEN                  true: serve a non-loopback HOST with no tokens (protected mode's way out) [false]
  TLS_CERT_FILE, TLS_KEY_FILE HTTPS with this PEM certificate chain and key, re-read on SIGHUP [unset: HTTP]
  HISTORY_RETENTION_DAYS      ownership history older than this many whole days is pruned; 0 keeps it [90]
  HOLDER_KEYS                 required: allocate must carry the VM's holder key [optional]
  AWS_IID_CERT_FILE           AWS's RSA-2048 identity certificates (PEM): claims must be attested [unset]
  AWS_ACCOUNT_IDS, AWS_REGIONS with attestation: accounts (required) and regions whose instances may claim [unset]
  AWS_IID_MATCH_SOURCE_IP     true: an attested claim must come from its document's privateIp [false]
  LOG_LEVEL                   fatal error warn info debug trace silent [info]

signals: SIGHUP re-reads the pool file (and the certificate files); SIGTERM or SIGINT finish in-flight requests and stop.
exit status:
  0   stopped by a signal, or --help / --version answered
  78  a bad setting, pool file or database path, a database URL unreachable for 30 s,
      or any argument but --help / --version (a restart would not mend any of these,
      so the systemd unit does not restart on 78)
  1   anything else`;

/** Exit status for a command line the registry does not take: a configuration problem (EX_CONFIG). */
export const USAGE_EXIT_STATUS = 78;

export type RegistryCommand =
  | { readonly kind: 'run' }
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'usage_error'; readonly message: string };

const HELP = new Set(['--help', '-h']);
const VERSION = new Set(['--version', '-V']);

/** The variables the help lists, read from its own table so the two never disagree. */
function settingNames(): Set<string> {
  const names = new Set<string>();
  for (const m of REGISTRY_USAGE.matchAll(/^ {2}([A-Z][A-Z0-9_]*(?:, [A-Z][A-Z0-9_]*)*)\s/gm)) {
    for (const name of (m[1] ?? '').split(', ')) names.add(name);
  }
  return names;
}

/** `--port 19000`, `--port=19000`, `--db-path x`: the variable it would have meant, with the value when given. */
function meantSetting(args: readonly string[], at: number): string | null {
  const m = /^--?([A-Za-z][A-Za-z0-9-_]*)(?:=(.*))?$/.exec(args[at] ?? '');
  if (!m) return null;
  const name = (m[1] ?? '').toUpperCase().replace(/-/g, '_');
  if (!settingNames().has(name)) return null;
  const next = args[at + 1];
  const value = m[2] ?? (next !== undefined && !next.startsWith('-') ? next : undefined);
  return `${name}=${value ?? '…'}`;
}

/**
 * What the command line asks for; `args` excludes node and the script. --help or --version
 * alone (or repeated) answer; anything else is refused, naming the first argument that is
 * neither, whatever comes before or after it.
 */
export function registryCommand(args: readonly string[]): RegistryCommand {
  const at = args.findIndex((a) => !HELP.has(a) && !VERSION.has(a));
  if (at !== -1) {
    const arg = args[at] ?? '';
    const meant = meantSetting(args, at);
    const message = meant !== null
      ? `${arg.replace(/=.*$/, '')} is not an argument: settings are environment variables, e.g. ${meant} node dist/main.js (see --help)`
      : `unknown argument ${arg}: the registry takes only --help or --version; settings are environment variables (see --help)`;
    return { kind: 'usage_error', message };
  }
  const first = args[0];
  if (first === undefined) return { kind: 'run' };
  return HELP.has(first) ? { kind: 'help' } : { kind: 'version' };
}
