/** Pure lease rules: who owns what, when a lease expires, what a sweep may do. */
import { RegistryError } from './errors.js';
import type { IdentifierInfo, IdentifierRecord, Lease, Status } from './types.js';

/** Registry-wide timing rules, in milliseconds. */
export interface LeaseRules {
  readonly ttlMs: number;
  readonly cooldownMs: number;
}

export function statusOf(rec: IdentifierRecord, now: number): Status {
  if (rec.holder) return 'leased';
  if (rec.retired) return 'retired';
  return rec.availableAt > now ? 'cooling' : 'free';
}

/** Margin for clock-rate drift between the registry and a VM (SPEC.md: 1 %). */
const DRIFT_MARGIN = 0.01;

/**
 * The fence window: nobody else can be granted an identifier sooner than one cool-down after
 * the owner's last acknowledged renewal (a force release right after it, then the cool-down),
 * so the owner may keep using it that long after *sending* that renewal, less drift.
 */
export function fenceAfterMs(rules: LeaseRules): number {
  return Math.floor(rules.cooldownMs * (1 - DRIFT_MARGIN));
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
    expiresAt: h.lastSeen + rules.ttlMs,
    fenceAfterMs: fenceAfterMs(rules),
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
  };
}

/** The last moment of `lastSeen`'s lease still alive at `now` is `now - ttl`; anything older has expired. */
export function expiryCutoff(now: number, ttlMs: number): number {
  return now - ttlMs;
}

/**
 * The owner check for liveness and release. A client that does not hold the identifier is
 * `not_owner` whatever epoch it sends; the holder with the wrong epoch is `stale_epoch`
 * (an older incarnation of the same client, fenced off).
 */
export function assertOwner(rec: IdentifierRecord, clientId: string, epoch: number | undefined): void {
  const holder = rec.holder;
  if (!holder || holder.clientId !== clientId) {
    throw new RegistryError('not_owner', `client ${clientId} does not hold ${rec.name}`);
  }
  if (epoch !== undefined && epoch !== rec.epoch) {
    throw new RegistryError('stale_epoch', `epoch ${epoch} of ${rec.name} is stale: the current epoch is ${rec.epoch}`);
  }
}

export interface GuardRules {
  readonly maxFraction: number;
  readonly minHold: number;
}

/**
 * The mass-expiry guard. Returns the reason to hold a sweep back, or null to let it run.
 * Many leases expiring in one sweep means the registry lost its fleet (a network cut, a
 * clock jump), not that the fleet died; reclaiming would hand live VMs' identifiers to others.
 */
export function guardReason(expired: number, leased: number, rules: GuardRules): string | null {
  if (expired <= rules.minHold) return null;
  if (expired <= rules.maxFraction * leased) return null;
  const pct = leased === 0 ? 100 : Math.round((expired / leased) * 100);
  return `mass expiry: ${expired} of ${leased} leases (${pct}%) expired at once, over the limit of ` +
    `${Math.round(rules.maxFraction * 100)}% and ${rules.minHold} leases; nothing reclaimed ` +
    `(POST /admin/reap?force=true to reclaim them anyway)`;
}
