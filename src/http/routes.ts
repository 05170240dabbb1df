/**
 * The routes of docs/api.md ("Routes"), as one table: the router is built from it and so is /openapi.json,
 * so the document cannot miss a route or disagree with the schemas a route validates with.
 */
import Router from '@koa/router';
import type Koa from 'koa';
import type { Context } from 'koa';
import type { Attestation } from '../aws/attestation.js';
import { envelopeSchema, parseAwsEvent } from '../aws/events.js';
import { RegistryError, isRegistryError } from '../domain/errors.js';
import type { InstanceInfo } from '../domain/types.js';
import type { Metrics } from '../metrics.js';
import type { Registry } from '../registry.js';
import type { Role } from './auth.js';
import { jsonBody } from './body.js';
import { errorAnswer } from './errors.js';
import type { WireCode } from './errors.js';
import { historyPageJson, streamHistory } from './history.js';
import { listingPageJson, streamListing } from './listing.js';
import { DASHBOARD_HTML } from './dashboard.js';
import { buildOpenApi } from './openapi.js';
import {
  allocateBodySchema, clientIdSchema, healthSchema, historyQuerySchema, historySchema, identifierListSchema, identifierSchema,
  identifierViewSchema, leaseBodySchema, leaseViewSchema, listQuerySchema, parse, reapQuerySchema, reapResultSchema, awsEventResultSchema,
} from './schemas.js';
import { healthView, identifierView, leaseView, unhealthyView } from './views.js';

/** Who may claim: whether a holder key is required, and whether claims must be attested. */
export interface ClaimPolicy {
  /** `required`: an allocate without a key is 400 naming `key` (HOLDER_KEYS). */
  readonly holderKeys: 'optional' | 'required';
  /** Set: allocate must carry an identity document that verifies (AWS_IID_CERT_FILE); a key is then required too. */
  readonly attestation: Attestation | null;
}

export const OPEN_CLAIMS: ClaimPolicy = Object.freeze({ holderKeys: 'optional', attestation: null });

export interface RouteDeps {
  readonly registry: Registry;
  readonly metrics: Metrics;
  readonly claims?: ClaimPolicy;
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
  readonly errors: readonly WireCode[];
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

/**
 * What an allocate claims beyond its client id, checked as the policy asks: the key when it is
 * required, the identity document when claims are attested (refusals counted by reason, and the
 * reason named in the request's log line). Nothing is granted on a document that did not verify.
 */
async function checkClaim(ctx: Context, deps: RouteDeps, clientId: string, key: string | null, identity: unknown): Promise<InstanceInfo | null> {
  const policy = deps.claims ?? OPEN_CLAIMS;
  if (key === null && (policy.holderKeys === 'required' || policy.attestation !== null)) {
    const why = policy.attestation !== null ? 'attested claims are bound to their key' : 'HOLDER_KEYS=required';
    throw new RegistryError('invalid_request', `key: is required (${why}): send a secret of 16-256 characters the VM keeps for liveness and release`);
  }
  if (policy.attestation === null) return null;
  const r = await policy.attestation.check(identity, clientId, ctx.socket.remoteAddress ?? null);
  if (r.ok) return r.instance;
  ctx.state['reason'] = r.reason;
  deps.metrics.onAttestationRefused(r.reason);
  throw new RegistryError(r.code, r.message);
}

const BODY_ERRORS: readonly WireCode[] = ['invalid_json', 'invalid_request', 'payload_too_large', 'unsupported_media_type'];

export const ROUTES: readonly RouteSpec[] = [
  {
    method: 'post', path: '/allocate', name: 'allocate', access: 'agent',
    summary: 'Claim an identifier for a client (the same one again if it already holds one with this key; the one it held last if allocatable)',
    body: allocateBodySchema,
    response: { description: 'the lease', schema: leaseViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'forbidden', 'holder_conflict', 'pool_exhausted', 'unavailable'],
    async handle(ctx, deps) {
      const b = parse.allocateBody(ctx.request.body);
      about(ctx, b.client_id);
      const key = b.key ?? null;
      const instance = await checkClaim(ctx, deps, b.client_id, key, b.identity);
      ctx.body = leaseView(await deps.registry.allocate(b.client_id, { key, instance }));
    },
  },
  {
    method: 'post', path: '/liveness', name: 'liveness', access: 'agent',
    summary: 'Renew the lease the client holds (with the key it was granted with), raising the watermark to the one sent',
    body: leaseBodySchema,
    response: { description: 'the renewed lease', schema: leaseViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'identifier_not_found', 'not_owner', 'stale_epoch', 'unavailable'],
    async handle(ctx, { registry }) {
      const b = parse.leaseBody(ctx.request.body);
      about(ctx, b.client_id);
      ctx.body = leaseView(await registry.renew(b.client_id, b.identifier, b.epoch, { key: b.key ?? null, watermark: b.watermark ?? null }));
    },
  },
  {
    method: 'post', path: '/release', name: 'release', access: 'agent',
    summary: 'Give the identifier back (with the key it was granted with); it is free at once, and keeps the watermark',
    body: leaseBodySchema,
    response: { description: 'the identifier, now free', schema: identifierViewSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'identifier_not_found', 'not_owner', 'stale_epoch', 'unavailable'],
    async handle(ctx, { registry }) {
      const b = parse.leaseBody(ctx.request.body);
      about(ctx, b.client_id);
      ctx.body = identifierView(await registry.release(b.client_id, b.identifier, b.epoch, { key: b.key ?? null, watermark: b.watermark ?? null }));
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
    method: 'post', path: '/events/aws', name: 'awsEvent', access: 'event',
    summary: 'One Amazon EventBridge event about an EC2 instance, as an API destination delivers it: a terminated instance\'s lease ends ' +
      '(free at once when attested, cooling otherwise), a terminating one is noted in the history; any other event is acknowledged',
    body: envelopeSchema,
    response: { description: 'what the event did', schema: awsEventResultSchema },
    errors: [...BODY_ERRORS, 'unauthorized', 'forbidden', 'unavailable'],
    async handle(ctx, { registry, metrics }) {
      const e = parseAwsEvent(ctx.request.body);
      if (!e.ok) {
        metrics.onAwsEventInvalid('unknown');
        throw new RegistryError('invalid_request', e.message);
      }
      if (e.instanceId !== undefined) about(ctx, e.instanceId);
      const r = await registry.awsEvent(e);
      ctx.body = { released: r.released, noted: r.noted };
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
        // The status an `unavailable` has everywhere; the body says what the database failed with.
        ctx.status = errorAnswer(e).status;
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
  const guards: Record<Access, Koa.Middleware[]> = { agent: [fleet, auth('agent')], admin: [auth('admin')], event: [auth('event')], open: [] };
  const body = jsonBody();
  for (const r of ROUTES) {
    const handler = async (ctx: Context): Promise<void> => r.handle(ctx, deps);
    Object.defineProperty(handler, 'name', { value: r.name });
    const chain = r.method === 'post' ? [...guards[r.access], body, handler] : [...guards[r.access], handler];
    router[r.method](r.name, r.path, ...chain);
  }
  return router;
}
