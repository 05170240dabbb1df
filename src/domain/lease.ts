/** Pure lease rules: who owns what, when a lease expires, what a sweep may do. */
import { RegistryError } from './errors.js';
import { holderKeyMatches } from './holder-key.js';
import { parseInstanceJson } from './instance.js';
import type { Holder, IdentifierInfo, IdentifierRecord, Lease, RecordTuple, Status } from './types.js';

/** Registry-wide timing rules, in milliseconds. */
export interface LeaseRules {
  readonly ttlMs: number;
  readonly cooldownMs: number;
}

/**
 * Why timing rules cannot be used, or null. The store keeps times as integer milliseconds, so a
 * deadline computed from a fractional duration (2000.5 ms) could not be written: every sweep and
 * force release would fail. Configuration reads durations as whole milliseconds; this is the
 * second line of that defence, for every other way rules are built.
 */
export function timingProblem(durations: Readonly<Record<string, number>>): string | null {
  for (const [name, ms] of Object.entries(durations)) {
    if (!Number.isSafeInteger(ms) || ms < 0) return `${name} must be a whole number of milliseconds ≥ 0, not ${ms}`;
  }
  return null;
}

/** The status of an identifier that is held or not, retired or not, allocatable from `availableAt`. */
export function statusFrom(held: boolean, retired: boolean, availableAt: number, now: number): Status {
  if (held) return 'leased';
  if (retired) return 'retired';
  return availableAt > now ? 'cooling' : 'free';
}

export function statusOf(rec: IdentifierRecord, now: number): Status {
  return statusFrom(rec.holder !== null, rec.retired, rec.availableAt, now);
}

/** When a lease whose last liveness was at `lastSeen` expires. */
export function expiresAt(lastSeen: number, rules: LeaseRules): number {
  return lastSeen + rules.ttlMs;
}

/** The record a tuple holds. */
export function recordOf(t: RecordTuple): IdentifierRecord {
  const [rowId, name, poolOrder, retired, epoch, clientId, allocatedAt, lastSeen, availableAt, fenceCooldownMs, watermark, instance] = t;
  return {
    rowId, name, poolOrder, epoch,
    retired: retired === 1,
    holder: clientId !== null && allocatedAt !== null && lastSeen !== null
      ? { clientId, allocatedAt, lastSeen, fenceCooldownMs, instance: instance === null ? null : parseInstanceJson(instance) }
      : null,
    availableAt,
    watermark,
  };
}

/** Margin for clock-rate drift between the registry and a VM: 1 %. */
const DRIFT_MARGIN_PERCENT = 1;

/**
 * The fence window: nobody else can be granted an identifier sooner than one cool-down after
 * the owner's last acknowledged renewal (a force release right after it, then the cool-down),
 * so the owner may keep using it that long after *sending* that renewal, less drift. Integer
 * arithmetic: the same value whichever engine or language writes it.
 */
export function fenceAfterMs(terms: { readonly cooldownMs: number }): number {
  return Math.floor((terms.cooldownMs * (100 - DRIFT_MARGIN_PERCENT)) / 100);
}

/**
 * The cool-down behind a lease's fence window: the longer of what its holder was told (kept with
 * the lease) and the setting of the instance answering now. A window once announced is kept:
 * a lower REUSE_COOLDOWN_SECONDS (a restart, another instance) never shortens it, and a higher
 * one lengthens it from the next answer on. The holder's views and answers announce
 * `fenceAfterMs` of it, the store records it with each grant and renewal, and an identifier
 * taken from its holder (reclaimed, force released) cools this long.
 */
export function leaseCooldownMs(holder: Holder, rules: LeaseRules): number {
  return Math.max(holder.fenceCooldownMs ?? 0, rules.cooldownMs);
}

/**
 * When an identifier taken from its holder at `now` (force released, or its unattested instance
 * terminated) is allocatable: once the lease's cool-down has run, so its holder, which may still
 * be running, is past the fence window it was told.
 */
export function takenAvailableAt(holder: Holder, now: number, rules: LeaseRules): number {
  return now + leaseCooldownMs(holder, rules);
}

/** The soonest the reaper would make a lease's identifier allocatable: a TTL after its last liveness, then its cool-down. */
export function reapedAvailableAt(holder: Holder, rules: LeaseRules): number {
  return expiresAt(holder.lastSeen, rules) + leaseCooldownMs(holder, rules);
}

export function leaseOf(rec: IdentifierRecord, rules: LeaseRules): Lease | null {
  const h = rec.holder;
  if (!h) return null;
  return {
    identifier: rec.name,
    clientId: h.clientId,
    epoch: rec.epoch,
    allocatedAt: h.allocatedAt,
    lastSeen: h.lastSeen,
    expiresAt: expiresAt(h.lastSeen, rules),
    fenceAfterMs: fenceAfterMs({ cooldownMs: leaseCooldownMs(h, rules) }),
    watermark: rec.watermark ?? null,
    instance: h.instance ?? null,
  };
}

