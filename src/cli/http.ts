/** idreg's commands that talk HTTP to a registry (IDREG_URL, IDREG_TOKEN): list, show, history, release, reap. */
import { systemTimeSource } from '../clock.js';
import type { CliConfig } from '../config.js';
import { errorMessage } from '../domain/errors.js';
import { CliError, failure, parse, usageError } from './args.js';
import { ago, table } from './format.js';

const STATUSES = ['leased', 'free', 'cooling', 'retired'] as const;
const MAX_LIMIT = 10_000;
/** Entries `history` asks for a page: a history of any length comes in bounded answers. */
const HISTORY_PAGE = 1000;

type Json = unknown;

interface Reply {
  status: number;
  body: Json;
  date: number;
  /** The next page's path, from a `Link: <…>; rel="next"` header; null without one. */
  next: string | null;
}

function field(o: Json, k: string): Json {
  return typeof o === 'object' && o !== null && !Array.isArray(o) ? Object.fromEntries(Object.entries(o))[k] : undefined;
}

const text = (v: Json): string => (v === null || v === undefined ? '-' : String(v));

async function call(cfg: CliConfig, method: string, path: string): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (cfg.token) headers['authorization'] = `Bearer ${cfg.token}`;
  let res: Response;
  try {
    res = await fetch(cfg.url.replace(/\/$/, '') + path, { method, headers });
  } catch (e) {
    // fetch's own message is "fetch failed"; its cause says why (ECONNREFUSED, a bad certificate).
    throw failure(`cannot reach the registry at ${cfg.url}: ${errorMessage(e instanceof Error && e.cause instanceof Error ? e.cause : e)}`, 3);
  }
  const raw = await res.text();
  let body: Json = raw;
  try { body = JSON.parse(raw); } catch { /* not JSON */ }
  // The registry's own clock says what "now" is, so "12s ago" does not depend on this machine's.
  const date = Date.parse(res.headers.get('date') ?? '');
  return { status: res.status, body, date: Number.isNaN(date) ? systemTimeSource.wall() : date, next: nextPath(res.headers.get('link')) };
}

/** The path of a `Link: <…>; rel="next"` header; only a path on the registry asked (never another host). */
function nextPath(link: string | null): string | null {
  const target = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link ?? '')?.[1];
  return target !== undefined && target.startsWith('/') && !target.startsWith('//') ? target : null;
}

/** What to do about a refusal that the operator's own setup causes. */
function hint(status: number, cfg: CliConfig): string {
  if (status === 401 && cfg.token === null) return '\nthe registry needs a token: set IDREG_TOKEN (or --token) to one of its ADMIN_TOKENS';
  if (status === 401) return '\nthe registry refused the token: set IDREG_TOKEN (or --token) to one of its ADMIN_TOKENS';
  if (status === 403) return '\nthis token may not do that (an agent token?): set IDREG_TOKEN (or --token) to one of the registry\'s ADMIN_TOKENS';
  return '';
}

function ok(r: Reply, cfg: CliConfig): Reply {
  if (r.status >= 200 && r.status < 300) return r;
  const err = field(r.body, 'error');
  throw failure(`${text(field(err, 'code'))}: ${text(field(err, 'message'))} (HTTP ${r.status})${hint(r.status, cfg)}`, r.status >= 500 ? 3 : 1);
}

function identifierRows(list: Json, now: number): string[][] {
  const items = Array.isArray(list) ? list : [];
  return items.map((x: Json) => [
    text(field(x, 'identifier')), text(field(x, 'client_id')), text(field(x, 'epoch')),
    ago(typeof field(x, 'last_seen') === 'string' ? String(field(x, 'last_seen')) : null, now), text(field(x, 'status')),
    text(field(field(x, 'instance'), 'availability_zone')),
  ]);
}

