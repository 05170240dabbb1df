/**
 * The registry's listing and health reads. Where the store offers the listing capability
 * (store/listing.ts: SQLite), a page is written as JSON by the engine, and read by its listing
 * reader when it has one (SQLite on a file: worker threads, off the event loop; docs/adr/0006);
 * otherwise pages are read here as rows. The full listing is read ahead of the caller a few
 * pages at a time.
 */
import { RegistryError } from '../domain/errors.js';
import { infoOf, recordOf } from '../domain/lease.js';
import type { ReaperState, Status } from '../domain/types.js';
import type { ListJson, ListingReader, OffLoopPage, ViewRules } from '../store/listing.js';
import type { RawCounts, Reader, Store } from '../store/types.js';
import type { Health, ListCursor, ListFilter, ListPage, ListedPage, RegistryRules } from './types.js';

export interface ListingDeps {
  readonly store: Store;
  readonly rules: RegistryRules;
  /** When this instance started, for its uptime. */
  readonly startedAt: number;
  /** The reaper's last sweep, read in `r`. */
  readonly reaperState: (r: Reader) => Promise<ReaperState>;
  /** Why this process's last pool reload failed or was refused, or null. */
  readonly poolProblem: () => string | null;
}

/** Where the next page starts, as a store answered it. */
function nextOf(n: ListJson['next']): ListedPage['next'] {
  return n ? { name: n.name, cursor: { poolOrder: n.poolOrder, rowId: n.rowId } } : null;
}

/** The position `after` names: a cursor as it is, an identifier's place in the pool order. Errors: invalid_request when no identifier has that name. */
async function cursorOf(r: Reader, after: ListFilter['after']): Promise<ListCursor | null> {
  if (typeof after !== 'string') return after;
  const rec = await r.byName(after);
  if (!rec) throw new RegistryError('invalid_request', `after: no identifier ${after}`);
  return { poolOrder: rec.poolOrder, rowId: rec.rowId };
}

export class Listing {
  private readonly store: Store;
  private readonly rules: RegistryRules;
  /** What an identifier view shows beyond its row, for the stores that write views. */
  private readonly view: ViewRules;

  constructor(private readonly deps: ListingDeps) {
    this.store = deps.store;
    this.rules = deps.rules;
    this.view = { ttlMs: deps.rules.ttlMs, cooldownMs: deps.rules.cooldownMs };
  }

  /** Errors: invalid_request when `after` names no identifier. */
  async list(filter: ListFilter): Promise<ListPage> {
    const page = await this.readPage(filter, false);
    return {
      items: page.rows.map((row) => infoOf(recordOf(row), page.now, this.rules)),
      next: page.next?.name ?? null,
    };
  }

  /**
   * `list` for the HTTP layer to write out: written as JSON by the store where it can (SQLite),
   * else as the store's rows. A page of free or cooling identifiers is read by the store's
   * listing reader when it has one (SQLite on a file: off the event loop), since finding its
   * rows may walk far through the pool: which identifiers are cooling depends on the time, so
   * no index holds just them (69 ms for a page of cooling ones behind 140,000 free ones). Other
   * pages walk an index of just their rows: a page's work, read here.
   * Errors: invalid_request when `after` names no identifier.
   */
  async listPage(filter: ListFilter): Promise<ListedPage> {
    return (await this.pageOffLoop(filter)) ?? this.readPage(filter, true);
  }

  /** The listing reader, once it can take work; null when the store has none or it cannot start. */
  private async readyReader(): Promise<ListingReader | null> {
    const reader = this.store.listing?.offLoop() ?? null;
    if (reader === null) return null;
    return reader.ready || (await reader.whenReady()) ? reader : null;
  }

  /** `filter`'s page read by the listing reader; null when there is none or it cannot read this page (read it here). */
  private async pageOffLoop(filter: ListFilter): Promise<ListedPage | null> {
    if (filter.limit === null || (filter.status !== 'free' && filter.status !== 'cooling')) return null;
    const reader = await this.readyReader();
    if (reader === null) return null;
    const after = typeof filter.after === 'string' ? await this.store.read((r) => cursorOf(r, filter.after)) : filter.after;
    const now = this.store.clock.now();
    let page: OffLoopPage | null;
    try {
      page = await reader.page({ status: filter.status, now, after, limit: filter.limit }, this.view, () => {});
    } catch {
      return null; // the reader failed: the store's own read answers, or says why it cannot
    }
    if (page === null) return null;
    return { json: page.members, rows: page.rows, now, rules: this.rules, next: nextOf(page.next) };
  }

