/**
 * The one place where failures become HTTP answers: the status, the JSON body and the headers
 * of every error the app, /health and the server's own parser errors send.
 */
import type { Context, Next } from 'koa';
import { RegistryError, isRegistryError } from '../domain/errors.js';
import type { ErrorCode } from '../domain/errors.js';

/** Failures only HTTP has: a body that is not JSON, too large or not JSON at all; a path or method with no route. */
export type TransportCode = 'invalid_json' | 'payload_too_large' | 'unsupported_media_type' | 'not_found' | 'method_not_allowed';

/** Every `error.code` an answer can carry (docs/api.md). */
export type WireCode = ErrorCode | TransportCode;

/** A request HTTP itself refuses, before the registry sees it. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(readonly code: TransportCode, message: string) {
    super(message);
  }
}

export const STATUS_OF: Readonly<Record<WireCode, number>> = {
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
function fromHttpError(e: unknown): RegistryError | HttpError | null {
  if (typeof e !== 'object' || e === null || !('status' in e) || typeof e.status !== 'number') return null;
  const status = e.status;
  const type = 'type' in e && typeof e.type === 'string' ? e.type : '';
  if (status === 413) return new HttpError('payload_too_large', 'the request body is larger than 16 KiB');
  if (status === 415) return new HttpError('unsupported_media_type', 'the request body must be JSON in UTF-8');
  if (status === 400 && (type === 'entity.parse.failed' || type === '')) {
    return new HttpError('invalid_json', 'the request body is not valid JSON');
  }
  if (status >= 400 && status < 500) return new RegistryError('invalid_request', 'the request could not be read');
  return null;
}

export function errorBody(code: WireCode, message: string): { error: { code: WireCode; message: string } } {
  return { error: { code, message } };
}

export interface ErrorAnswer {
  readonly status: number;
  readonly code: WireCode;
  readonly body: ReturnType<typeof errorBody>;
  readonly headers: Readonly<Record<string, string>>;
  /** A fault of ours or of storage (internal, unavailable), to report with its cause; null for a refusal. */
  readonly fault: RegistryError | null;
}

/** The answer to any failure; one the vocabulary does not know is `internal`, its cause kept for the log only. */
export function errorAnswer(e: unknown): ErrorAnswer {
  const err = isRegistryError(e) || e instanceof HttpError ? e : (fromHttpError(e) ?? new RegistryError('internal', 'internal error', { cause: e }));
  const headers: Record<string, string> = {};
  if (isRegistryError(err) && err.retryAfterSeconds !== null) headers['Retry-After'] = String(err.retryAfterSeconds);
  else if (err.code === 'unavailable') headers['Retry-After'] = String(RETRY_AFTER_SECONDS);
  if (err.code === 'unauthorized') headers['WWW-Authenticate'] = 'Bearer';
  // pool_exhausted is an answer, not a failure: only a fault of ours or of storage is reported.
  const fault = isRegistryError(err) && (err.code === 'internal' || err.code === 'unavailable') ? err : null;
  return { status: STATUS_OF[err.code], code: err.code, body: errorBody(err.code, err.message), headers, fault };
}

/** Catches everything below it; a 5xx never carries a stack or SQL to the client. */
export function errorHandler(report: ErrorReporter) {
  return async function errorHandlerMiddleware(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
    } catch (e) {
      const answer = errorAnswer(e);
      ctx.status = answer.status;
      ctx.body = answer.body;
      ctx.state['errorCode'] = answer.code;
      for (const [name, value] of Object.entries(answer.headers)) ctx.set(name, value);
      if (answer.fault) report(answer.fault, ctx);
    }
  };
}
