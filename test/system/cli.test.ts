/** idreg against a live registry process (and its database file), asserting what it prints. */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { snapshotDb, tempDir } from '../support/helpers.js';
import { ROOT, WALL_CLOCK_PRELOAD, json, startProcess } from '../support/process-helpers.js';
import { freshDatabase } from '../support/postgres.js';
import type { RunningRegistry } from '../support/process-helpers.js';

interface Ran { code: number | null; stdout: string; stderr: string }

function idreg(args: string[], env: Record<string, string> = {}, cwd = ROOT): Promise<Ran> {
  const child = spawn(process.execPath, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'src/cli/idreg.ts'), ...args], {
    cwd, env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

const ADMIN = 'admin-token-0123456789';
const AGENT = 'agent-token-0123456789';

describe('idreg, the operator command', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry;
  let env: Record<string, string>;

  before(async () => {
    t = tempDir();
    reg = await startProcess({
      dir: t.dir, pool: 'w-[0-3]\n',
      env: { ADMIN_TOKENS: ADMIN, AGENT_TOKENS: AGENT, REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0', REAPER_MIN_HOLD: '0', REAPER_MAX_FRACTION: '1' },
    });
    env = { IDREG_URL: reg.base, IDREG_TOKEN: ADMIN, DB_PATH: join(t.dir, 'registry.db') };
    const agent = { authorization: `Bearer ${AGENT}`, 'content-type': 'application/json' };
    for (const c of ['vm-a', 'vm-b']) {
      const r = await fetch(`${reg.base}/allocate`, { method: 'POST', headers: agent, body: JSON.stringify({ client_id: c }) });
      expect(r.status).to.equal(200);
    }
  });
  after(async () => {
    await reg.stop();
    t.cleanup();
  });

  it('list: a table of identifier, owner, epoch, last seen ago, status', async () => {
    const r = await idreg(['list'], env);
    expect(r.code, r.stderr).to.equal(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).to.match(/^IDENTIFIER\s+OWNER\s+EPOCH\s+LAST SEEN\s+STATUS\s+AZ$/);
    expect(lines).to.have.length(5);
    expect(lines[1]).to.match(/^w-0\s+vm-a\s+1\s+\d+s ago\s+leased\s+-$/); // not attested: no zone
    expect(lines[3]).to.match(/^w-2\s+-\s+0\s+-\s+free\s+-$/);
  });

  it('list --status filters', async () => {
    const r = await idreg(['list', '--status', 'leased'], env);
    expect(r.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0])).to.deep.equal(['w-0', 'w-1']);
    const bad = await idreg(['list', '--status', 'busy'], env);
    expect(bad.code).to.equal(2); // a usage error, found before asking the registry
    expect(bad.stderr).to.equal('idreg: list: --status must be one of leased, free, cooling, retired (not "busy")\nsee idreg --help\n');
    const limit = await idreg(['list', '--limit', '0'], env);
    expect(limit.code).to.equal(2);
    expect(limit.stderr).to.match(/^idreg: list: --limit must be a whole number from 1 to 10000/);
  });

  it('show: by identifier, or by client', async () => {
    const byId = await idreg(['show', 'w-1'], env);
    expect(byId.code).to.equal(0);
    expect(byId.stdout).to.match(/^identifier: w-1$/m).and.match(/^status: leased$/m).and.match(/^client_id: vm-b$/m).and.match(/^last_seen: \S+ \(\d+s ago\)$/m);
    const byClient = await idreg(['show', 'vm-a'], env);
    expect(byClient.stdout).to.match(/^identifier: w-0$/m).and.match(/^epoch: 1$/m);
    const none = await idreg(['show', 'nobody'], env);
    expect(none.code).to.equal(1);
    expect(none.stderr).to.equal('idreg: no identifier or client named nobody\n');
  });

  it('release (force) and history', async () => {
    const r = await idreg(['release', 'w-1'], env);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal('w-1: cooling (epoch 1)');
    const h = await idreg(['history', 'w-1'], env);
    const lines = h.stdout.trim().split('\n');
    expect(lines[0]).to.match(/^AT\s+EVENT\s+CLIENT\s+EPOCH$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(1))).to.deep.equal([['allocated', 'vm-b', '1'], ['force_released', 'vm-b', '1']]);
    expect((await json(reg.base, 'GET', '/identifier/w-1')).status).to.equal(401); // the API needs the token; idreg sent it
  });

  it('history follows the pages: a history longer than a page comes whole, oldest first, one request a page', async () => {
    // 2,500 entries written straight into the registry's database file (WAL: the registry sees them at once).
    const db = new Database(join(t.dir, 'registry.db'));
    try {
      db.prepare(`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2500)
        INSERT INTO history (identifier_id, at, event, client_id, epoch)
        SELECT (SELECT id FROM identifiers WHERE name = 'w-3'), 1700000000000 + i * 1000,
               CASE i % 2 WHEN 1 THEN 'allocated' ELSE 'released' END, 'vm-' || ((i + 1) / 2), (i + 1) / 2 FROM c`).run();
    } finally {
      db.close();
    }
    const requests = async (): Promise<number> => {
      const text = await (await fetch(`${reg.base}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith('asg_id_registry_http_request_duration_seconds_count{') &&
        l.includes('route="/identifier/:identifier/history"') && l.includes('status="200"'));
      return line === undefined ? 0 : Number(line.split(' ').pop());
    };
    const before = await requests();
    const h = await idreg(['history', 'w-3'], env);
    expect(h.code, h.stderr).to.equal(0);
    const lines = h.stdout.trim().split('\n');
    expect(lines[0]).to.match(/^AT\s+EVENT\s+CLIENT\s+EPOCH$/);
    expect(lines).to.have.length(2501);
    const rows = lines.slice(1).map((l) => l.split(/\s+/));
    expect(rows[0]).to.deep.equal(['2023-11-14T22:13:21.000Z', 'allocated', 'vm-1', '1']);
    expect(rows[2499]).to.deep.equal([new Date(1700000000000 + 2500 * 1000).toISOString(), 'released', 'vm-1250', '1250']);
    expect(rows.every((r, i) => r[3] === String(Math.floor((i + 2) / 2))), 'every entry once, in order').to.equal(true);
    // Pages of 1,000: three requests, each a bounded answer.
    expect(await requests() - before).to.equal(3);
  });

  it('reap --force', async () => {
    const r = await idreg(['reap', '--force'], env);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal('reclaimed 0');
  });

  it('auth: no token or a wrong one is refused (exit 1) saying to set IDREG_TOKEN; an agent token is forbidden', async () => {
    const none = await idreg(['list'], { IDREG_URL: reg.base });
    expect(none.code).to.equal(1);
    expect(none.stderr).to.match(/^idreg: unauthorized: .*\(HTTP 401\)\nthe registry needs a token: set IDREG_TOKEN \(or --token\) to one of its ADMIN_TOKENS\n$/);
    const wrong = await idreg(['list'], { IDREG_URL: reg.base, IDREG_TOKEN: 'not-the-token-0123456789' });
    expect(wrong.code).to.equal(1);
    expect(wrong.stderr).to.match(/\nthe registry refused the token: set IDREG_TOKEN \(or --token\) to one of its ADMIN_TOKENS\n$/);
    const agent = await idreg(['--token', AGENT, 'list'], { IDREG_URL: reg.base });
    expect(agent.code).to.equal(1);
    expect(agent.stderr).to.match(/^idreg: forbidden/).and.match(/set IDREG_TOKEN \(or --token\) to one of the registry's ADMIN_TOKENS/);
  });

  it('--help and --version answer (exit 0) without asking the registry', async () => {
    const version: unknown = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    const v = await idreg(['--version'], { IDREG_URL: 'http://127.0.0.1:9' });
    expect(v.code).to.equal(0);
    expect(v.stdout).to.equal(`idreg ${typeof version === 'object' && version !== null && 'version' in version ? String(version.version) : '?'}\n`);
    for (const args of [['--help'], ['help'], ['list', '--help']]) {
      const h = await idreg(args, { IDREG_URL: 'http://127.0.0.1:9' });
      expect(h.code, args.join(' ')).to.equal(0);
      expect(h.stdout).to.match(/^usage: idreg /);
    }
  });

  it('the help documents every exit status', async () => {
    const h = await idreg(['--help'], {});
    const statuses = h.stdout.slice(h.stdout.indexOf('exit status:')).split('\n').flatMap((l) => /^ {2}(\d) {2}\S/.exec(l)?.[1] ?? []);
    expect(statuses).to.deep.equal(['0', '1', '2', '3']);
  });

  it('every usage error is one line saying what is wrong, then "see idreg --help" (exit 2), never the whole usage', async function () {
    this.timeout(180_000); // eighteen processes, each compiling idreg on the fly
    const cases: Array<[string[], RegExp]> = [
      [['show'], /^idreg: show: missing IDENTIFIER or CLIENT_ID$/],
      [['history'], /^idreg: history: missing IDENTIFIER$/],
      [['release'], /^idreg: release: missing IDENTIFIER/],
      [['backup'], /^idreg: backup: missing FILE/],
      [['backup', 'a.db', 'b.db'], /^idreg: backup: one FILE only$/],
      [['export'], /^idreg: export: missing FILE/],
      [['import'], /^idreg: import: missing FILE/],
      [['pool'], /^idreg: pool: missing sync$/],
      [['pool', 'tidy'], /^idreg: pool: unknown subcommand tidy/],
      [[], /^idreg: missing COMMAND$/],
      [['frobnicate'], /^idreg: unknown command frobnicate$/],
      [['--url'], /^idreg: --url needs a value$/],
      [['list', '--colour'], /^idreg: list: unknown option --colour$/],
      [['list', '--status'], /^idreg: list: --status needs a value$/],
      [['list', 'extra'], /^idreg: list: unexpected argument extra$/],
      [['list', '--limit', '0'], /^idreg: list: --limit must be a whole number from 1 to 10000/],
      [['reap', '--force=yes'], /^idreg: reap: option --force does not take an argument$/],
      [['pool', 'sync', '--dbpath', 'x'], /^idreg: pool sync: unknown option --dbpath$/],
    ];
    const ran = await Promise.all(cases.map(([args]) => idreg(args, env)));
    for (const [i, [args, message]] of cases.entries()) {
      const r = ran[i] ?? { code: null, stdout: '', stderr: '' };
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stdout, args.join(' ')).to.equal('');
      const lines = r.stderr.split('\n');
      expect(lines, args.join(' ')).to.have.length(3); // the line, the hint, and the final newline
      expect(lines[0], args.join(' ')).to.match(message);
      expect(lines.slice(1), args.join(' ')).to.deep.equal(['see idreg --help', '']);
    }
  });

  it('IDREG_URL or --url without http:// or https:// (or otherwise malformed) is a usage error naming it, not an unreachable registry', async () => {
    const bare = reg.base.replace(/^http:\/\//, ''); // 127.0.0.1:PORT: the registry is there, the URL is what is wrong
    const noScheme = await idreg(['list'], { ...env, IDREG_URL: bare });
    expect(noScheme.code).to.equal(2);
    expect(noScheme.stderr).to.equal(`idreg: IDREG_URL: "${bare}" has no scheme: write it as http://${bare} (or https://…)\nsee idreg --help\n`);
    const flag = await idreg(['--url', bare, 'show', 'w-0'], env);
    expect(flag.code).to.equal(2);
    expect(flag.stderr).to.match(/^idreg: --url: ".*" has no scheme/);
    const cases: Array<[string, RegExp]> = [
      ['ftp://127.0.0.1:8080', /^idreg: IDREG_URL: must start with http:\/\/ or https:\/\/ \(not ftp:\/\/\)\n/],
      ['http://', /^idreg: IDREG_URL: "http:\/\/" is not a URL/],
      [`http://admin:secret@${bare}`, /^idreg: IDREG_URL: must not carry a user or password/],
      [`${reg.base}/?x=1`, /^idreg: IDREG_URL: ".*" must not carry a query or fragment/],
    ];
    for (const [url, message] of cases) {
      const r = await idreg(['list'], { ...env, IDREG_URL: url });
      expect(r.code, url).to.equal(2);
      expect(r.stderr, url).to.match(message).and.not.include('secret');
    }
    // A path is kept (a registry behind a proxy prefix): only the scheme, host and extras are checked.
    const slash = await idreg(['list'], { ...env, IDREG_URL: `${reg.base}/` });
    expect(slash.code, slash.stderr).to.equal(0);
    // Commands that never talk HTTP do not care.
    expect((await idreg(['pool', 'sync', '--db', join(t.dir, 'nope.db')], { ...env, IDREG_URL: bare })).code).to.equal(3);
  });

  it('every failure says "idreg: " first, whatever its kind', async () => {
    const runs = [
      await idreg(['list'], { IDREG_URL: 'http://127.0.0.1:1', IDREG_TOKEN: ADMIN }), // unreachable, 3
      await idreg(['list'], { IDREG_URL: reg.base }), // refused, 1
      await idreg(['show', 'nobody'], env), // not found, 1
      await idreg(['backup', join(t.dir, 'x.db'), '--db', join(t.dir, 'nope.db')], env), // no database, 3
      await idreg(['frobnicate'], env), // usage, 2
    ];
    expect(runs.map((r) => r.code)).to.deep.equal([3, 1, 1, 3, 2]);
    for (const r of runs) expect(r.stderr).to.match(/^idreg: \S/);
  });

  it('pool sync on a database path that cannot be used says why in one line (exit 3)', async () => {
    writeFileSync(join(t.dir, 'plain'), '');
    const r = await idreg(['pool', 'sync', '--db', join(t.dir, 'plain', 'registry.db')], env);
    expect(r.code).to.equal(3);
    expect(r.stderr).to.equal(`idreg: DB_PATH or --db ${join(t.dir, 'plain', 'registry.db')}: ${join(t.dir, 'plain')} is a file, not a folder, so the database cannot be created in it; point DB_PATH elsewhere or move that file\n`);
  });

  it('unreachable registry: exit 3; usage errors: exit 2', async () => {
    const r = await idreg(['list'], { IDREG_URL: 'http://127.0.0.1:9', IDREG_TOKEN: ADMIN });
    expect(r.code).to.equal(3);
    expect(r.stderr).to.match(/cannot reach the registry/);
    expect((await idreg(['frobnicate'], env)).code).to.equal(2);
    expect((await idreg([], env)).code).to.equal(2);
    expect((await idreg(['list', '--colour'], env)).code).to.equal(2);
  });

  it('pool sync on the database file: adds and retires, a bad file changes nothing', async () => {
    const pool = join(t.dir, 'pool2.txt');
    writeFileSync(pool, 'w-[0-2]\nextra\n');
    const r = await idreg(['pool', 'sync', '--pool', pool], env);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal('pool synced: 4 identifiers in the file; 1 added, 1 retired, 0 restored');
    expect((await idreg(['show', 'w-3'], env)).stdout).to.match(/^status: retired$/m); // the running registry sees it
    writeFileSync(pool, 'w-[0-2]\nbad name\n');
    const bad = await idreg(['pool', 'sync', '--pool', pool], env);
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.match(/line 2/).and.match(/unchanged/);
    expect((await idreg(['show', 'extra'], env)).stdout).to.match(/^status: free$/m);
  });

  it('backup: an online copy that passes its integrity check and holds the leases, in one file', async () => {
    const dir = join(t.dir, 'backups');
    mkdirSync(dir);
    const dest = join(dir, 'backup.db');
    const r = await idreg(['backup', dest], env);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/integrity ok/);
    expect(readdirSync(dir)).to.deep.equal(['backup.db']); // no backup.db-wal or -shm beside it
    // Self-contained: copied elsewhere alone, it opens with everything in it.
    const moved = join(t.dir, 'moved.db');
    copyFileSync(dest, moved);
    const db = new Database(moved, { readonly: true });
    try {
      expect(db.prepare(`SELECT client_id FROM identifiers WHERE name = 'w-0'`).get()).to.deep.equal({ client_id: 'vm-a' });
      expect(db.pragma('journal_mode', { simple: true })).to.equal('delete');
    } finally {
      db.close();
    }
  });
});

