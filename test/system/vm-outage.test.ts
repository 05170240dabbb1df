/**
 * The VM side through registry outages, partitions and failovers (issue 12): the real sh
 * scripts under dash against real registry processes. The scenarios take seconds of real
 * time each, so they all start together in `before` and each test awaits its own; every
 * timing bound below is derived from the registry's TTL, cool-down and the renewal interval.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { builtMain, eventually, freePort, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { exitWithin, get, proxy, readIdentity, script, sendJson, stopScript, stub } from '../support/vm-helpers.js';
import type { Passed, Ran, Script } from '../support/vm-helpers.js';

type Dir = ReturnType<typeof tempDir>;
const cleanups: (() => Promise<void> | void)[] = [];

async function registry(dir: string, pool: string, env: Record<string, string>, port?: number): Promise<RunningRegistry> {
  // Plain JavaScript: several registries start at once here, and tsx's start-up is seconds each on a loaded machine.
  const r = await startProcess({ dir, pool, env, entry: await builtMain(), ...(port === undefined ? {} : { port }) });
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

/**
 * Resolves once the registry has seen `n` renewals after the current one (distinct last_seen).
 * The bound is for a failure's sake only (a renewal comes every interval, about a second here):
 * a 2-core machine at load 20 was seen taking seconds per renewal.
 */
async function renewals(base: string, clientId: string, n: number, side: Script): Promise<void> {
  let seen = (await lease(base, clientId)).last_seen;
  let count = 0;
  await eventually(async () => {
    if (side.exited() !== undefined) throw new Error(`the sidecar of ${clientId} exited:\n${side.out()}`);
    const now = (await lease(base, clientId)).last_seen;
    if (now !== seen) { seen = now; count += 1; }
    return count >= n;
  }, 60_000, `${n} renewal(s) of ${clientId}`).catch((e: unknown) => {
    throw new Error(`${e instanceof Error ? e.message : String(e)}; the sidecar said:\n${side.out()}`);
  });
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

/**
 * TTL 6 s, cool-down 60 s: the registry is stopped for 8 s, then started on the same database.
 * The outage the VM sees also holds the registry's stop and start, seconds each on a loaded
 * machine: the cool-down leaves room for them, so the scenario is an outage shorter than it.
 */
async function outage() {
  const t = scratch();
  const port = await freePort();
  const env = { LEASE_TTL_SECONDS: '6', REUSE_COOLDOWN_SECONDS: '60', STARTUP_GRACE_SECONDS: '6', REAPER_SCHEDULE: '*/1 * * * * *' };
  // Before the outage the reaper is not what is tested: a loaded machine may start the sidecar
  // later than the TTL after its claim. The registry that comes back sweeps every second.
  const reg = await registry(t.dir, 'worker-[00-02]\n', { ...env, REAPER_SCHEDULE: '0 0 1 1 *' }, port);
  const v = vm(reg.base, t, 'vm-outage');
  await claimed(v);
  const side = run('asg-id-sidecar', v);
  await renewals(reg.base, 'vm-outage', 1, side);
  await reg.stop();
  // The outage itself: its length against the TTL and the cool-down is what is tested.
  const during = await exitWithin(side, 8_000);
  if (during) return { side, during, base: reg.base, history: [] };
  const back = await registry(t.dir, 'worker-[00-02]\n', env, port);
  // One renewal through the restarted registry, then past its 6 s startup grace and two sweeps.
  await renewals(back.base, 'vm-outage', 1, side);
  await eventually(async () => Number(get((await json(back.base, 'GET', '/health')).body, 'uptime_seconds')) >= 8, 60_000, 'the startup grace over');
  const history = (await json(back.base, 'GET', '/identifier/worker-00/history')).body;
  return { side, during, base: back.base, history };
}

/**
 * How late a loaded machine may let a sidecar act on a deadline: wake from its sleep (or its
 * request's --max-time), log, remove the identity, exit, and this test see the exit. About
 * 50 ms on an idle machine; the bound is for a 2-core box running the rest of the suite and
 * another CPU-heavy job beside it.
 */
const SCHEDULER_SLACK_MS = 1_500;
/** The sidecar reads its monotonic clock from /proc/uptime, in hundredths of a second. */
const UPTIME_RESOLUTION_MS = 10;

interface Fencing {
  readonly side: Script;
  /** Every request of this VM, through its own proxy, in order. */
  readonly passed: Passed[];
  /** The registry's fence_after_ms less the VM's ASG_ID_FENCE_MARGIN: how long it may go without a renewal. */
  readonly windowMs: number;
  /** Earlier sidecars that the load kept from renewing within their window, and rightly gave the identity up. */
  readonly lateStarts: string[];
}

/**
 * A VM that claims and then keeps its identity through its own recording proxy, up and renewing
 * 3 times. A sidecar may rightly give its identity up while the registry answers, when the
 * machine's load keeps it from renewing within its window (a start later than the window
 * after the claim was sent, a renewal answered too late): such a fence is checked against the
 * proxy's timeline (exit 4, and the window had passed since the last successful renewal could
 * have been sent), and the VM claims again. Any other end fails the test.
 */
async function fencingVm(base: string, t: Dir, clientId: string, extra: Record<string, string>): Promise<Fencing> {
  const passed: Passed[] = [];
  const net = await proxy(base, undefined, (p) => passed.push(p));
  cleanups.push(() => net.close());
  const v = vm(net.base, t, clientId, extra);
  const marginMs = Math.round(Number(extra['ASG_ID_FENCE_MARGIN'] ?? '0.1') * 1000);
  const lateStarts: string[] = [];
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    const from = passed.length;
    const claimSpawnedAt = Date.now();
    await claimed(v);
    const windowMs = Number(readIdentity(join(t.dir, clientId, 'identity.env'))['ASG_ID_FENCE_AFTER_MS']) - marginMs;
    const side = run('asg-id-sidecar', v);
    const renewed = (): number => passed.slice(from).filter((p) => p.path === '/liveness' && p.status === 200).length;
    await eventually(async () => side.exited() !== undefined || renewed() >= 3, 60_000, `3 renewals of ${clientId}`);
    const ended = side.exited();
    if (ended === undefined) return { side, passed, windowMs, lateStarts };
    // The last success was sent after the answer before it (or, for the claim, after the claim started).
    const mine = passed.slice(from);
    const i = mine.findLastIndex((p) => p.status === 200);
    const sentAfter = i > 0 ? (mine[i - 1]?.answeredAt ?? 0) : claimSpawnedAt;
    const late = ended.at - sentAfter;
    if (ended.code !== 4 || late < windowMs - UPTIME_RESOLUTION_MS) {
      expect.fail(`${clientId}'s sidecar gave the identity up ${late} ms after its last successful renewal could have been sent, ` +
        `inside its ${windowMs} ms window, while the registry answered (${renewed()} renewals):\n${ended.out}`);
    }
    lateStarts.push(`attempt ${attempt}: no renewal for ${late} ms (the load), ${renewed()} renewals, ${mine.length} requests, then:\n${ended.out}`);
  }
  return expect.fail(`${clientId}: the sidecar never renewed 3 times within its window: ${lateStarts.join('; ')}`);
}

