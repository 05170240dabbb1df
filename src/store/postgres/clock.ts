/**
 * Registry time on PostgreSQL: the database server's clock plus an offset stored in the
 * database (`registry_clock`), so every instance computes the same time whatever its host's
 * clock says. It follows the server clock's *rate*, never its *steps*:
 *
 *  - every instance measures the server's clock against its own monotonic clock. Each round
 *    trip says "registry time was x at some moment between the send and the answer"; the
 *    readings of one instance must agree with each other, up to STEP_MS and a rate difference
 *    of RATE. A reading that does not is a step of the server's clock (NTP, a resumed VM, an
 *    operator's `date -s`);
 *  - a step is absorbed by changing the stored offset by its size, as a compare-and-set on the
 *    offset's generation, so every instance takes the same offset and two instances that see
 *    the same step apply it once. Meanwhile the instance that saw it acts on its own estimate,
 *    never on the stepped clock;
 *  - an instance that starts resumes from the store, not from its memory: the latest time the
 *    store holds (a floor), the offset, and the last reading an instance on this host (this
 *    boot: the same monotonic clock) recorded. See `planStart` (start.ts).
 *
 * The pieces here are pure (no I/O, no clock of their own): time.ts (StoreClock) feeds them readings.
 * Anchor for the idea of an explicit bound on clock uncertainty: CockroachDB's max-offset and
 * Spanner's TrueTime intervals; here each instance keeps registry time as an interval
 * [lo, hi] against its monotonic clock, and a reading outside it is a step.
 */
import type { Clock } from '../../clock.js';

/**
 * A reading further than this outside what an instance expects is a step of the server's clock
 * and is absorbed; a smaller one is followed as the clock's rate (chrony slews up to 8 %, so
 * 80 ms in a second). It is also the bound on how far two instances' registry times may differ.
 */
export const STEP_MS = 100;
/** How far the server's clock rate and an instance's monotonic rate may differ (1000 ppm: twice NTP's 500 ppm). */
export const RATE = 0.001;
/**
 * A one-statement write reads the server's clock after it was sent; within this long its time is
 * the server's (plus the offset). Later than that (a statement queued on a busy server), its time
 * is held at the instance's estimate, a little behind: only ever safe (see `ServerTime.bounds`).
 */
export const SEND_SLACK_MS = 100;
/**
 * How long a starting instance with no reading of its own (a new host, or a reboot) watches for
 * instances already running to show that they agree with the server's clock (each beats every
 * second) before it decides that none is running.
 */
export const LINK_WAIT_MS = 3000;
/** How often it looks meanwhile. */
export const LINK_POLL_MS = 100;

/** What one statement read: the server's clock, and the stored offset (of generation `gen`) it added. */
export interface ClockReading {
  readonly raw: number;
  readonly offset: number;
  readonly gen: number;
}

/** A reading, with when (local monotonic ms) its statement was sent and its answer came back. */
export interface Sample extends ClockReading {
  readonly sentAt: number;
  readonly receivedAt: number;
}

/** What is known: at local monotonic `mono`, registry time was within [lo, hi]. */
export interface Mark {
  readonly mono: number;
  readonly lo: number;
  readonly hi: number;
}

/** A mark as stored for a host (see `clock_hosts`), with the generation of the offset it was taken under. */
export interface HostMark extends Mark {
  readonly gen: number;
}

/** A step to record: the offset of the next generation after `fromGen`. */
export interface Correction {
  readonly fromGen: number;
  readonly offset: number;
  /** The step absorbed (positive: the server's clock went forward). */
  readonly stepMs: number;
  /** Registry time once corrected: the stored floor is raised to it. */
  readonly at: number;
  /**
   * A forward step is refused when another host's mark shows registry time already past this:
   * the others live on the server's clock as it is, so it was this host that lost time (a
   * suspend stops the monotonic clock), not the server that stepped.
   */
  readonly refuseIfOthersPast: number | null;
  /** Cool-downs running past `after` lengthened by `by` (a start with no link to the past: see planStart). */
  readonly shift: { readonly after: number; readonly by: number } | null;
  /** The mark of the uncorrected reading: what this instance takes if the correction is refused. */
  readonly rawMark: Mark;
}

/** How a recorded correction ended. */
export type Settled =
  | { readonly kind: 'applied'; readonly gen: number; readonly offset: number }
  /** Another instance changed the offset first: its generation is now in force. */
  | { readonly kind: 'lost'; readonly gen: number; readonly offset: number }
  | { readonly kind: 'refused' }
  | { readonly kind: 'failed' };

/** A mark carried to local monotonic `at`: wider by the rate difference over the time between. */
export function project(m: Mark, at: number): { lo: number; hi: number } {
  const d = at - m.mono;
  const spread = RATE * Math.abs(d);
  return { lo: m.lo + d - spread, hi: m.hi + d + spread };
}

