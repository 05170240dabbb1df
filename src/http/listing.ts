/**
 * The full listing (`GET /identifiers` without `limit`), streamed: a 1M pool serialized in
 * one go would hold the event loop for seconds, and every liveness with it. Instead the array
 * is written page by page: the first by `registry.listPage` here (so a bad `after` is still a
 * 400), the rest by `registry.pagesAfter`, which on SQLite with a database file has them
 * written by two worker threads, a page or two ahead of what is sent (elsewhere, and when the
 * workers cannot be used, page by page on this thread, with a turn of the event loop between
 * pages). Pages are sent only as fast as the client reads: a slow reader costs a few pages of
 * memory, not the pool.
 *
 * Each page is its own read snapshot, so a listing is not one snapshot of the pool: an
 * identifier whose state changes while the listing runs shows the state its page saw, and
 * a pool sync that reorders the pool meanwhile can make the rest of the listing skip or
 * repeat identifiers. Pages follow the pool order by keyset (each page starts after the
 * pool order and row id of the last row of the page before, in that page's snapshot), so
 * without a reordering sync each identifier appears once. One snapshot for the whole listing
 * was not chosen: its read transaction would stay open for as long as the client takes to
 * read (a client that stops reading, for ever), and no WAL checkpoint can move past an open
 * snapshot, so the WAL would grow for all that time.
 */
import { Readable } from 'node:stream';
import type { Status } from '../domain/types.js';
import type { ListedPage, Registry } from '../registry.js';
import { identifierViewsJson } from './views.js';

/**
 * Rows a page: a few milliseconds of work (written by SQLite, about 4 ms at 2,000 rows on
 * 2 shared cores), well under the 20 ms an event-loop turn may take. Larger pages cost less
 * a row (2,500 took a fifth less CPU than 1,000), but a slow moment of the machine stretches
 * a page's turn with its size.
 */
export const LISTING_PAGE_SIZE = 2000;
/**
 * The part a `?limit=` page is read in: on PostgreSQL each part's rows become views in
 * JavaScript, and 2,000 of them measured 23-32 ms of CPU on a loaded 2-core machine; 1,000 keep
 * the turn under 20 ms.
 */
export const PAGE_PART_SIZE = 1000;

/** Resolves after a turn of the event loop: what is waiting (requests, timers) runs first. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const OPEN = Buffer.from('[');
const COMMA = Buffer.from(',');
const CLOSE = Buffer.from(']');
const EMPTY = Buffer.from('[]');

/**
 * A JSON array written page by page: the members of `first`, then of each page `rest` yields,
 * with a turn of the event loop after each page, so no page's work joins another's in one turn.
 * The array is closed only after the last page: a failure on the way cuts the response short
 * (the client sees an aborted, unterminated array, never a complete-looking one).
 */
async function* arrayChunks<P>(first: P, rest: AsyncIterable<P> | null, members: (page: P) => Buffer): AsyncGenerator<Buffer> {
  let open = OPEN;
  const body = members(first);
  if (body.length > 0) {
    yield Buffer.concat([open, body]);
    open = COMMA;
  }
  if (rest !== null) {
    for await (const page of rest) {
      const json = members(page);
      if (json.length > 0) {
        yield open; // the page itself is not copied to put a comma before it
        yield json;
        open = COMMA;
      }
      await nextTurn();
    }
  }
  yield open === OPEN ? EMPTY : CLOSE;
}

/**
 * A response body streaming the JSON array of `first`'s members and then those of the pages
 * `rest` reads as the client takes them (null: `first` is the only page). Whatever is paged
 * this way (the listing, a history) costs the event loop one page at a time.
 */
export function streamJsonArray<P>(first: P, rest: AsyncIterable<P> | null, members: (page: P) => Buffer): Readable {
  return Readable.from(arrayChunks(first, rest, members), { objectMode: false });
}

/**
 * One page of up to `limit` members as a JSON array, read in parts of at most `part` members,
 * each its own read with a turn of the event loop between (a page of 10,000 written at once
 * held the loop 20-50 ms), and where the page after it starts. `read` answers the members
 * after a position (null: from `after` as the request gave it) and where the next part starts,
 * which it says only when more follow (so a part that says it was full).
 */
export async function pageInParts<C>(
  limit: number, part: number, read: (after: C | null, limit: number) => Promise<{ members: Buffer; next: C | null }>,
): Promise<{ json: Buffer; next: C | null }> {
  const parts: Buffer[] = [OPEN];
  let left = limit;
  let cursor: C | null = null;
  for (;;) {
    const n = Math.min(left, part);
    const got = await read(cursor, n);
    if (got.members.length > 0) parts.push(...(parts.length > 1 ? [COMMA, got.members] : [got.members]));
    left -= n;
    if (got.next === null || left <= 0) {
      parts.push(CLOSE);
      return { json: Buffer.concat(parts), next: got.next };
    }
    cursor = got.next;
    await nextTurn();
  }
}

/**
 * A page of the listing (`GET /identifiers?limit=`), in parts of at most PAGE_PART_SIZE
 * (see pageInParts), and the identifier the next page starts after. Errors: invalid_request
 * when `after` names no identifier.
 */
export async function listingPageJson(
  registry: Registry, status: Status | null, after: string | null, limit: number,
): Promise<{ json: Buffer; next: string | null }> {
  const page = await pageInParts<NonNullable<ListedPage['next']>>(limit, PAGE_PART_SIZE, async (from, n) => {
    const p = await registry.listPage({ status, after: from?.cursor ?? after, limit: n });
    return { members: identifierViewsJson(p), next: p.next };
  });
  return { json: page.json, next: page.next?.name ?? null };
}

/**
 * Every identifier (with `status`, of that status) after `after`, as a JSON array. The first
 * page is read before anything is sent, so an unknown `after` is still a 400 and a failing
 * database a 503; a failure on a later page can only cut the response short.
 */
export async function streamListing(registry: Registry, status: Status | null, after: string | null): Promise<Readable> {
  const first = await registry.listPage({ status, after, limit: LISTING_PAGE_SIZE });
  const rest = first.next === null ? null : registry.pagesAfter(status, first.next.cursor, { limit: LISTING_PAGE_SIZE });
  return streamJsonArray(first, rest, identifierViewsJson);
}
