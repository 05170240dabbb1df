/**
 * The registry's command line: it takes no arguments (everything is configured through the
 * environment), but answers --help and --version and exits without starting anything.
 */

export const REGISTRY_USAGE = `usage: asg-id-registry [--help | --version]
       (node dist/main.js; npm start runs it)

Hands each VM of an Auto Scaling Group a unique identifier from a pool, keeps it while the
VM sends liveness, and reclaims it when the VM goes quiet. No identifier is ever held by
two live VMs at once. Configured by environment variables (defaults in brackets):

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
  ALLOW_OPEN                  true: serve a non-loopback HOST with no tokens (protected mode's way out) [false]
  TLS_CERT_FILE, TLS_KEY_FILE HTTPS with this PEM certificate chain and key, re-read on SIGHUP [unset: HTTP]
  HOLDER_KEYS                 required: allocate must carry the VM's holder key [optional]
  AWS_IID_CERT_FILE           AWS's RSA-2048 identity certificates (PEM): claims must be attested [unset]
  AWS_ACCOUNT_IDS, AWS_REGIONS with attestation: accounts (required) and regions whose instances may claim [unset]
  AWS_IID_MATCH_SOURCE_IP     true: an attested claim must come from its document's privateIp [false]
  LOG_LEVEL                   fatal error warn info debug trace silent [info]

signals: SIGHUP re-reads the pool file (and the certificate files); SIGTERM or SIGINT finish in-flight requests and stop.
exit status: 0 stopped by a signal; 2 bad command line; 78 a bad setting, pool file,
database path, or a database URL unreachable for 30 s (restarting will not mend it); 1 anything else.`;

export type RegistryCommand =
  | { readonly kind: 'run' }
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'usage_error'; readonly message: string };

/** What the command line asks for; `args` excludes node and the script. */
export function registryCommand(args: readonly string[]): RegistryCommand {
  const [first, ...rest] = args;
  if (first === undefined) return { kind: 'run' };
  if (rest.length > 0) return { kind: 'usage_error', message: `unexpected argument ${rest[0] ?? ''}` };
  if (first === '--help' || first === '-h') return { kind: 'help' };
  if (first === '--version' || first === '-V') return { kind: 'version' };
  return { kind: 'usage_error', message: `unknown argument ${first} (settings are environment variables)` };
}