/** What a reading of registry time `x`, taken between `sentAt` and `receivedAt`, says at `sentAt`. */
export function sampleMark(x: number, sentAt: number, receivedAt: number): Mark {
  return { mono: sentAt, lo: x - Math.max(0, receivedAt - sentAt), hi: x };
}

function mid(m: { lo: number; hi: number }): number {
  return (m.lo + m.hi) / 2;
}

/** How a reading compares with what is known: consistent, or stepped by `stepMs` (positive: forward). */
export function compare(known: Mark, reading: Mark): { readonly stepMs: number } | null {
  const k = project(known, reading.mono);
  if (reading.lo > k.hi + STEP_MS || reading.hi < k.lo - STEP_MS) return { stepMs: mid(reading) - mid(k) };
  return null;
}

/**
 * Both marks at `b.mono`, intersected. When they do not meet (the clock moved, within STEP_MS),
 * `a` moved just far enough to touch `b`: followed by no more than the reading shows, however
 * wide (a slow round trip) it is.
 */
function narrow(a: Mark, b: Mark): Mark {
  const k = project(a, b.mono);
  const lo = Math.max(k.lo, b.lo);
  const hi = Math.min(k.hi, b.hi);
  if (lo <= hi) return { mono: b.mono, lo, hi };
  const by = b.lo > k.hi ? b.lo - k.hi : b.hi - k.lo;
  return { mono: b.mono, lo: k.lo + by, hi: k.hi + by };
}

export function shifted(m: Mark, by: number): Mark {
  return { mono: m.mono, lo: m.lo + by, hi: m.hi + by };
}

/**
 * A step seen and not yet recorded: registry time read under generation `gen`'s offset is ahead
 * of this instance's registry time by some δ within [lo, hi] (negative: behind). Each reading
 * after the step narrows it; it is recorded once narrower than STEP_MS, so the offset every
 * instance takes is off by at most half of that, and no other instance sees it as a step.
 */
interface StepEstimate {
  readonly gen: number;
  readonly lo: number;
  readonly hi: number;
  /** The latest reading as stored (uncorrected): what this instance takes if the recording is refused. */
  readonly rawMark: Mark;
  /** When the first reading that showed it came back: a reading sent later that fits without it says the step is gone. */
  readonly since: number;
}

/**
 * An instance that started on a guess (from the floor with nobody to ask, or on a mark left long
 * ago) takes the next offset another instance records, if within `below`/`above` (plus STEP_MS)
 * of its guess: that instance measured while this one guessed. Every other instance holds its
 * line against a newer offset (records the difference), so two never correct each other in turn.
 */
export interface Yield {
  /** The offset's generation this instance started under. */
  readonly gen: number;
  readonly below: number;
  readonly above: number;
}

/**
 * One instance's registry time on PostgreSQL, fed with every reading of the server's clock it
 * makes (transactions, one-statement writes, health checks). Not a clock of its own: `now()` is
 * an estimate between readings, never behind the server, never going back.
 */
export class ServerTime implements Clock {
  private mark: Mark;
  /** Registry time never goes back in this process. */
  private last: number;
  private gen: number;
  private offset: number;
  private estimate: StepEstimate | null = null;
  /** The recording proposed for the estimate, once narrow enough. */
  private pending: Correction | null = null;
  /** Set when this instance started on a guess (see Yield); cleared by the first reading of a newer offset. */
  private yieldTo: Yield | null;

  constructor(
    private readonly monotonic: () => number,
    start: { readonly mark: Mark; readonly gen: number; readonly offset: number; readonly floor: number; readonly yieldTo?: Yield | null },
  ) {
    this.mark = start.mark;
    this.gen = start.gen;
    this.offset = start.offset;
    this.last = Math.max(start.floor, Math.floor(start.mark.lo));
    this.yieldTo = start.yieldTo ?? null;
  }

  /** The estimate now: the latest reading carried forward on the monotonic clock, at its upper end. */
  now(): number {
    const t = Math.floor(project(this.mark, this.monotonic()).hi);
    if (t > this.last) this.last = t;
    return this.last;
  }

  /**
   * The time a one-statement write sent at `sentAt` may use: the server's (plus the offset) held
   * within [lo, hi]. `lo`: registry time had surely reached it when the statement was sent (and
   * this process's latest); `hi`: the estimate at the send, plus SEND_SLACK_MS. A step not yet
   * recorded moves such a write's time by at most that, never by the step.
   */
  bounds(sentAt: number): { lo: number; hi: number } {
    const p = project(this.mark, sentAt);
    return { lo: Math.max(this.last, Math.floor(p.lo)), hi: Math.ceil(p.hi + SEND_SLACK_MS) };
  }

