/** Every failure the registry can report. The HTTP layer alone maps these to statuses. */
export type ErrorCode =
  | 'invalid_json'
  | 'invalid_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'identifier_not_found'
  | 'client_not_found'
  | 'method_not_allowed'
  | 'not_owner'
  | 'stale_epoch'
  | 'holder_conflict'
  | 'payload_too_large'
  | 'unsupported_media_type'
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
