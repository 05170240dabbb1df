/**
 * An identifier's whole history (`GET /identifier/:identifier/history` without `limit`),
 * streamed as the full listing is (listing.ts): history is kept for HISTORY_RETENTION_DAYS and
 * an identifier that changes hands often has a long one (100,000 entries took the event loop
 * for 0.7 s read and written in one go). It is read a page at a time, oldest first, each page
 * a read of its own, in the order the entries were written: an entry written while the
 * history streams comes at its end; one pruned meanwhile may be missing.
 */
import type { Readable } from 'node:stream';
import type { HistoryPage, Registry } from '../registry.js';
import { pageInParts, streamJsonArray } from './listing.js';
import { historyView } from './views.js';

/** Entries a page: about a millisecond of reading and writing, far under the 20 ms an event-loop turn may take. */
export const HISTORY_PAGE_SIZE = 1000;

/** A page's entries as the members of a JSON array (no brackets; empty for none). */
export function historyMembersJson(page: HistoryPage): Buffer {
  return Buffer.from(page.entries.map((e) => JSON.stringify(historyView(e))).join(','));
}

/**
 * A page of up to `limit` entries after `after` (`?limit=` of up to 10,000), as a JSON array,
 * and where the next page starts: read and written HISTORY_PAGE_SIZE entries at a time with a
 * turn of the event loop between (see pageInParts), so a large page costs the loop no more
 * than the stream's pages do.
 */
export async function historyPageJson(registry: Registry, name: string, after: number | null, limit: number): Promise<{ json: Buffer; next: number | null }> {
  return pageInParts<number>(limit, HISTORY_PAGE_SIZE, async (from, n) => {
    const page = await registry.historyPage(name, { after: from ?? after, limit: n });
    return { members: historyMembersJson(page), next: page.next };
  });
}

/**
 * The history of `name` after the position `after` (null: all of it), as a JSON array. The
 * first page is read before anything is sent, so an unknown identifier is still a 404.
 */
export async function streamHistory(registry: Registry, name: string, after: number | null): Promise<Readable> {
  const first = await registry.historyPage(name, { after, limit: HISTORY_PAGE_SIZE });
  const rest = first.next === null ? null : registry.historyPagesAfter(name, first.next, { limit: HISTORY_PAGE_SIZE });
  return streamJsonArray(first, rest, historyMembersJson);
}