/** TTL 60 s, cool-down 12 s: the registry goes away for good. Two VMs, one with a stop margin. */
async function fenceByCooldown() {
  const t = scratch();
  const reg = await registry(t.dir, 'fence-[0-1]\n', { LEASE_TTL_SECONDS: '60', REUSE_COOLDOWN_SECONDS: '12', REAPER_SCHEDULE: '*/1 * * * * *' });
  // Local settings that must not stretch the window: it comes from the registry's answers.
  const local = { ASG_ID_FENCE_AFTER_MS: '120000', ASG_ID_TTL_SECONDS: '120', ASG_ID_TTL_MS: '120000' };
  const [plain, margin] = await Promise.all([
    fencingVm(reg.base, t, 'vm-fence', local),
    fencingVm(reg.base, t, 'vm-margin', { ...local, ASG_ID_FENCE_MARGIN: '3' }),
  ]);
  await reg.stop('SIGKILL');
  const goneAt = Date.now();
  // Each must be gone by its window after the last renewal that reached the registry.
  const fenced = (f: Fencing) => {
    const last = [...f.passed].reverse().find((p) => p.status === 200);
    return exitWithin(f.side, (last?.arrivedAt ?? goneAt) + f.windowMs + SCHEDULER_SLACK_MS - Date.now());
  };
  const [p, m] = await Promise.all([fenced(plain), fenced(margin)]);
  return { plain: { ...plain, ran: p }, margin: { ...margin, ran: m }, goneAt };
}

/**
 * When the sidecar gave the identity up, against its window: not before the window had passed
 * since the answer before its last successful renewal (it sent that renewal after it), and not
 * later than the window plus the scheduler's slack after that renewal reached the registry (it
 * was sent before).
 */
