/**
 * One log line and one latency observation per request, with a request id (the client's
 * X-Request-Id when well-formed, else a new one) echoed back. Fields are chosen one by one:
 * headers are never logged, so a bearer token never reaches a log.
 */
import { randomUUID } from 'node:crypto';
import { Stream } from 'node:stream';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function routeOf(ctx: Context): string {
  const matched: unknown = ctx['_matchedRoute'];
  return typeof matched === 'string' ? matched : 'unmatched';
}

export function telemetry(metrics: Metrics, log: Logger) {
  return async function telemetryMiddleware(ctx: Context, next: Next): Promise<void> {
    const started = process.hrtime.bigint();
    const offered = ctx.get('x-request-id');
    const id = REQUEST_ID.test(offered) ? offered : randomUUID();
    ctx.state['requestId'] = id;
    ctx.set('X-Request-Id', id);
    try {
      await next();
    } finally {
      // A streamed body (the full listing) is still being written: log it when it is done.
      if (ctx.body instanceof Stream && !ctx.res.writableFinished) ctx.res.once('close', () => done(!ctx.res.writableFinished));
      else done(false);
    }

    function done(cutShort: boolean): void {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const route = routeOf(ctx);
      const code: unknown = ctx.state['errorCode'];
      const errorCode = typeof code === 'string' ? code : null;
      metrics.onRequest(ctx.method, route, ctx.status, seconds, errorCode);
      const clientId: unknown = ctx.state['clientId'];
      const line = {
        req_id: id,
        method: ctx.method,
        route,
        path: ctx.path,
        status: ctx.status,
        duration_ms: Math.round(seconds * 1e6) / 1e3,
        ...(typeof clientId === 'string' ? { client_id: clientId } : {}),
        ...(errorCode !== null ? { error_code: errorCode } : {}),
        ...(cutShort ? { cut_short: true } : {}),
      };
      if (ctx.status >= 500) log.error(line, 'request');
      else log.info(line, 'request');
    }
  };
}
