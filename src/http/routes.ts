/**
 * The routes of docs/api.md ("Routes"), as one table: the router is built from it and so is /openapi.json,
 * so the document cannot miss a route or disagree with the schemas a route validates with.
 */
import Router from '@koa/router';
import type Koa from 'koa';
import type { Context } from 'koa';
import { isRegistryError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';
import type { Metrics } from '../metrics.js';
import type { Registry } from '../registry.js';
import type { Role } from './auth.js';
import { jsonBody } from './body.js';
import { historyPageJson, streamHistory } from './history.js';
import { listingPageJson, streamListing } from './listing.js';
import { DASHBOARD_HTML } from './dashboard.js';
import { buildOpenApi } from './openapi.js';
import {
  allocateBodySchema, clientIdSchema, healthSchema, historyQuerySchema, historySchema, identifierListSchema, identifierSchema,
  identifierViewSchema, leaseBodySchema, leaseViewSchema, listQuerySchema, parse, reapQuerySchema, reapResultSchema,
} from './schemas.js';
import { healthView, identifierView, leaseView, unhealthyView } from './views.js';

export interface RouteDeps {
  readonly registry: Registry;
  readonly metrics: Metrics;
}

export type Access = Role | 'open';

export interface RouteSpec {
  readonly method: 'get' | 'post' | 'delete';
  /** Koa path, with `:name` parameters. */
  readonly path: string;
  readonly name: string;
  readonly summary: string;
  readonly access: Access;
  readonly body?: object;
  readonly query?: object;
  readonly params?: Readonly<Record<string, object>>;
  readonly response: { readonly description: string; readonly schema?: object; readonly contentType?: string };
  readonly errors: readonly ErrorCode[];
  readonly handle: (ctx: Context, deps: RouteDeps) => Promise<void>;
}

function nextLink(ctx: Context, after: string): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(ctx.query)) if (k !== 'after' && typeof v === 'string') q.set(k, v);
  q.set('after', after);
  return `<${ctx.path}?${q.toString()}>; rel="next"`;
}

/** Lets the request log name the client a request was about. */
function about(ctx: Context, clientId: string): void {
  ctx.state['clientId'] = clientId;
}

const BODY_ERRORS: readonly ErrorCode[] = ['invalid_json', 'invalid_request', 'payload_too_large', 'unsupported_media_type'];

