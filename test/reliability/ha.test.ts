/**
 * High availability (issue 11): several real registry processes on one PostgreSQL database
 * (DATABASE_URL), as they run across availability zones behind a load balancer. Uniqueness,
 * same-client answers, durability and cool-downs must hold across them, through the loss of an
 * instance, an outage of the database, and host clocks that disagree.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT, WALL_CLOCK_PRELOAD, eventually, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { TestPostgres, freshDatabase, sharedPostgres } from '../support/postgres.js';

const ENV = { LEASE_TTL_SECONDS: '3600', STARTUP_GRACE_SECONDS: '3600', REAPER_SCHEDULE: '0 0 1 1 *', LOG_LEVEL: 'warn' };

interface Answer { status: number; body: Record<string, unknown>; retryAfter: string | null }

const agent = new Agent({ keepAlive: true, maxSockets: 48 });

/** One request; resolves with the answer, or null when the connection failed (a dead instance). */
function send(base: string, method: string, path: string, body?: unknown): Promise<Answer | null> {
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve) => {
    const req = request(new URL(path, base), {
      method, agent,
      headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {},
    }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => {
        let parsed: unknown = null;
        try { parsed = JSON.parse(text); } catch { /* not JSON */ }
        const fields = typeof parsed === 'object' && parsed !== null ? Object.fromEntries(Object.entries(parsed)) : {};
        const retry = res.headers['retry-after'];
        resolve({ status: res.statusCode ?? 0, body: fields, retryAfter: typeof retry === 'string' ? retry : null });
      });
      res.on('error', () => resolve(null));
    });
    req.on('error', () => resolve(null));
    req.end(data);
  });
}

function idreg(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/idreg.ts'), ...args], {
    cwd: ROOT, env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, out })));
}

function code(a: Answer): string {
  const err = a.body['error'];
  return typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : '';
}

async function startInstances(n: number, url: string, pool: string, dir: string, extra: Record<string, string> = {}): Promise<RunningRegistry[]> {
  return Promise.all(Array.from({ length: n }, () => startProcess({ dir, pool, env: { ...ENV, ...extra, DATABASE_URL: url } })));
}

