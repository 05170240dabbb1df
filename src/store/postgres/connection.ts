/**
 * The connections to PostgreSQL, and how every use of one goes, written once (`withClient`):
 * take a connection, run, give it back — dropped when it can no longer be trusted (lost, or a
 * failed ROLLBACK) — and, for a use that may run again, run again after a lost race (a
 * serialization failure, a deadlock, a unique index won by a concurrent grant), on a fresh
 * connection, after a short random pause. A lost connection is `unavailable`, never retried:
 * a COMMIT cut off on the way may or may not have committed.
 */
import pg from 'pg';
import type { CustomTypesConfig, Pool, PoolClient, PoolConfig } from 'pg';
import { RegistryError, isRegistryError } from '../../domain/errors.js';
import { DumpError } from '../dump.js';
import { isConnectionLoss, isRetryable, toRegistryError, unavailableReason } from './errors.js';
import { parseBigint } from './rows.js';

/** How the store reaches the server (a part of PostgresStoreOptions, see store.ts). */
export interface ConnectionOptions {
  /** postgres://user:password@host:port/database?… (libpq-style parameters as node-postgres reads them). */
  readonly url: string;
  /** Connections this instance may hold. */
  readonly poolSize?: number;
  /** How long a request waits for a connection before answering `unavailable`. */
  readonly connectTimeoutMs?: number;
  /** Longest a statement may run, and longest a row lock is waited for, before `unavailable`. */
  readonly statementTimeoutMs?: number;
  readonly lockTimeoutMs?: number;
  /** How long /health waits for the database. */
  readonly healthTimeoutMs?: number;
  readonly applicationName?: string;
  /** Failures of idle connections (the server went away between requests), for the logs. */
  readonly onConnectionError?: (reason: string) => void;
  /**
   * How the store waits: between the attempts of a use that lost a race, and while a starting
   * instance waits for the running ones (see time.ts). Default: real timers; tests pass their own.
   */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** Attempts of one use of a connection when it loses a race to another transaction. */
export const MAX_ATTEMPTS = 6;

/** The pause after attempt `attempt` lost a race: random up to 2^attempt ms, so the two racers do not collide again. */
export function backoffMs(attempt: number): number {
  return Math.random() * 2 ** attempt;
}

const realSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** How one use of a connection goes (see Connections.withClient). */
export interface UseOptions<T> {
  /**
   * Run `fn` again from the start, on a fresh connection, when it lost a race (errors.ts,
   * isRetryable), up to MAX_ATTEMPTS, pausing backoffMs between. A RegistryError is an answer
   * and a lost connection an unknown outcome: neither runs again.
   */
  readonly retry?: boolean;
  /** `fn` opens a transaction: one that failed with its connection sound is rolled back before the connection goes back. */
  readonly transaction?: boolean;
  /**
   * An answer, in place of the error, for a failure that left the connection sound (and rolled
   * back, for a transaction); undefined for none. Asked before the failure is retried.
   */
  readonly recover?: (e: unknown) => T | undefined;
  /** How a failure is answered; by default storeError. */
  readonly mapError?: (e: unknown) => unknown;
}

/** A failure as the store answers it: DumpError and RegistryError as they are, anything else a RegistryError (errors.ts). */
export function storeError(e: unknown): unknown {
  return e instanceof DumpError ? e : toRegistryError(e);
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

const INT8_OID = 20;

/** BIGINT columns as numbers (exact, or an error), everything else as node-postgres does. */
const TYPES: CustomTypesConfig = {
  getTypeParser: (oid, format) => (oid === INT8_OID && format !== 'binary' ? parseBigint : pg.types.getTypeParser(oid, format)),
};

function poolConfig(opts: ConnectionOptions, max: number, connectTimeoutMs: number, queryTimeoutMs: number): PoolConfig {
  return {
    connectionString: opts.url,
    max,
    connectionTimeoutMillis: connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    types: TYPES,
    application_name: opts.applicationName ?? 'asg-id-registry',
    statement_timeout: opts.statementTimeoutMs ?? 10_000,
    lock_timeout: opts.lockTimeoutMs ?? 5_000,
    // A transaction whose instance died or was cut off mid-way must not hold its row locks for
    // the TCP timeout: the server ends it.
    idle_in_transaction_session_timeout: 15_000,
    // Client side too, for a server that stopped answering without closing the connection.
    query_timeout: queryTimeoutMs,
  };
}

/** The pool of the requests, the health check's own, and how a connection is used. */
export class Connections {
  /** Set once closed: every use is then `unavailable`. */
  ended = false;
  readonly sleep: (ms: number) => Promise<void>;

  private constructor(readonly pool: Pool, readonly healthPool: Pool, sleep: ((ms: number) => Promise<void>) | undefined) {
    this.sleep = sleep ?? realSleep;
  }

  static open(opts: ConnectionOptions): Connections {
    const connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
    const healthTimeoutMs = opts.healthTimeoutMs ?? 2_000;
    const pool = new pg.Pool(poolConfig(opts, opts.poolSize ?? 10, connectTimeoutMs, (opts.statementTimeoutMs ?? 10_000) + 5_000));
    // /health asks through a connection of its own, so a busy pool does not look like a dead database.
    const healthPool = new pg.Pool(poolConfig(opts, 1, healthTimeoutMs, healthTimeoutMs));
    const onIdleError = (err: Error): void => opts.onConnectionError?.(unavailableReason(err) ?? 'a database connection failed');
    pool.on('error', onIdleError);
    healthPool.on('error', onIdleError);
    // An error on a connection while a request holds it (the server closed it between two
    // statements) rejects that request's next statement; without a listener it would crash us.
    const quiet = (client: PoolClient): void => { client.on('error', () => undefined); };
    pool.on('connect', quiet);
    healthPool.on('connect', quiet);
    return new Connections(pool, healthPool, opts.sleep);
  }

  /**
   * Runs `fn` on a connection of its own and gives the connection back, dropped when `fn` lost
   * it (or its ROLLBACK failed); a failure is answered as `opts` says (see UseOptions).
   */
  async withClient<T>(fn: (client: PoolClient) => Promise<T>, opts: UseOptions<T> = {}): Promise<T> {
    const mapError = opts.mapError ?? storeError;
    for (let attempt = 1; ; attempt++) {
      let client: PoolClient;
      try {
        if (this.ended) throw new RegistryError('unavailable', 'the store is closed');
        client = await this.pool.connect();
      } catch (e) {
        throw mapError(e);
      }
      let broken: Error | undefined;
      let failure: unknown;
      try {
        return await fn(client);
      } catch (e) {
        failure = e;
        if (isConnectionLoss(e)) broken = asError(e);
        else if (opts.transaction) await client.query('ROLLBACK').catch((rollbackError: unknown) => { broken = asError(rollbackError); });
      } finally {
        client.release(broken);
      }
      if (broken === undefined) {
        const answer = opts.recover?.(failure);
        if (answer !== undefined) return answer;
        if (opts.retry && !isRegistryError(failure) && isRetryable(failure) && attempt < MAX_ATTEMPTS) {
          await this.sleep(backoffMs(attempt));
          continue;
        }
      }
      throw mapError(failure);
    }
  }

  async end(): Promise<void> {
    this.ended = true;
    await Promise.all([this.pool.end(), this.healthPool.end()]);
  }
}
