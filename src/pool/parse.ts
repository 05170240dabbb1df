/**
 * The pool file: one entry a line, `#` starts a comment. An entry is an identifier or a
 * pattern with numeric ranges in brackets (`worker-[0-1023]`, `node-[000-255]`,
 * `az[1-3]-slot[00-99]`). Pure: text in, identifiers out, or the first bad line.
 */
import { IDENTIFIER_RE } from '../domain/identifiers.js';

/** Far above any real fleet; stops `x-[0-99999999999]` from eating the machine's memory. */
export const MAX_POOL_SIZE = 10_000_000;

export class PoolParseError extends Error {
  override readonly name = 'PoolParseError';
  constructor(readonly line: number, readonly reason: string) {
    super(`line ${line}: ${reason}`);
  }
}

type Part = string | { readonly from: number; readonly to: number; readonly width: number };

const RANGE = /\[(\d+)-(\d+)\]/g;

/** Splits an entry into literal text and ranges; throws PoolParseError (with `line`) when malformed. */
export function parseEntry(entry: string, line = 0): Part[] {
  const fail = (reason: string): never => {
    throw new PoolParseError(line, reason);
  };
  const parts: Part[] = [];
  let last = 0;
  for (const m of entry.matchAll(RANGE)) {
    const [whole, lo = '', hi = ''] = m;
    if (m.index > last) parts.push(entry.slice(last, m.index));
    const from = Number(lo);
    const to = Number(hi);
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to)) fail(`range [${lo}-${hi}] is too large`);
    if (from > to) fail(`range [${lo}-${hi}] goes backwards`);
    const width = lo.length > 1 && lo.startsWith('0') ? lo.length : 0;
    parts.push({ from, to, width });
    last = m.index + whole.length;
  }
  if (last < entry.length) parts.push(entry.slice(last));
  for (const p of parts) {
    if (typeof p === 'string' && /[[\]]/.test(p)) fail(`malformed range in "${entry}": use [from-to] with whole numbers`);
  }
  return parts;
}

/** How many identifiers an entry expands to. */
export function entrySize(parts: readonly Part[]): number {
  return parts.reduce((n, p) => (typeof p === 'string' ? n : n * (p.to - p.from + 1)), 1);
}

/**
 * Hands each identifier of an entry to `emit`, in order, the rightmost range varying fastest
 * (no array and no generator per identifier: a 1M range is one call).
 */
function expandInto(parts: readonly Part[], emit: (name: string) => void): void {
  const walk = (i: number, prefix: string): void => {
    const p = parts[i];
    if (p === undefined) {
      emit(prefix);
    } else if (typeof p === 'string') {
      walk(i + 1, prefix + p);
    } else {
      for (let n = p.from; n <= p.to; n++) walk(i + 1, prefix + String(n).padStart(p.width, '0'));
    }
  };
  walk(0, '');
}

/** A line's entry: the line without its comment and surrounding blanks ('' when none). */
function entryOf(line: string): string {
  const hash = line.indexOf('#');
  return (hash === -1 ? line : line.slice(0, hash)).trim();
}

/** Parses a whole pool file into its identifiers in file order. Throws PoolParseError. */
export function parsePool(text: string): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  const add = (name: string, lineNo: number): void => {
    if (!IDENTIFIER_RE.test(name)) {
      throw new PoolParseError(lineNo, `"${name}" is not a valid identifier (1-128 of A-Z a-z 0-9 . _ : -)`);
    }
    if (seen.has(name)) throw new PoolParseError(lineNo, `"${name}" is already in the pool (line ${firstLineOf(text, name)})`);
    seen.add(name);
    out.push(name);
  };
  const lines = text.split(/\r?\n/);
  for (let idx = 0; idx < lines.length; idx++) {
    const lineNo = idx + 1;
    const entry = entryOf(lines[idx] ?? '');
    if (entry === '') continue;
    // A plain identifier (most lines of a long file): no range to parse.
    if (!entry.includes('[') && !entry.includes(']')) {
      if (out.length + 1 > MAX_POOL_SIZE) throw new PoolParseError(lineNo, `the pool would exceed ${MAX_POOL_SIZE} identifiers`);
      add(entry, lineNo);
      continue;
    }
    const parts = parseEntry(entry, lineNo);
    if (out.length + entrySize(parts) > MAX_POOL_SIZE) {
      throw new PoolParseError(lineNo, `the pool would exceed ${MAX_POOL_SIZE} identifiers`);
    }
    expandInto(parts, (name) => add(name, lineNo));
  }
  return out;
}

/** The first line of `text` whose entry yields `name` (for the duplicate's message only). */
function firstLineOf(text: string, name: string): number {
  const lines = text.split(/\r?\n/);
  for (let idx = 0; idx < lines.length; idx++) {
    const entry = entryOf(lines[idx] ?? '');
    if (entry === '') continue;
    let found = false;
    expandInto(parseEntry(entry, idx + 1), (n) => { found ||= n === name; });
    if (found) return idx + 1;
  }
  return 0;
}
