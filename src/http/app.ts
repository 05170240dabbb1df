/** The Koa application. It never listens: main.ts (or a test through supertest) does. */
import Koa from 'koa';
import type { Context, Next } from 'koa';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { Metrics } from '../metrics.js';
import type { Registry } from '../registry.js';
import { createAuth } from './auth.js';
import type { AuthOptions } from './auth.js';
import { HttpError, errorHandler } from './errors.js';
import { createRouter } from './routes.js';
import type { ClaimPolicy } from './routes.js';
import { telemetry } from './telemetry.js';

export interface AppDeps {
  readonly registry: Registry;
  readonly auth: AuthOptions;
  /** Default: a fresh set, watching `registry`. */
  readonly metrics?: Metrics;
  /** Default: silent. */
  readonly log?: Logger;
  /** Default: keys optional, claims not attested. */
  readonly claims?: ClaimPolicy;
}

/** Unmatched paths become 404 not_found, and a known path with the wrong method 405 with Allow. */
async function routeMisses(ctx: Context, next: Next): Promise<void> {
  await next();
  if (ctx.body !== undefined && ctx.body !== null) return;
  if (ctx.status === 405 || ctx.status === 501) {
    throw new HttpError('method_not_allowed', `${ctx.method} is not allowed on ${ctx.path} (allowed: ${ctx.response.get('Allow')})`);
  }
  if (ctx.status === 404) throw new HttpError('not_found', `no route ${ctx.method} ${ctx.path}`);
}

export function createApp(deps: AppDeps): Koa {
  const registry = deps.registry;
  const metrics = deps.metrics ?? new Metrics().watch(() => registry.health());
  const log = deps.log ?? pino({ level: 'silent' });
  const app = new Koa();
  app.proxy = false;
  app.silent = true;
  const router = createRouter({ registry, metrics, ...(deps.claims ? { claims: deps.claims } : {}) }, createAuth(deps.auth));
  app.use(telemetry(metrics, log));
  app.use(errorHandler((err, ctx) => {
    log.error({ req_id: ctx.state['requestId'], err: err.cause ?? err, method: ctx.method, path: ctx.path }, 'request failed');
  }));
  // Only a streamed body (the full listing) can fail after its headers went out; everything
  // else is answered by errorHandler. A client that hangs up mid-listing is not a failure.
  app.on('error', (err: unknown, ctx: Context) => {
    if (typeof err === 'object' && err !== null && 'code' in err && err.code === 'ERR_STREAM_PREMATURE_CLOSE') return;
    log.error({ req_id: ctx.state['requestId'], err, method: ctx.method, path: ctx.path }, 'response cut short');
  });
  app.use(routeMisses);
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}