describe('idreg on database files', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('pool sync and backup refuse a database that does not exist, and create nothing', async () => {
    const pool = join(t.dir, 'pool.txt');
    writeFileSync(pool, 'w-[0-3]\n');
    const typo = await idreg(['pool', 'sync', '--db', join(t.dir, 'typo.db'), '--pool', pool]);
    expect(typo.code).to.equal(3);
    expect(typo.stderr).to.match(/database .*typo\.db does not exist .*--create/);
    // From another folder, without --db or DB_PATH: the default ./data/registry.db is not made there.
    const elsewhere = await idreg(['pool', 'sync', '--pool', pool], {}, t.dir);
    expect(elsewhere.code).to.equal(3);
    expect(elsewhere.stderr).to.include(join(t.dir, 'data/registry.db'));
    const backup = await idreg(['backup', join(t.dir, 'copy.db'), '--db', join(t.dir, 'nope.db')]);
    expect(backup.code).to.equal(3);
    expect(backup.stderr).to.match(/nope\.db does not exist/);
    expect(readdirSync(t.dir)).to.deep.equal(['pool.txt']);
  });

  it('backup and export refuse to replace an existing FILE unless --force (exit 2, nothing written)', async () => {
    const db = join(t.dir, 'registry.db');
    const pool = join(t.dir, 'pool.txt');
    writeFileSync(pool, 'w-[0-3]\n');
    expect((await idreg(['pool', 'sync', '--create', '--db', db, '--pool', pool])).code).to.equal(0);
    const before = snapshotDb(db);
    for (const cmd of ['backup', 'export']) {
      const dest = join(t.dir, `${cmd}.out`);
      writeFileSync(dest, 'precious\n');
      const refused = await idreg([cmd, dest, '--db', db]);
      expect(refused.code, cmd).to.equal(2);
      expect(refused.stderr, cmd).to.equal(`idreg: ${cmd}: ${dest} already exists; nothing written (--force replaces it)\nsee idreg --help\n`);
      expect(readFileSync(dest, 'utf8'), cmd).to.equal('precious\n');
      const forced = await idreg([cmd, dest, '--db', db, '--force']);
      expect(forced.code, forced.stderr).to.equal(0);
      expect(readFileSync(dest).subarray(0, 16).toString(), cmd).to.equal(cmd === 'backup' ? 'SQLite format 3\0' : '{"format":"asg-i');
      // Not even with --force onto the database it reads, nor onto a folder.
      const self = await idreg([cmd, db, '--db', db, '--force']);
      expect(self.code, cmd).to.equal(2);
      expect(self.stderr, cmd).to.match(/is the database itself/);
      const folder = await idreg([cmd, t.dir, '--db', db, '--force']);
      expect(folder.code, cmd).to.equal(2);
      expect(folder.stderr, cmd).to.match(/is a folder/);
    }
    // A new name is written as before; no partial file is left anywhere.
    expect((await idreg(['export', join(t.dir, 'fresh.dump'), '--db', db])).code).to.equal(0);
    expect((await idreg(['backup', join(t.dir, 'fresh.db'), '--db', db])).code).to.equal(0);
    // (registry.db-wal and -shm may stay beside the database: a read-only reader cannot remove them.)
    expect(readdirSync(t.dir).filter((f) => !f.startsWith('registry.db-')).sort())
      .to.deep.equal(['backup.out', 'export.out', 'fresh.db', 'fresh.dump', 'pool.txt', 'registry.db']);
    expect(snapshotDb(db)).to.equal(before);
  });

  it('pool sync --create makes a new database', async () => {
    const pool = join(t.dir, 'pool.txt');
    writeFileSync(pool, 'w-[0-3]\n');
    const r = await idreg(['pool', 'sync', '--create', '--db', join(t.dir, 'new/registry.db'), '--pool', pool]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal('pool synced: 4 identifiers in the file; 4 added, 0 retired, 0 restored');
    expect(existsSync(join(t.dir, 'new/registry.db'))).to.equal(true);
  });

  it('pool sync refuses to retire more than half of the pool unless --force', async () => {
    const db = join(t.dir, 'registry.db');
    const pool = join(t.dir, 'pool.txt');
    writeFileSync(pool, 'w-[0-9]\n');
    expect((await idreg(['pool', 'sync', '--create', '--db', db, '--pool', pool])).code).to.equal(0);
    const before = snapshotDb(db);
    writeFileSync(pool, '');
    const refused = await idreg(['pool', 'sync', '--db', db, '--pool', pool]);
    expect(refused.code).to.equal(1);
    expect(refused.stderr).to.match(/would retire 10 of the 10 .*idreg pool sync --force/);
    expect(snapshotDb(db)).to.equal(before);
    writeFileSync(pool, 'w-[0-3]\n');
    const forced = await idreg(['pool', 'sync', '--force', '--db', db, '--pool', pool]);
    expect(forced.code, forced.stderr).to.equal(0);
    expect(forced.stdout.trim()).to.equal('pool synced: 4 identifiers in the file; 0 added, 6 retired, 0 restored');
  });
});

