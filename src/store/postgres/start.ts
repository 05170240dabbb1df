/**
 * How an instance starts on registry time (the rules of clock.ts, at start): from one reading of
 * the store, accept the server's clock as it is, record a step seen since this host's last mark,
 * or wait for the running instances. Pure, as clock.ts: time.ts feeds it readings.
 */
import { LINK_WAIT_MS, STEP_MS, compare, project, sampleMark, shifted } from './clock.js';
import type { ClockReading, Correction, HostMark, Mark } from './clock.js';

/** What a starting instance reads from the store, in one statement (see time.ts). */
export interface StartRead extends ClockReading {
  /** The latest registry time the store holds (beats, renewals, history, marks, the stored floor). */
  readonly floor: number;
  /** The last mark an instance on this host, this boot, recorded; null if none (a new host, a reboot). */
  readonly host: HostMark | null;
  /** Each instance's last beat in the instances table (instances that stopped cleanly are gone). */
  readonly beats: ReadonlyMap<string, number>;
}

/** What a starting instance remembers between its looks while it waits (planStart). */
export interface StartMemo {
  readonly since: number;
  readonly gen: number;
  readonly seen: ReadonlyMap<string, number>;
  /** How many times each instance's beat changed since `since`. */
  readonly changes: ReadonlyMap<string, number>;
  /** An instance has beaten twice under this generation: one more look and it is settled. */
  readonly confirmed: boolean;
}

export type StartPlan =
  | { readonly kind: 'accept'; readonly mark: Mark; readonly floor: number }
  | {
    readonly kind: 'record';
    readonly correction: Correction;
    readonly mark: Mark;
    readonly floor: number;
    /** How far the guess may be off, either way: see Yield (null: measured, not guessed). */
    readonly guess: { readonly below: number; readonly above: number } | null;
  }
  | { readonly kind: 'wait'; readonly memo: StartMemo };

/**
 * How an instance starts on the store's time, from one reading taken between `sentAt` and
 * `receivedAt`:
 *  - with this host's mark (this boot): the reading must agree with the mark carried forward on
 *    the monotonic clock, else the server's clock stepped while this instance was down. The step
 *    is recorded at once when the mark pins it within STEP_MS (a short stop), or when nobody
 *    may be running; otherwise (a long stop: the rate allowance grew) the running instances are
 *    asked first, as below, since they measured it. Behind the mark under an offset set since,
 *    they are asked too: they set it;
 *  - with no mark (a new host, a reboot), while instances may be running (beats, other hosts'
 *    marks): it waits until one of them has beaten twice under an unchanged offset (a running
 *    instance checks the server's clock at every beat and records any step before it) and starts
 *    on the server's time as it is; or, when LINK_WAIT_MS passes with no beat, nobody is running;
 *  - nobody running to ask ("cold"): time resumes no lower than the floor, and cool-downs still
 *    running at the floor are lengthened by the time since it, since nothing can tell that time
 *    from a forward step of the server's clock (as SQLite does after a reboot).
 * A start that guessed (cold from the floor, or on a long-stopped mark) yields to the next offset a
 * running instance records (see Yield).
 */
export function planStart(read: StartRead, sentAt: number, receivedAt: number, memo: StartMemo | null): StartPlan {
  const x = read.raw + read.offset;
  const reading = sampleMark(x, sentAt, receivedAt);
  const floor = read.floor;
  /** What this host's mark says to record, when it says the server's clock stepped. */
  let linked: StartPlan | null = null;
  if (read.host) {
    const step = compare(read.host, reading);
    if (step === null) return { kind: 'accept', mark: reading, floor };
    if (step.stepMs > 0 || read.host.gen === read.gen) {
      // Corrected to what the mark expects; a forward step never below the floor.
      const by = Math.round(step.stepMs > 0 ? Math.min(step.stepMs, x - floor) : step.stepMs);
      const k = project(read.host, sentAt);
      const spread = (k.hi - k.lo + (receivedAt - sentAt)) / 2;
      const measured = spread <= STEP_MS / 2;
      linked = record(read, reading, by, floor, measured ? null : { below: spread, above: spread });
      if (measured || read.beats.size === 0) return linked;
    }
  }
  if (floor === 0 && linked === null) return { kind: 'accept', mark: reading, floor };
  if (read.beats.size === 0) return linked ?? cold(read, reading);
  if (memo === null || memo.gen !== read.gen) {
    return { kind: 'wait', memo: { since: memo?.since ?? sentAt, gen: read.gen, seen: read.beats, changes: new Map(), confirmed: false } };
  }
  // They agree with the reading: it stands (this instance never below the floor meanwhile).
  if (memo.confirmed) return { kind: 'accept', mark: reading, floor };
  const changes = new Map(memo.changes);
  for (const [id, at] of read.beats) {
    if (memo.seen.get(id) !== at) changes.set(id, (changes.get(id) ?? 0) + 1);
  }
  const confirmed = [...changes.values()].some((n) => n >= 2);
  if (!confirmed && receivedAt - memo.since > LINK_WAIT_MS) return linked ?? cold(read, reading);
  return { kind: 'wait', memo: { since: memo.since, gen: read.gen, seen: read.beats, changes, confirmed } };
}

/** Nobody running to ask: time resumes no lower than the floor, and the time since it lengthens cool-downs. */
function cold(read: StartRead, reading: Mark): StartPlan {
  const x = reading.hi;
  if (x > read.floor + STEP_MS) return record(read, reading, 0, read.floor, null, { after: read.floor, by: x - read.floor });
  // Behind the floor: the server's clock went back. Resumed from the floor, which may lag the
  // real time by as long as everything was down: an instance found running after all knows better.
  if (x < read.floor - STEP_MS) return record(read, reading, x - read.floor, read.floor, { below: 0, above: Infinity });
  return { kind: 'accept', mark: reading, floor: read.floor };
}

/** The plan to record a step of `by` (positive: the server's clock went forward) and, maybe, a shift. */
function record(
  read: StartRead, reading: Mark, by: number, floor: number,
  guess: { readonly below: number; readonly above: number } | null, shift: Correction['shift'] = null,
): StartPlan {
  const x = reading.hi;
  const at = x - by;
  const correction: Correction = {
    fromGen: read.gen,
    offset: read.offset - by,
    stepMs: by,
    at,
    refuseIfOthersPast: by > 0 ? Math.floor(x - by / 2) : null,
    shift,
    rawMark: reading,
  };
  return { kind: 'record', correction, mark: shifted(reading, -by), floor: Math.max(floor, at), guess };
}
