/**
 * The store's side of registry time on PostgreSQL (the rules are in clock.ts and start.ts): what
 * a starting instance reads, how a step of the server's clock is recorded, exactly once, in
 * `registry_clock`, and how a running store reads registry time (StoreClock).
 */
import type { PoolClient } from 'pg';
import type { Clock } from '../../clock.js';
import { asRow, columns } from '../columns.js';
import type { Columns } from '../columns.js';
import { LINK_POLL_MS, ServerTime, sampleMark } from './clock.js';
import type { ClockReading, Correction, HostMark, Settled } from './clock.js';
import type { Connections } from './connection.js';
import { readingOf } from './held.js';
import type { StatementTime } from './held.js';
import { POSTGRES_TYPES } from './rows.js';
import { planStart } from './start.js';
import type { StartMemo, StartRead } from './start.js';
import { SERVER_MS, beginSql } from './statements.js';
import type { HostClock } from './tx.js';

export type ClockRole = 'instance' | 'tool';

/** A step of the server's clock this instance saw, and what became of recording it. */
export interface ClockStepEvent {
  readonly stepMs: number;
  readonly outcome: Settled['kind'];
  /** Seen when starting (against this host's mark or the floor) rather than while running. */
  readonly atStart: boolean;
  /** Cool-downs lengthened by this much (a start with nothing to go by: see clock.ts, planStart). */
  readonly shiftMs: number | null;
}

/**
 * Everything a start decides on, in one statement: the server's clock, the offset, the latest
 * registry time the store holds (each source read through an index), this host's mark and the
 * instances' beats.
 */
const START_READ_SQL = `SELECT ${SERVER_MS} AS clock_raw, k.offset_ms AS clock_offset, k.gen AS clock_gen,
    greatest(k.floor_ms,
      (SELECT max(lo) FROM clock_hosts),
      (SELECT max(at) FROM instances),
      (SELECT max(last_seen) FROM identifiers WHERE client_id IS NOT NULL),
      (SELECT at FROM history ORDER BY id DESC LIMIT 1),
      (SELECT seen_at FROM fleet WHERE id = 1),
      (SELECT max(at) FROM refusals)) AS floor,
    h.mono AS host_mono, h.lo AS host_lo, h.hi AS host_hi, h.gen AS host_gen,
    (SELECT coalesce(json_agg(json_build_array(b.id, b.at::text)), '[]'::json) FROM (
      SELECT id, at FROM instances UNION ALL SELECT 'host ' || boot_id, lo FROM clock_hosts WHERE boot_id <> $1
    ) b) AS beats
  FROM registry_clock k LEFT JOIN clock_hosts h ON h.boot_id = $1 WHERE k.id = 1`;

/** This host's mark, as the beats write it (see PgTx.beat): the newest reading of its monotonic clock wins. */
const HOST_MARK_SQL = `INSERT INTO clock_hosts (boot_id, mono, lo, hi, gen) VALUES ($1, $2, $3, $4, $5)
  ON CONFLICT (boot_id) DO UPDATE SET mono = excluded.mono, lo = excluded.lo, hi = excluded.hi, gen = excluded.gen
  WHERE excluded.mono >= clock_hosts.mono`;

/**
 * The compare-and-set of a step: the next generation's offset, only over the generation the
 * step was seen under (so two instances seeing one step apply it once), and a forward step only
 * while no other host's mark shows registry time already past `$5` (see Correction).
 */
const RECORD_SQL = `UPDATE registry_clock SET offset_ms = $2, gen = gen + 1, floor_ms = greatest(floor_ms, $3),
    last_step_ms = $4, stepped_at = $3
  WHERE id = 1 AND gen = $1
    AND ($5::bigint IS NULL OR NOT EXISTS (SELECT FROM clock_hosts WHERE boot_id <> $6 AND lo > $5::bigint))
  RETURNING gen, offset_ms`;

/** Why a compare-and-set changed nothing (a statement of its own: it sees what committed meanwhile). */
const RECORD_REFUSED_SQL = `SELECT gen, offset_ms,
    ($1::bigint IS NOT NULL AND EXISTS (SELECT FROM clock_hosts WHERE boot_id <> $2 AND lo > $1::bigint)) AS others_past
  FROM registry_clock WHERE id = 1`;

/** Cool-downs still running at the floor count their remaining part again from now. */
const SHIFT_SQL = `UPDATE identifiers SET available_at = available_at + $2 WHERE client_id IS NULL AND available_at > $1`;

function hostOf(mono: unknown, c: Columns): HostMark | null {
  if (typeof mono !== 'number') return null;
  return { mono, lo: c.int('host_lo'), hi: c.int('host_hi'), gen: c.int('host_gen') };
}

function beatsOf(raw: unknown): Map<string, number> {
  const out = new Map<string, number>();
  if (!Array.isArray(raw)) return out;
  for (const pair of raw) {
    if (Array.isArray(pair) && typeof pair[0] === 'string') out.set(pair[0], Number(pair[1]));
  }
  return out;
}

