import { expect } from 'chai';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../../src/config.js';
import { LOG_FLUSH_MS } from '../../src/log.js';
import { snapshotDb, tempDir } from '../support/helpers.js';
import { ROOT, eventually, json, startProcess } from '../support/process-helpers.js';

function field(body: unknown, k: string): unknown {
  return typeof body === 'object' && body !== null && k in body ? Object.fromEntries(Object.entries(body))[k] : undefined;
}

describe('the registry process', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('stops at start-up with one line naming a bad variable', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'a\n', env: { LEASE_TTL_SECONDS: 'soon' }, wait: false });
    const { code } = await reg.exited;
    expect(code).to.equal(78); // EX_CONFIG
    const lines = reg.output().trim().split('\n');
    expect(lines).to.have.length(1);
    expect(lines[0]).to.match(/LEASE_TTL_SECONDS/);
  });

  it('--help and --version answer and exit without opening or serving anything', async () => {
    const version: unknown = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    const v = await startProcess({ dir: t.dir, pool: 'a\n', args: ['--version'], wait: false });
    expect((await v.exited).code).to.equal(0);
    expect(v.output()).to.equal(`asg-id-registry ${typeof version === 'object' && version !== null && 'version' in version ? String(version.version) : '?'}\n`);
    const h = await startProcess({ dir: t.dir, pool: 'a\n', args: ['--help'], wait: false });
    expect((await h.exited).code).to.equal(0);
    expect(h.output()).to.match(/^usage: asg-id-registry \[--help \| --version\]/);
    // Every variable the configuration reads is in the help.
    const read = new Set<string>();
    loadConfig(new Proxy({}, { get: (_, k) => { if (typeof k === 'string') read.add(k); return undefined; } }));
    expect(read.size).to.be.greaterThan(10);
    for (const name of read) expect(h.output(), name).to.include(name);
    // Any other argument: test/system/start.test.ts.
    expect(existsSync(join(t.dir, 'registry.db')), 'no database was created').to.equal(false);
  });

  it('a database path that cannot be used stops start-up with one line naming DB_PATH and why, exit 78', async () => {
    writeFileSync(join(t.dir, 'plain'), 'not a folder\n');
    writeFileSync(join(t.dir, 'junk.db'), 'not a database either, but long enough to have a header? no.\n'.repeat(20));
    mkdirSync(join(t.dir, 'folder'));
    const cases: Array<[dbPath: string, why: RegExp]> = [
      [join(t.dir, 'plain', 'sub', 'registry.db'), /plain is a file, not a folder/],
      [join(t.dir, 'plain', 'registry.db'), /plain is a file, not a folder/],
      [join(t.dir, 'folder'), /folder is a folder; DB_PATH names the database file itself/],
      [join(t.dir, 'junk.db'), /junk\.db is not a usable SQLite database/],
    ];
    for (const [dbPath, why] of cases) {
      const reg = await startProcess({ dir: t.dir, pool: 'a\n', env: { DB_PATH: dbPath }, wait: false });
      expect((await reg.exited).code, reg.output()).to.equal(78);
      const lines = reg.output().trim().split('\n');
      expect(lines, reg.output()).to.have.length(1);
      expect(lines[0]).to.include(`DB_PATH=${dbPath}: `).and.match(why);
    }
  });

  it('a database folder or file the registry\'s user may not write: the line names it and the user, exit 78', async () => {
    // As root, permissions bind only another user: run the registry as nobody. Otherwise as ourselves.
    const asRoot = process.getuid?.() === 0;
    const locked = join(t.dir, 'locked');
    mkdirSync(locked);
    chmodSync(t.dir, 0o755);
    chmodSync(locked, asRoot ? 0o755 : 0o555);
    writeFileSync(join(t.dir, 'pool.txt'), 'a\n');
    chmodSync(join(t.dir, 'pool.txt'), 0o644);
    try {
      const reg = await startProcess({
        dir: t.dir, env: { DB_PATH: join(locked, 'registry.db') }, wait: false,
        ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
      });
      expect((await reg.exited).code, reg.output()).to.equal(78);
      expect(reg.output().trim()).to.match(new RegExp(`^asg-id-registry: DB_PATH=${locked}/registry\\.db: user \\S+ \\(uid ${asRoot ? 65534 : process.getuid?.()}\\) may not create registry\\.db in ${locked} \\(permission denied\\)`));
      // A database the user may read but not write ("the database is read-only" before).
      const made = join(t.dir, 'made');
      const first = await startProcess({ dir: t.dir, env: { DB_PATH: join(made, 'registry.db') } });
      expect((await first.stop()).code).to.equal(0);
      chmodSync(made, asRoot ? 0o755 : 0o555);
      chmodSync(join(made, 'registry.db'), asRoot ? 0o644 : 0o444);
      const ro = await startProcess({
        dir: t.dir, env: { DB_PATH: join(made, 'registry.db') }, wait: false,
        ...(asRoot ? { uid: 65534, gid: 65534 } : {}),
      });
      expect((await ro.exited).code, ro.output()).to.equal(78);
      expect(ro.output().trim()).to.match(new RegExp(`^asg-id-registry: DB_PATH=${made}/registry\\.db: ${made}/registry\\.db is read-only for user \\S+ \\(uid \\d+\\)`));
      chmodSync(made, 0o755);
    } finally {
      chmodSync(locked, 0o755);
    }
  });

  it('a malformed pool line stops start-up with its line number and leaves the database as it was', async () => {
    const first = await startProcess({ dir: t.dir, pool: 'w-[0-2]\n' });
    expect((await json(first.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
    expect((await first.stop()).code).to.equal(0);
    const dbPath = join(t.dir, 'registry.db');
    const before = snapshotDb(dbPath);
    const bad = await startProcess({ dir: t.dir, pool: 'w-[0-2]\nnew-one\nw-[5-x]\n', wait: false });
    expect((await bad.exited).code).to.equal(78);
    expect(bad.output()).to.match(/line 3/);
    expect(snapshotDb(dbPath)).to.equal(before);
  });

  it('a start-up with the pool file unchanged skips the sync; a changed file is synced', async () => {
    const first = await startProcess({ dir: t.dir, pool: 'w-[0-2]\n' });
    await first.stop();
    expect(first.output()).to.match(/"msg":"pool synced"/);
    const again = await startProcess({ dir: t.dir });
    await again.stop();
    expect(again.output()).to.match(/pool file unchanged since the last sync/).and.not.match(/"msg":"pool synced"/);
    writeFileSync(join(t.dir, 'pool.txt'), 'w-[0-3]\n');
    const changed = await startProcess({ dir: t.dir });
    try {
      expect((await json(changed.base, 'GET', '/identifier/w-3')).status).to.equal(200);
    } finally {
      await changed.stop();
    }
    expect(changed.output()).to.match(/"added":1,.*"msg":"pool synced"/);
  });

  it('SIGHUP re-reads the pool: adds, retires, keeps a held lease', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'a\nb\n' });
    try {
      expect(field((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' })).body, 'identifier')).to.equal('a');
      writeFileSync(join(t.dir, 'pool.txt'), 'b\nc\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => (await json(reg.base, 'GET', '/identifier/c')).status === 200, 10_000, 'c to be added');
      expect(field((await json(reg.base, 'GET', '/identifier/a')).body, 'status')).to.equal('leased');
      expect(field((await json(reg.base, 'POST', '/release', { client_id: 'vm-a', identifier: 'a' })).body, 'status')).to.equal('retired');
      // A bad file on SIGHUP is refused and the registry carries on with the pool it has.
      writeFileSync(join(t.dir, 'pool.txt'), 'b\n[oops\n');
      reg.child.kill('SIGHUP');
      await eventually(async () => /pool reload failed/.test(reg.output()), 10_000, 'the reload failure to be logged');
      expect(field((await json(reg.base, 'GET', '/identifier/c')).body, 'status')).to.equal('free');
    } finally {
      await reg.stop();
    }
  });

  it('SIGTERM finishes cleanly: exit 0, database closed, grants kept', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'w-[0-9]\n' });
    const grants = await Promise.all(Array.from({ length: 5 }, (_, i) => json(reg.base, 'POST', '/allocate', { client_id: `vm-${i}` })));
    expect(grants.every((g) => g.status === 200)).to.equal(true);
    const { code } = await reg.stop('SIGTERM');
    expect(code).to.equal(0);
    expect(reg.output()).to.match(/database closed/);
    const db = new Database(join(t.dir, 'registry.db'), { readonly: true });
    try {
      expect(db.prepare('SELECT count(*) AS n FROM identifiers WHERE client_id IS NOT NULL').get()).to.deep.equal({ n: 5 });
      expect(db.prepare('PRAGMA integrity_check').get()).to.deep.equal({ integrity_check: 'ok' });
    } finally {
      db.close();
    }
  });

  it('the cron reaper reclaims a silent lease on schedule', async () => {
    const reg = await startProcess({
      dir: t.dir, pool: 'only\n',
      env: { LEASE_TTL_SECONDS: '1', REAPER_SCHEDULE: '* * * * * *', REUSE_COOLDOWN_SECONDS: '0', STARTUP_GRACE_SECONDS: '0' },
    });
    try {
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
      await eventually(async () => (await json(reg.base, 'GET', '/client/vm-a')).status === 404, 10_000, 'the lease to be reclaimed');
      const history = (await json(reg.base, 'GET', '/identifier/only/history')).body;
      expect(Array.isArray(history) ? history.map((h) => field(h, 'event')) : history).to.deep.equal(['allocated', 'reclaimed']);
    } finally {
      await reg.stop();
    }
  });

  it('log lines are buffered, yet a quiet line is out within the flush interval (plus the machine\'s slack) and none is lost at exit', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'w-[0-299]\n' });
    const count = (msg: string): number => reg.output().split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;
    try {
      expect((await json(reg.base, 'POST', '/allocate', { client_id: 'first' })).status).to.equal(200);
      // Out by the flush timer (LOG_FLUSH_MS, 200 ms), not by the 8 KB a busy registry fills or by
      // the exit: seen here within that, plus how late a loaded 2-core machine runs the timer and
      // delivers the pipe (1.5 s), of the time the line itself carries.
      await eventually(async () => count('ownership allocated') === 1, 10_000, 'the allocation to be logged');
      const seenAt = Date.now();
      const line = reg.output().split('\n').find((l) => l.includes('"msg":"ownership allocated"')) ?? '';
      const loggedAt = Date.parse(String((JSON.parse(line) as { time?: unknown }).time));
      expect(seenAt - loggedAt, line).to.be.below(LOG_FLUSH_MS + 1_500);
      const grants = await Promise.all(Array.from({ length: 299 }, (_, i) => json(reg.base, 'POST', '/allocate', { client_id: `vm-${i}` })));
      expect(grants.every((g) => g.status === 200)).to.equal(true);
    } finally {
      expect((await reg.stop('SIGTERM')).code).to.equal(0);
    }
    expect(count('ownership allocated')).to.equal(300);
    expect(reg.output().split('\n').filter((l) => l.includes('"msg":"request"') && l.includes('"route":"/allocate"'))).to.have.length(300);
    expect(reg.output().trim().split('\n').at(-1)).to.include('database closed; bye');
  });

  it('exposes process metrics and writes only JSON log lines, level by name', async () => {
    const reg = await startProcess({ dir: t.dir, pool: 'w-[0-2]\n' });
    try {
      await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' });
      await json(reg.base, 'POST', '/liveness', { client_id: 'vm-b', identifier: 'w-0' });
      const metrics = await (await fetch(`${reg.base}/metrics`)).text();
      for (const name of ['asg_id_registry_process_cpu_user_seconds_total', 'asg_id_registry_process_resident_memory_bytes',
        'asg_id_registry_nodejs_eventloop_lag_seconds', 'asg_id_registry_allocations_total 1', 'asg_id_registry_pool_identifiers{status="leased"} 1']) {
        expect(metrics).to.include(name);
      }
    } finally {
      await reg.stop();
    }
    const lines = reg.output().trim().split('\n');
    expect(lines.length).to.be.greaterThan(4);
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(parsed.map((l) => l['msg'])).to.include.members(['asg-id-registry listening', 'request', 'ownership allocated', 'database closed; bye']);
    expect(parsed.find((l) => l['msg'] === 'request' && l['status'] === 409)).to.include({
      level: 'info', route: '/liveness', error_code: 'not_owner', client_id: 'vm-b', remote_addr: '127.0.0.1', pid: reg.child.pid,
    });
  });

  it('serves the shipped seed pool: 1,024 worker ids, handed out from worker-0000', async () => {
    const reg = await startProcess({ dir: t.dir, env: { POOL_FILE: join(ROOT, 'seed/identifiers.txt') } });
    try {
      expect(field(field((await json(reg.base, 'GET', '/health')).body, 'pool'), 'total')).to.equal(1024);
      expect(field((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' })).body, 'identifier')).to.equal('worker-0000');
    } finally {
      await reg.stop();
    }
  });
});