describe('idreg export / import between registries whose clocks disagree', function () {
  this.timeout(120_000);
  let t: ReturnType<typeof tempDir>;
  const running: RunningRegistry[] = [];
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await Promise.all(running.splice(0).map((r) => r.stop('SIGKILL')));
    t.cleanup();
  });

  const ENV = { LEASE_TTL_SECONDS: '600', REUSE_COOLDOWN_SECONDS: '300', STARTUP_GRACE_SECONDS: '600', REAPER_SCHEDULE: '0 0 1 1 *' };
  const field = (body: unknown, k: string): string => String(typeof body === 'object' && body !== null && k in body ? Object.fromEntries(Object.entries(body))[k] : '');
  const time = (body: unknown, k: string): number => Date.parse(field(body, k));

  async function start(dir: string, env: Record<string, string> = {}, nodeArgs: string[] = []): Promise<RunningRegistry> {
    mkdirSync(dir, { recursive: true });
    const r = await startProcess({ dir, pool: 'w-0\nw-1\n', env: { ...ENV, ...env }, nodeArgs });
    running.push(r);
    return r;
  }

  /** What a move must keep: w-0 leased to vm-a, w-1 cooling after a force release, with these times as the target shows them. */
  async function checkMoved(base: string, movedAfter: number, movedBefore: number, liveAt: number, forcedAt: number): Promise<void> {
    const w0 = (await json(base, 'GET', '/identifier/w-0')).body;
    const w1 = (await json(base, 'GET', '/identifier/w-1')).body;
    expect(field(w0, 'client_id')).to.equal('vm-a');
    expect(field(w1, 'status')).to.equal('cooling');
    // The lease keeps what it had left: its last liveness sits where the real moment of it was
    // (give or take the move itself, which is not counted as spent), not 10 minutes earlier.
    expect(time(w0, 'last_seen'), 'last_seen not moved back').to.be.at.least(liveAt);
    expect(time(w0, 'last_seen'), 'moved forward by no more than the move took').to.be.below(liveAt + (movedBefore - movedAfter) + 60_000);
    expect(time(w0, 'expires_at') - time(w0, 'last_seen')).to.equal(600_000);
    // The cool-down keeps what it had left: it ends 300 s after the real force release, or later.
    expect(time(w1, 'available_at'), 'the cool-down is not shortened').to.be.at.least(forcedAt + 300_000);
    expect(time(w1, 'available_at'), 'nor lengthened by more than the move took').to.be.below(forcedAt + 300_000 + (movedBefore - movedAfter) + 60_000);
    // The history moved with it, on one timeline with the leases.
    const history = (await json(base, 'GET', '/identifier/w-1/history')).body;
    const last = Array.isArray(history) ? history[history.length - 1] : null;
    expect(field(last, 'event')).to.equal('force_released');
    expect(time(last, 'at')).to.be.at.least(forcedAt);
    // What a VM notices: the identifier cooling is not handed out, vm-a keeps its lease and epoch.
    const late = await json(base, 'POST', '/allocate', { client_id: 'vm-late' });
    expect(late.status, JSON.stringify(late.body)).to.equal(503);
    const again = await json(base, 'POST', '/allocate', { client_id: 'vm-a' });
    expect([field(again.body, 'identifier'), field(again.body, 'epoch')]).to.deep.equal(['w-0', '1']);
  }

  it('a SQLite registry anchored 10 minutes behind, moved to SQLite, to PostgreSQL and back: every lease and cool-down keeps what it had left', async () => {
    // The source registry's host clock was 10 minutes behind when it anchored its time.
    const src = join(t.dir, 'src');
    const old = await start(src, { WALL_OFFSET_MS: String(-600_000) }, ['--import', WALL_CLOCK_PRELOAD]);
    expect((await json(old.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
    expect((await json(old.base, 'POST', '/allocate', { client_id: 'vm-b' })).status).to.equal(200);
    const forcedAt = Date.now();
    const forced = await json(old.base, 'DELETE', '/identifier/w-1');
    expect(time(forced.body, 'available_at'), 'registry time 10 minutes behind').to.be.below(forcedAt - 250_000);
    const liveAt = Date.now();
    expect((await json(old.base, 'POST', '/liveness', { client_id: 'vm-a', identifier: 'w-0' })).status).to.equal(200);
    expect((await old.stop()).code).to.equal(0);
    running.splice(0);

    // Exported with the machine's own clock (corrected since): the dump carries registry time.
    const movedAfter = Date.now();
    const file = join(t.dir, 'registry.dump');
    const exported = await idreg(['export', file], { DB_PATH: join(src, 'registry.db') });
    expect(exported.code, exported.stderr).to.equal(0);

    // SQLite -> SQLite.
    const toSqlite = join(t.dir, 'sqlite');
    mkdirSync(toSqlite);
    const imported = await idreg(['import', file], { DB_PATH: join(toSqlite, 'registry.db') });
    expect(imported.code, imported.stderr).to.equal(0);
    expect(imported.stdout).to.match(/times moved \+\d+ ms onto the target's clock/);
    const sqliteTarget = await start(toSqlite);
    await checkMoved(sqliteTarget.base, movedAfter, Date.now(), liveAt, forcedAt);

    // SQLite -> PostgreSQL, from the same dump.
    const url = await freshDatabase();
    const toPg = await idreg(['import', file], { DATABASE_URL: url });
    expect(toPg.code, toPg.stderr).to.equal(0);
    const pgTarget = await start(join(t.dir, 'pg'), { DATABASE_URL: url });
    await checkMoved(pgTarget.base, movedAfter, Date.now(), liveAt, forcedAt);
    await pgTarget.stop();

    // PostgreSQL -> SQLite: the way back keeps them too.
    const back = join(t.dir, 'back.dump');
    expect((await idreg(['export', back], { DATABASE_URL: url })).code).to.equal(0);
    const toBack = join(t.dir, 'back');
    mkdirSync(toBack);
    const reimported = await idreg(['import', back], { DB_PATH: join(toBack, 'registry.db') });
    expect(reimported.code, reimported.stderr).to.equal(0);
    const backTarget = await start(toBack);
    await checkMoved(backTarget.base, movedAfter, Date.now(), liveAt, forcedAt);
  });

  it('a version 1 dump (no registry time at export) is measured from the latest time written in it: nothing shorter', async () => {
    // As the previous version wrote it: exported_at the host's wall clock, 10 minutes after the
    // registry time of every time in the file.
    const now = Date.now();
    const lines = [
      { format: 'asg-id-registry-dump', version: 1, engine: 'sqlite', exported_at: now, identifiers: 2, history: 3, meta: 0 },
      { identifier: { name: 'w-0', pool_order: 0, retired: false, epoch: 1, client_id: 'vm-a', allocated_at: now - 605_000, last_seen: now - 600_000, available_at: 0 } },
      { identifier: { name: 'w-1', pool_order: 1, retired: false, epoch: 1, client_id: null, allocated_at: null, last_seen: null, available_at: now - 600_000 + 300_000 } },
      { history: { identifier: 'w-0', at: now - 605_000, event: 'allocated', client_id: 'vm-a', epoch: 1 } },
      { history: { identifier: 'w-1', at: now - 604_000, event: 'allocated', client_id: 'vm-b', epoch: 1 } },
      { history: { identifier: 'w-1', at: now - 600_000, event: 'force_released', client_id: 'vm-b', epoch: 1 } },
    ];
    const file = join(t.dir, 'v1.dump');
    writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
    const dir = join(t.dir, 'v1');
    mkdirSync(dir);
    const before = Date.now();
    const imported = await idreg(['import', file], { DB_PATH: join(dir, 'registry.db') });
    expect(imported.code, imported.stderr).to.equal(0);
    expect(imported.stdout).to.match(/version 1 dump: measured from the latest time written in it/);
    const target = await start(dir);
    // The latest time written (the force release) is taken as the export: the cool-down has its
    // whole 300 s from the import, the lease its whole TTL.
    await checkMoved(target.base, before, Date.now(), before, before);
  });
});
