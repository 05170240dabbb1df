#!/usr/bin/env node
/**
 * idreg: the operator command. It talks HTTP to a registry (IDREG_URL, IDREG_TOKEN; see
 * http.ts), except `pool sync`, `backup`, `export` and `import`, which work on the store
 * itself (database.ts): the database file (DB_PATH), or the PostgreSQL database when
 * DATABASE_URL is set (and no --db).
 */
import { processEnv } from '../config.js';
import { errorMessage } from '../domain/errors.js';
import { packageVersion } from '../version.js';
import { CliError, USAGE, failure, parseArgsError, settings, splitGlobal, usageError } from './args.js';
import { backup, exportState, importState, poolSync } from './database.js';
import { history, list, reap, release, show } from './http.js';

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
    const err = parseArgsError(process.argv[2] ?? 'idreg', e) ?? failure(errorMessage(e), 3);
    process.stderr.write(`${err.message}\n`);
    process.exitCode = err.status;
  }
}

await main();