function startReadOf(raw: unknown): StartRead {
  const r = asRow(raw);
  const c = columns(r, POSTGRES_TYPES);
  const reading = { raw: c.int('clock_raw'), offset: c.int('clock_offset'), gen: c.int('clock_gen') };
  return { ...reading, floor: c.int('floor'), host: hostOf(r['host_mono'], c), beats: beatsOf(r['beats']) };
}

/** Records `c` (see RECORD_SQL) and, when it carries one, the shift of cool-downs, in one transaction. */
export async function recordStep(client: PoolClient, c: Correction, bootId: string | null): Promise<Settled> {
  await client.query('BEGIN');
  try {
    const res = await client.query({
      name: 'clock_record', text: RECORD_SQL,
      values: [c.fromGen, c.offset, Math.floor(c.at), c.stepMs, c.refuseIfOthersPast, bootId ?? ''],
    });
    const row: unknown = res.rows[0];
    if (row === undefined) {
      const state = asRow((await client.query({ name: 'clock_record_refused', text: RECORD_REFUSED_SQL, values: [c.refuseIfOthersPast, bootId ?? ''] })).rows[0]);
      await client.query('ROLLBACK');
      const stored = columns(state, POSTGRES_TYPES);
      const gen = stored.int('gen');
      if (gen !== c.fromGen) return { kind: 'lost', gen, offset: stored.int('offset_ms') };
      return state['others_past'] === true ? { kind: 'refused' } : { kind: 'failed' };
    }
    if (c.shift) await client.query({ name: 'clock_shift', text: SHIFT_SQL, values: [c.shift.after, c.shift.by] });
    await client.query('COMMIT');
    const r = columns(row, POSTGRES_TYPES);
    return { kind: 'applied', gen: r.int('gen'), offset: r.int('offset_ms') };
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** How this instance keeps registry time (see PostgresStoreOptions). */
export interface ClockOptions {
  /** Names this host's boot; null: unknown, no host mark is kept. */
  readonly bootId: string | null;
  readonly role: ClockRole;
  readonly onStep: ((e: ClockStepEvent) => void) | null;
}

interface StartOptions extends ClockOptions {
  readonly monotonic: () => number;
  /** How a start waits LINK_POLL_MS for the running instances (see ConnectionOptions.sleep). */
  readonly sleep: (ms: number) => Promise<void>;
}

/** Looks a starting instance may take (LINK_POLL_MS apart) before it gives up: far past LINK_WAIT_MS. */
const MAX_START_LOOKS = 200;

/**
 * Registry time for an instance starting now, from the store (see planStart): it may record a
 * step seen since this host's last mark, and may wait for running instances; then it leaves
 * this host's mark at once, so an instance starting beside it finds it. A tool takes the
 * reading as it is (never below the floor) and records nothing.
 */
export async function startTime(client: PoolClient, o: StartOptions): Promise<ServerTime> {
  const time = await settleTime(client, o);
  if (o.role === 'instance' && o.bootId !== null) await writeHostMark(client, o.bootId, time);
  return time;
}

/** Leaves this host's mark of registry time now (see clock_hosts). */
export async function writeHostMark(client: PoolClient, bootId: string, time: ServerTime): Promise<void> {
  const m = time.currentMark();
  await client.query({ name: 'clock_host_mark', text: HOST_MARK_SQL, values: [bootId, m.mono, Math.floor(m.lo), Math.ceil(m.hi), time.generation] });
}

async function settleTime(client: PoolClient, o: StartOptions): Promise<ServerTime> {
  let memo: StartMemo | null = null;
  for (let look = 0; look < MAX_START_LOOKS; look++) {
    const sentAt = o.monotonic();
    const res = await client.query({ name: 'clock_start', text: START_READ_SQL, values: [o.bootId ?? ''] });
    const receivedAt = o.monotonic();
    const read = startReadOf(res.rows[0]);
    const start = { gen: read.gen, offset: read.offset };
    if (o.role === 'tool') {
      return new ServerTime(o.monotonic, { ...start, mark: sampleMark(read.raw + read.offset, sentAt, receivedAt), floor: read.floor });
    }
    const plan = planStart(read, sentAt, receivedAt, memo);
    if (plan.kind === 'accept') return new ServerTime(o.monotonic, { ...start, mark: plan.mark, floor: plan.floor });
    if (plan.kind === 'wait') {
      memo = plan.memo;
      await o.sleep(LINK_POLL_MS);
      continue;
    }
    const c = plan.correction;
    const outcome = await recordStep(client, c, o.bootId);
    o.onStep?.({ stepMs: c.stepMs, outcome: outcome.kind, atStart: true, shiftMs: outcome.kind === 'applied' ? c.shift?.by ?? null : null });
    if (outcome.kind === 'applied') {
      const yieldTo = plan.guess ? { gen: outcome.gen, ...plan.guess } : null;
      return new ServerTime(o.monotonic, { gen: outcome.gen, offset: outcome.offset, mark: plan.mark, floor: plan.floor, yieldTo });
    }
    if (outcome.kind === 'refused') return new ServerTime(o.monotonic, { ...start, mark: c.rawMark, floor: read.floor });
    memo = null; // another instance changed the offset first: look again
  }
  throw new Error('registry time could not be settled: the stored clock kept changing');
}

/** What opens a use case's transaction: the time it runs at, and this host's mark for its beat. */
export interface Begun {
  readonly now: number;
  readonly host: HostClock | null;
}

/**
 * Registry time as a store keeps it: read in every transaction and one-statement write, each
 * reading checked for a step of the server's clock, a step seen recorded (one at a time, off
 * the request's path) — or a test's injected clock, with none of that.
 */
export class StoreClock {
  /** Registry time: the server's (ServerTime), or the injected one. */
  readonly clock: Clock;
  /** A step of the server's clock being recorded (one at a time). */
  recording = false;

  constructor(
    private readonly db: Connections,
    /** Registry time measured on the server's clock; null when injected. */
    readonly time: ServerTime | null,
    private readonly injected: Clock | null,
    readonly monotonic: () => number,
    private readonly opts: ClockOptions,
    /** Called when a recording ends (the store may be waiting for its work to finish). */
    private readonly onRecorded: () => void,
  ) {
    const fixed = injected ?? time;
    if (fixed === null) throw new Error('a PostgreSQL store needs a clock');
    this.clock = fixed;
  }

  /** Opens the transaction and reads its time: one round trip. */
  async begin(client: PoolClient, durable: boolean): Promise<Begun> {
    if (this.injected) {
      await client.query(beginSql(durable, false));
      return { now: this.injected.now(), host: null };
    }
    const sentAt = this.monotonic();
    const res = await client.query(beginSql(durable, true));
    const now = this.observe(readingOfResult(res), sentAt, this.monotonic());
    return { now, host: this.hostClock() };
  }

  /** The time a one-statement write sent now runs at (see ServerTime.bounds). */
  statementTime(sentAt: number): StatementTime {
    if (this.injected || !this.time) return { now: this.injected?.now() ?? this.clock.now(), lo: 0, hi: 0 };
    return { now: null, ...this.time.bounds(sentAt) };
  }

  /** A reading of the server's clock: the registry time it stands for; a step seen in it is recorded. */
  observe(reading: ClockReading, sentAt: number, receivedAt: number): number {
    if (!this.time) return this.clock.now();
    const { now, step } = this.time.observe({ ...reading, sentAt, receivedAt });
    if (step) this.recordSteps();
    return now;
  }

  /** A time a statement ran at (see ServerTime.saw). */
  saw(now: number): void {
    this.time?.saw(now);
  }

  /** Leaves this host's mark after an import (see PostgresStore.load); nothing when no mark is kept. */
  async leaveMark(client: PoolClient): Promise<void> {
    const { bootId } = this.opts;
    if (bootId !== null && this.time) await writeHostMark(client, bootId, this.time);
  }

  /** What this host knows of registry time, for its beat (see clock_hosts). */
  private hostClock(): HostClock | null {
    const { bootId } = this.opts;
    if (bootId === null || !this.time) return null;
    return { bootId, mark: { ...this.time.currentMark(), gen: this.time.generation } };
  }

  /**
   * Records the step this instance's readings show (one at a time, off the request's path: the
   * request already runs on this instance's estimate). Another instance recording the same step
   * first makes this one's compare-and-set change nothing; it then takes that instance's offset.
   */
  private recordSteps(): void {
    const time = this.time;
    if (!time || this.opts.role !== 'instance' || this.recording || this.db.ended) return;
    const c = time.proposal();
    if (!c) return;
    this.recording = true;
    void this.db.withClient((client) => recordStep(client, c, this.opts.bootId)).catch((): Settled => ({ kind: 'failed' })).then((outcome) => {
      time.settled(c, outcome);
      this.opts.onStep?.({ stepMs: c.stepMs, outcome: outcome.kind, atStart: false, shiftMs: null });
      this.recording = false;
      if (outcome.kind !== 'failed') this.recordSteps();
      this.onRecorded();
    });
  }
}

/** The clock reading in the last result of a (multi-statement) query. */
function readingOfResult(res: unknown): ClockReading {
  const results: unknown[] = Array.isArray(res) ? res : [res];
  const last: unknown = results[results.length - 1];
  const rowList = typeof last === 'object' && last !== null && 'rows' in last ? last.rows : null;
  const reading = Array.isArray(rowList) ? readingOf(rowList[0]) : null;
  if (reading === null) throw new Error('no clock reading in the answer');
  return reading;
}
