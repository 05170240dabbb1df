/**
 * The pool sync's guard. An emptied or truncated pool file (a deploy that wrote half of it,
 * `: > pool.txt`) looks like an operator retiring most of the pool; retiring is what the
 * file says, but it is far more often an accident, and one the fleet pays for. So a sync
 * that would retire more than half of the identifiers in service is refused unless forced.
 */

/** Identifiers in service (not retired) before the sync, and how many of them it would retire. */
export interface RetirePlan {
  readonly inService: number;
  readonly retiring: number;
}

/** What a sync to `names` would retire, given the identifiers the database has. */
export function retirePlan(existing: Iterable<{ readonly name: string; readonly retired: boolean }>, names: readonly string[]): RetirePlan {
  let wanted: Set<string> | null = null; // not built for a first sync: nothing is in service yet
  let inService = 0;
  let retiring = 0;
  for (const row of existing) {
    if (row.retired) continue;
    inService++;
    wanted ??= new Set(names);
    if (!wanted.has(row.name)) retiring++;
  }
  return { inService, retiring };
}

/** The reason to refuse the sync, or null to let it run. */
export function retireRefusal(plan: RetirePlan): string | null {
  if (plan.retiring * 2 <= plan.inService) return null;
  const pct = Math.round((plan.retiring / plan.inService) * 100);
  return `the pool file would retire ${plan.retiring} of the ${plan.inService} identifiers in service (${pct}%, more than half); ` +
    'nothing was changed. If that is intended, run `idreg pool sync --force`';
}
