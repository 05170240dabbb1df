/**
 * `npm start`, as a newcomer runs it: npm passes SIGTERM and SIGINT on, and the start script
 * execs node, so they reach the registry itself (with a shell between, dash would die and
 * leave node serving). npm does not pass SIGHUP on: docs/operations.md ("The registry's command line and signals") says to send it to the pid
 * that every log line carries, and that works.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT, buildOnce, eventually, freePort, json, startProcess } from '../support/process-helpers.js';

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

/** dist/main.js run by hand, as a newcomer tries it: `node dist/main.js --port 19000`. */
function runMain(args: readonly string[], dir: string, viaNpm = false): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env = { PATH: process.env['PATH'] ?? '', DB_PATH: join(dir, 'registry.db'), POOL_FILE: join(dir, 'pool.txt') };
  const child = viaNpm
    ? spawn('npm', ['start', '--silent', '--', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, [join(ROOT, 'dist/main.js'), ...args], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('the registry\'s command line (node dist/main.js ARGS)', function () {
  this.timeout(90_000);
  let t: ReturnType<typeof tempDir>;
  before(() => buildOnce());
  beforeEach(() => {
    t = tempDir();
    writeFileSync(join(t.dir, 'pool.txt'), 'w-[0-2]\n');
  });
  afterEach(() => t.cleanup());

  it('--port 19000 and --port=19000 are refused alike: one line naming PORT=19000, exit 78, nothing opened or served', async () => {
    const port = await freePort();
    const spaced = await runMain(['--port', String(port)], t.dir);
    const joined = await runMain([`--port=${port}`], t.dir);
    const line = `asg-id-registry: --port is not an argument: settings are environment variables, e.g. PORT=${port} node dist/main.js (see --help)\n`;
    for (const r of [spaced, joined]) {
      expect(r.code).to.equal(78);
      expect(r.stderr).to.equal(line);
      expect(r.stdout).to.equal('');
    }
    expect(await refused(`http://127.0.0.1:${port}`), 'nothing listens on the port it named').to.equal(true);
    expect(readdirSync(t.dir), 'no database was created').to.deep.equal(['pool.txt']);
  });

  it('any other argument, anywhere on the line, is one line and exit 78 too; --help and --version alone answer', async () => {
    const cases: Array<[string[], string]> = [
      [['serve'], 'unknown argument serve: the registry takes only --help or --version; settings are environment variables (see --help)'],
      [['-p', '1'], 'unknown argument -p: the registry takes only --help or --version; settings are environment variables (see --help)'],
      [['--help', 'extra'], 'unknown argument extra: the registry takes only --help or --version; settings are environment variables (see --help)'],
      [['--db-path', '/tmp/x.db'], '--db-path is not an argument: settings are environment variables, e.g. DB_PATH=/tmp/x.db node dist/main.js (see --help)'],
      [['--allow-open'], '--allow-open is not an argument: settings are environment variables, e.g. ALLOW_OPEN=… node dist/main.js (see --help)'],
    ];
    for (const [args, message] of cases) {
      const r = await runMain(args, t.dir);
      expect(r.code, args.join(' ')).to.equal(78);
      expect(r.stderr, args.join(' ')).to.equal(`asg-id-registry: ${message}\n`);
    }
    const help = await runMain(['--help'], t.dir);
    expect(help.code).to.equal(0);
    expect(help.stdout).to.match(/^usage: asg-id-registry \[--help \| --version\]/).and.match(/^ {2}78 .*\n.*or any argument but --help \/ --version/m);
    expect((await runMain(['-V'], t.dir)).stdout).to.match(/^asg-id-registry \d+\.\d+\.\d+\n$/);
    expect(existsSync(join(t.dir, 'registry.db'))).to.equal(false);
  });

  it('npm start -- --port 19000: the same line and status through npm', async () => {
    const port = await freePort();
    const r = await runMain(['--port', String(port)], t.dir, true);
    expect(r.code).to.equal(78);
    expect(r.stderr.split('\n')[0]).to.equal(`asg-id-registry: --port is not an argument: settings are environment variables, e.g. PORT=${port} node dist/main.js (see --help)`);
    expect(await refused(`http://127.0.0.1:${port}`)).to.equal(true);
  });
});

describe('start-up: durations are whole milliseconds', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  // Once, REUSE_COOLDOWN_SECONDS=2.0005 started fine and then every force release and sweep was
  // a 500 (the store could not hold a cool-down of 2000.5 ms) and the reaper stopped.
  for (const name of ['REUSE_COOLDOWN_SECONDS', 'LEASE_TTL_SECONDS', 'STARTUP_GRACE_SECONDS']) {
    it(`${name}=2.0005 stops start-up with one line naming it, exit 78, and creates nothing`, async () => {
      const reg = await startProcess({ dir: t.dir, pool: 'a\n', env: { [name]: '2.0005' }, wait: false });
      const { code } = await reg.exited;
      expect(code, reg.output()).to.equal(78);
      const lines = reg.output().trim().split('\n');
      expect(lines, reg.output()).to.have.length(1);
      expect(lines[0]).to.include(`${name}: 2.0005`).and.include('millisecond');
      expect(existsSync(join(t.dir, 'registry.db')), 'no database was created').to.equal(false);
    });
  }

  it('three decimals are served exactly: a force release and a sweep with REUSE_COOLDOWN_SECONDS=2.001, LEASE_TTL_SECONDS=0.501', async () => {
    const reg = await startProcess({
      dir: t.dir, pool: 'a\nb\n',
      env: { REUSE_COOLDOWN_SECONDS: '2.001', LEASE_TTL_SECONDS: '0.501', STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '0 0 1 1 *' },
    });
    try {
      const a = await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' });
      expect(a.status).to.equal(200);
      expect(a.body).to.include({ fence_after_ms: 1980 }); // floor(2001 * 0.99)
      const forced = await json(reg.base, 'DELETE', '/identifier/a');
      expect(forced.status, JSON.stringify(forced.body)).to.equal(200);
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-b' })).status).to.equal(200);
      // vm-b's lease expires 501 ms after its grant: a forced sweep reclaims it, no 500.
      await eventually(async () => {
        const r = await json(reg.base, 'POST', '/admin/reap?force=true');
        expect(r.status, JSON.stringify(r.body)).to.equal(200);
        return (r.body as { reclaimed?: number }).reclaimed === 1;
      }, 10_000, 'the expired lease to be reclaimed');
      const b = await json(reg.base, 'GET', '/identifier/b');
      expect(b.body).to.include({ status: 'cooling' });
    } finally {
      await reg.stop();
    }
  });
});