export function infoOf(rec: IdentifierRecord, now: number, rules: LeaseRules): IdentifierInfo {
  const status = statusOf(rec, now);
  return {
    identifier: rec.name,
    status,
    epoch: rec.epoch,
    lease: leaseOf(rec, rules),
    retired: rec.retired,
    availableAt: status === 'cooling' ? rec.availableAt : null,
    watermark: rec.watermark ?? null,
  };
}

/** The last moment of `lastSeen`'s lease still alive at `now` is `now - ttl`; anything older has expired. */
export function expiryCutoff(now: number, ttlMs: number): number {
  return now - ttlMs;
}

/**
 * Whether `key` (the one presented, null for none) is the key the lease was granted with: a
 * lease granted with a key belongs to that key, one granted without belongs to nobody's key.
 * Compared in constant time (domain/holder-key.ts).
 */
export function keyFits(holder: Holder, key: string | null): boolean {
  const stored = holder.keyHash ?? null;
  if (stored === null) return key === null;
  return key !== null && holderKeyMatches(key, stored);
}

/** Why an allocate by the holder's own client id is not its holder asking again; null when it is. */
export type ConflictReason = 'other_key' | 'no_key' | 'key_on_keyless';

export function allocateConflict(holder: Holder, key: string | null): ConflictReason | null {
  if (keyFits(holder, key)) return null;
  if ((holder.keyHash ?? null) === null) return 'key_on_keyless';
  return key === null ? 'no_key' : 'other_key';
}

/**
 * The owner check for liveness and release. A client that does not hold the identifier is
 * `not_owner` whatever epoch it sends, and so is its client id with a key other than the one
 * the lease was granted with (or without it); the holder with the wrong epoch is `stale_epoch`
 * (an older incarnation of the same client, fenced off).
 */
export function assertOwner(rec: IdentifierRecord, clientId: string, epoch: number | undefined, key: string | null = null): void {
  const holder = rec.holder;
  if (!holder || holder.clientId !== clientId) {
    throw new RegistryError('not_owner', `client ${clientId} does not hold ${rec.name}`);
  }
  if (!keyFits(holder, key)) {
    const why = (holder.keyHash ?? null) === null ? 'it was granted without a key, and this request sends one'
      : key === null ? 'it was granted with a key, and this request sends none' : 'this request sends another key than the one it was granted with';
    throw new RegistryError('not_owner', `client ${clientId} does not hold ${rec.name}: ${why}`);
  }
  if (epoch !== undefined && epoch !== rec.epoch) {
    throw new RegistryError('stale_epoch', `epoch ${epoch} of ${rec.name} is stale: the current epoch is ${rec.epoch}`);
  }
}

export interface GuardRules {
  readonly maxFraction: number;
  readonly minHold: number;
  /** Reclaims a minute while the guard limits; 0 holds all. */
  readonly guardedRatePerMinute: number;
}

/**
 * What the store keeps of the mass-expiry guard between sweeps, for every instance: once
 * tripped, it stays tripped until a sweep finds no expired lease left.
 */
export interface GuardMemory {
  /** The trip in force (when, and the count that tripped it), or null. */
  readonly tripped: GuardTrip | null;
  /** Reclaims before this registry time do not count toward tripping it: those made while it was tripped. */
  readonly countFrom: number;
}

export interface GuardTrip {
  readonly at: number;
  /** Expired within the last TTL when it tripped, and the leases they were among. */
  readonly expired: number;
  readonly of: number;
}

export const GUARD_AT_REST: GuardMemory = { tripped: null, countFrom: 0 };

/** Reclaims at or after this registry time count toward tripping the guard: the last TTL, less any part of it spent tripped. */
export function guardCountFrom(now: number, ttlMs: number, memory: GuardMemory): number {
  return Math.max(expiryCutoff(now, ttlMs), memory.countFrom);
}

/** The guarded rate's window: reclaims, and clients refused for want of an identifier, count over the last minute. */
export const RATE_WINDOW_MS = 60_000;

/** The least history a pruning keeps, whatever the retention: what the guard still counts (the last TTL, the rate's minute). */
export function historyKeptMs(retentionMs: number, ttlMs: number): number {
  return Math.max(retentionMs, ttlMs, RATE_WINDOW_MS);
}

/** What a sweep knows when it decides, all read in its transaction. */
export interface SweepFacts {
  readonly force: boolean;
  /** Registry time of the decision. */
  readonly now: number;
  /** Start-up grace still to run for the service, in ms (<= 0: over). */
  readonly graceLeftMs: number;
  /** Leases past their TTL, not yet reclaimed. */
  readonly expired: number;
  readonly leased: number;
  /** Reclaims by the reaper, by any sweep of any process, since guardCountFrom. */
  readonly reclaimedInTtl: number;
  /** Reclaims by the reaper within the last minute: what the guarded rate has spent. */
  readonly reclaimedInMinute: number;
  /** Distinct clients refused for want of an identifier within the last minute. */
  readonly refusedClientsInMinute: number;
  /** Since a VM's request last reached any instance; null if none ever has. */
  readonly fleetSilentMs: number | null;
  /** Since a step of a clock was last seen; null if never. */
  readonly clockStepAgoMs: number | null;
  readonly ttlMs: number;
  /** The guard as the last sweep left it. */
  readonly guard: GuardMemory;
}