function fenceTimeline(f: Fencing, ran: Ran, goneAt: number): { earliest: number; latest: number; at: number; shown: string } {
  const i = f.passed.findLastIndex((p) => p.status === 200);
  const last = f.passed[i];
  const before = f.passed[i - 1];
  const shown = `registry gone at ${goneAt}; window ${f.windowMs} ms; last renewal arrived ${String(last?.arrivedAt)}, ` +
    `the answer before it at ${String(before?.answeredAt)}; gave up at ${ran.at}${f.lateStarts.length ? `; earlier: ${f.lateStarts.join('; ')}` : ''}\n${ran.out}`;
  return {
    earliest: (before?.answeredAt ?? 0) + f.windowMs - UPTIME_RESOLUTION_MS,
    latest: (last?.arrivedAt ?? 0) + f.windowMs + SCHEDULER_SLACK_MS,
    at: ran.at,
    shown,
  };
}

/** Five URLs: refused, 503, a black hole, then two registries on one database file. */
async function failover() {
  const t = scratch();
  // A cool-down (the VM's window) far longer than a loaded machine's stalls; the TTL stays short.
  const env = { LEASE_TTL_SECONDS: '3', REUSE_COOLDOWN_SECONDS: '30', REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0' };
  const regA = await registry(t.dir, 'fo-[0-2]\n', env);
  const regB = await registry(t.dir, 'fo-[0-2]\n', env); // same DB_PATH: one store, two instances
  const dead = `http://127.0.0.1:${await freePort()}`;
  const sick = await stub((_req, _body, res) => sendJson(res, 503, { error: { code: 'unavailable', message: 'database unreachable' } }));
  const hole = await stub(() => undefined);
  cleanups.push(() => sick.close(), () => hole.close());
  const urls = `${dead} ${sick.base},${hole.base}, ${regA.base}/ ${regB.base}`;
  // The silent URL costs ASG_ID_TIMEOUT; 1 s was too short for the 503 stub's answer on a loaded machine.
  const v = vm(urls, t, 'vm-fo', { ASG_ID_TIMEOUT: '3', ASG_ID_INTERVAL: '0.3' });
  const claim = await claimed(v);
  const identity = readIdentity(join(t.dir, 'vm-fo', 'identity.env'));
  const remembered = readFileSync(join(t.dir, 'vm-fo', 'registry-url'), 'utf8').trim();
  const afterClaim = { sick: sick.hits.get('/allocate') ?? 0, hole: hole.hits.get('/allocate') ?? 0 };
  const side = run('asg-id-sidecar', v);
  await renewals(regA.base, 'vm-fo', 3, side);
  const sidecarBefore = side.out();
  await regA.stop();
  await renewals(regB.base, 'vm-fo', 2, side);
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
  const reg = await registry(t.dir, 'drill-0\n', { LEASE_TTL_SECONDS: '60', REUSE_COOLDOWN_SECONDS: '15', REAPER_SCHEDULE: '*/1 * * * * *', STARTUP_GRACE_SECONDS: '0' });
  const net = await proxy(reg.base);
  cleanups.push(() => net.close());
  // The margin is the VM's time to stop using the identifier: here the script's own wake-up and
  // exit, which a loaded machine delays by up to SCHEDULER_SLACK_MS. Its window: 14.85 - 1.5 s.
  // ASG_ID_TIMEOUT longer than the window: only the sidecar's own deadline cuts a renewal lost
  // in the partition short.
  const v = vm(net.base, t, 'vm-old', { ASG_ID_FENCE_MARGIN: String(SCHEDULER_SLACK_MS / 1000), ASG_ID_TIMEOUT: '30' });
  await claimed(v);
  const side = run('asg-id-sidecar', v);
  await renewals(reg.base, 'vm-old', 1, side);
  net.mode = 'hold';
  // The VM has noticed: one of its renewals is stuck in the partition.
  await eventually(async () => {
    if (side.exited() !== undefined) throw new Error(`the sidecar exited before the partition:\n${side.out()}`);
    return net.held() > 0;
  }, 60_000, 'a renewal lost in the partition');
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
  }, 60_000, 'the identifier granted to a new VM (after its 15 s cool-down)');
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

/**
 * A registry stand-in that records when each liveness arrives, and a `sleep` ahead of the real
 * one on the sidecar's PATH that records each nap it is asked for: the jitter is in the naps,
 * exactly; the arrivals add the machine's scheduling delays to them.
 */
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
    if (req.url === '/liveness') arrivals.push(Date.now());
    const asked: unknown = JSON.parse(body);
    sendJson(res, 200, view(String(get(asked, 'client_id'))));
  });
  cleanups.push(() => fake.close());
  const bin = join(t.dir, 'bin');
  const naps = join(t.dir, 'naps');
  mkdirSync(bin);
  writeFileSync(join(bin, 'sleep'), `#!/bin/sh\necho "$1" >> '${naps}'\nexec /bin/sleep "$@"\n`, { mode: 0o755 });
  const v = vm(fake.base, t, 'vm-jitter', { ASG_ID_INTERVAL: '1' });
  await claimed(v);
  const side = run('asg-id-sidecar', { ...v, PATH: `${bin}:${process.env['PATH'] ?? ''}` });
  await eventually(async () => arrivals.length >= 15, 150_000, '15 renewals');
  const out = (await stopScript(side)).out;
  const asked = readFileSync(naps, 'utf8').trim().split('\n').map((x) => Math.round(Number(x) * 1000));
  return { naps: asked.slice(0, 14), gaps: arrivals.slice(1, 15).map((a, i) => a - (arrivals[i] ?? 0)), intervalMs: 1_000, out };
}

