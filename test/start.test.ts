/**
 * `npm start`, as a newcomer runs it: npm passes SIGTERM and SIGINT on, and the start script
 * execs node, so they reach the registry itself (with a shell between, dash would die and
 * leave node serving). npm does not pass SIGHUP on: the README says to send it to the pid
 * that every log line carries, and that works.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';
import { ROOT, buildOnce, eventually, freePort, json } from './process-helpers.js';

interface NpmStart {
  readonly npm: ChildProcess;
  readonly base: string;
  readonly exited: Promise<number | null>;
  output(): string;
  /** The registry's pid, from its log. */
  registryPid(): number;
}

async function npmStart(dir: string, pool: string): Promise<NpmStart> {
  const port = await freePort();
  writeFileSync(join(dir, 'pool.txt'), pool);
  const npm = spawn('npm', ['start'], {
    cwd: ROOT,
    env: { PATH: process.env['PATH'] ?? '', HOST: '127.0.0.1', PORT: String(port), DB_PATH: join(dir, 'registry.db'), POOL_FILE: join(dir, 'pool.txt') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  npm.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  npm.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => npm.on('exit', (code) => resolve(code)));
  const base = `http://127.0.0.1:${port}`;
  await eventually(async () => {
    try {
      return (await fetch(`${base}/health`)).status === 200;
    } catch {
      return false;
    }
  }, 20_000, 'npm start to serve');
  return {
    npm, base, exited, output: () => out,
    registryPid() {
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue;
        const l: unknown = JSON.parse(line);
        if (typeof l === 'object' && l !== null && 'msg' in l && l.msg === 'asg-id-registry listening' && 'pid' in l && typeof l.pid === 'number') return l.pid;
      }
      throw new Error(`no pid in the log:\n${out}`);
    },
  };
}

/** The parent of a process, from /proc (Linux). */
function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

/** The children of a process, from /proc (Linux). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function refused(base: string): Promise<boolean> {
  try {
    await fetch(`${base}/health`);
    return false;
  } catch {
    return true;
  }
}

describe('npm start', function () {
  this.timeout(90_000);
  let t: ReturnType<typeof tempDir>;
  let running: NpmStart | null = null;
  before(() => buildOnce());
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    // Whatever a failed test left: the registry by its logged pid, then npm.
    if (running && running.npm.exitCode === null) {
      // By its logged pid, else as npm's child (a test that failed before the log said it).
      const npmPid = running.npm.pid ?? 0;
      let pids: number[] = [];
      try { pids = [running.registryPid()]; } catch { pids = childrenOf(npmPid); }
      for (const pid of pids) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
      running.npm.kill('SIGKILL');
      await running.exited;
    }
    running = null;
    t.cleanup();
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} to the npm process stops the registry gracefully, and npm with it`, async () => {
      running = await npmStart(t.dir, 'w-[0-2]\n');
      const pid = running.registryPid();
      expect(parentOf(pid), 'node is npm\'s own child: no shell between').to.equal(running.npm.pid);
      expect((await json(running.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
      running.npm.kill(signal);
      await running.exited;
      expect(running.output()).to.include(`"signal":"${signal}"`).and.include('database closed; bye');
      expect(await refused(running.base), 'nothing listens any more').to.equal(true);
    });
  }

  it('SIGHUP to the pid in the log re-reads the pool while npm start runs', async () => {
    running = await npmStart(t.dir, 'a\n');
    writeFileSync(join(t.dir, 'pool.txt'), 'a\nb\n');
    process.kill(running.registryPid(), 'SIGHUP');
    const base = running.base;
    await eventually(async () => (await json(base, 'GET', '/identifier/b')).status === 200, 10_000, 'b to be added');
    running.npm.kill('SIGTERM');
    await running.exited;
    expect(await refused(running.base)).to.equal(true);
  });
});
