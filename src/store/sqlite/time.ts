/**
 * Registry time on SQLite: the machine's clocks anchored through the database file (see
 * ../../clock.ts), so every process of one boot reads the same time, and it never goes back
 * below the latest time any process wrote (the floor).
 */
import type Database from 'better-sqlite3';
import type { Statement } from 'better-sqlite3';
import { anchorClock, resumeAnchor } from '../../clock.js';
import type { Clock, ClockAnchor, TimeSource } from '../../clock.js';
import { asRow } from '../columns.js';
import { scalar } from './rows.js';

const CLOCK_KEY = 'clock_anchor';

/** Every time the store holds that a process wrote as "now": registry time must not go back below any. */
function floorOf(db: Database.Database): number {
  // A table a file not yet migrated lacks (idreg export opens it read-only, without migrating) holds no time.
  const latest = (table: string, sql: string): number =>
    db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(table) === undefined ? 0 : scalar(db.prepare(sql).get()) ?? 0;
  return Math.max(
    latest('identifiers', `SELECT max(last_seen) AS n FROM identifiers WHERE client_id IS NOT NULL`),
    latest('history', `SELECT at AS n FROM history ORDER BY id DESC LIMIT 1`),
    latest('instances', `SELECT max(at) AS n FROM instances`),
    latest('fleet', `SELECT seen_at AS n FROM fleet WHERE id = 1`),
    latest('refusals', `SELECT max(at) AS n FROM refusals`),
  );
}

function storedAnchor(db: Database.Database): ClockAnchor | null {
  const row: unknown = db.prepare('SELECT value FROM meta WHERE key = ?').get(CLOCK_KEY);
  return parseAnchor(row === undefined ? null : String(asRow(row)['value']));
}

function parseAnchor(raw: string | null): ClockAnchor | null {
  if (raw === null) return null;
  try {
    const v: unknown = JSON.parse(raw);
    if (typeof v === 'object' && v !== null && 'bootId' in v && 'offset' in v &&
        typeof v.bootId === 'string' && typeof v.offset === 'number' && Number.isFinite(v.offset)) {
      return { bootId: v.bootId, offset: v.offset };
    }
  } catch {
    // a damaged anchor is a new one
  }
  return null;
}

/**
 * A database file's registry time now, as a registry running on it on this machine computes it,
 * read without writing anything (idreg export): the anchor the first process of this boot
 * recorded, driven by the monotonic clock, never below the floor. On another boot (or with no
 * anchor) a registry would resume cool-downs from the floor, the latest time written (see
 * anchorOn): so does this, which makes each at least as long as it was.
 */
export function registryTimeOf(db: Database.Database, source: TimeSource): number {
  const floor = floorOf(db);
  const d = resumeAnchor(storedAnchor(db), floor, source);
  if (d.fresh) return floor > 0 ? floor : Math.floor(source.wall());
  return anchorClock(source, d.anchor, floor).now();
}

/**
 * Registry time for every process of this boot: the anchor recorded by the first process
 * of the boot. A new boot cannot know how much real time passed while the machine was
 * down (its wall clock may have been stepped), so cool-downs still running at the floor
 * count their remaining part again from now: never shorter, only longer by the downtime.
 */
export function anchorOn(db: Database.Database, metaSet: Statement, source: TimeSource): { clock: Clock; rebooted: boolean } {
  const run = db.transaction(() => {
    const floor = floorOf(db);
    const d = resumeAnchor(storedAnchor(db), floor, source);
    const clock = anchorClock(source, d.anchor, floor);
    if (d.fresh) {
      metaSet.run(CLOCK_KEY, JSON.stringify(d.anchor));
      const shift = clock.now() - floor;
      if (d.rebooted && shift > 0) {
        db.prepare(`UPDATE identifiers SET available_at = available_at + @shift WHERE client_id IS NULL AND available_at > @floor`)
          .run({ floor, shift });
      }
    }
    return { clock, rebooted: d.rebooted };
  });
  return run.immediate();
}
