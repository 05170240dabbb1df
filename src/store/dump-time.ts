/**
 * Moving a dump's times onto the importing registry's clock.
 *
 * Two registries' times differ (a host clock behind, another engine's clock), so an import
 * translates every time: it moves the whole timeline by the target's registry time at the import
 * less the source's at the export (`translateDump`), and each running lease and cool-down keeps
 * the length it had left; the time the move took is added to none of them as spent. Version 1
 * files (no `fence_cooldown_ms`, and an `exported_at` that was the exporting host's wall clock
 * on SQLite, not its registry time) are read as if exported at the latest time written in them:
 * never shorter, each at most its full length.
 *
 * Meta values that hold times are moved too (META_TIMES below).
 */
import { isFields } from './dump.js';
import type { Dump, DumpHistory, DumpIdentifier, DumpMeta } from './dump.js';

/**
 * Meta values that hold registry times, and how to move one: the time of the service's start
 * (the start-up grace), of the last clock step seen (the guard), of the last sweep, and the
 * mass-expiry guard's memory (when it tripped, where its reclaim count starts). A meta value
 * of another key is carried as it is: a new key that holds a time must be added here.
 *
 * The guard's memory is carried, not dropped: a guard tripped on the source stays tripped on
 * the target until a sweep there finds no expired lease left (dropping it would forget a cut
 * and let the target reclaim the rest of it at full speed), and its count keeps leaving out
 * the guard's own reclaims. Both times move with the rest, so they keep their distance to the
 * leases; `countFrom` 0 (never tripped) stays 0.
 */
const META_TIMES: Readonly<Record<string, (value: string, move: (t: number) => number) => string>> = {
  service_up_since: movedNumber,
  clock_step_at: movedNumber,
  guard_memory: (value, move) => {
    try {
      const v: unknown = JSON.parse(value);
      if (!isFields(v)) return value;
      const out: Record<string, unknown> = { ...v };
      const countFrom = v['countFrom'];
      if (typeof countFrom === 'number' && countFrom !== 0) out['countFrom'] = move(countFrom);
      const tripped = v['tripped'];
      if (isFields(tripped) && typeof tripped['at'] === 'number') out['tripped'] = { ...tripped, at: move(tripped['at']) };
      return JSON.stringify(out);
    } catch {
      return value;
    }
  },
  reaper_state: (value, move) => {
    try {
      const v: unknown = JSON.parse(value);
      if (!isFields(v) || typeof v['lastRunAt'] !== 'number') return value;
      return JSON.stringify({ ...v, lastRunAt: move(v['lastRunAt']) });
    } catch {
      return value;
    }
  },
};

function movedNumber(value: string, move: (t: number) => number): string {
  const n = Number(value);
  return Number.isSafeInteger(n) && value.trim() !== '' ? String(move(n)) : value;
}

/** The meta key an import records what it did under: the source, its time base, and the shift. */
export const IMPORT_META = 'imported_from';

/** The latest registry time written in the dump (every one was written as "now"), or null with none. */
export function latestTimeIn(d: Dump): number | null {
  let latest: number | null = null;
  const see = (t: number | null): void => { if (t !== null && (latest === null || t > latest)) latest = t; };
  for (const i of d.identifiers) {
    see(i.allocatedAt);
    see(i.lastSeen);
    see(i.lastGrantedAt ?? null);
  }
  for (const h of d.history) see(h.at);
  for (const m of d.meta) {
    const read = META_TIMES[m.key];
    if (read) read(m.value, (t) => { see(t); return t; });
  }
  return latest;
}

/**
 * The source's registry time the dump's times are measured against: its export time; for a
 * version 1 file, whose `exported_at` was on SQLite the exporting host's wall clock (not registry
 * time: 10 minutes ahead of a registry anchored while its clock was behind), the latest time
 * written in it, which is never after the export, so every lease and cool-down comes out at least
 * as long as it was, and at most its full length (it started at or before that time).
 */
export function timeBase(d: Dump): number {
  return d.legacyExportTime ? latestTimeIn(d) ?? d.exportedAt : d.exportedAt;
}

export interface Translation {
  /** The dump with every time moved onto the target's timeline, and the import recorded in meta. */
  readonly dump: Dump;
  /** How far every time moved: the target's registry time at the import less the time base. */
  readonly shiftMs: number;
}

/**
 * Moves every time of `d` onto the target's timeline, `targetNow` being the target's registry
 * time at the import: each time keeps its distance to the export, so a lease or a cool-down
 * running at the export keeps the length it had left (the move itself counts as no time), one
 * that had ended stays ended, and the history keeps its order and spacing (its times then read
 * on the target's clock). Epochs and durations (fence_cooldown_ms) are not times and stay as they are,
 * nor is the watermark (a time on the holders' clocks, which the move does not change);
 * `available_at` 0 (never used) stays 0. The import is recorded in meta (IMPORT_META).
 */
export function translateDump(d: Dump, targetNow: number): Translation {
  const base = timeBase(d);
  const shiftMs = targetNow - base;
  const move = (t: number): number => Math.max(0, t + shiftMs);
  const identifiers = d.identifiers.map((i): DumpIdentifier => ({
    ...i,
    allocatedAt: i.allocatedAt === null ? null : move(i.allocatedAt),
    lastSeen: i.lastSeen === null ? null : move(i.lastSeen),
    // 0 is "never used" (allocated first): a used one never becomes that.
    availableAt: i.availableAt === 0 ? 0 : Math.max(1, move(i.availableAt)),
    // When the last holder was granted it (sticky identity's order) is a registry time too.
    lastGrantedAt: i.lastGrantedAt == null ? null : move(i.lastGrantedAt),
  }));
  const history = d.history.map((h): DumpHistory => ({ ...h, at: move(h.at) }));
  const record: DumpMeta = {
    key: IMPORT_META,
    value: JSON.stringify({
      engine: d.engine, exported_at: d.exportedAt, time_base: base,
      time_base_from: d.legacyExportTime ? 'latest time in a version 1 dump' : 'export', imported_at: targetNow, shift_ms: shiftMs,
    }),
  };
  const meta = [
    ...d.meta.filter((m) => m.key !== IMPORT_META).map((m): DumpMeta => {
      const moveValue = META_TIMES[m.key];
      return moveValue ? { key: m.key, value: moveValue(m.value, move) } : m;
    }),
    record,
  ];
  return { dump: { engine: d.engine, exportedAt: targetNow, identifiers, history, meta }, shiftMs };
}
