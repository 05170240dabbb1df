/**
 * Time for the registry. Only this module reads the machine's clocks.
 *
 * Lease arithmetic must survive the wall clock being stepped (NTP corrections, a VM
 * resumed from pause, an operator's `date -s`). So the registry does not read the wall
 * clock per request: it reads the wall clock once, at start-up, and from then on advances
 * by the monotonic clock, which only ever moves forward at the rate of real time.
 * A floor (the latest time already written to the database) keeps registry time from
 * going backwards across restarts even when the machine's wall clock did.
 */
import { performance } from 'node:perf_hooks';

/** Registry time in epoch milliseconds. Never goes backwards. */
export interface Clock {
  now(): number;
}

/** The two clocks of a machine: the settable wall clock and the monotonic one. */
export interface TimeSource {
  wall(): number;
  monotonic(): number;
}

export const systemTimeSource: TimeSource = Object.freeze({
  wall: () => Date.now(),
  monotonic: () => performance.now(),
});

/**
 * A clock anchored once on the wall clock (or on `floorMs`, if that is later) and driven by
 * the monotonic clock afterwards. Integer milliseconds, because that is what the database holds.
 */
export function anchoredClock(source: TimeSource, floorMs = 0): Clock {
  const anchorWall = Math.max(source.wall(), floorMs);
  const anchorMono = source.monotonic();
  let last = anchorWall;
  return {
    now(): number {
      const t = Math.floor(anchorWall + (source.monotonic() - anchorMono));
      // Belt and braces: a monotonic source cannot go back, but a fake one in a test might.
      if (t > last) last = t;
      return last;
    },
  };
}

/** A clock for tests: it moves only when told to. */
export class FakeClock implements Clock {
  private t: number;
  constructor(startMs = Date.parse('2026-01-08T10:00:00.000Z')) {
    this.t = startMs;
  }
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
  set(ms: number): void {
    this.t = ms;
  }
}

/** A fake machine for clock-jump tests: the wall clock can be stepped without the monotonic one. */
export class FakeTimeSource implements TimeSource {
  constructor(
    private wallMs = Date.parse('2026-01-08T10:00:00.000Z'),
    private monoMs = 1_000,
  ) {}
  wall(): number {
    return this.wallMs;
  }
  monotonic(): number {
    return this.monoMs;
  }
  /** Real time passes: both clocks move. */
  advance(ms: number): void {
    this.wallMs += ms;
    this.monoMs += ms;
  }
  /** Someone steps the wall clock (forward or back); the monotonic clock does not notice. */
  jumpWall(ms: number): void {
    this.wallMs += ms;
  }
  /** A reboot resets the monotonic clock. */
  reboot(): void {
    this.monoMs = 1_000;
  }
}
