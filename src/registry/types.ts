/** The registry's public types: what its use cases take and answer, and what it tells observers. */
import type { TimeSource } from '../clock.js';
import type { ConflictReason, GuardRules, LeaseRules } from '../domain/lease.js';
import type { HistoryEntry, HistoryEvent, IdentifierInfo, InstanceInfo, PoolCounts, ReaperState, RecordTuple, Status, SyncResult } from '../domain/types.js';
import type { AwsEventType } from '../aws/events.js';
import type { Store } from '../store/types.js';

export interface RegistryRules extends LeaseRules, GuardRules {
  /** No reclaim before the service has been up this long. */
  readonly graceMs: number;
  /** Leases reclaimed per transaction; the event loop gets a turn between batches. */
  readonly reapBatchSize: number;
}

/** What happened, for logs and metrics. Observers must not throw. */
export type RegistryEvent =
  | { readonly type: 'ownership'; readonly event: HistoryEvent; readonly identifier: string; readonly clientId: string | null; readonly epoch: number }
  | { readonly type: 'renewed'; readonly identifier: string; readonly clientId: string }
  /** An allocate refused because its client id holds a lease under another key (or the other side of none). */
  | { readonly type: 'holder_conflict'; readonly identifier: string; readonly clientId: string; readonly reason: ConflictReason }
  | { readonly type: 'sweep'; readonly reclaimed: number; readonly expired: number; readonly leased: number; readonly held: boolean; readonly reason: string | null; readonly forced: boolean; readonly durationMs: number }
  | { readonly type: 'clock_step'; readonly stepMs: number }
  /** An AWS event acted on or acknowledged (POST /events/aws); `earlyMs`: how much sooner than the reaper a released identifier is allocatable. */
  | {
    readonly type: 'aws_event'; readonly eventType: AwsEventType; readonly outcome: AwsEventOutcome; readonly eventId: string;
    readonly instanceId: string | null; readonly identifier: string | null; readonly earlyMs: number | null;
  }
  | { readonly type: 'pool_synced'; readonly result: SyncResult };

export type RegistryObserver = (e: RegistryEvent) => void;

/** What an allocate carries beyond its client id. */
export interface AllocateClaim {
  /** The holder key the VM chose (docs/api.md, "Holder keys"); only its hash is kept. Null or absent: none. */
  readonly key?: string | null;
  /** What a verified identity document proved about the instance; null or absent: not attested. */
  readonly instance?: InstanceInfo | null;
}

/** What a liveness or release carries beyond its client id, identifier and epoch. */
export interface HolderProof {
  /** The key the lease was granted with; null or absent: none. */
  readonly key?: string | null;
  /** The holder's watermark (a whole number below 2^53); null or absent: none. */
  readonly watermark?: number | null;
}

export interface ListFilter {
  readonly status: Status | null;
  /** Start after this identifier, or after this position of the pool order (a previous page's `cursor`). */
  readonly after: string | ListCursor | null;
  readonly limit: number | null;
}

/** A position in the pool order: the pool order and row id of the last row seen. */
export interface ListCursor {
  readonly poolOrder: number;
  readonly rowId: number;
}

export interface ListPage {
  readonly items: IdentifierInfo[];
  /** The identifier to pass as `after` for the next page, or null on the last page. */
  readonly next: string | null;
}

/**
 * A page of the listing, for the HTTP layer to write out without an object per row
 * (http/views.ts, identifierViewsJson). Either the store wrote it already (`json`, SQLite) or
 * it comes as the store's rows; either way its views are those of `list`'s items,
 * `identifierView(infoOf(recordOf(row), now, rules))`.
 */
export interface ListedPage {
  /** The page's identifier views as the members of a JSON array (UTF-8, no brackets), when the store wrote them; else null. */
  readonly json: Buffer | null;
  /** The page's rows when `json` is null (else empty). */
  readonly rows: readonly RecordTuple[];
  /** Registry time of the page's read. */
  readonly now: number;
  readonly rules: LeaseRules;
  /** Where the next page starts (`name` as `after` in a URL, `cursor` as `after` here), or null on the last page. */
  readonly next: { readonly name: string; readonly cursor: ListCursor } | null;
}

/** A page of an identifier's history, oldest first. */
export interface HistoryPage {
  readonly entries: HistoryEntry[];
  /** Where the next page starts (`after` in a URL and here) when more follow, else null. */
  readonly next: number | null;
}

/**
 * What an AWS event did: `released` (a lease ended: its instance terminated), `noted` (its
 * instance is about to go: history only), `no_lease` (the instance holds nothing), `duplicate`
 * (this event id was acted on already: nothing changed), `ignored` (an event that ends nothing).
 */
export type AwsEventOutcome = 'released' | 'noted' | 'no_lease' | 'duplicate' | 'ignored';

export interface AwsEventResult {
  readonly released: number;
  readonly noted: number;
  readonly outcome: AwsEventOutcome;
}

export interface ReapResult {
  readonly reclaimed: number;
  readonly held: boolean;
  readonly reason: string | null;
}

export interface Health {
  readonly nowMs: number;
  readonly uptimeMs: number;
  /** The least recent liveness among leases, or null with none. */
  readonly oldestLastSeen: number | null;
  readonly pool: PoolCounts;
  readonly reaper: ReaperState;
  /** Why this process's last pool reload failed or was refused, until one succeeds. */
  readonly poolProblem: string | null;
}

/** Waits `ms` of real time (a timer); tests inject one that does not. */
export type Wait = (ms: number) => Promise<void>;

export interface RegistryDeps {
  readonly store: Store;
  readonly rules: RegistryRules;
  readonly observe?: RegistryObserver;
  /** The machine's clocks, to notice a step of the wall clock (a sign of lost time). */
  readonly source?: TimeSource;
  /** How a forced sweep waits for another instance's sweep to end; default a real timer. */
  readonly wait?: Wait;
}
