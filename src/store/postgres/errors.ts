/**
 * Turns PostgreSQL and connection failures into registry errors that never carry SQL or a
 * stack to a client. A server that is down, restarting, failing over or out of connections is
 * `unavailable` (503 with Retry-After: the VM scripts try again or move to another instance);
 * only what must be a bug is `internal`.
 */
import { RegistryError, isRegistryError } from '../../domain/errors.js';

/** SQLSTATEs after which the whole transaction may simply run again (it was rolled back). */
const RETRYABLE = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '23505', // unique_violation: a concurrent grant to the same client won the partial unique index
]);

/** SQLSTATE classes and codes that mean "the database cannot serve right now", with what to say. */
const UNAVAILABLE_CODES: ReadonlyArray<[prefix: string, message: string]> = [
  ['08', 'the connection to the database failed'],
  ['53', 'the database is out of resources (connections, memory or disk)'],
  ['57P01', 'the database is shutting down or restarting'],
  ['57P02', 'the database crashed and is restarting'],
  ['57P03', 'the database is starting up and not accepting connections yet'],
  ['57P04', 'the database was dropped'],
  ['57P05', 'the database closed an idle connection'],
  ['57014', 'the database did not answer in time'],
  ['55P03', 'a row stayed locked by another transaction for too long'],
  ['25006', 'the database is read-only (a standby, or a failover in progress)'],
  ['25P03', 'the database closed a transaction left idle'],
  ['40001', 'the database was too busy to serialize this change; try again'],
  ['40P01', 'the database was too busy to serialize this change; try again'],
  // Retried until the attempts ran out: a concurrent change to the same client kept winning.
  ['23505', 'a concurrent change to the same client kept winning; try again'],
  ['58', 'the database server had a system error'],
  ['XX000', 'the database server had an internal error'],
];

/** Node socket errors on the way to the server. */
const SOCKET_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'ECONNABORTED', 'EHOSTDOWN', 'ENETDOWN',
]);

/** node-postgres' own messages for a connection that went away or never came. */
const DRIVER_MESSAGES: ReadonlyArray<[pattern: RegExp, message: string]> = [
  [/timeout exceeded when trying to connect|connection timeout/i, 'the database did not accept a connection in time'],
  [/Connection terminated|not queryable|Client was closed|Cannot use a pool after calling end/i, 'the connection to the database was lost'],
  [/Query read timeout/i, 'the database did not answer in time'],
  [/the database system is (starting up|shutting down|in recovery mode)/i, 'the database is restarting'],
];

function codeOf(e: unknown): string | null {
  if (typeof e !== 'object' || e === null || !('code' in e)) return null;
  return typeof e.code === 'string' ? e.code : null;
}

/**
 * SQLSTATEs after which the batched grant statement (statements.ts, GRANT_NEXT_SQL) leaves its whole
 * batch undecided: it failed, so it changed nothing, and each client goes to the full use case.
 */
const GRANT_UNDECIDED = new Set([
  '23505', // a grant to one of its clients committed meanwhile elsewhere
  '40P01', // deadlock_detected
  '55P03', // lock_not_available: the statement's own short lock_timeout (a grant to one of its clients still in flight elsewhere)
]);

/** Whether a failed grant statement leaves its batch to the full use case rather than an error. */
export function isGrantUndecided(e: unknown): boolean {
  const code = codeOf(e);
  return code !== null && GRANT_UNDECIDED.has(code);
}

/** Whether a failed transaction can run again from the start. */
export function isRetryable(e: unknown): boolean {
  const code = codeOf(e);
  return code !== null && RETRYABLE.has(code);
}

/** Whether the error means the connection it came from cannot be trusted any more. */
export function isConnectionLoss(e: unknown): boolean {
  if (isRegistryError(e)) return false;
  const code = codeOf(e);
  // 25006: connected to a server that is now a standby (a failover): drop the connection, the
  // next one goes wherever the writer endpoint points now.
  if (code !== null && (SOCKET_CODES.has(code) || code.startsWith('08') || code.startsWith('57P') || code === '25006')) return true;
  const message = e instanceof Error ? e.message : '';
  return DRIVER_MESSAGES.some(([pattern]) => pattern.test(message));
}

/** Why the database cannot serve, in words fit for a client, or null when the error is something else. */
export function unavailableReason(e: unknown): string | null {
  const code = codeOf(e);
  if (code !== null) {
    if (SOCKET_CODES.has(code)) return 'the database is unreachable';
    for (const [prefix, message] of UNAVAILABLE_CODES) if (code.startsWith(prefix)) return message;
  }
  // AggregateError (several addresses tried) carries the socket errors inside.
  if (e instanceof AggregateError) {
    for (const inner of e.errors) {
      const reason = unavailableReason(inner);
      if (reason !== null) return reason;
    }
  }
  const message = e instanceof Error ? e.message : '';
  for (const [pattern, said] of DRIVER_MESSAGES) if (pattern.test(message)) return said;
  return null;
}

export function toRegistryError(e: unknown): RegistryError {
  if (isRegistryError(e)) return e;
  const reason = unavailableReason(e);
  if (reason !== null) return new RegistryError('unavailable', reason, { cause: e });
  return new RegistryError('internal', 'internal error', { cause: e });
}
