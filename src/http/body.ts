/** JSON request bodies: 415 for anything but JSON, 413 past 16 KiB, 400 invalid_json for bad JSON. */
import bodyParser from 'koa-bodyparser';
import type { Context, Next } from 'koa';
import { RegistryError } from '../domain/errors.js';

export const BODY_LIMIT_BYTES = 16 * 1024;

function hasBody(ctx: Context): boolean {
  const h = ctx.req.headers;
  return h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
}

export function jsonBody() {
  const parser = bodyParser({
    enableTypes: ['json'],
    jsonLimit: `${BODY_LIMIT_BYTES}b`,
    strict: true,
    onerror(err: Error) {
      throw err; // mapped by the error handler (entity.parse.failed, entity.too.large, ...)
    },
  });
  return async function jsonBodyMiddleware(ctx: Context, next: Next): Promise<void> {
    if (hasBody(ctx) && !ctx.is('application/json', '+json')) {
      throw new RegistryError('unsupported_media_type', 'the request body must be JSON (Content-Type: application/json)');
    }
    await parser(ctx, next);
  };
}
