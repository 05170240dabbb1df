import { expect } from 'chai';
import { SERVICE_GAP_MS, graceLeftMs, graceRestarts, serviceUpSince } from '../../src/domain/grace.js';
import type { CheckIn } from '../../src/domain/grace.js';

describe('grace rules', () => {
  const serving: CheckIn = { now: 100_000, lastBeatAt: 99_000, storeLostWrites: false, serviceRestarted: false };
  const restarts = (c: Partial<CheckIn>): boolean => graceRestarts({ ...serving, ...c });

  it('does not start again while some instance beat within the last few seconds', () => {
    expect(restarts({})).to.equal(false);
    expect(restarts({ lastBeatAt: 100_000 - SERVICE_GAP_MS })).to.equal(false);
  });

  it('starts again after a gap in service: no instance beat for longer, or none ever', () => {
    expect(restarts({ lastBeatAt: 100_000 - SERVICE_GAP_MS - 1 })).to.equal(true);
    expect(restarts({ lastBeatAt: null })).to.equal(true);
  });

  it('starts again when the store may have lost acknowledged renewals, however recent the last beat', () => {
    expect(restarts({ storeLostWrites: true, lastBeatAt: 100_000 })).to.equal(true);
  });

  it('starts again when every process on the store was down (a reboot), whatever the beats say', () => {
    expect(restarts({ serviceRestarted: true, lastBeatAt: 100_000 })).to.equal(true);
  });

  it('the service is up since the start recorded, or since now when none is or the grace starts again', () => {
    expect(serviceUpSince(50_000, serving)).to.deep.equal({ upSince: 50_000, restarted: false });
    expect(serviceUpSince(null, serving)).to.deep.equal({ upSince: 100_000, restarted: true });
    expect(serviceUpSince(50_000, { ...serving, lastBeatAt: null })).to.deep.equal({ upSince: 100_000, restarted: true });
    expect(serviceUpSince(50_000, { ...serving, storeLostWrites: true })).to.deep.equal({ upSince: 100_000, restarted: true });
  });

  it('runs for the grace from when the service came up', () => {
    expect(graceLeftMs(10_000, 10_000, 90_000)).to.equal(90_000);
    expect(graceLeftMs(10_000, 99_999, 90_000)).to.equal(1);
    expect(graceLeftMs(10_000, 100_000, 90_000)).to.equal(0);
    expect(graceLeftMs(10_000, 10_000, 0)).to.equal(0);
  });
});
