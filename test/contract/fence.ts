/**
 * The fence window announced to a holder is kept with its lease: no later setting shortens it.
 * A registry restarted with a lower REUSE_COOLDOWN_SECONDS, or another instance with another
 * value, never grants an identifier sooner than its last holder was told it could keep using it
 * (`fence_after_ms` after it sent its last successful allocate or liveness). On every engine;
 * the real-process restart is in test/system/fence-process.test.ts.
 */
import { expect } from 'chai';
import { fenceAfterMs } from '../../src/domain/lease.js';
import { SECOND, errorCode, makeRegistry } from '../support/helpers.js';

const LONG = 60 * SECOND;
const SHORT = 6 * SECOND;

export const fence = (): Mocha.Suite => describe('fence window kept with the lease', () => {

  it('a restart with a lower cool-down: a force release still cools for the window the holder was told', async () => {
    const h = await makeRegistry({ pool: 'only', shared: true, rules: { cooldownMs: LONG, ttlMs: 90 * SECOND } });
    const told = await h.registry.allocate('vm-a');
    expect(told.fenceAfterMs).to.equal(59_400);
    expect(await h.row('only')).to.include({ fence_cooldown_ms: LONG });
    await h.registry.close();
    // The registry comes back with REUSE_COOLDOWN_SECONDS lowered to 6.
    const after = await h.another(h.clock, { cooldownMs: SHORT });
    // Its views still announce the window the holder was told...
    expect((await after.identifier('only')).lease?.fenceAfterMs).to.equal(59_400);
    expect((await after.leaseOfClient('vm-a')).fenceAfterMs).to.equal(59_400);
    h.clock.advance(SECOND);
    expect((await after.renew('vm-a', 'only')).fenceAfterMs, 'a renewal answered by the new setting').to.equal(59_400);
    const sentAt = h.clock.now(); // the holder's last successful liveness, as it sent it
    const freed = await after.forceRelease('only');
    expect(freed.availableAt).to.equal(sentAt + LONG);
    // ... and nobody is granted it before the holder has stopped using it.
    h.clock.advance(SHORT + 1);
    expect(await errorCode(after.allocate('vm-b')), '6 s: the new setting alone would have granted it').to.equal('pool_exhausted');
    h.clock.set(sentAt + fenceAfterMs({ cooldownMs: LONG }));
    expect(await errorCode(after.allocate('vm-b')), 'the holder may still be using it').to.equal('pool_exhausted');
    h.clock.set(sentAt + LONG);
    const next = await after.allocate('vm-b');
    expect(next).to.include({ identifier: 'only', epoch: 2 });
    // A grant under the new setting announces the new window, and keeps that one.
    expect(next.fenceAfterMs).to.equal(5_940);
    expect(await h.row('only')).to.include({ fence_cooldown_ms: SHORT });
  });

  it('the reaper honours the kept window too: an expired lease reclaimed under a lower setting cools for the old one', async () => {
    const h = await makeRegistry({ pool: 'only', shared: true, rules: { cooldownMs: LONG, ttlMs: 10 * SECOND } });
    await h.registry.allocate('vm-a');
    h.clock.advance(2 * SECOND);
    await h.registry.renew('vm-a', 'only');
    const renewedAt = h.clock.now();
    const after = await h.another(h.clock, { cooldownMs: SHORT, ttlMs: 10 * SECOND });
    h.clock.advance(10 * SECOND);
    expect((await after.reap()).reclaimed).to.equal(1);
    expect((await after.identifier('only')).availableAt).to.equal(h.clock.now() + LONG);
    h.clock.set(renewedAt + LONG);
    expect(await errorCode(after.allocate('vm-b')), 'the window the holder was told, from its last renewal').to.equal('pool_exhausted');
    h.clock.set(renewedAt + 10 * SECOND + LONG);
    expect(await after.allocate('vm-b')).to.include({ identifier: 'only', epoch: 2 });
  });

  it('two instances with different settings: the lease announces and keeps the longer window, whichever answers', async () => {
    const h = await makeRegistry({ pool: 'only', shared: true, rules: { cooldownMs: SHORT } });
    const long = await h.another(h.clock, { cooldownMs: LONG });
    expect((await h.registry.allocate('vm-a')).fenceAfterMs).to.equal(5_940);
    // A renewal through the instance with the longer cool-down lengthens the window from then on...
    expect((await long.renew('vm-a', 'only')).fenceAfterMs).to.equal(59_400);
    // ... and the short one then announces it too, and honours it.
    expect((await h.registry.renew('vm-a', 'only')).fenceAfterMs).to.equal(59_400);
    expect((await h.registry.list({ status: 'leased', after: null, limit: null })).items[0]?.lease?.fenceAfterMs).to.equal(59_400);
    const freed = await h.registry.forceRelease('only');
    expect(freed.availableAt).to.equal(h.clock.now() + LONG);
    expect(await h.row('only')).to.include({ fence_cooldown_ms: null, client_id: null });
    h.clock.advance(LONG - 1);
    expect(await errorCode(h.registry.allocate('vm-b'))).to.equal('pool_exhausted');
    h.clock.advance(1);
    expect(await h.registry.allocate('vm-b')).to.include({ identifier: 'only', fenceAfterMs: 5_940 });
  });

  it('a release by the holder itself frees at once, whatever window it was told', async () => {
    const h = await makeRegistry({ pool: 'only', rules: { cooldownMs: LONG } });
    await h.registry.allocate('vm-a');
    const freed = await h.registry.release('vm-a', 'only');
    expect(freed.status).to.equal('free');
    expect(await h.row('only')).to.include({ fence_cooldown_ms: null });
    expect(await h.registry.allocate('vm-b')).to.include({ identifier: 'only', epoch: 2 });
  });
});