describe('high availability: several instances on one PostgreSQL database', function () {
  this.timeout(180_000);
  let t: ReturnType<typeof tempDir>;
  let running: RunningRegistry[] = [];

  beforeEach(() => {
    t = tempDir();
  });

  afterEach(async () => {
    await Promise.all(running.map((r) => r.stop('SIGKILL')));
    running = [];
    t.cleanup();
  });

  it('three instances, 1,500 concurrent allocations for 1,000 identifiers: exactly 1,000 grants, none twice; a client gets the same answer through another instance', async () => {
    const url = await freshDatabase();
    running = await startInstances(3, url, 'w-[0000-0999]\n', t.dir); // three start-ups, migrations and pool syncs at once
    const results = await Promise.all(Array.from({ length: 1500 }, async (_, i) => {
      const a = await send(running[i % 3]?.base ?? '', 'POST', '/allocate', { client_id: `vm-${i}` });
      return { i, a };
    }));
    const granted = results.filter((r) => r.a?.status === 200);
    const others = results.filter((r) => r.a?.status !== 200).map((r) => (r.a ? `${r.a.status} ${code(r.a)}` : 'no answer'));
    expect(granted).to.have.length(1000);
    expect(new Set(others)).to.deep.equal(new Set(['503 pool_exhausted']));
    expect(new Set(granted.map((r) => r.a?.body['identifier'])).size).to.equal(1000);
    expect(granted.every((r) => r.a?.body['epoch'] === 1)).to.equal(true);

    // Through any instance: the database holds exactly those grants.
    const listed = await send(running[2]?.base ?? '', 'GET', '/identifiers?status=leased');
    expect(listed?.status).to.equal(200);
    const server = await sharedPostgres();
    const db = new URL(url).pathname.slice(1);
    expect(await server.sql(`SELECT count(*)::int AS n, count(DISTINCT client_id)::int AS c FROM identifiers WHERE client_id IS NOT NULL`, [], db))
      .to.deep.equal([{ n: 1000, c: 1000 }]);
    expect(await server.sql(`SELECT count(*)::int AS n FROM history WHERE event = 'allocated'`, [], db)).to.deep.equal([{ n: 1000 }]);

    for (const r of granted.slice(0, 30)) {
      const other = running[(r.i + 1) % 3]?.base ?? '';
      const again = await send(other, 'POST', '/allocate', { client_id: `vm-${r.i}` });
      expect(again?.status).to.equal(200);
      expect(again?.body['identifier']).to.equal(r.a?.body['identifier']);
      expect(again?.body['epoch']).to.equal(r.a?.body['epoch']);
    }
  });

  it('one instance SIGKILLed under load: the others answer only 200 or 503, and no acknowledged grant is lost', async () => {
    const url = await freshDatabase();
    running = await startInstances(3, url, 'w-[0000-4999]\n', t.dir);
    const [victim, ...survivors] = running;
    if (!victim) throw new Error('no instances');
    const acknowledged = new Map<string, { identifier: unknown; epoch: unknown }>();
    const fromSurvivors: string[] = [];
    let n = 0;
    let killedAt = Infinity;
    const end = performance.now() + 2500;
    const worker = async (w: number): Promise<void> => {
      while (performance.now() < end) {
        const target = running[(w + n) % 3];
        if (!target) return;
        const client = `vm-${w}-${n++}`;
        const a = await send(target.base, 'POST', '/allocate', { client_id: client });
        if (a?.status === 200) acknowledged.set(client, { identifier: a.body['identifier'], epoch: a.body['epoch'] });
        if (target !== victim) fromSurvivors.push(a ? (a.status === 200 ? '200' : `${a.status} ${code(a)}`) : 'no answer');
      }
    };
    const load = Promise.all(Array.from({ length: 24 }, (_, w) => worker(w)));
    // Kill once the load is in full swing: after some grants went through the victim.
    await eventually(async () => [...acknowledged.keys()].length > 200, 20_000, 'grants under load');
    victim.child.kill('SIGKILL');
    killedAt = performance.now();
    await load;
    expect(killedAt).to.be.below(end);
    const statuses = new Set(fromSurvivors);
    expect([...statuses].filter((s) => s !== '200' && s !== '503 unavailable' && s !== '503 pool_exhausted')).to.deep.equal([]);
    expect(fromSurvivors.filter((s) => s === '200').length).to.be.above(100);

    for (const [client, lease] of acknowledged) {
      const r = await send(survivors[0]?.base ?? '', 'GET', `/client/${client}`);
      expect(r?.status, client).to.equal(200);
      expect({ identifier: r?.body['identifier'], epoch: r?.body['epoch'] }, client).to.deep.equal(lease);
    }
  });

  it('PostgreSQL stopped for 3 s under load: only 503 unavailable with Retry-After, then it serves again without a restart', async () => {
    const server = await TestPostgres.start();
    try {
      const url = await server.createDatabase();
      running = await startInstances(2, url, 'w-[0000-4999]\n', t.dir);
      const pids = running.map((r) => r.child.pid);
      let phase: 'before' | 'down' | 'after' = 'before';
      const during: string[] = [];
      let n = 0;
      let stop = false;
      const worker = async (w: number): Promise<void> => {
        while (!stop) {
          const target = running[(w + n) % 2];
          if (!target) return;
          const started = phase;
          const a = await send(target.base, 'POST', '/allocate', { client_id: `vm-${w}-${n++}` });
          if (started === 'down' && phase === 'down') {
            during.push(a ? `${a.status} ${code(a)} retry-after:${a.retryAfter !== null}` : 'no answer');
          }
          if (phase === 'down') await new Promise((r) => setTimeout(r, 10)); // no busy loop while nothing can succeed
        }
      };
      const load = Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
      await eventually(async () => n > 200, 20_000, 'load to run');
      await server.stop();
      phase = 'down';
      const downUntil = performance.now() + 3000;
      const health: number[] = [];
      while (performance.now() < downUntil) {
        for (const r of running) health.push((await send(r.base, 'GET', '/health'))?.status ?? 0);
        await new Promise((r) => setTimeout(r, 100));
      }
      phase = 'after'; // from here on answers may come from the server starting again
      await server.resume();
      await eventually(async () => {
        const answers = await Promise.all(running.map((r) => send(r.base, 'POST', '/allocate', { client_id: `after-${n++}` })));
        return answers.every((a) => a?.status === 200);
      }, 20_000, 'both instances to allocate again');
      stop = true;
      await load;
      expect(during.length).to.be.above(10);
      expect([...new Set(during)]).to.deep.equal(['503 unavailable retry-after:true']);
      expect(new Set(health)).to.deep.equal(new Set([503]));
      expect(running.map((r) => r.child.exitCode)).to.deep.equal([null, null]);
      expect(running.map((r) => r.child.pid)).to.deep.equal(pids);
    } finally {
      await Promise.all(running.map((r) => r.stop('SIGKILL')));
      running = [];
      await server.destroy();
    }
  });

  it('instances whose host clocks are an hour ahead and an hour behind respect a cool-down set through another', async () => {
    const url = await freshDatabase();
    const env = { ...ENV, REUSE_COOLDOWN_SECONDS: '600', DATABASE_URL: url };
    const pool = 'x\n';
    const normal = await startProcess({ dir: t.dir, pool, env });
    const ahead = await startProcess({ dir: t.dir, pool, env: { ...env, WALL_OFFSET_MS: '3600000' }, nodeArgs: ['--import', WALL_CLOCK_PRELOAD] });
    const behind = await startProcess({ dir: t.dir, pool, env: { ...env, WALL_OFFSET_MS: '-3600000' }, nodeArgs: ['--import', WALL_CLOCK_PRELOAD] });
    running = [normal, ahead, behind];

    const granted = await send(normal.base, 'POST', '/allocate', { client_id: 'vm-1' });
    expect(granted?.status).to.equal(200);
    // The instance an hour behind force-releases: by its host clock the cool-down would end an hour early.
    expect((await send(behind.base, 'DELETE', '/identifier/x'))?.status).to.equal(200);
    // The instance an hour ahead: by its host clock the cool-down would be long over.
    const early = await send(ahead.base, 'POST', '/allocate', { client_id: 'vm-2' });
    expect(early && `${early.status} ${code(early)}`).to.equal('503 pool_exhausted');
    const again = await send(normal.base, 'POST', '/allocate', { client_id: 'vm-3' });
    expect(again && `${again.status} ${code(again)}`).to.equal('503 pool_exhausted');

    // All three tell the same registry time: the database's.
    const views = await Promise.all(running.map((r) => send(r.base, 'GET', '/identifier/x')));
    expect(views.map((v) => v?.body['status'])).to.deep.equal(['cooling', 'cooling', 'cooling']);
    const availableAt = views.map((v) => Date.parse(String(v?.body['available_at'])));
    expect(Math.max(...availableAt) - Math.min(...availableAt)).to.equal(0);
    const grantedAt = Date.parse(String(granted?.body['allocated_at']));
    expect(availableAt[0] ?? 0).to.be.within(grantedAt + 600_000, grantedAt + 600_000 + 30_000);
  });

  it('a SQLite registry moved to PostgreSQL with idreg export / import keeps leases, epochs, cool-downs and history', async () => {
    const env = { ...ENV, REUSE_COOLDOWN_SECONDS: '600' };
    const pool = 'w-[0-3]\n';
    const old = await startProcess({ dir: t.dir, pool, env });
    running = [old];
    const held = await send(old.base, 'POST', '/allocate', { client_id: 'vm-a' }); // w-0
    await send(old.base, 'POST', '/allocate', { client_id: 'vm-b' }); // w-1
    await send(old.base, 'POST', '/release', { client_id: 'vm-b', identifier: 'w-1' }); // free, epoch 1
    await send(old.base, 'POST', '/allocate', { client_id: 'vm-c' }); // w-2
    await send(old.base, 'DELETE', '/identifier/w-2'); // cooling for 600 s
    const before = await Promise.all(['w-0', 'w-1', 'w-2', 'w-3'].map(async (id) => ({
      view: (await send(old.base, 'GET', `/identifier/${id}`))?.body,
      history: (await send(old.base, 'GET', `/identifier/${id}/history`))?.body,
    })));
    expect((await old.stop()).code).to.equal(0);
    running = [];
    const stoppedAt = Date.now();

    const url = await freshDatabase();
    const file = join(t.dir, 'registry.dump');
    const exported = await idreg(['export', file], { DB_PATH: join(t.dir, 'registry.db') });
    expect(exported.code, exported.out).to.equal(0);
    const imported = await idreg(['import', file], { DATABASE_URL: url });
    expect(imported.code, imported.out).to.equal(0);
    const again = await idreg(['import', file], { DATABASE_URL: url });
    expect(again.code).to.equal(1);
    expect(again.out).to.match(/already holds/);

    const moved = await startProcess({ dir: t.dir, pool, env: { ...env, DATABASE_URL: url } });
    running = [moved];
    const after = await Promise.all(['w-0', 'w-1', 'w-2', 'w-3'].map(async (id) => ({
      view: (await send(moved.base, 'GET', `/identifier/${id}`))?.body,
      history: (await send(moved.base, 'GET', `/identifier/${id}/history`))?.body,
    })));
    // Every time moved by one shift onto PostgreSQL's clock (the move itself is not counted as
    // time spent: 0 <= shift <= how long the move took); everything else is as it was.
    const times = new Set(['allocated_at', 'last_seen', 'expires_at', 'available_at', 'at']);
    const shifts = new Set<number>();
    const strip = (v: unknown, other: unknown): unknown => {
      if (Array.isArray(v)) return v.map((x, i) => strip(x, Array.isArray(other) ? other[i] : undefined));
      if (typeof v !== 'object' || v === null) return v;
      const o = typeof other === 'object' && other !== null ? Object.fromEntries(Object.entries(other)) : {};
      return Object.fromEntries(Object.entries(v).map(([k, x]) => {
        if (!times.has(k) || typeof x !== 'string') return [k, strip(x, o[k])];
        shifts.add(Date.parse(x) - Date.parse(String(o[k])));
        return [k, 'time'];
      }));
    };
    const expected = strip(before, before);
    shifts.clear();
    expect(strip(after, before)).to.deep.equal(expected);
    expect(shifts.size, `one shift for every time: ${[...shifts].join(', ')}`).to.equal(1);
    const [shift] = [...shifts];
    expect(shift).to.be.within(0, Date.now() - stoppedAt);
    const same = await send(moved.base, 'POST', '/allocate', { client_id: 'vm-a' });
    expect([same?.body['identifier'], same?.body['epoch']]).to.deep.equal([held?.body['identifier'], held?.body['epoch']]);
    expect((await send(moved.base, 'POST', '/allocate', { client_id: 'vm-new' }))?.body['identifier']).to.equal('w-3');
    const reused = await send(moved.base, 'POST', '/allocate', { client_id: 'vm-next' });
    expect([reused?.body['identifier'], reused?.body['epoch']]).to.deep.equal(['w-1', 2]); // never an epoch again
    const none = await send(moved.base, 'POST', '/allocate', { client_id: 'vm-late' });
    expect(none && `${none.status} ${code(none)}`).to.equal('503 pool_exhausted'); // w-2 still cooling
  });
});
