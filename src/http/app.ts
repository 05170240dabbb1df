/** The Koa application. It never listens: main.ts (or a test through supertest) does. */
import Koa from 'koa';
import type { Context, Next } from 'koa';
import type Router from '@koa/router';
import { RegistryError } from '../domain/errors.js';
import type { Registry } from '../registry.js';
import { createAuth } from './auth.js';
import type { AuthOptions } from './auth.js';
import { errorHandler } from './errors.js';
import type { ErrorReporter } from './errors.js';
import { createRouter } from './routes.js';

export interface AppDeps {
  readonly registry: Registry;
  readonly auth: AuthOptions;
  /** Told of every 5xx, with the cause; never shown to the client. */
  readonly reportError?: ErrorReporter;
  /** Middleware that sees every request and its final status (logging, metrics). */
  readonly observe?: Koa.Middleware;
  readonly extraRoutes?: (router: Router) => void;
}

/** Unmatched paths become 404 not_found, and a known path with the wrong method 405 with Allow. */
async function routeMisses(ctx: Context, next: Next): Promise<void> {
  await next();
  if (ctx.body !== undefined && ctx.body !== null) return;
  if (ctx.status === 405 || ctx.status === 501) {
    throw new RegistryError('method_not_allowed', `${ctx.method} is not allowed on ${ctx.path} (allowed: ${ctx.response.get('Allow')})`);
  }
  if (ctx.status === 404) throw new RegistryError('not_found', `no route ${ctx.method} ${ctx.path}`);
}

export function createApp(deps: AppDeps): Koa {
  const app = new Koa();
  app.proxy = false;
  app.silent = true;
  const router = createRouter({
    registry: deps.registry,
    auth: createAuth(deps.auth),
    ...(deps.extraRoutes ? { extra: deps.extraRoutes } : {}),
  });
  if (deps.observe) app.use(deps.observe);
  app.use(errorHandler(deps.reportError ?? (() => {})));
  app.use(routeMisses);
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}
