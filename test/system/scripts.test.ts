/**
 * The VM side: the real POSIX sh scripts (run by dash, Debian's /bin/sh) against a real
 * registry process on loopback. Outages, partitions and failover: vm-outage.test.ts.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { ROOT, eventually, freePort, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { get, readIdentity, script } from '../support/vm-helpers.js';

// A fence window (the cool-down, less 1 %) far longer than a loaded machine takes to start a
// sidecar and turn its loop (seconds at load 15 on 2 cores): the tests are about other things.
const REGISTRY_ENV = { LEASE_TTL_SECONDS: '3', REUSE_COOLDOWN_SECONDS: '60', REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0' };

describe('VM scripts against a live registry', function () {
  this.timeout(120_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry | null = null;
  let env: Record<string, string>;
  let identityFile: string;

  before(() => {
    // The scripts are POSIX sh + curl, what an EC2 image has; no npm package brings curl.
    const curl = spawnSync('curl', ['--version'], { env: { PATH: process.env['PATH'] ?? '' } });
    expect(curl.error, 'the VM scripts need curl on the PATH (Debian: apt-get install curl; .ci/run installs it)').to.equal(undefined);
  });

  beforeEach(async () => {
    t = tempDir();
    reg = await startProcess({ dir: t.dir, pool: 'worker-[00-02]\n', env: REGISTRY_ENV });
    env = { ASG_ID_REGISTRY_URL: reg.base, ASG_ID_STATE_DIR: join(t.dir, 'run'), ASG_ID_IMDS_URL: 'off', ASG_ID_CLIENT_ID: 'vm-test-1', TMPDIR: t.dir };
    identityFile = join(t.dir, 'run', 'identity.env');
  });
  afterEach(async () => {
    await reg?.stop();
    reg = null;
    t.cleanup();
  });

  it('boot claim: allocates and writes identifier, epoch and TTL atomically', async () => {
    const r = await script('asg-id-claim', env).done;
    expect(r.code, r.out).to.equal(0);
    expect(r.out).to.include('worker-00');
    const id = readIdentity(identityFile);
    expect(id).to.include({ ASG_ID_IDENTIFIER: 'worker-00', ASG_ID_EPOCH: '1', ASG_ID_CLIENT_ID: 'vm-test-1', ASG_ID_TTL_SECONDS: '3', ASG_ID_TTL_MS: '3000', ASG_ID_FENCE_AFTER_MS: '59400' });
    expect(get((await json(reg!.base, 'GET', '/client/vm-test-1')).body, 'identifier')).to.equal('worker-00');
    // Claiming again (a re-run of user-data) keeps the same identity.
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    expect(readIdentity(identityFile)['ASG_ID_EPOCH']).to.equal('1');
  });

  it('boot claim: uses the IMDSv2 instance id when metadata answers, else the hostname', async () => {
    const port = await freePort();
    const imds: Server = createServer((req, res) => {
      if (req.method === 'PUT' && req.url === '/latest/api/token' && req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return res.end('tok-123');
      if (req.url === '/latest/meta-data/instance-id' && req.headers['x-aws-ec2-metadata-token'] === 'tok-123') return res.end('i-0abc1234def');
      res.statusCode = 401;
      res.end();
    });
    await new Promise<void>((r) => imds.listen(port, '127.0.0.1', r));
    try {
      const { ASG_ID_CLIENT_ID: _, ...noId } = env;
      const r = await script('asg-id-claim', { ...noId, ASG_ID_IMDS_URL: `http://127.0.0.1:${port}` }).done;
      expect(r.code, r.out).to.equal(0);
      expect(readIdentity(identityFile)['ASG_ID_CLIENT_ID']).to.equal('i-0abc1234def');
    } finally {
      imds.close();
    }
    const { ASG_ID_CLIENT_ID: _, ...noId } = env;
    const r = await script('asg-id-claim', { ...noId, ASG_ID_STATE_DIR: join(t.dir, 'run2') }).done;
    expect(r.code, r.out).to.equal(0);
    const host = (await import('node:os')).hostname();
    expect(readIdentity(join(t.dir, 'run2', 'identity.env'))['ASG_ID_CLIENT_ID']).to.equal(host);
  });

  it('boot claim: retries with backoff until the registry comes up', async () => {
    const port = await freePort();
    // Tries for as long as the registry takes to start (seconds on a loaded machine), a second apart.
    const run = script('asg-id-claim', { ...env, ASG_ID_REGISTRY_URL: `http://127.0.0.1:${port}`, ASG_ID_ATTEMPTS: '120', ASG_ID_BACKOFF_MAX: '1' });
    await eventually(async () => /attempt 2: http:\/\/127\.0\.0\.1:\d+ unreachable/.test(run.out()), 60_000, 'two failed attempts');
    const late = await startProcess({ dir: join(t.dir), port, pool: 'worker-[00-02]\n', env: { ...REGISTRY_ENV, DB_PATH: join(t.dir, 'late.db') } });
    try {
      const r = await run.done;
      expect(r.code, r.out).to.equal(0);
      expect(r.out).to.match(/attempt 1: http:\/\/127\.0\.0\.1:\d+ unreachable: .*(Failed to connect|Couldn't connect).*; retrying in 1s/);
      expect(readIdentity(identityFile)['ASG_ID_IDENTIFIER']).to.equal('worker-00');
    } finally {
      await late.stop();
    }
  });

  it('boot claim: gives up after the configured attempts, non-zero, with no identity written', async () => {
    const port = await freePort();
    const r = await script('asg-id-claim', { ...env, ASG_ID_REGISTRY_URL: `http://127.0.0.1:${port}`, ASG_ID_ATTEMPTS: '2' }).done;
    expect(r.code).to.equal(1);
    expect(r.out).to.match(/no identifier after 2 attempts/);
    expect(existsSync(identityFile)).to.equal(false);
  });

  it('boot claim: fails loudly when it cannot make a temporary file', async () => {
    const r = await script('asg-id-claim', { ...env, TMPDIR: join(t.dir, 'missing') }).done;
    expect(r.code).to.equal(70);
    expect(r.out).to.match(/cannot create a temporary file/);
  });

  it('boot claim: a refused request (bad client id) fails at once without retrying', async () => {
    const r = await script('asg-id-claim', { ...env, ASG_ID_CLIENT_ID: 'bad name' }).done;
    expect(r.code).to.equal(65);
    expect(existsSync(identityFile)).to.equal(false);
  });

  it('sidecar: renews with the epoch, and releases on SIGTERM', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const first = get((await json(reg!.base, 'GET', '/client/vm-test-1')).body, 'last_seen');
    const side = script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2' });
    await eventually(async () => get((await json(reg!.base, 'GET', '/client/vm-test-1')).body, 'last_seen') !== first, 10_000, 'a renewal');
    side.child.kill('SIGTERM');
    const r = await side.done;
    expect(r.code, r.out).to.equal(0);
    expect(r.out).to.match(/released worker-00 \(epoch 1\)/);
    expect(existsSync(identityFile)).to.equal(false);
    expect(get((await json(reg!.base, 'GET', '/identifier/worker-00')).body, 'status')).to.equal('free');
  });

  const renewedLines = (out: string): number[] => [...out.matchAll(
    /renewed worker-00 \(epoch 1\) through http:\/\/127\.0\.0\.1:\d+: (\d+) renewal\(s\) since the last line; TTL 3\.000s, ours for 59\.300s after the last one/g,
  )].map((m) => Number(m[1]));

  it('sidecar: says its first successful renewal at once, then one line per ASG_ID_LOG_EVERY seconds with the count since', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const lastSeen = async (): Promise<number> => Date.parse(String(get((await json(reg!.base, 'GET', '/client/vm-test-1')).body, 'last_seen')));
    const claimed = await lastSeen();
    const started = Date.now();
    const side = script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2', ASG_ID_LOG_EVERY: '1' });
    // Renewals over 10 s by the registry's clock. The last may be cut short by the SIGTERM;
    // the one before it came at least a second after the first unless the machine stalled
    // the sidecar for 9 s (its interval is 0.2 s).
    let first = 0;
    await eventually(async () => {
      if (side.exited() !== undefined) throw new Error(`the sidecar exited:\n${side.out()}`);
      const seen = await lastSeen();
      if (first === 0 && seen !== claimed) first = seen;
      return first > 0 && seen - first >= 10_000;
    }, 90_000, 'ten seconds of renewals');
    side.child.kill('SIGTERM');
    const r = await side.done;
    const elapsed = Date.now() - started;
    const counts = renewedLines(r.out);
    expect(counts[0], r.out).to.equal(1);
    expect(counts.length, r.out).to.be.at.least(2);
    // Lines at least a second apart (by its clock, /proc/uptime's hundredths of a second).
    expect(counts.length, r.out).to.be.at.most(Math.floor(elapsed / 990) + 1);
    expect(counts.slice(1).every((n) => n >= 1), r.out).to.equal(true);
  });

  it('sidecar: by default a steady renewal is said once, not every time (one line a minute)', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const lastSeen = async (): Promise<unknown> => get((await json(reg!.base, 'GET', '/client/vm-test-1')).body, 'last_seen');
    const side = script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2' });
    let seen = await lastSeen();
    let renewals = 0;
    await eventually(async () => {
      if (side.exited() !== undefined) throw new Error(`the sidecar exited:\n${side.out()}`);
      const now = await lastSeen();
      if (now !== seen) { seen = now; renewals += 1; }
      return renewals >= 5;
    }, 60_000, 'five renewals');
    side.child.kill('SIGTERM');
    const r = await side.done;
    expect(renewedLines(r.out), r.out).to.deep.equal([1]);
  });

  it('sidecar: a forced release (409) makes it give the identity up, exit 3', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const side = script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2' });
    expect((await json(reg!.base, 'DELETE', '/identifier/worker-00')).status).to.equal(200);
    const r = await side.done;
    expect(r.code, r.out).to.equal(3);
    expect(r.out).to.match(/lost: not_owner/);
    expect(existsSync(identityFile)).to.equal(false);
  });

  it('sidecar: a stale epoch (an older incarnation) is fenced off, exit 3', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    // The lease is the claim's key's (holder.key: the boot id, then the key).
    const key = readFileSync(join(t.dir, 'run', 'holder.key'), 'utf8').trim().split('\n')[1];
    expect((await json(reg!.base, 'POST', '/release', { client_id: 'vm-test-1', identifier: 'worker-00', key })).status).to.equal(200);
    // A new incarnation, with a key of its own: worker-01 now, epoch 1.
    expect((await json(reg!.base, 'POST', '/allocate', { client_id: 'vm-test-1', key: 'a-new-boot-key-0123456789' })).status).to.equal(200);
    // The identity file still says worker-00 epoch 1: not ours.
    const r = await script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2' }).done;
    expect(r.code).to.equal(3);
    expect(existsSync(identityFile)).to.equal(false);
  });

  it('sidecar: a stop margin as long as the registry\'s fence window gives the identity up at once, saying why', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const r = await script('asg-id-sidecar', { ...env, ASG_ID_FENCE_MARGIN: '60' }).done;
    expect(r.code, r.out).to.equal(4);
    expect(r.out).to.match(/ASG_ID_FENCE_MARGIN=60s leaves nothing of the registry's 59400ms fence window/);
    expect(existsSync(identityFile)).to.equal(false);
  });

  it('sidecar: with no identity to keep, exits 66 (systemd does not restart it)', async () => {
    const r = await script('asg-id-sidecar', env).done;
    expect(r.code).to.equal(66);
    expect(r.out).to.match(/no identity/);
  });

  it('release script: frees the identifier (ExecStop), and is a no-op the second time', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const r = await script('asg-id-release', env).done;
    expect(r.code, r.out).to.equal(0);
    expect(get((await json(reg!.base, 'GET', '/identifier/worker-00')).body, 'status')).to.equal('free');
    expect((await script('asg-id-release', env).done).code).to.equal(0);
  });

  it('agent tokens: the scripts send ASG_ID_TOKEN; a wrong one fails the claim at once', async () => {
    await reg!.stop();
    reg = await startProcess({ dir: t.dir, pool: 'worker-[00-02]\n', env: { ...REGISTRY_ENV, AGENT_TOKENS: 'agent-token-0123456789', ADMIN_TOKENS: 'admin-token-0123456789' } });
    env['ASG_ID_REGISTRY_URL'] = reg.base;
    const bad = await script('asg-id-claim', { ...env, ASG_ID_TOKEN: 'wrong-token-0123456789' }).done;
    expect(bad.code).to.equal(2);
    expect(bad.out).to.match(/HTTP 401 unauthorized/);
    const good = await script('asg-id-claim', { ...env, ASG_ID_TOKEN: 'agent-token-0123456789' }).done;
    expect(good.code, good.out).to.equal(0);
    const rel = await script('asg-id-release', { ...env, ASG_ID_TOKEN: 'agent-token-0123456789' }).done;
    expect(rel.out).to.match(/released worker-00/);
  });

  it('agent.env.example names every setting the scripts read', () => {
    const read = new Set<string>();
    for (const f of readdirSync(join(ROOT, 'scripts'))) {
      for (const m of readFileSync(join(ROOT, 'scripts', f), 'utf8').matchAll(/\$\{(ASG_ID_[A-Z_]+):[-+=]/g)) read.add(m[1] ?? '');
    }
    // What the claim writes to identity.env, taken from the registry's answer: not settings.
    for (const k of ['IDENTIFIER', 'EPOCH', 'TTL_SECONDS', 'TTL_MS', 'FENCE_AFTER_MS', 'CLAIMED_AT_MS', 'WATERMARK']) read.delete(`ASG_ID_${k}`);
    const example = readFileSync(join(ROOT, 'systemd', 'agent.env.example'), 'utf8');
    expect([...read].filter((k) => !new RegExp(`^#? ?${k}=`, 'm').test(example))).to.deep.equal([]);
    expect(read.size).to.be.at.least(11);
  });
});
