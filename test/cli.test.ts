/** idreg against a live registry process (and its database file), asserting what it prints. */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { snapshotDb, tempDir } from './helpers.js';
import { ROOT, json, startProcess } from './process-helpers.js';
import type { RunningRegistry } from './process-helpers.js';

interface Ran { code: number | null; stdout: string; stderr: string }

function idreg(args: string[], env: Record<string, string> = {}, cwd = ROOT): Promise<Ran> {
  const child = spawn(process.execPath, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'src/cli/idreg.ts'), ...args], {
    cwd, env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
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
    expect(lines[0]).to.match(/^IDENTIFIER\s+OWNER\s+EPOCH\s+LAST SEEN\s+STATUS$/);
    expect(lines).to.have.length(5);
    expect(lines[1]).to.match(/^w-0\s+vm-a\s+1\s+\d+s ago\s+leased$/);
    expect(lines[3]).to.match(/^w-2\s+-\s+0\s+-\s+free$/);
  });

  it('list --status filters', async () => {
    const r = await idreg(['list', '--status', 'leased'], env);
    expect(r.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0])).to.deep.equal(['w-0', 'w-1']);
    const bad = await idreg(['list', '--status', 'busy'], env);
    expect(bad.code).to.equal(2); // a usage error, found before asking the registry
    expect(bad.stderr).to.match(/^idreg: list: --status must be one of leased, free, cooling, retired \(not "busy"\)\nusage: idreg/);
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
    expect(none.stderr).to.match(/no identifier or client named nobody/);
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
    expect(none.stderr).to.match(/^error: unauthorized: .*\(HTTP 401\)\nthe registry needs a token: set IDREG_TOKEN \(or --token\) to one of its ADMIN_TOKENS\n$/);
    const wrong = await idreg(['list'], { IDREG_URL: reg.base, IDREG_TOKEN: 'not-the-token-0123456789' });
    expect(wrong.code).to.equal(1);
    expect(wrong.stderr).to.match(/\nthe registry refused the token: set IDREG_TOKEN \(or --token\) to one of its ADMIN_TOKENS\n$/);
    const agent = await idreg(['--token', AGENT, 'list'], { IDREG_URL: reg.base });
    expect(agent.code).to.equal(1);
    expect(agent.stderr).to.match(/error: forbidden/).and.match(/set IDREG_TOKEN \(or --token\) to one of the registry's ADMIN_TOKENS/);
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

  it('a missing argument says what is missing (exit 2)', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['show'], /^idreg: show: missing IDENTIFIER or CLIENT_ID\nusage: idreg/],
      [['history'], /^idreg: history: missing IDENTIFIER\n/],
      [['release'], /^idreg: release: missing IDENTIFIER/],
      [['backup'], /^idreg: backup: missing FILE/],
      [['pool'], /^idreg: pool: missing sync/],
      [[], /^idreg: missing COMMAND/],
      [['--url'], /^idreg: --url needs a value/],
    ];
    for (const [args, message] of cases) {
      const r = await idreg(args, env);
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(message);
    }
  });

  it('pool sync on a database path that cannot be used says why in one line (exit 3)', async () => {
    writeFileSync(join(t.dir, 'plain'), '');
    const r = await idreg(['pool', 'sync', '--db', join(t.dir, 'plain', 'registry.db')], env);
    expect(r.code).to.equal(3);
    expect(r.stderr).to.equal(`error: DB_PATH or --db ${join(t.dir, 'plain', 'registry.db')}: ${join(t.dir, 'plain')} is a file, not a folder, so the database cannot be created in it; point DB_PATH elsewhere or move that file\n`);
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