  /** A time this process used (a statement's `now`): later times never go below it. */
  saw(t: number): void {
    if (t > this.last) this.last = t;
  }

  /** The generation of the offset in force as far as this process knows. */
  get generation(): number {
    return this.gen;
  }

  /** What this process knows now, for the host's stored mark. */
  currentMark(): Mark {
    return this.mark;
  }

  /** The step to record, once known closely enough; null if none. */
  proposal(): Correction | null {
    return this.pending;
  }

  /**
   * Takes in one reading: returns the registry time it stands for (the reading itself, or, when
   * the server's clock stepped, this instance's estimate) and the step to record, if any.
   * Readings may come in any order: one taken before a step (or before the offset that absorbs
   * it) may answer after it, so a reading that fits under its own offset or the one in force
   * is taken as it is; one that fits neither shows a step.
   */
  observe(s: Sample): { readonly now: number; readonly step: Correction | null } {
    if (s.gen > this.gen) this.learn(s.gen, s.offset);
    const yieldTo = this.yieldTo !== null && s.gen > this.yieldTo.gen ? this.yieldTo : null;
    if (yieldTo) this.yieldTo = null;
    for (const offset of new Set([this.offset, s.offset])) {
      const fits = sampleMark(s.raw + offset, s.sentAt, s.receivedAt);
      if (compare(this.mark, fits) === null) {
        this.mark = narrow(this.mark, fits);
        // Sent after the step was seen, and it fits as stored: the clock was stepped back again.
        if (this.estimate && s.sentAt > this.estimate.since && offset === this.offset) this.forget();
        return { now: this.use(s.raw + offset), step: null };
      }
    }
    const y = s.raw + this.offset;
    const reading = sampleMark(y, s.sentAt, s.receivedAt);
    const expected = project(this.mark, s.sentAt);
    if (yieldTo && reading.lo <= expected.hi + STEP_MS + yieldTo.above && reading.hi >= expected.lo - STEP_MS - yieldTo.below) {
      // An instance that knows better recorded this offset: take it.
      this.mark = reading;
      return { now: this.use(y), step: null };
    }
    // δ from this reading: the server read `y` at some moment between the send and the answer,
    // when registry time was within the mark carried to then.
    const k = project(this.mark, s.sentAt);
    const rtt = Math.max(0, s.receivedAt - s.sentAt);
    const lo = y - (k.hi + rtt);
    const hi = y - k.lo;
    const e = this.estimate;
    if (e && e.gen === this.gen && lo <= e.hi + STEP_MS && hi >= e.lo - STEP_MS) {
      const nlo = Math.max(e.lo, lo);
      const nhi = Math.min(e.hi, hi);
      this.estimate = nlo <= nhi ? { ...e, lo: nlo, hi: nhi, rawMark: reading } : { ...e, lo, hi, rawMark: reading };
    } else {
      this.estimate = { gen: this.gen, lo, hi, rawMark: reading, since: s.receivedAt };
    }
    const est = this.estimate;
    // The reading corrected by what is known of δ narrows the mark (soundly: δ's whole range).
    this.mark = narrow(this.mark, { mono: s.sentAt, lo: y - rtt - est.hi, hi: y - est.lo });
    const delta = (est.lo + est.hi) / 2;
    const at = Math.min(Math.max(y - delta, k.lo), project(this.mark, s.receivedAt).hi);
    let step: Correction | null = null;
    if (est.hi - est.lo <= STEP_MS) {
      const by = Math.round(delta);
      step = this.pending = {
        fromGen: est.gen,
        offset: this.offset - by,
        stepMs: by,
        at: Math.floor(at),
        refuseIfOthersPast: by > 0 ? Math.floor(y - by / 2) : null,
        shift: null,
        rawMark: est.rawMark,
      };
    }
    return { now: this.use(at), step };
  }

  /** The time a reading stands for, never below this process's latest. */
  private use(t: number): number {
    if (t > this.last) this.last = Math.floor(t);
    return this.last;
  }

  /** How recording `c` ended. */
  settled(c: Correction, outcome: Settled): void {
    if (outcome.kind === 'applied' || outcome.kind === 'lost') this.learn(outcome.gen, outcome.offset);
    if (outcome.kind === 'refused' && this.estimate?.gen === c.fromGen && this.gen === c.fromGen) {
      // The other hosts agree with the server's clock as it is: this host lost time, not the server.
      this.mark = this.estimate.rawMark;
      this.forget();
    }
  }

  private forget(): void {
    this.estimate = null;
    this.pending = null;
  }

  private learn(gen: number, offset: number): void {
    if (gen <= this.gen) return;
    this.gen = gen;
    this.offset = offset;
    this.forget();
  }
}