function describe(view: Json, now: number): string {
  const keys = ['identifier', 'status', 'client_id', 'epoch', 'allocated_at', 'last_seen', 'expires_at', 'watermark'];
  const lines = keys.filter((k) => field(view, k) !== undefined).map((k) => {
    const v = field(view, k);
    const extra = k === 'last_seen' && typeof v === 'string' ? ` (${ago(v, now)})` : '';
    return `${k}: ${text(v)}${extra}`;
  });
  const instance = field(view, 'instance');
  if (instance) {
    lines.push(`instance: ${['account_id', 'region', 'availability_zone', 'instance_type', 'image_id'].map((k) => text(field(instance, k))).join(' ')}`);
  }
  return lines.join('\n');
}

export async function list(cfg: CliConfig, args: string[]): Promise<string> {
  const { values } = parse('list', { args, options: { status: { type: 'string' }, limit: { type: 'string' } } });
  const q = new URLSearchParams();
  const status = values.status;
  if (status !== undefined) {
    if (!STATUSES.some((x) => x === status)) throw usageError(`list: --status must be one of ${STATUSES.join(', ')} (not "${status}")`);
    q.set('status', status);
  }
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!/^\d+$/.test(values.limit) || n < 1 || n > MAX_LIMIT) throw usageError(`list: --limit must be a whole number from 1 to ${MAX_LIMIT} (not "${values.limit}")`);
    q.set('limit', values.limit);
  }
  const r = ok(await call(cfg, 'GET', `/identifiers${q.size ? `?${q}` : ''}`), cfg);
  return table(['IDENTIFIER', 'OWNER', 'EPOCH', 'LAST SEEN', 'STATUS', 'AZ'], identifierRows(r.body, r.date));
}

export async function show(cfg: CliConfig, name: string): Promise<string> {
  const byId = await call(cfg, 'GET', `/identifier/${encodeURIComponent(name)}`);
  if (byId.status === 200) return describe(byId.body, byId.date);
  if (byId.status !== 404 && byId.status !== 400) ok(byId, cfg);
  const byClient = await call(cfg, 'GET', `/client/${encodeURIComponent(name)}`);
  if (byClient.status === 404 || byClient.status === 400) throw failure(`no identifier or client named ${name}`, 1);
  return describe(ok(byClient, cfg).body, byClient.date);
}

/** The whole history, page by page (each page's Link header says where the next starts). */
export async function history(cfg: CliConfig, name: string): Promise<string> {
  const rows: string[][] = [];
  let path: string | null = `/identifier/${encodeURIComponent(name)}/history?limit=${HISTORY_PAGE}`;
  const seen = new Set<string>();
  while (path !== null) {
    // A registry that sent the same page twice would otherwise be followed for ever.
    if (seen.has(path)) throw new CliError(`error: the registry sent the page ${path} twice; the history shown would be incomplete`, 3);
    seen.add(path);
    const r = ok(await call(cfg, 'GET', path), cfg);
    for (const h of Array.isArray(r.body) ? r.body : []) {
      rows.push([text(field(h, 'at')), text(field(h, 'event')), text(field(h, 'client_id')), text(field(h, 'epoch'))]);
    }
    path = r.next;
  }
  return table(['AT', 'EVENT', 'CLIENT', 'EPOCH'], rows);
}

export async function release(cfg: CliConfig, name: string): Promise<string> {
  const r = ok(await call(cfg, 'DELETE', `/identifier/${encodeURIComponent(name)}`), cfg);
  return `${name}: ${text(field(r.body, 'status'))} (epoch ${text(field(r.body, 'epoch'))})`;
}

export async function reap(cfg: CliConfig, args: string[]): Promise<string> {
  const { values } = parse('reap', { args, options: { force: { type: 'boolean', default: false } } });
  const r = ok(await call(cfg, 'POST', `/admin/reap${values.force ? '?force=true' : ''}`), cfg);
  const reason = field(r.body, 'reason');
  return `reclaimed ${text(field(r.body, 'reclaimed'))}${field(r.body, 'held') === true ? ' (held by the mass-expiry guard)' : ''}` +
    (typeof reason === 'string' ? `\n${reason}` : '');
}
