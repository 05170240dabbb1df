import { expect } from 'chai';
import { FakeTimeSource, anchoredClock } from '../src/clock.js';

describe('anchored clock', () => {
  it('advances with real time', () => {
    const src = new FakeTimeSource(1_000_000);
    const clock = anchoredClock(src);
    src.advance(2500);
    expect(clock.now()).to.equal(1_002_500);
  });

  it('ignores the wall clock being stepped forward or back while running', () => {
    const src = new FakeTimeSource(1_000_000);
    const clock = anchoredClock(src);
    src.jumpWall(3 * 3600_000);
    expect(clock.now()).to.equal(1_000_000);
    src.jumpWall(-6 * 3600_000);
    src.advance(1000);
    expect(clock.now()).to.equal(1_001_000);
  });

  it('starts no earlier than the floor, so a restart with a clock set back cannot rewind time', () => {
    const src = new FakeTimeSource(5_000);
    const clock = anchoredClock(src, 9_000);
    expect(clock.now()).to.equal(9_000);
    src.advance(10);
    expect(clock.now()).to.equal(9_010);
  });

  it('never goes backwards even if the source does', () => {
    const src = new FakeTimeSource(1_000_000);
    const clock = anchoredClock(src);
    src.advance(100);
    expect(clock.now()).to.equal(1_000_100);
    src.reboot(); // a monotonic clock reset under a running process (cannot happen, but must not hurt)
    expect(clock.now()).to.equal(1_000_100);
  });
});
