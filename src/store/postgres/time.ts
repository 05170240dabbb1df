/**
 * The store's side of registry time on PostgreSQL (the rules are in clock.ts): what a starting
 * instance reads, and how a step of the server's clock is recorded, exactly once, in
 * `registry_clock`.
 */
import type { PoolClient } from 'pg';
import { LINK_POLL_MS, ServerTime, planStart, sampleMark } from './clock.js';
import type { Correction, HostMark, Settled, StartMemo, StartRead } from './clock.js';
import { asRow, int } from './rows.js';
import { SERVER_MS } from './tx.js';

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

function hostOf(r: Record<string, unknown>): HostMark | null {
  const mono = r['host_mono'];
  if (typeof mono !== 'number') return null;
  return { mono, lo: int(r, 'host_lo'), hi: int(r, 'host_hi'), gen: int(r, 'host_gen') };
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
  return {
    raw: int(r, 'clock_raw'),
    offset: int(r, 'clock_offset'),
    gen: int(r, 'clock_gen'),
    floor: int(r, 'floor'),
    host: hostOf(r),
    beats: beatsOf(r['beats']),
  };
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
      const gen = int(state, 'gen');
      if (gen !== c.fromGen) return { kind: 'lost', gen, offset: int(state, 'offset_ms') };
      return state['others_past'] === true ? { kind: 'refused' } : { kind: 'failed' };
    }
    if (c.shift) await client.query({ name: 'clock_shift', text: SHIFT_SQL, values: [c.shift.after, c.shift.by] });
    await client.query('COMMIT');
    const r = asRow(row);
    return { kind: 'applied', gen: int(r, 'gen'), offset: int(r, 'offset_ms') };
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** Looks a starting instance may take (LINK_POLL_MS apart) before it gives up: far past LINK_WAIT_MS. */
const MAX_START_LOOKS = 200;

/**
 * Registry time for an instance starting now, from the store (see planStart): it may record a
 * step seen since this host's last mark, and may wait for running instances; then it leaves
 * this host's mark at once, so an instance starting beside it finds it. A tool takes the
 * reading as it is (never below the floor) and records nothing.
 */
export async function startTime(
  client: PoolClient,
  o: { readonly monotonic: () => number; readonly bootId: string | null; readonly role: ClockRole; readonly onStep: ((e: ClockStepEvent) => void) | null },
): Promise<ServerTime> {
  const time = await settleTime(client, o);
  if (o.role === 'instance' && o.bootId !== null) await writeHostMark(client, o.bootId, time);
  return time;
}

/** Leaves this host's mark of registry time now (see clock_hosts). */
export async function writeHostMark(client: PoolClient, bootId: string, time: ServerTime): Promise<void> {
  const m = time.currentMark();
  await client.query({ name: 'clock_host_mark', text: HOST_MARK_SQL, values: [bootId, m.mono, Math.floor(m.lo), Math.ceil(m.hi), time.generation] });
}

async function settleTime(
  client: PoolClient,
  o: { readonly monotonic: () => number; readonly bootId: string | null; readonly role: ClockRole; readonly onStep: ((e: ClockStepEvent) => void) | null },
): Promise<ServerTime> {
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
      await new Promise((r) => setTimeout(r, LINK_POLL_MS));
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
