/** The lease model of docs/safety.md ("The lease rules"), free of storage and transport. Times are epoch milliseconds. */

export type Status = 'leased' | 'free' | 'cooling' | 'retired';
export const STATUSES: readonly Status[] = ['leased', 'free', 'cooling', 'retired'];

/** `terminated`, `terminating`: AWS said the holder's instance is gone, or about to go (POST /events/aws). */
export type HistoryEvent = 'allocated' | 'released' | 'reclaimed' | 'force_released' | 'retired' | 'restored' | 'terminated' | 'terminating';
export const HISTORY_EVENTS: readonly HistoryEvent[] = [
  'allocated', 'released', 'reclaimed', 'force_released', 'retired', 'restored', 'terminated', 'terminating',
];

/** What an attested claim proved about the instance that holds a lease (see aws/identity.ts). */
export interface InstanceInfo {
  readonly accountId: string;
  readonly region: string;
  readonly availabilityZone: string;
  readonly instanceType: string;
  readonly imageId: string;
}

/** Who holds an identifier, and since when. */
export interface Holder {
  readonly clientId: string;
  readonly allocatedAt: number;
  readonly lastSeen: number;
  /** The hash of the key the lease was granted with (domain/holder-key.ts); null or absent: granted without one. */
  readonly keyHash?: string | null;
  /** What the claim's identity document proved; null or absent: not attested. */
  readonly instance?: InstanceInfo | null;
  /**
   * The cool-down whose fence window (`fence_after_ms`) this holder was told, the longest told
   * during this lease, kept with it so no later setting shortens it; null for a lease granted
   * before it was kept (until its next renewal).
   */
  readonly fenceCooldownMs: number | null;
}

/** One identifier as stored. */
export interface IdentifierRecord {
  readonly rowId: number;
  readonly name: string;
  readonly poolOrder: number;
  /** The fencing token of the latest grant; 0 before the first. */
  readonly epoch: number;
  readonly retired: boolean;
  readonly holder: Holder | null;
  /** For an identifier nobody holds: when it is (or was) allocatable again. 0 if never used. */
  readonly availableAt: number;
  /** The highest watermark any holder sent for it (kept across holders); null or absent: none. */
  readonly watermark?: number | null;
}

/**
 * One identifier as stored, as a tuple: what a listing reads. A listing reads a pool a page at
 * a time, up to a million rows, and an object per row (and one for its holder) was most of its
 * cost. The holder's three columns are all null or all set, as in the store (its fence cool-down
 * may be null either way).
 */
export type RecordTuple = readonly [
  rowId: number,
  name: string,
  poolOrder: number,
  retired: 0 | 1,
  epoch: number,
  clientId: string | null,
  allocatedAt: number | null,
  lastSeen: number | null,
  /** As IdentifierRecord.availableAt. */
  availableAt: number,
  /** As Holder.fenceCooldownMs; null when nobody holds it. */
  fenceCooldownMs: number | null,
  watermark: number | null,
  /** The holder's instance facts as canonical JSON (store/columns.ts, instanceJson), or null. */
  instance: string | null,
];

/** A held identifier, as its owner sees it. */
export interface Lease {
  readonly identifier: string;
  readonly clientId: string;
  readonly epoch: number;
  readonly allocatedAt: number;
  readonly lastSeen: number;
  readonly expiresAt: number;
  /** How long after sending its last successful allocate/liveness the owner may go on using it. */
  readonly fenceAfterMs: number;
  /** The identifier's watermark: the highest any holder sent; null when none did. */
  readonly watermark: number | null;
  /** What an attested claim proved about the holder; null when not attested. */
  readonly instance: InstanceInfo | null;
}

/** Any identifier, held or not, as an operator sees it. */
export interface IdentifierInfo {
  readonly identifier: string;
  readonly status: Status;
  readonly epoch: number;
  readonly lease: Lease | null;
  /** Retired from the pool file (a held one stays `leased`). */
  readonly retired: boolean;
  /** When a cooling identifier becomes allocatable; null unless cooling. */
  readonly availableAt: number | null;
  /** The identifier's watermark, held or not (it stays on a free identifier); null when none was sent. */
  readonly watermark: number | null;
}

export interface HistoryEntry {
  readonly at: number;
  readonly event: HistoryEvent;
  readonly clientId: string | null;
  readonly epoch: number;
}

export interface PoolCounts {
  readonly total: number;
  readonly leased: number;
  readonly free: number;
  readonly cooling: number;
  readonly retired: number;
}

export interface ReaperState {
  readonly lastRunAt: number | null;
  readonly lastReclaimed: number;
  /** True while the mass-expiry guard is holding back a sweep. */
  readonly held: boolean;
  readonly reason: string | null;
}

export interface SyncResult {
  readonly total: number;
  readonly added: number;
  readonly retired: number;
  readonly restored: number;
}