// ---- the tests ------------------------------------------------------------------------------

describe('VM side: registry outages, partitions and failover (issue 12)', function () {
  this.timeout(180_000);
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

  it('a registry outage shorter than the cool-down costs no identity: TTL 6 s, cool-down 60 s, down 8 s', async () => {
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

  it('with a cool-down shorter than the TTL (60 s / 12 s) the VM fences by the cool-down, within ~12 s of losing the registry', async () => {
    const r = await runs.fenceByCooldown;
    for (const [name, f, windowMs, said] of [
      ['vm-fence', r.plain, 11_780, /lost: no successful liveness for 11\.780s \(the registry's fence_after_ms, 11880ms, less ASG_ID_FENCE_MARGIN 0\.100s\): from now on it may be granted to another VM/],
      // ASG_ID_FENCE_MARGIN=3 fences 3 s sooner, leaving the application time to stop (more than
      // the scheduler's slack, so a margin not taken off would show in the timing too).
      ['vm-margin', r.margin, 8_880, /no successful liveness for 8\.880s \(the registry's fence_after_ms, 11880ms, less ASG_ID_FENCE_MARGIN 3\.000s\)/],
    ] as const) {
      // The window is the registry's (11.88 s), less the margin, never the local 120 s settings.
      expect(f.windowMs, name).to.equal(windowMs);
      const ran = defined(f.ran, `${name}'s sidecar still ran past its window after the registry went away:\n${f.side.out()}`);
      expect(ran.code, ran.out).to.equal(4);
      expect(ran.out).to.match(said);
      const w = fenceTimeline(f, ran, r.goneAt);
      // It renewed through the registry until it went away, and gave up one window after that.
      expect(f.passed.filter((p) => p.path === '/liveness' && p.status === 200).length, w.shown).to.be.at.least(3);
      expect(w.at, w.shown).to.be.within(w.earliest, w.latest);
    }
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
    // Not a bare /503/: the sidecar's renewal lines carry a URL with a random port and times in ms.
    expect(r.sidecarBefore).not.to.match(/unreachable|HTTP 503|liveness failed/);
    // Registry A stops: the sidecar moves on to B, keeps the lease, and remembers B.
    expect(r.movedTo).to.equal(u['b']);
    expect(r.lease).to.include({ status: 200, epoch: 1 });
    const stopped = r.stopped;
    expect(stopped.out).to.include(`now using ${u['b']} (${u['a']} unreachable: `);
    // A renewal through another registry is a change: said at once, not a minute later.
    expect(stopped.out).to.match(new RegExp(`now using ${u['b']} .*\\n.*renewed fo-0 \\(epoch 1\\) through ${u['b']}: \\d+ renewal`));
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
    expect((regranted?.at ?? 0) - (forcedEntry?.at ?? 0), timeline).to.be.at.least(15_000);
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
    const { naps, gaps, intervalMs, out } = await runs.jitter;
    const shown = `naps asked (ms): ${naps.join(', ')}; gaps between renewals (ms): ${gaps.join(', ')}\n${out}`;
    expect(out).to.include('alive every 1.000s (±10 %)');
    expect(naps, shown).to.have.length(14);
    // Each nap within ±10 % of the interval, exactly: the naps are what the script decides.
    for (const n of naps) expect(n, shown).to.be.within(intervalMs * 0.9, intervalMs * 1.1);
    // Spread, not a metronome: 14 draws uniform over ±100 ms span less than 50 ms once in ~5
    // million runs; centred: their mean strays 75 ms (4.9 standard deviations) once in a million.
    expect(Math.max(...naps) - Math.min(...naps), shown).to.be.at.least(50);
    const mean = naps.reduce((a, b) => a + b, 0) / naps.length;
    expect(mean, shown).to.be.within(intervalMs - 75, intervalMs + 75);
    // And they are what the registry sees: each gap between renewals is its nap plus the
    // renewal's own work (forks of awk, od, curl: ~35 ms idle, a second or more when the
    // machine is loaded, so no upper bound), never less.
    gaps.forEach((g, i) => expect(g, shown).to.be.at.least((naps[i] ?? 0) - 1));
  });
});