export const ROUTES: readonly RouteSpec[] = [
  {
    method: 'post', path: '/allocate', name: 'allocate', access: 'agent',
    summary: 'Claim an identifier for a client (the same one again if it already holds one)',
    body: allocateBodySchema,
    response: { description: 'the lease', schema: leaseViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'pool_exhausted', 'unavailable'],
    async handle(ctx, { registry }) {
      const b = parse.allocateBody(ctx.request.body);
      about(ctx, b.client_id);
      ctx.body = leaseView(await registry.allocate(b.client_id));
    },
  },
  {
    method: 'post', path: '/liveness', name: 'liveness', access: 'agent',
    summary: 'Renew the lease the client holds',
    body: leaseBodySchema,
    response: { description: 'the renewed lease', schema: leaseViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'identifier_not_found', 'not_owner', 'stale_epoch', 'unavailable'],
    async handle(ctx, { registry }) {
      const b = parse.leaseBody(ctx.request.body);
      about(ctx, b.client_id);
      ctx.body = leaseView(await registry.renew(b.client_id, b.identifier, b.epoch));
    },
  },
  {
    method: 'post', path: '/release', name: 'release', access: 'agent',
    summary: 'Give the identifier back; it is free at once',
    body: leaseBodySchema,
    response: { description: 'the identifier, now free', schema: identifierViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'identifier_not_found', 'not_owner', 'stale_epoch', 'unavailable'],
    async handle(ctx, { registry }) {
      const b = parse.leaseBody(ctx.request.body);
      about(ctx, b.client_id);
      ctx.body = identifierView(await registry.release(b.client_id, b.identifier, b.epoch));
    },
  },
  {
    method: 'get', path: '/identifiers', name: 'listIdentifiers', access: 'admin',
    summary: 'List identifiers in pool order; with limit, the next page is in the Link header; without, all of them, streamed',
    query: listQuerySchema,
    response: { description: 'identifier views', schema: identifierListSchema },
    errors: ['invalid_request', 'unauthorized', 'forbidden'],
    async handle(ctx, { registry }) {
      const q = parse.listQuery(ctx.query);
      if (q.limit === undefined) {
        ctx.type = 'application/json; charset=utf-8';
        ctx.body = await streamListing(registry, q.status ?? null, q.after ?? null);
        return;
      }
      const page = await listingPageJson(registry, q.status ?? null, q.after ?? null, q.limit);
      if (page.next !== null) ctx.set('Link', nextLink(ctx, page.next));
      ctx.type = 'application/json; charset=utf-8';
      ctx.body = page.json;
    },
  },
  {
    method: 'get', path: '/client/:client_id', name: 'showClient', access: 'admin',
    summary: 'The lease a client holds',
    params: { client_id: clientIdSchema },
    response: { description: 'the lease', schema: leaseViewSchema },
    errors: ['invalid_request', 'unauthorized', 'forbidden', 'client_not_found'],
    async handle(ctx, { registry }) {
      const clientId = parse.clientIdParam(ctx.params['client_id']);
      about(ctx, clientId);
      ctx.body = leaseView(await registry.leaseOfClient(clientId));
    },
  },
  {
    method: 'get', path: '/identifier/:identifier', name: 'showIdentifier', access: 'admin',
    summary: 'One identifier, held or not',
    params: { identifier: identifierSchema },
    response: { description: 'the identifier', schema: identifierViewSchema },
    errors: ['invalid_request', 'unauthorized', 'forbidden', 'identifier_not_found'],
    async handle(ctx, { registry }) {
      ctx.body = identifierView(await registry.identifier(parse.identifierParam(ctx.params['identifier'])));
    },
  },
  {
    method: 'get', path: '/identifier/:identifier/history', name: 'showHistory', access: 'admin',
    summary: 'Ownership changes of an identifier, oldest first; with limit, the next page is in the Link header; without, all of them, streamed',
    params: { identifier: identifierSchema },
    query: historyQuerySchema,
    response: { description: 'the history', schema: historySchema },
    errors: ['invalid_request', 'unauthorized', 'forbidden', 'identifier_not_found'],
    async handle(ctx, { registry }) {
      const name = parse.identifierParam(ctx.params['identifier']);
      const q = parse.historyQuery(ctx.query);
      ctx.type = 'application/json; charset=utf-8';
      if (q.limit === undefined) {
        ctx.body = await streamHistory(registry, name, q.after ?? null);
        return;
      }
      const page = await historyPageJson(registry, name, q.after ?? null, q.limit);
      if (page.next !== null) ctx.set('Link', nextLink(ctx, String(page.next)));
      ctx.body = page.json;
    },
  },
  {
    method: 'delete', path: '/identifier/:identifier', name: 'forceRelease', access: 'admin',
    summary: 'Force release: take the identifier from its holder; it cools down before reuse',
    params: { identifier: identifierSchema },
    response: { description: 'the identifier', schema: identifierViewSchema },
    errors: ['invalid_request', 'unauthorized', 'forbidden', 'identifier_not_found', 'unavailable'],
    async handle(ctx, { registry }) {
      ctx.body = identifierView(await registry.forceRelease(parse.identifierParam(ctx.params['identifier'])));
    },
  },
  {
    method: 'post', path: '/admin/reap', name: 'reap', access: 'admin',
    summary: 'Sweep now; force=true sweeps past the startup grace and the mass-expiry guard',
    query: reapQuerySchema,
    response: { description: 'what the sweep did', schema: reapResultSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'forbidden', 'unavailable'],
    async handle(ctx, { registry }) {
      const q = parse.reapQuery(ctx.query);
      const r = await registry.reap({ force: q.force === 'true' });
      ctx.body = { reclaimed: r.reclaimed, held: r.held, reason: r.reason };
    },
  },
  {
    method: 'get', path: '/health', name: 'health', access: 'open',
    summary: 'Status, uptime, pool counts and the reaper (503 unhealthy when the database fails)',
    response: { description: 'healthy or degraded', schema: healthSchema },
    errors: [],
    async handle(ctx, { registry }) {
      try {
        ctx.body = healthView(await registry.health());
      } catch (e) {
        if (!isRegistryError(e) || e.code !== 'unavailable') throw e;
        ctx.status = 503;
        ctx.body = unhealthyView(registry.uptimeMs(), registry.reaperState(), e.message);
      }
    },
  },
  {
    method: 'get', path: '/metrics', name: 'metrics', access: 'open',
    summary: 'Prometheus metrics',
    response: { description: 'Prometheus text format', contentType: 'text/plain; version=0.0.4' },
    errors: [],
    async handle(ctx, { metrics }) {
      ctx.body = await metrics.render();
      ctx.type = metrics.contentType;
    },
  },
  {
    method: 'get', path: '/openapi.json', name: 'openapi', access: 'open',
    summary: 'This document',
    response: { description: 'OpenAPI 3.1', contentType: 'application/json' },
    errors: [],
    async handle(ctx) {
      ctx.body = openApiDocument();
    },
  },
  {
    method: 'get', path: '/', name: 'dashboard', access: 'open',
    summary: 'The dashboard: the pool as a grid, refreshed every few seconds',
    response: { description: 'an HTML page', contentType: 'text/html' },
    errors: [],
    async handle(ctx) {
      ctx.type = 'text/html; charset=utf-8';
      ctx.set('Content-Security-Policy', "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'");
      ctx.body = DASHBOARD_HTML;
    },
  },
];

let openApi: object | null = null;
function openApiDocument(): object {
  openApi ??= buildOpenApi(ROUTES);
  return openApi;
}

export function createRouter(deps: RouteDeps, auth: (role: Role) => Koa.Middleware): Router {
  const router = new Router();
  // A VM's request reaching the registry, answered or refused, shows the registry still reaches
  // its fleet (the mass-expiry guard holds every reclaim when none has for a TTL).
  const fleet: Koa.Middleware = async function fleetRequest(_ctx, next) {
    deps.registry.noteFleetRequest();
    await next();
  };
  const guards: Record<Access, Koa.Middleware[]> = { agent: [fleet, auth('agent')], admin: [auth('admin')], open: [] };
  const body = jsonBody();
  for (const r of ROUTES) {
    const handler = async (ctx: Context): Promise<void> => r.handle(ctx, deps);
    Object.defineProperty(handler, 'name', { value: r.name });
    const chain = r.method === 'post' ? [...guards[r.access], body, handler] : [...guards[r.access], handler];
    router[r.method](r.name, r.path, ...chain);
  }
  return router;
}
