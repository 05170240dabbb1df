/**
 * Time for the registry. Only this module reads the machine's clocks.
 *
 * Lease arithmetic must survive the wall clock being stepped (NTP corrections, a VM
 * resumed from pause, an operator's `date -s`). So the registry does not read the wall
 * clock per request: the first process of a boot reads it once and records the anchor in
 * the store; from then on every process sharing that store advances by the machine's
 * monotonic clock, which only moves forward at the rate of real time. A floor (the latest
 * time already written to the store) keeps registry time from going back across reboots.
 */
import { readFileSync } from 'node:fs';

/** Registry time in epoch milliseconds. Never goes backwards. */
export interface Clock {
  now(): number;
}

/** The clocks of a machine: the settable wall clock, and the monotonic one with its boot. */
export interface TimeSource {
  wall(): number;
  /** Milliseconds on the machine's monotonic clock: the same in every process of one boot. */
  monotonic(): number;
  /** Names the boot the monotonic clock counts from; it starts again at every boot. */
  bootId(): string;
}

function readBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown-boot'; // not Linux: a reboot is still caught by the monotonic clock falling below the floor
  }
}

const BOOT_ID = readBootId();

export const systemTimeSource: TimeSource = Object.freeze({
  wall: () => Date.now(),
  // process.hrtime is CLOCK_MONOTONIC: one timeline for every process of this boot
  // (performance.now() would count from this process's start).
  monotonic: () => Number(process.hrtime.bigint() / 1000n) / 1000,
  bootId: () => BOOT_ID,
});

/**
 * Registry time on one host is `offset + monotonic`, and the offset is kept in the store, so
 * every process of one boot computes the same time whatever its own wall clock says, and a
 * restart resumes exactly where the last process was.
 */
export interface ClockAnchor {
  readonly bootId: string;
  readonly offset: number;
}

export interface AnchorDecision {
  readonly anchor: ClockAnchor;
  /** True when the anchor is new (first start, or a new boot): the store must record it. */
  readonly fresh: boolean;
  /** A previous boot's anchor was replaced: nobody can tell how much real time passed since `floor`. */
  readonly rebooted: boolean;
}

/**
 * Picks the anchor for a process starting now. The same boot keeps the stored one. A new boot
 * anchors on the wall clock, but never below `floor` (the latest time in the store), so
 * registry time never goes back.
 */
export function resumeAnchor(stored: ClockAnchor | null, floor: number, source: TimeSource): AnchorDecision {
  const mono = source.monotonic();
  if (stored && stored.bootId === source.bootId() && stored.offset + mono >= floor) {
    return { anchor: stored, fresh: false, rebooted: false };
  }
  const start = Math.max(Math.floor(source.wall()), floor);
  return { anchor: { bootId: source.bootId(), offset: start - mono }, fresh: true, rebooted: stored !== null };
}

/** The clock of an anchor: never below `floor`, never going backwards. Integer milliseconds. */
export function anchorClock(source: TimeSource, anchor: ClockAnchor, floor = 0): Clock {
  let last = floor;
  return {
    now(): number {
      const t = Math.floor(anchor.offset + source.monotonic());
      if (t > last) last = t;
      return last;
    },
  };
}

/**
 * A clock anchored on the wall clock now (or on `floorMs`, if later) and driven by the
 * monotonic clock afterwards. For a store that keeps no anchor (tests, one-shot tools).
 */
export function anchoredClock(source: TimeSource, floorMs = 0): Clock {
  return anchorClock(source, resumeAnchor(null, floorMs, source).anchor, floorMs);
}

/**
 * How far the wall clock has moved against registry time since the last look: a step of
 * the machine's clock (NTP, an operator's `date -s`, a resumed VM). Registry time ignores
 * it, but it is a sign that the registry may have lost its time.
 */
export class StepDetector {
  private skew: number | null = null;
  constructor(private readonly source: TimeSource, private readonly clock: Clock) {}
  /** The step seen since the last call, in ms (0 on the first call). */
  check(): number {
    const skew = this.source.wall() - this.clock.now();
    const step = this.skew === null ? 0 : skew - this.skew;
    this.skew = skew;
    return step;
  }
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
  private boot = 1;
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
  bootId(): string {
    return `fake-boot-${this.boot}`;
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
  /** A reboot starts a new boot and resets the monotonic clock. */
  reboot(): void {
    this.boot++;
    this.monoMs = 1_000;
  }
}
