/** The one place where failures become HTTP responses. */
import type { Context, Next } from 'koa';
import { RegistryError, isRegistryError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';

export const STATUS_OF: Readonly<Record<ErrorCode, number>> = {
  invalid_json: 400,
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  identifier_not_found: 404,
  client_not_found: 404,
  method_not_allowed: 405,
  not_owner: 409,
  stale_epoch: 409,
  holder_conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  pool_exhausted: 503,
  // Never an HTTP answer (the pool is synced from the file, not over HTTP); listed for completeness.
  pool_sync_refused: 409,
  unavailable: 503,
  internal: 500,
};

/** Seconds a client should wait before retrying an `unavailable`. */
export const RETRY_AFTER_SECONDS = 1;

/** Told of every 5xx, with its cause; the client never sees the cause. */
export type ErrorReporter = (err: RegistryError, ctx: Context) => void;

/** What an error thrown by Koa or its middleware (http-errors) means in our vocabulary. */
function fromHttpError(e: unknown): RegistryError | null {
  if (typeof e !== 'object' || e === null || !('status' in e) || typeof e.status !== 'number') return null;
  const status = e.status;
  const type = 'type' in e && typeof e.type === 'string' ? e.type : '';
  if (status === 413) return new RegistryError('payload_too_large', 'the request body is larger than 16 KiB');
  if (status === 415) return new RegistryError('unsupported_media_type', 'the request body must be JSON in UTF-8');
  if (status === 400 && (type === 'entity.parse.failed' || type === '')) {
    return new RegistryError('invalid_json', 'the request body is not valid JSON');
  }
  if (status >= 400 && status < 500) return new RegistryError('invalid_request', 'the request could not be read');
  return null;
}

export function errorBody(code: ErrorCode, message: string): { error: { code: ErrorCode; message: string } } {
  return { error: { code, message } };
}

/** Catches everything below it; a 5xx never carries a stack or SQL to the client. */
export function errorHandler(report: ErrorReporter) {
  return async function errorHandlerMiddleware(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
    } catch (e) {
      const err = isRegistryError(e) ? e : (fromHttpError(e) ?? new RegistryError('internal', 'internal error', { cause: e }));
      ctx.status = STATUS_OF[err.code];
      ctx.body = errorBody(err.code, err.message);
      ctx.state['errorCode'] = err.code;
      if (err.retryAfterSeconds !== null) ctx.set('Retry-After', String(err.retryAfterSeconds));
      else if (err.code === 'unavailable') ctx.set('Retry-After', String(RETRY_AFTER_SECONDS));
      if (err.code === 'unauthorized') ctx.set('WWW-Authenticate', 'Bearer');
      // pool_exhausted is an answer, not a failure: only a fault of ours or of storage is reported.
      if (err.code === 'internal' || err.code === 'unavailable') report(err, ctx);
    }
  };
}
