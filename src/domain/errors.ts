/**
 * Every failure the registry itself can report. The HTTP layer alone maps these to statuses
 * (src/http/errors.ts), and adds the failures only a transport has (a body that is not JSON,
 * a path with no route).
 */
export type ErrorCode =
  | 'invalid_request'
  | 'unauthorized'
  | 'forbidden'
  | 'identifier_not_found'
  | 'client_not_found'
  | 'not_owner'
  | 'stale_epoch'
  | 'holder_conflict'
  | 'pool_exhausted'
  | 'pool_sync_refused'
  | 'unavailable'
  | 'internal';

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  readonly code: ErrorCode;
  /** Seconds the client should wait before asking again (a Retry-After header), when the error says. */
  readonly retryAfterSeconds: number | null;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryAfterSeconds?: number }) {
    super(message, options);
    this.code = code;
    this.retryAfterSeconds = options?.retryAfterSeconds ?? null;
  }
}

export function isRegistryError(e: unknown): e is RegistryError {
  return e instanceof RegistryError;
}

/** What a thrown value says, for a message or a log line: an Error's message, anything else as a string. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
