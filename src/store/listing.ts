/**
 * The listing's optional engine capability: what a store may offer beyond `Reader.listRows` to
 * make `GET /identifiers` cheap (registry/listing.ts uses it when the store has it and reads rows
 * otherwise). SQLite provides it (sqlite/listing-json.ts writes pages in SQL, sqlite/listing-worker.ts
 * reads them on worker threads); PostgreSQL does not.
 *
 * The bytes: a page's `members` are the identifier views of docs/api.md ("Views") of its rows,
 * in pool order, each one as JSON.stringify writes the view http/views.ts builds for it.
 * test/http/listing-json.test.ts holds the engine's writer and http/views.ts's to the same bytes
 * over random states, times, rules, filters and cursors.
 */
import type { RecordTuple } from '../domain/types.js';
import type { ListQuery, RawCounts, Reader } from './types.js';

/**
 * What an identifier view shows beyond the row: `expires_at` is `last_seen` + ttlMs;
 * `fence_after_ms` is domain fenceAfterMs of the longer of the row's fence_cooldown_ms and
 * cooldownMs (domain leaseCooldownMs).
 */
export interface ViewRules {
  readonly ttlMs: number;
  readonly cooldownMs: number;
}

/** A page of the listing written by the engine as JSON. */
export interface ListJson {
  /** The page's identifier views as the members of a JSON array: UTF-8, no brackets, empty for none. */
  readonly members: Buffer;
  /** The page's last row when another follows it (only with a limit), else null. */
  readonly next: { readonly name: string; readonly poolOrder: number; readonly rowId: number } | null;
}

/**
 * The listing's pages read off the event loop (SQLite on a file: worker threads, each with its
 * own connection), each in a read transaction of its own, written as `ListingCapability.pageJson`
 * writes them; and the other reads whose work grows with the pool.
 */
export interface ListingReader {
  /** Whether it can take a page now (a worker still starting cannot: read the page in-process meanwhile). */
  readonly ready: boolean;
  /** Resolves true once it can take pages, false when it cannot be started (read them in-process). */
  whenReady(): Promise<boolean>;
  /**
   * Reader.counts off the event loop, from one read snapshot of its own: the counting's work
   * grows with the pool. Rejects when the reader failed (count in-process then).
   */
  counts(now: number): Promise<RawCounts>;
  /**
   * The page `q` lists, from one read snapshot: written as JSON, or as its rows when SQL could
   * not write them. `onNext` is told where the page ends (null: the last page) as soon as that
   * is known, before the page itself: the next page can be asked for meanwhile. Null when the
   * page cannot be read there (read it in-process); rejects when the reader failed.
   */
  page(q: ListQuery, view: ViewRules, onNext: (next: ListJson['next']) => void): Promise<OffLoopPage | null>;
}

/** A page the listing reader read. */
export interface OffLoopPage {
  /** The views as JSON members, or null when SQL could not write them: then `rows`. */
  readonly members: Buffer | null;
  readonly rows: readonly RecordTuple[];
  readonly next: ListJson['next'];
}

/** What a store offers the listing beyond `Reader.listRows` (`Store.listing`). */
export interface ListingCapability {
  /**
   * The rows `q` lists in `r`'s snapshot (`r` a reader this store gave to `read`), written as
   * identifier views (see above) faster than JavaScript writes them (SQLite: in C). Null when it
   * cannot for this page or this reader: the caller then writes `r.listRows` itself.
   */
  pageJson(r: Reader, q: ListQuery, view: ViewRules): Promise<ListJson | null>;
  /**
   * Where the full listing's pages after the first, and the counts, are read off the event loop;
   * null when there is no such reader now (pages are read with `Store.read`).
   */
  offLoop(): ListingReader | null;
}
