/**
 * Runs the registry's sweep on the REAPER_SCHEDULE cron expression, timed on elapsed time.
 * node-cron's own scheduler follows the wall clock: a step back stopped it for the length of
 * the step. Here the expression is read with node-cron's parser and matched against registry
 * time (monotonic, see clock.ts), and each wait is a plain timer, which libuv runs on the
 * monotonic clock too. A sweep that overruns the next slot skips it (never two at once).
 */
import cron from 'node-cron';
import type { Clock } from '../clock.js';
import type { ReapResult } from '../registry.js';

export interface ReaperJob {
  readonly schedule: string;
  readonly clock: Clock;
  readonly sweep: () => Promise<ReapResult>;
  readonly onError: (e: unknown) => void;
}

/** How far ahead a next slot is looked for; a rarer schedule just looks again then. */
const HORIZON_S = 86_400;

type Matcher = ((d: Date) => boolean) & { readonly horizonS?: number };

function numbers(values: readonly (number | string)[]): Set<number> | null {
  const out = new Set<number>();
  for (const v of values) {
    if (typeof v !== 'number') return null;
    out.add(v);
  }
  return out;
}

/** A matcher for a cron expression, by node-cron's parser (its special day forms by node-cron itself). */
export function cronMatcher(expression: string): Matcher {
  const f = cron.parse(expression);
  const dom = numbers(f.dayOfMonth);
  const dow = numbers(f.dayOfWeek);
  if (!dom || !dow) {
    // node-cron's own matcher (for L and # day forms) costs ~13 µs a look: scan an hour at a time.
    const task = cron.createTask(expression, () => {});
    return Object.assign((d: Date) => task.match(d), { horizonS: 3600 });
  }
  const second = new Set(f.second);
  const minute = new Set(f.minute);
  const hour = new Set(f.hour);
  const month = new Set(f.month);
  return (d) => second.has(d.getSeconds()) && minute.has(d.getMinutes()) && hour.has(d.getHours()) &&
    dom.has(d.getDate()) && month.has(d.getMonth() + 1) && dow.has(d.getDay());
}

/**
 * Milliseconds from `now` to the next whole second the expression matches, or, with none
 * within `horizonS`, to the horizon (`due` false: look again then, do not sweep).
 */
export function msToNext(match: Matcher, now: number, horizonS = HORIZON_S): { ms: number; due: boolean } {
  let t = Math.floor(now / 1000) * 1000 + 1000;
  for (let i = 0; i < horizonS; i++, t += 1000) if (match(new Date(t))) return { ms: t - now, due: true };
  return { ms: t - now, due: false };
}

/** Starts the schedule; returns the function that stops it. */
export function startReaper(job: ReaperJob): () => void {
  const match = cronMatcher(job.schedule);
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;
  const arm = (): void => {
    if (stopped) return;
    const next = msToNext(match, job.clock.now(), match.horizonS);
    timer = setTimeout(next.due ? reaperTick : arm, next.ms);
  };
  async function reaperTick(): Promise<void> {
    try {
      await job.sweep();
    } catch (e) {
      job.onError(e);
    }
    arm();
  }
  arm();
  return function stopReaper() {
    stopped = true;
    if (timer) clearTimeout(timer);
  };
}
