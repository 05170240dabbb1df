/**
 * The development commands a newcomer runs: `npm run dev` (stopped by a SIGTERM to npm, as a
 * supervisor or an IDE sends it) and `npm run dev:ha` (a local PostgreSQL from the embedded
 * binaries and two registries on it, all stopped by Ctrl-C).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT, alive, eventually, freePort, json } from '../support/process-helpers.js';

interface Npm {
  readonly child: ChildProcess;
  readonly output: () => string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function npmRun(script: string, env: Record<string, string>, detached = false): Npm {
  const child = spawn('npm', ['run', script], {
    cwd: ROOT,
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/root', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached,
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  return { child, output: () => out, exited };
}

const healthy = async (base: string): Promise<boolean> => (await fetch(`${base}/health`).then((r) => r.status, () => 0)) === 200;

/** Whether anything accepts a TCP connection on the loopback port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** The pids the registries logged (every line carries one), and the database's from dev:ha's own line. */
function pidsIn(out: string): number[] {
  const registries = [...out.matchAll(/"pid":(\d+)/g)].map((m) => Number(m[1]));
  const pg = [...out.matchAll(/PostgreSQL on 127\.0\.0\.1:\d+ \(pid (\d+)/g)].map((m) => Number(m[1]));
  return [...new Set([...registries, ...pg])];
}

describe('development commands (real npm, real processes)', function () {
  this.timeout(180_000);
  let t: ReturnType<typeof tempDir>;
  let npm: Npm | null = null;
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    // A failed test leaves nothing running: the whole process group, then the pids it logged.
    if (npm && npm.child.exitCode === null && npm.child.signalCode === null) {
      try { process.kill(-(npm.child.pid ?? 0), 'SIGKILL'); } catch { npm.child.kill('SIGKILL'); }
    }
    for (const pid of npm ? pidsIn(npm.output()) : []) if (alive(pid)) process.kill(pid, 'SIGKILL');
    npm = null;
    t.cleanup();
  });

  it('npm run dev: a SIGTERM to npm stops the registry (the script execs it)', async () => {
    const port = await freePort();
    const run = npm = npmRun('dev', { PORT: String(port), DB_PATH: join(t.dir, 'registry.db'), POOL_FILE: join(ROOT, 'seed', 'identifiers.txt') });
    const base = `http://127.0.0.1:${port}`;
    await eventually(async () => (await healthy(base)) || run.child.exitCode !== null, 120_000, 'npm run dev to serve');
    expect(await healthy(base), run.output()).to.equal(true);
    run.child.kill('SIGTERM'); // npm alone, not its process group
    await run.exited;
    await eventually(async () => !(await listening(port)), 30_000, `the registry to stop listening on ${port}:\n${run.output()}`);
    for (const pid of pidsIn(run.output())) {
      await eventually(async () => !alive(pid), 30_000, `the registry (pid ${pid}) to exit`);
    }
    expect(run.output()).to.match(/"signal":"SIGTERM".*shutting down/);
  });

  it('npm run dev:ha: PostgreSQL and two registries on one database; Ctrl-C stops them all', async () => {
    const [a, b, pg] = [await freePort(), await freePort(), await freePort()];
    const run = npm = npmRun('dev:ha', { DEV_HA_PORTS: `${a},${b}`, DEV_HA_PG_PORT: String(pg) }, true);
    const [baseA, baseB] = [`http://127.0.0.1:${a}`, `http://127.0.0.1:${b}`];
    await eventually(async () => ((await healthy(baseA)) && (await healthy(baseB))) || run.child.exitCode !== null, 150_000, 'both instances to serve');
    expect(run.child.exitCode, run.output()).to.equal(null);
    expect(run.output()).to.match(/"engine":"postgres"/);
    // One database: a lease granted through one instance is the one the other shows.
    const granted = await json(baseA, 'POST', '/allocate', { client_id: 'vm-ha' });
    expect(granted.status, run.output()).to.equal(200);
    expect((await json(baseB, 'GET', '/client/vm-ha')).body).to.deep.equal(granted.body);
    const dataDir = /data in (\S+?),/.exec(run.output())?.[1] ?? '';
    expect(existsSync(dataDir), dataDir).to.equal(true);
    const pids = pidsIn(run.output());
    expect(pids.length, run.output()).to.be.at.least(3);

    process.kill(-(run.child.pid ?? 0), 'SIGINT'); // Ctrl-C: the terminal signals the whole foreground group
    const end = await run.exited;
    expect(end.code, run.output()).to.equal(0);
    expect(run.output()).to.include('dev:ha  all stopped');
    for (const port of [a, b, pg]) expect(await listening(port), `port ${port} still open`).to.equal(false);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running:\n${run.output()}`).to.equal(false);
    expect(existsSync(dataDir), 'the temporary database folder is removed').to.equal(false);
  });
});
