/**
 * The fence window survives a real restart with a lower REUSE_COOLDOWN_SECONDS (SQLite file,
 * real processes): once, a VM told fence_after_ms 59400 had its identifier granted to another
 * 5.4 s after such a restart. The registry-level tests on both engines are in test/contract/fence.ts.
 */
import { expect } from 'chai';
import { tempDir } from '../support/helpers.js';
import { json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

function field(body: unknown, k: string): unknown {
  return typeof body === 'object' && body !== null && k in body ? Object.fromEntries(Object.entries(body))[k] : undefined;
}

describe('fence window across a real restart with a lower cool-down', function () {
  this.timeout(90_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry | null = null;
  let other: RunningRegistry | null = null;
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await Promise.all([reg?.stop('SIGKILL'), other?.stop('SIGKILL')]);
    reg = null;
    other = null;
    t.cleanup();
  });

  it('REUSE_COOLDOWN_SECONDS 4 -> 0.2: the identifier is not granted before the window its holder was told', async () => {
    const env = { LEASE_TTL_SECONDS: '90', STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '0 0 1 1 *' };
    reg = await startProcess({ dir: t.dir, pool: 'only\n', env: { ...env, REUSE_COOLDOWN_SECONDS: '4' } });
    const granted = await json(reg.base, 'POST', '/allocate', { client_id: 'vm-a' });
    expect(granted.status).to.equal(200);
    expect(field(granted.body, 'fence_after_ms')).to.equal(3960);
    const renewed = await json(reg.base, 'POST', '/liveness', { client_id: 'vm-a', identifier: 'only' });
    expect(renewed.status).to.equal(200);
    expect(field(renewed.body, 'fence_after_ms')).to.equal(3960);
    expect((await reg.stop()).code).to.equal(0);

    reg = await startProcess({ dir: t.dir, pool: 'only\n', env: { ...env, REUSE_COOLDOWN_SECONDS: '0.2' } });
    const view = await json(reg.base, 'GET', '/identifier/only');
    expect(field(view.body, 'fence_after_ms'), 'the restarted registry shows the window the holder was told').to.equal(3960);
    const lastSeen = Date.parse(String(field(view.body, 'last_seen')));
    const forced = await json(reg.base, 'DELETE', '/identifier/only');
    expect(forced.status).to.equal(200);
    const availableAt = Date.parse(String(field(forced.body, 'available_at')));
    expect(availableAt - lastSeen, 'cools at least the old cool-down from the last liveness').to.be.at.least(4000);

    // Until the old window has passed, nobody gets it: asked right away, and again once the new
    // setting alone (0.2 s) would have let it go, as the registry's own answers time it.
    const askedAt = Date.now();
    expect((await json(reg.base, 'POST', '/allocate', { client_id: 'vm-b' })).status).to.equal(503);
    let refusedAfterShortCooldown = 0;
    for (;;) {
      const r = await json(reg.base, 'POST', '/allocate', { client_id: 'vm-b' });
      if (r.status === 200) {
        expect(Date.parse(String(field(r.body, 'allocated_at'))), 'granted only once the old window is over').to.be.at.least(availableAt);
        expect(field(r.body, 'epoch')).to.equal(2);
        expect(field(r.body, 'fence_after_ms'), 'a new grant announces the new window').to.equal(198);
        break;
      }
      expect(r.status).to.equal(503);
      if (Date.now() - askedAt > 400) refusedAfterShortCooldown++;
      expect(Date.now() - askedAt, 'granted in the end').to.be.below(30_000);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(refusedAfterShortCooldown, 'refused past twice the new cool-down').to.be.greaterThan(0);
  });

  it('two processes at once on one file, REUSE_COOLDOWN_SECONDS 4 and 0.2: whichever answers announces and honours the longer window', async () => {
    const env = { LEASE_TTL_SECONDS: '90', STARTUP_GRACE_SECONDS: '0', REAPER_SCHEDULE: '0 0 1 1 *' };
    reg = await startProcess({ dir: t.dir, pool: 'only\n', env: { ...env, REUSE_COOLDOWN_SECONDS: '4' } });
    other = await startProcess({ dir: t.dir, env: { ...env, REUSE_COOLDOWN_SECONDS: '0.2' } });
    // Granted by the short one: its window. Renewed through the long one: the longer window from then on.
    const granted = await json(other.base, 'POST', '/allocate', { client_id: 'vm-a' });
    expect(field(granted.body, 'fence_after_ms')).to.equal(198);
    const renewed = await json(reg.base, 'POST', '/liveness', { client_id: 'vm-a', identifier: 'only' });
    expect(field(renewed.body, 'fence_after_ms')).to.equal(3960);
    const again = await json(other.base, 'POST', '/liveness', { client_id: 'vm-a', identifier: 'only' });
    expect(field(again.body, 'fence_after_ms'), 'the short one announces the window the holder was told').to.equal(3960);
    const lastSeen = Date.parse(String(field(again.body, 'last_seen')));
    const forced = await json(other.base, 'DELETE', '/identifier/only');
    expect(Date.parse(String(field(forced.body, 'available_at'))) - lastSeen, 'and honours it').to.be.at.least(4000);
    const refused = await json(other.base, 'POST', '/allocate', { client_id: 'vm-b' });
    expect(refused.status).to.equal(503);
  });
});