  /**
   * The pages of the full listing after `after` (the first page's cursor), read ahead of the
   * caller by up to `ahead` pages, `limit` rows each: by the store's listing reader when it has
   * one (SQLite on a file: worker threads, so the next pages are read while this one is sent),
   * else with listPage on this thread (also while the reader starts, for a page it cannot
   * read, and for the rest of the listing once it failed: from the first page not yet taken). Each page is
   * its own read snapshot, as listPage's are, and starts where the one before it ended in that
   * page's snapshot. Stopping the iteration (a client gone) asks for no more pages; those being
   * read are dropped when they arrive.
   */
  async *pagesAfter(status: Status | null, after: ListCursor, opts: { limit: number; ahead?: number }): AsyncGenerator<ListedPage> {
    const ahead = opts.ahead ?? 2;
    let reader = this.store.listing?.offLoop() ?? null;
    type OnNext = (next: ListCursor | null) => void;
    const here = async (cursor: ListCursor, onNext: OnNext): Promise<ListedPage> => {
      const page = await this.readPage({ status, after: cursor, limit: opts.limit }, true);
      onNext(page.next?.cursor ?? null);
      return page;
    };
    const read = async (cursor: ListCursor, onNext: OnNext): Promise<ListedPage> => {
      const r = reader;
      if (r === null || !r.ready) return here(cursor, onNext);
      const now = this.store.clock.now();
      const q = { status, now, after: cursor, limit: opts.limit };
      const page = await r.page(q, this.view, (n) => onNext(nextOf(n)?.cursor ?? null));
      if (page === null) return here(cursor, onNext);
      return { json: page.members, rows: page.rows, now, rules: this.rules, next: nextOf(page.next) };
    };
    // Pages asked for and not yet taken, in order; where the next one starts (undefined: not
    // known yet, null: no more); `round` tells a discarded read's late news from the current.
    let slots: { readonly cursor: ListCursor; readonly page: Promise<ListedPage> }[] = [];
    let next: ListCursor | null | undefined = after;
    let round = 0;
    let stopped = false;
    const ask = (): void => {
      while (!stopped && next !== undefined && next !== null && slots.length < ahead) {
        const cursor: ListCursor = next;
        const mine = round;
        next = undefined;
        const page = read(cursor, (n) => {
          if (mine !== round || stopped) return;
          next = n;
          ask();
        });
        page.catch(() => {}); // answered where it is taken
        slots.push({ cursor, page });
      }
    };
    try {
      for (;;) {
        ask();
        const slot = slots.shift();
        if (!slot) return;
        let page: ListedPage;
        try {
          page = await slot.page;
        } catch (e) {
          if (reader === null) throw e; // read here, and failed: the store's error ends the listing
          // The reader failed: this page and those read ahead are read again here, from this page's start.
          reader = null;
          round++;
          slots = [];
          next = slot.cursor;
          continue;
        }
        yield page;
      }
    } finally {
      stopped = true;
    }
  }

  private async readPage(filter: ListFilter, written: boolean): Promise<ListedPage> {
    return this.store.read(async (r) => {
      const now = r.now;
      const after = await cursorOf(r, filter.after);
      const q = { status: filter.status, now, after, limit: filter.limit };
      const json = written && this.store.listing ? await this.store.listing.pageJson(r, q, this.view) : null;
      if (json) return { json: json.members, rows: [], now, rules: this.rules, next: nextOf(json.next) };
      // One row past the page tells whether there is a next page.
      const rows = await r.listRows({ ...q, limit: filter.limit === null ? null : filter.limit + 1 });
      const more = filter.limit !== null && rows.length > filter.limit;
      const page = more ? rows.slice(0, filter.limit ?? 0) : rows;
      const last = page[page.length - 1];
      return {
        json: null,
        rows: page,
        now,
        rules: this.rules,
        next: more && last ? { name: last[1], cursor: { poolOrder: last[2], rowId: last[0] } } : null,
      };
    });
  }

  /** Errors: unavailable when the store cannot be read or cannot take writes. */
  async health(): Promise<Health> {
    const problem = await this.store.healthProblem();
    if (problem) throw new RegistryError('unavailable', problem);
    const counted = await this.countsOffLoop();
    return this.store.read(async (r) => {
      const now = counted?.now ?? r.now;
      const c = counted?.counts ?? await r.counts(now);
      return {
        nowMs: now,
        uptimeMs: now - this.deps.startedAt,
        oldestLastSeen: await r.oldestLastSeen(),
        pool: { total: c.total, leased: c.leased, cooling: c.cooling, retired: c.retired, free: c.total - c.leased - c.cooling - c.retired },
        reaper: await this.deps.reaperState(r),
        poolProblem: this.deps.poolProblem(),
      };
    });
  }

  /**
   * The pool's counts read by the store's listing reader (SQLite on a file: off the event loop;
   * counting a million identifiers, most of them cooling, took 16-60 ms), at registry time `now`;
   * null when there is none or it failed (count them here).
   */
  private async countsOffLoop(): Promise<{ now: number; counts: RawCounts } | null> {
    const reader = await this.readyReader();
    if (reader === null) return null;
    const now = this.store.clock.now();
    try {
      return { now, counts: await reader.counts(now) };
    } catch {
      return null;
    }
  }
}
