/**
 * The VM side through registry outages, partitions and failovers (issue 12): the real sh
 * scripts under dash against real registry processes. The scenarios take seconds of real
 * time each, so they all start together in `before` and each test awaits its own; every
 * timing bound below is derived from the registry's TTL, cool-down and the renewal interval.
 */
import { expect } from 'chai';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';
import { eventually, freePort, json, startProcess } from './process-helpers.js';
import type { RunningRegistry } from './process-helpers.js';
import { exitWithin, get, proxy, readIdentity, script, sendJson, sleep, stopScript, stub } from './vm-helpers.js';
import type { Ran, Script } from './vm-helpers.js';

type Dir = ReturnType<typeof tempDir>;
const cleanups: (() => Promise<void> | void)[] = [];

async function registry(dir: string, pool: string, env: Record<string, string>, port?: number): Promise<RunningRegistry> {
  const r = await startProcess({ dir, pool, env, ...(port === undefined ? {} : { port }) });
  cleanups.push(async () => { await r.stop('SIGKILL'); });
  return r;
}

function scratch(): Dir {
  const t = tempDir();
  cleanups.push(() => t.cleanup());
  return t;
}

function vm(urls: string, t: Dir, clientId: string, extra: Record<string, string> = {}): Record<string, string> {
  return { ASG_ID_REGISTRY_URL: urls, ASG_ID_STATE_DIR: join(t.dir, clientId), ASG_ID_IMDS_URL: 'off', ASG_ID_CLIENT_ID: clientId, TMPDIR: t.dir, ...extra };
}

function run(name: string, env: Record<string, string>): Script {
  const s = script(name, env);
  cleanups.push(async () => { await stopScript(s); });
  return s;
}

async function lease(base: string, clientId: string): Promise<{ status: number; identifier: unknown; epoch: unknown; last_seen: unknown }> {
  const r = await json(base, 'GET', `/client/${clientId}`);
  return { status: r.status, identifier: get(r.body, 'identifier'), epoch: get(r.body, 'epoch'), last_seen: get(r.body, 'last_seen') };
}

/** Resolves once the registry has seen `n` renewals after the current one (distinct last_seen). */
async function renewals(base: string, clientId: string, n: number, timeoutMs = 10_000): Promise<void> {
  let seen = (await lease(base, clientId)).last_seen;
  let count = 0;
  await eventually(async () => {
    const now = (await lease(base, clientId)).last_seen;
    if (now !== seen) { seen = now; count += 1; }
    return count >= n;
  }, timeoutMs, `${n} renewal(s) of ${clientId}`);
}

function defined<T>(x: T | undefined, why: string): T {
  if (x === undefined) expect.fail(why);
  return x;
}

const list = (x: unknown): unknown[] => (Array.isArray(x) ? x : []);

async function claimed(env: Record<string, string>): Promise<Ran> {
  const r = await script('asg-id-claim', env).done;
  expect(r.code, r.out).to.equal(0);
  return r;
}

// ---- the scenarios --------------------------------------------------------------------------

/** TTL 3 s, cool-down 20 s: the registry is stopped for 8 s, then started on the same database. */
async function outage() {
  const t = scratch();
  const port = await freePort();
  const env = { LEASE_TTL_SECONDS: '3', REUSE_COOLDOWN_SECONDS: '20', STARTUP_GRACE_SECONDS: '3', REAPER_SCHEDULE: '*/1 * * * * *' };
  const reg = await registry(t.dir, 'worker-[00-02]\n', env, port);
  const v = vm(reg.base, t, 'vm-outage');
  await claimed(v);
  const side = run('asg-id-sidecar', v);
  await renewals(reg.base, 'vm-outage', 1);
  await reg.stop();
  // The outage itself: its length against the TTL and the cool-down is what is tested.
  const during = await exitWithin(side, 8_000);
  if (during) return { side, during, base: reg.base, history: [] };
  const back = await registry(t.dir, 'worker-[00-02]\n', env, port);
  // One renewal through the restarted registry, then past its 3 s startup grace and two sweeps.
  await renewals(back.base, 'vm-outage', 1);
  await eventually(async () => Number(get((await json(back.base, 'GET', '/health')).body, 'uptime_seconds')) >= 5, 10_000, 'the startup grace over');
  const history = (await json(back.base, 'GET', '/identifier/worker-00/history')).body;
  return { side, during, base: back.base, history };
}

