/**
 * idreg's command line: the usage, how a failure or a usage error is said (one line, and an
 * exit status), the global flags, and the settings they and the environment make.
 */
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { ConfigError, checkRegistryUrl, loadCliConfig } from '../config.js';
import type { CliConfig } from '../config.js';

export const USAGE = `usage: idreg [--url URL] [--token TOKEN] COMMAND
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

/** What idreg prints (stdout for status 0, stderr otherwise) and exits with. */
export class CliError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

/** Every message idreg prints about a failure starts with this. */
const PREFIX = 'idreg: ';

/** A failure (not a usage error): one line saying what, and why. */
export const failure = (what: string, status: number): CliError => new CliError(`${PREFIX}${what}`, status);

/** A usage error: what is wrong, in one line, then where the usage is (exit 2). */
export const usageError = (what: string): CliError => new CliError(`${PREFIX}${what}\n${USAGE_HINT}`, 2);

/**
 * parseArgs's own errors are long and capitalised ("Unknown option '--colour'. To specify a
 * positional argument …"): the first sentence, as a usage error of the command.
 */
export function parseArgsError(cmd: string, e: unknown): CliError | null {
  if (!(e instanceof Error) || !('code' in e) || !String(e.code).startsWith('ERR_PARSE_ARGS')) return null;
  const missing = /^Option '(-[^ ']+)[^']*' argument missing/.exec(e.message);
  if (missing) return usageError(`${cmd}: ${missing[1] ?? ''} needs a value`);
  const first = e.message.split(/\.(?:\s|$)/)[0] ?? e.message;
  return usageError(`${cmd}: ${first.charAt(0).toLowerCase()}${first.slice(1).replace(/'/g, '')}`);
}

/** parseArgs, strict, with its errors as one-line usage errors naming the command. */
export function parse<T extends ParseArgsConfig>(cmd: string, config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    throw parseArgsError(cmd, e) ?? e;
  }
}

export interface GlobalFlags { url?: string; token?: string; help: boolean; version: boolean; rest: string[] }

/** Global flags (--url, --token, --help, --version) may stand anywhere; everything else is the command. */
export function splitGlobal(argv: readonly string[]): GlobalFlags {
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
export function settings(g: GlobalFlags, env: Parameters<typeof loadCliConfig>[0], cmd: string | undefined): CliConfig {
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