export interface SweepDecision {
  /** How many expired leases this sweep may reclaim (Infinity: all). */
  readonly allowance: number;
  /** The mass-expiry guard limits this sweep: the registry reports degraded. */
  readonly held: boolean;
  readonly reason: string | null;
  /** The guard as this sweep leaves it, for the next. */
  readonly guard: GuardMemory;
}

const OVERRIDE = '(POST /admin/reap?force=true reclaims them anyway)';

/**
 * The reaper's rules (after the Kubernetes node lifecycle controller: a normal eviction rate,
 * a slower one under partial disruption, none under full disruption, and a zone stays
 * disrupted as long as its nodes stay down).
 * - Forced: everything expired. The guard's memory is left as it is: the next sweep finds
 *   nothing expired and lets it rest, or finds more and holds.
 * - Start-up grace: nothing; VMs could not renew while the service was down.
 * - More than `maxFraction` (and more than `minHold`) of the leases expired within the last TTL,
 *   counted across sweeps so a cut spread over several sweeps still counts: the guard trips,
 *   and stays tripped until a sweep finds no expired lease (each reclaimed at the guarded rate
 *   or renewed by its VM); a cut is not forgotten a TTL later. Reclaims made while tripped do
 *   not count toward tripping it again. While tripped: nothing if the registry shows signs of
 *   having lost its fleet (no VM request for a TTL) or its time (a clock step within a TTL);
 *   otherwise `guardedRatePerMinute`, raised to the demand of clients being refused for want of
 *   an identifier, so a churning fleet (VMs that vanish while new ones arrive) never stalls the
 *   pool. Oldest first (the store's order).
 */
export function decideSweep(f: SweepFacts, rules: GuardRules): SweepDecision {
  const memory = f.guard;
  if (f.force) return { allowance: Infinity, held: false, reason: null, guard: memory };
  if (f.graceLeftMs > 0) {
    return { allowance: 0, held: false, reason: `startup grace: no reclaim for another ${Math.ceil(f.graceLeftMs / 1000)}s`, guard: memory };
  }
  if (f.expired === 0) {
    // Nothing left expired: a trip is over, and what was reclaimed under it never counts again.
    return { allowance: Infinity, held: false, reason: null, guard: memory.tripped ? { tripped: null, countFrom: f.now } : memory };
  }
  let trip = memory.tripped;
  if (!trip) {
    const inWindow = f.expired + f.reclaimedInTtl;
    const population = f.leased + f.reclaimedInTtl;
    if (inWindow <= rules.minHold || inWindow <= rules.maxFraction * population) {
      return { allowance: Infinity, held: false, reason: null, guard: memory };
    }
    trip = { at: f.now, expired: inWindow, of: population };
  }
  const guard: GuardMemory = { tripped: trip, countFrom: memory.countFrom };
  const pct = trip.of === 0 ? 100 : Math.round((trip.expired / trip.of) * 100);
  const ago = Math.round((f.now - trip.at) / 1000);
  const what = `mass expiry: ${trip.expired} of ${trip.of} leases (${pct}%) expired within the last TTL` +
    (ago > 0 ? ` before the guard tripped ${ago}s ago` : '') +
    `, over the limit of ${Math.round(rules.maxFraction * 100)}% and ${rules.minHold} leases; ` +
    `${f.expired} still expired (it holds until none is)`;
  const ttlS = Math.round(f.ttlMs / 1000);
  if (f.fleetSilentMs === null || f.fleetSilentMs >= f.ttlMs) {
    return { allowance: 0, held: true, guard, reason: `${what}, and no VM has reached the registry for ${ttlS}s or more: it may have lost its fleet, not the fleet died; nothing reclaimed ${OVERRIDE}` };
  }
  if (f.clockStepAgoMs !== null && f.clockStepAgoMs < f.ttlMs) {
    return { allowance: 0, held: true, guard, reason: `${what}, within a TTL of a clock step: the registry may have lost its time; nothing reclaimed ${OVERRIDE}` };
  }
  if (rules.guardedRatePerMinute === 0) {
    return { allowance: 0, held: true, guard, reason: `${what}; REAPER_GUARDED_RATE=0 holds every reclaim ${OVERRIDE}` };
  }
  const perMinute = Math.max(rules.guardedRatePerMinute, f.refusedClientsInMinute);
  const allowance = Math.max(0, perMinute - f.reclaimedInMinute);
  return {
    allowance, held: true, guard,
    reason: `${what}; reclaiming at most ${perMinute} a minute, oldest first` +
      (f.refusedClientsInMinute > rules.guardedRatePerMinute ? ` (raised to meet ${f.refusedClientsInMinute} refused clients)` : '') +
      ` ${OVERRIDE}`,
  };
}