/** TTL 12 s, cool-down 2 s: the registry goes away for good. Two VMs, one with a stop margin. */
async function fenceByCooldown() {
  const t = scratch();
  const reg = await registry(t.dir, 'fence-[0-1]\n', { LEASE_TTL_SECONDS: '12', REUSE_COOLDOWN_SECONDS: '2', REAPER_SCHEDULE: '*/1 * * * * *' });
  // Local settings that must not stretch the window: it comes from the registry's answers.
  const local = { ASG_ID_FENCE_AFTER_MS: '60000', ASG_ID_TTL_SECONDS: '60', ASG_ID_TTL_MS: '60000' };
  const a = vm(reg.base, t, 'vm-fence', local);
  const b = vm(reg.base, t, 'vm-margin', { ...local, ASG_ID_FENCE_MARGIN: '1' });
  await Promise.all([claimed(a), claimed(b)]);
  const plain = run('asg-id-sidecar', a);
  const margin = run('asg-id-sidecar', b);
  // Up for longer than the 1.98 s window: renewing inside it, neither may fence.
  await Promise.all([renewals(reg.base, 'vm-fence', 3), renewals(reg.base, 'vm-margin', 3)]);
  const renewedWhileUp = plain.exited() === undefined && margin.exited() === undefined;
  await reg.stop('SIGKILL');
  const goneAt = Date.now();
  const [p, m] = await Promise.all([exitWithin(plain, 5_000), exitWithin(margin, 5_000)]);
  return { plain: p, margin: m, goneAt, renewedWhileUp };
}

