/** JSON representations of SPEC.md: snake_case, ISO 8601 UTC times with milliseconds. */
import type { HistoryEntry, IdentifierInfo, Lease, PoolCounts, ReaperState } from '../domain/types.js';
import type { Health } from '../registry.js';

const iso = (ms: number): string => new Date(ms).toISOString();
const isoOrNull = (ms: number | null): string | null => (ms === null ? null : iso(ms));

export interface LeaseView {
  identifier: string;
  client_id: string;
  epoch: number;
  allocated_at: string;
  last_seen: string;
  expires_at: string;
  fence_after_ms: number;
}

export function leaseView(l: Lease): LeaseView {
  return {
    identifier: l.identifier,
    client_id: l.clientId,
    epoch: l.epoch,
    allocated_at: iso(l.allocatedAt),
    last_seen: iso(l.lastSeen),
    expires_at: iso(l.expiresAt),
    fence_after_ms: l.fenceAfterMs,
  };
}

export function identifierView(i: IdentifierInfo) {
  const l = i.lease;
  return {
    identifier: i.identifier,
    status: i.status,
    client_id: l ? l.clientId : null,
    epoch: i.epoch,
    allocated_at: l ? iso(l.allocatedAt) : null,
    last_seen: l ? iso(l.lastSeen) : null,
    expires_at: l ? iso(l.expiresAt) : null,
    fence_after_ms: l ? l.fenceAfterMs : null,
    available_at: isoOrNull(i.availableAt),
    ...(l && i.retired ? { retired: true } : {}),
  };
}

export function historyView(h: HistoryEntry) {
  return { at: iso(h.at), event: h.event, client_id: h.clientId, epoch: h.epoch };
}

/** "45s", "3m20s", "2h34m", "5d3h": the two largest units. */
export function humanUptime(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${sec}s`;
  return `${sec}s`;
}

function reaperView(r: ReaperState) {
  return { last_run_at: isoOrNull(r.lastRunAt), last_reclaimed: r.lastReclaimed, held: r.held, reason: r.reason };
}

export function healthView(h: Health) {
  const pool: PoolCounts = h.pool;
  return {
    status: h.reaper.held ? 'degraded' : 'healthy',
    uptime: humanUptime(h.uptimeMs / 1000),
    uptime_seconds: Math.floor(h.uptimeMs / 1000),
    pool,
    reaper: reaperView(h.reaper),
  };
}

export function unhealthyView(uptimeMs: number, reaper: ReaperState, reason: string) {
  return {
    status: 'unhealthy',
    uptime: humanUptime(uptimeMs / 1000),
    uptime_seconds: Math.floor(uptimeMs / 1000),
    pool: null,
    reaper: reaperView(reaper),
    error: reason,
  };
}
