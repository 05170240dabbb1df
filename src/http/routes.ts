/** The routes of SPEC.md. Handlers validate, call the registry, and shape the answer. */
import Router from '@koa/router';
import type { Context } from 'koa';
import type { Registry } from '../registry.js';
import { isRegistryError } from '../domain/errors.js';
import type { Role } from './auth.js';
import { jsonBody } from './body.js';
import { parse } from './schemas.js';
import { healthView, historyView, identifierView, leaseView, unhealthyView } from './views.js';
import type Koa from 'koa';

export interface RouteDeps {
  readonly registry: Registry;
  readonly auth: (role: Role) => Koa.Middleware;
  /** Extra routes (metrics, documents) mounted by the app. */
  readonly extra?: (router: Router) => void;
}

function nextLink(ctx: Context, after: string): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(ctx.query)) if (k !== 'after' && typeof v === 'string') q.set(k, v);
  q.set('after', after);
  return `<${ctx.path}?${q.toString()}>; rel="next"`;
}

export function createRouter({ registry, auth, extra }: RouteDeps): Router {
  const router = new Router();
  const agent = auth('agent');
  const admin = auth('admin');
  const body = jsonBody();

  router.post('/allocate', agent, body, async function allocate(ctx) {
    const b = parse.allocateBody(ctx.request.body);
    ctx.body = leaseView(await registry.allocate(b.client_id));
  });

  router.post('/liveness', agent, body, async function liveness(ctx) {
    const b = parse.leaseBody(ctx.request.body);
    ctx.body = leaseView(await registry.renew(b.client_id, b.identifier, b.epoch));
  });

  router.post('/release', agent, body, async function release(ctx) {
    const b = parse.leaseBody(ctx.request.body);
    ctx.body = identifierView(await registry.release(b.client_id, b.identifier, b.epoch));
  });

  router.get('/identifiers', admin, async function listIdentifiers(ctx) {
    const q = parse.listQuery(ctx.query);
    const page = await registry.list({ status: q.status ?? null, after: q.after ?? null, limit: q.limit ?? null });
    if (page.next !== null) ctx.set('Link', nextLink(ctx, page.next));
    ctx.body = page.items.map(identifierView);
  });

  router.get('/client/:client_id', admin, async function showClient(ctx) {
    ctx.body = leaseView(await registry.leaseOfClient(parse.clientIdParam(ctx.params['client_id'])));
  });

  router.get('/identifier/:identifier', admin, async function showIdentifier(ctx) {
    ctx.body = identifierView(await registry.identifier(parse.identifierParam(ctx.params['identifier'])));
  });

  router.get('/identifier/:identifier/history', admin, async function showHistory(ctx) {
    const entries = await registry.history(parse.identifierParam(ctx.params['identifier']));
    ctx.body = entries.map(historyView);
  });

  router.delete('/identifier/:identifier', admin, async function forceRelease(ctx) {
    ctx.body = identifierView(await registry.forceRelease(parse.identifierParam(ctx.params['identifier'])));
  });

  router.post('/admin/reap', admin, body, async function reap(ctx) {
    const q = parse.reapQuery(ctx.query);
    const r = await registry.reap({ force: q.force === 'true' });
    ctx.body = { reclaimed: r.reclaimed, held: r.held, reason: r.reason };
  });

  router.get('/health', async function health(ctx) {
    try {
      ctx.body = healthView(await registry.health());
    } catch (e) {
      if (!isRegistryError(e) || e.code !== 'unavailable') throw e;
      ctx.status = 503;
      ctx.body = unhealthyView(registry.uptimeMs(), registry.reaperState(), e.message);
    }
  });

  extra?.(router);
  return router;
}