/** Five URLs: refused, 503, a black hole, then two registries on one database file. */
async function failover() {
  const t = scratch();
  const env = { LEASE_TTL_SECONDS: '3', REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0' };
  const regA = await registry(t.dir, 'fo-[0-2]\n', env);
  const regB = await registry(t.dir, 'fo-[0-2]\n', env); // same DB_PATH: one store, two instances
  const dead = `http://127.0.0.1:${await freePort()}`;
  const sick = await stub((_req, _body, res) => sendJson(res, 503, { error: { code: 'unavailable', message: 'database unreachable' } }));
  const hole = await stub(() => undefined);
  cleanups.push(() => sick.close(), () => hole.close());
  const urls = `${dead} ${sick.base},${hole.base}, ${regA.base}/ ${regB.base}`;
  const v = vm(urls, t, 'vm-fo', { ASG_ID_TIMEOUT: '1', ASG_ID_INTERVAL: '0.3' });
  const claim = await claimed(v);
  const identity = readIdentity(join(t.dir, 'vm-fo', 'identity.env'));
  const remembered = readFileSync(join(t.dir, 'vm-fo', 'registry-url'), 'utf8').trim();
  const afterClaim = { sick: sick.hits.get('/allocate') ?? 0, hole: hole.hits.get('/allocate') ?? 0 };
  const side = run('asg-id-sidecar', v);
  await renewals(regA.base, 'vm-fo', 3);
  const sidecarBefore = side.out();
  await regA.stop();
  await renewals(regB.base, 'vm-fo', 2);
  const movedTo = readFileSync(join(t.dir, 'vm-fo', 'registry-url'), 'utf8').trim();
  const lease1 = await lease(regB.base, 'vm-fo');
  const stopped = await stopScript(side);
  const after = await json(regB.base, 'GET', `/identifier/${String(lease1.identifier)}`);
  const strayRenewals = [...sick.hits.keys(), ...hole.hits.keys()].filter((k) => k !== '/allocate');
  return {
    claim, identity, remembered, afterClaim, sidecarBefore, strayRenewals, movedTo, lease: lease1, stopped,
    status: get(after.body, 'status'), urls: { dead, sick: sick.base, hole: hole.base, a: regA.base, b: regB.base },
  };
}

/** Partition drill: the VM cannot reach the registry while an operator force-releases it. */
async function partition() {
  const t = scratch();
  const reg = await registry(t.dir, 'drill-0\n', { LEASE_TTL_SECONDS: '30', REUSE_COOLDOWN_SECONDS: '2', REAPER_SCHEDULE: '*/1 * * * * *', STARTUP_GRACE_SECONDS: '0' });
  const net = await proxy(reg.base);
  cleanups.push(() => net.close());
  const v = vm(net.base, t, 'vm-old'); // ASG_ID_TIMEOUT stays 5 s: longer than the window
  await claimed(v);
  const side = run('asg-id-sidecar', v);
  await renewals(reg.base, 'vm-old', 1);
  net.mode = 'hold';
  // The VM has noticed: one of its renewals is stuck in the partition.
  await eventually(async () => net.held() > 0, 5_000, 'a renewal lost in the partition');
  const forced = await json(reg.base, 'DELETE', '/identifier/drill-0');
  expect(forced.status).to.equal(200);
  const forcedAt = Date.now();
  // A new VM asks as fast as it can; the first grant's send time is a lower bound on the grant.
  let grantSentAt = 0;
  let grant: unknown;
  await eventually(async () => {
    const sentAt = Date.now();
    const r = await json(reg.base, 'POST', '/allocate', { client_id: 'vm-new' });
    if (r.status !== 200) return false;
    grantSentAt = sentAt;
    grant = r.body;
    return true;
  }, 10_000, 'the identifier granted to a new VM');
  const history = (await json(reg.base, 'GET', '/identifier/drill-0/history')).body;
  return { side: side.exited(), forcedAt, grantSentAt, grant, history, out: side.out() };
}

/** The claim cannot write its identity. */
async function unwritable() {
  const t = scratch();
  const reg = await registry(t.dir, 'unw-[0-3]\n', { LEASE_TTL_SECONDS: '30', REAPER_SCHEDULE: '0 0 1 1 *' });
  // (a) a state folder that cannot exist (its parent is a file: root ignores permissions).
  writeFileSync(join(t.dir, 'a-file'), '');
  const early = await script('asg-id-claim', vm(reg.base, t, 'vm-early', { ASG_ID_STATE_DIR: join(t.dir, 'a-file', 'run') })).done;
  const earlyLease = await lease(reg.base, 'vm-early');
  // (b) the folder goes away between the check and the write: the grant must be given back.
  const lateDir = join(t.dir, 'vm-late');
  let breakFolder = true;
  const net = await proxy(reg.base, (path) => {
    if (path === '/allocate' && breakFolder) { rmSync(lateDir, { recursive: true, force: true }); writeFileSync(lateDir, ''); }
  });
  cleanups.push(() => net.close());
  const late = await script('asg-id-claim', vm(net.base, t, 'vm-late')).done;
  const lateLease = await lease(reg.base, 'vm-late');
  const history = (await json(reg.base, 'GET', '/identifier/unw-0/history')).body;
  // (c) a re-run of the claim by a VM that already holds its identifier: never pull it away.
  breakFolder = false;
  const keep = vm(net.base, t, 'vm-keep');
  await claimed(keep);
  const held = await lease(reg.base, 'vm-keep');
  const rerunDir = join(t.dir, 'vm-keep');
  const net2 = await proxy(reg.base, (path) => {
    if (path === '/allocate') { rmSync(rerunDir, { recursive: true, force: true }); writeFileSync(rerunDir, ''); }
  });
  cleanups.push(() => net2.close());
  const rerun = await script('asg-id-claim', { ...keep, ASG_ID_REGISTRY_URL: net2.base }).done;
  const stillHeld = await lease(reg.base, 'vm-keep');
  return { early, earlyLease, late, lateLease, history, held, rerun, stillHeld, earlyState: existsSync(join(t.dir, 'a-file', 'run')) };
}

/** A registry stand-in that records when each liveness arrives. */
async function jitter() {
  const t = scratch();
  const arrivals: number[] = [];
  const view = (clientId: string): Record<string, unknown> => {
    const now = Date.now();
    return {
      identifier: 'j-0', client_id: clientId, epoch: 1, allocated_at: new Date(now).toISOString(),
      last_seen: new Date(now).toISOString(), expires_at: new Date(now + 3_000).toISOString(), fence_after_ms: 60_000,
    };
  };
  const fake = await stub((req, body, res) => {
    if (req.url === '/liveness') arrivals.push(performance.now());
    const asked: unknown = JSON.parse(body);
    sendJson(res, 200, view(String(get(asked, 'client_id'))));
  });
  cleanups.push(() => fake.close());
  const v = vm(fake.base, t, 'vm-jitter', { ASG_ID_INTERVAL: '1' });
  await sleep(3_000); // let the other scenarios' registries start: that load is not overhead
  await claimed(v);
  const side = run('asg-id-sidecar', v);
  await eventually(async () => arrivals.length >= 15, 30_000, '15 renewals');
  await stopScript(side);
  return { gaps: arrivals.slice(1, 15).map((a, i) => a - (arrivals[i] ?? 0)), intervalMs: 1_000 };
}

// ---- the tests ------------------------------------------------------------------------------

describe('VM side: registry outages, partitions and failover (issue 12)', function () {
  this.timeout(90_000);
  let runs: {
    outage: ReturnType<typeof outage>; fenceByCooldown: ReturnType<typeof fenceByCooldown>; failover: ReturnType<typeof failover>;
    partition: ReturnType<typeof partition>; unwritable: ReturnType<typeof unwritable>; jitter: ReturnType<typeof jitter>;
  };

  before(function () {
    runs = { outage: outage(), fenceByCooldown: fenceByCooldown(), failover: failover(), partition: partition(), unwritable: unwritable(), jitter: jitter() };
    for (const p of Object.values(runs)) p.catch(() => undefined); // each is reported by its own test
  });
  after(async function () {
    await Promise.allSettled(Object.values(runs));
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('a registry outage shorter than the cool-down costs no identity: TTL 3 s, cool-down 20 s, down 8 s', async () => {
    const r = await runs.outage;
    const out = r.side.out();
    expect(r.during, `the sidecar exited during the outage:\n${out}`).to.equal(undefined);
    expect(r.side.exited(), out).to.equal(undefined);
    // It saw the outage, said so plainly, and came back through the restarted registry.
    expect(out).to.match(/liveness failed: http:\/\/127\.0\.0\.1:\d+ unreachable: .*(Failed to connect|Couldn't connect)/);
    expect(out).not.to.match(/HTTP 000/);
    expect(out).to.match(/renewed through http:\/\/127\.0\.0\.1:\d+ after \d+\.\d+s without an answer; worker-00 \(epoch 1\) is still ours/);
    // Same identifier, same epoch, never reclaimed.
    expect(await lease(r.base, 'vm-outage')).to.include({ status: 200, identifier: 'worker-00', epoch: 1 });
    expect(r.history).to.be.an('array').with.length(1);
    expect(get(list(r.history)[0], 'event')).to.equal('allocated');
    const stopped = await stopScript(r.side);
    expect(stopped.code, stopped.out).to.equal(0);
  });

  it('with a cool-down shorter than the TTL (12 s / 2 s) the VM fences by the cool-down, within ~2 s of losing the registry', async () => {
    const r = await runs.fenceByCooldown;
    expect(r.renewedWhileUp, 'a sidecar fenced while the registry answered').to.equal(true);
    const plain = defined(r.plain, 'the sidecar still ran 5 s after the registry went away');
    expect(plain.code, plain.out).to.equal(4);
    expect(plain.out).to.match(/lost: no successful liveness for 1\.880s \(the registry's fence_after_ms, 1980ms, less ASG_ID_FENCE_MARGIN 0\.100s\): from now on it may be granted to another VM/);
    // 1.88 s (the default margin, 0.1 s, for the script's own exit) after the last renewal sent,
    // which was at most one interval (0.62 s, +10 %) before the registry went away.
    const after = plain.at - r.goneAt;
    expect(after, plain.out).to.be.within(1_880 - 690 - 100, 1_880 + 700);
    // ASG_ID_FENCE_MARGIN=1 fences a second sooner, leaving the application time to stop.
    const margin = defined(r.margin, 'the sidecar with a margin still ran 5 s after the registry went away');
    expect(margin.code, margin.out).to.equal(4);
    expect(margin.out).to.match(/no successful liveness for 0\.980s \(the registry's fence_after_ms, 1980ms, less ASG_ID_FENCE_MARGIN 1\.000s\)/);
    expect(margin.at - r.goneAt, margin.out).to.be.within(980 - 360 - 100, 980 + 700);
    expect(margin.at).to.be.lessThan(plain.at);
  });

  it('fails over: a refused, a 503, a silent URL, then two registries sharing a database; remembers the one that answered', async () => {
    const r = await runs.failover;
    const u = r.urls;
    const claim = r.claim;
    // Every failure is named, none as "HTTP 000".
    expect(claim.out).to.include(`${u['dead']} unreachable: `).and.match(/(Failed to connect|Couldn't connect)/);
    expect(claim.out).to.include(`${u['sick']} answered HTTP 503 unavailable`);
    expect(claim.out).to.include(`${u['hole']} unreachable: `).and.match(/timed out/i);
    expect(claim.out).to.include(`now using ${u['a']}`).and.not.match(/HTTP 000/);
    expect(r.identity).to.include({ ASG_ID_REGISTRY_URL: [u['dead'], u['sick'], u['hole'], u['a'], u['b']].join(',') });
    expect(r.remembered).to.equal(u['a']);
    // The sidecar started at the URL that answered: not one renewal went to the broken ones.
    expect(r.afterClaim).to.deep.equal({ sick: 1, hole: 1 });
    expect(r.strayRenewals).to.deep.equal([]);
    expect(r.sidecarBefore).not.to.match(/unreachable|503/);
    // Registry A stops: the sidecar moves on to B, keeps the lease, and remembers B.
    expect(r.movedTo).to.equal(u['b']);
    expect(r.lease).to.include({ status: 200, epoch: 1 });
    const stopped = r.stopped;
    expect(stopped.out).to.include(`now using ${u['b']} (${u['a']} unreachable: `);
    expect(stopped.code, stopped.out).to.equal(0);
    expect(stopped.out).to.match(/released fo-0 \(epoch 1\)/);
    expect(r.status).to.equal('free');
  });

  it('partition drill: the cut-off VM has fenced before the force-released identifier is granted to another', async () => {
    const r = await runs.partition;
    const timeline = `force release at 0 ms, new grant sent at ${r.grantSentAt - r.forcedAt} ms, ` +
      `sidecar ${r.side ? `fenced (exit ${String(r.side.code)}) at ${r.side.at - r.forcedAt} ms` : 'still running'}\n${r.out}`;
    expect(get(r.grant, 'identifier'), timeline).to.equal('drill-0');
    expect(get(r.grant, 'epoch'), timeline).to.equal(2);
    const side = defined(r.side, `the sidecar had not fenced when the identifier was granted again: ${timeline}`);
    expect(side.code, timeline).to.equal(4); // on its own: the 409 never reached it
    expect(side.at, timeline).to.be.lessThan(r.grantSentAt);
    // The new grant waited out the cool-down (the registry's half of the bargain), by the
    // registry's own clock: the test's send times carry the machine's scheduling delays.
    const events = Array.isArray(r.history) ? r.history.map((h: unknown) => ({ event: get(h, 'event'), at: Date.parse(String(get(h, 'at'))) })) : [];
    expect(events.map((e) => e.event), timeline).to.deep.equal(['allocated', 'force_released', 'allocated']);
    const [, forcedEntry, regranted] = events;
    expect((regranted?.at ?? 0) - (forcedEntry?.at ?? 0), timeline).to.be.at.least(2_000);
  });

  it('an unwritable state folder fails the claim, and the registry keeps nothing for it', async () => {
    const r = await runs.unwritable;
    const early = r.early;
    expect(early.code, early.out).to.equal(73);
    expect(early.out).to.match(/cannot write the identity to .*a-file\/run \(.*Not a directory\); not claiming/);
    expect(r.earlyLease).to.include({ status: 404 });
    // Granted, then the write failed: released at once, the claim fails.
    const late = r.late;
    expect(late.code, late.out).to.equal(73);
    expect(late.out).to.match(/cannot write the identity to .*vm-late\/identity\.env/).and.match(/released unw-0 \(epoch 1\)/);
    expect(r.lateLease).to.include({ status: 404 });
    expect(list(r.history).map((h) => [get(h, 'event'), get(h, 'client_id')])).to.deep.equal([['allocated', 'vm-late'], ['released', 'vm-late']]);
    // A re-run by a VM that already holds one fails too, but leaves its lease alone.
    const rerun = r.rerun;
    expect(rerun.code, rerun.out).to.equal(73);
    expect(rerun.out).to.match(/was already ours before this claim .*: not releasing it/);
    expect(r.stillHeld).to.deep.include({ status: 200, identifier: r.held.identifier, epoch: 1 });
  });

  it('renewals are jittered by ±10 % of the interval, so a fleet started together spreads out', async () => {
    const { gaps, intervalMs } = await runs.jitter;
    const shown = `gaps between renewals (ms): ${gaps.map((g) => Math.round(g)).join(', ')}`;
    // Never sooner than 90 % of the interval. Later than 110 % by the renewal's own forks and
    // request: tens of ms, but a second or more when other suites load the machine. So no
    // single gap is bounded above; the median is held near the interval (the jitter is centred).
    expect(Math.min(...gaps), shown).to.be.at.least(intervalMs * 0.9);
    // Not a metronome. Without jitter nearly every gap is the interval plus the same ~35 ms of
    // overhead, all within ±10 ms of their median; spread over ±100 ms, 60 % of 14 fall in that
    // band once in ~70 000 runs.
    const sorted = [...gaps].sort((x, y) => x - y);
    const median = ((sorted[6] ?? 0) + (sorted[7] ?? 0)) / 2;
    expect(median, shown).to.be.within(intervalMs * 0.95, intervalMs + 200);
    const inBand = gaps.filter((g) => Math.abs(g - median) <= 10).length;
    expect(inBand, `${inBand} of ${gaps.length} within ±10 ms of ${Math.round(median)}; ${shown}`).to.be.lessThan(gaps.length * 0.6);
  });
});
