/** JSON representations of docs/api.md ("Views"): snake_case, ISO 8601 UTC times with milliseconds. */
import { instanceView } from '../domain/instance.js';
import { expiresAt, fenceAfterMs, statusFrom } from '../domain/lease.js';
import type { LeaseRules } from '../domain/lease.js';
import type { HistoryEntry, IdentifierInfo, Lease, PoolCounts, ReaperState, RecordTuple } from '../domain/types.js';
import type { Health, ListedPage } from '../registry.js';

/** The `.000Z`…`.999Z` endings of an ISO time, built once. */
const MILLIS: readonly string[] = Array.from({ length: 1000 }, (_, i) => `.${String(i).padStart(3, '0')}Z`);
/** `YYYY-MM-DDTHH:MM:SS` by whole second; bounded, cleared when full. */
const secondPrefix = new Map<number, string>();
const PREFIX_CACHE_SIZE = 4096;
/** Years 0000-9999: the range where toISOString has the plain 24-character form. */
const MAX_PLAIN_ISO_MS = 253_402_300_800_000;

/**
 * Equal to `new Date(ms).toISOString()`, about twice as fast on a listing: three times
 * a leased row, and the times of a listing fall on few distinct seconds (every last_seen is
 * within a TTL of now), so the `YYYY-MM-DDTHH:MM:SS` part is looked up, not formatted.
 */
export function iso(ms: number): string {
  if (!Number.isInteger(ms) || ms < 0 || ms >= MAX_PLAIN_ISO_MS) return new Date(ms).toISOString();
  const second = Math.floor(ms / 1000);
  let prefix = secondPrefix.get(second);
  if (prefix === undefined) {
    if (secondPrefix.size >= PREFIX_CACHE_SIZE) secondPrefix.clear();
    prefix = new Date(second * 1000).toISOString().slice(0, 19);
    secondPrefix.set(second, prefix);
  }
  return prefix + (MILLIS[ms - second * 1000] ?? '');
}

const isoOrNull = (ms: number | null): string | null => (ms === null ? null : iso(ms));

export interface LeaseView {
  identifier: string;
  client_id: string;
  epoch: number;
  allocated_at: string;
  last_seen: string;
  expires_at: string;
  fence_after_ms: number;
  watermark: number | null;
  instance: ReturnType<typeof instanceView> | null;
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
    watermark: l.watermark,
    instance: l.instance ? instanceView(l.instance) : null,
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
    watermark: i.watermark,
    instance: l?.instance ? instanceView(l.instance) : null,
    ...(l && i.retired ? { retired: true } : {}),
  };
}

/** Text that JSON.stringify writes as is between its quotes (every identifier and client id docs/api.md "Names" allows). */
const PLAIN = /^[A-Za-z0-9._:-]*$/;

/** JSON.stringify(s), without its general machinery for the common case. */
function jsonString(s: string): string {
  return PLAIN.test(s) ? `"${s}"` : JSON.stringify(s);
}

/**
 * Rows' identifier views as the members of a JSON array (no brackets; '' for none): byte for
 * byte what JSON.stringify writes for `identifierView` of each row's
 * `infoOf(recordOf(row), now, rules)`, which stays the one definition of the view
 * (test/http/listing-json.test.ts holds this to it). Written directly, because building
 * those objects and stringifying them was most of a listing's cost.
 */
export function identifierViewsText(rows: readonly RecordTuple[], now: number, rules: LeaseRules): string {
  let out = '';
  for (const [, name, , retired, epoch, clientId, allocatedAt, lastSeen, availableAt, fenceCooldownMs, watermark, instance] of rows) {
    if (out !== '') out += ',';
    // The stored instance text is the view's JSON already (domain/instance.ts).
    if (clientId !== null && allocatedAt !== null && lastSeen !== null) {
      out += `{"identifier":${jsonString(name)},"status":"leased","client_id":${jsonString(clientId)},"epoch":${epoch},` +
        `"allocated_at":"${iso(allocatedAt)}","last_seen":"${iso(lastSeen)}","expires_at":"${iso(expiresAt(lastSeen, rules))}",` +
        `"fence_after_ms":${fenceAfterMs({ cooldownMs: Math.max(fenceCooldownMs ?? 0, rules.cooldownMs) })},"available_at":null,"watermark":${watermark ?? 'null'},"instance":${instance ?? 'null'}` +
        `${retired === 1 ? ',"retired":true}' : '}'}`;
    } else {
      const status = statusFrom(false, retired === 1, availableAt, now);
      out += `{"identifier":${jsonString(name)},"status":"${status}","client_id":null,"epoch":${epoch},` +
        `"allocated_at":null,"last_seen":null,"expires_at":null,"fence_after_ms":null,` +
        `"available_at":${status === 'cooling' ? `"${iso(availableAt)}"` : 'null'},"watermark":${watermark ?? 'null'},"instance":null}`;
    }
  }
  return out;
}

/** A listed page's identifier views as the members of a JSON array, in UTF-8: as the store wrote them, or written here. */
export function identifierViewsJson(page: ListedPage): Buffer {
  return page.json ?? Buffer.from(identifierViewsText(page.rows, page.now, page.rules));
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
    status: h.reaper.held || h.poolProblem !== null ? 'degraded' : 'healthy',
    uptime: humanUptime(h.uptimeMs / 1000),
    uptime_seconds: Math.floor(h.uptimeMs / 1000),
    pool,
    reaper: reaperView(h.reaper),
    pool_file: { reason: h.poolProblem },
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
