/**
 * What the registry keeps in the store's meta table, for every instance sharing the store
 * (store/dump.ts says which of them a dump carries over), and how each is read back: a value
 * missing or unreadable reads as its state at rest.
 */
import { GUARD_AT_REST } from '../domain/lease.js';
import type { GuardMemory } from '../domain/lease.js';
import type { ReaperState } from '../domain/types.js';

/** The fingerprint of the pool file last synced (empty: not recorded). */
export const POOL_FINGERPRINT = 'pool_fingerprint';
/** The last sweep by any instance (ReaperState as JSON). */
export const REAPER_STATE = 'reaper_state';
/** When the service (any instance) last came up: the start-up grace runs from it. */
export const SERVICE_UP_SINCE = 'service_up_since';
/** The latest step of a clock any instance saw (registry time). */
export const CLOCK_STEP_AT = 'clock_step_at';
/** The mass-expiry guard's memory between sweeps (GuardMemory as JSON). */
export const GUARD_MEMORY = 'guard_memory';

export const NO_SWEEP: ReaperState = { lastRunAt: null, lastReclaimed: 0, held: false, reason: null };

export function numberOrNull(raw: string | null): number | null {
  if (raw === null) return null;
  const n = Number(raw);
  return Number.isFinite(n) ? n : null;
}

/** A stored JSON object's fields; null when missing, unreadable or not an object. */
function storedFields(raw: string | null): Record<string, unknown> | null {
  if (raw === null) return null;
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === 'object' && v !== null ? { ...v } : null;
  } catch {
    return null;
  }
}

export function parseReaperState(raw: string | null): ReaperState {
  const o = storedFields(raw);
  if (o === null) return NO_SWEEP;
  return {
    lastRunAt: typeof o['lastRunAt'] === 'number' ? o['lastRunAt'] : null,
    lastReclaimed: typeof o['lastReclaimed'] === 'number' ? o['lastReclaimed'] : 0,
    held: o['held'] === true,
    reason: typeof o['reason'] === 'string' ? o['reason'] : null,
  };
}

/** The guard's memory as stored (JSON); at rest when missing or unreadable. */
export function parseGuardMemory(raw: string | null): GuardMemory {
  const o = storedFields(raw);
  if (o === null) return GUARD_AT_REST;
  const countFrom = typeof o['countFrom'] === 'number' ? o['countFrom'] : 0;
  const t = o['tripped'];
  if (typeof t !== 'object' || t === null) return { tripped: null, countFrom };
  const trip: Record<string, unknown> = { ...t };
  const at = trip['at'];
  const expired = trip['expired'];
  const of = trip['of'];
  if (typeof at !== 'number' || typeof expired !== 'number' || typeof of !== 'number') return { tripped: null, countFrom };
  return { tripped: { at, expired, of }, countFrom };
}
