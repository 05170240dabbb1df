/**
 * How a lane runs what it took (see lanes.ts): a batch of use cases in one transaction (group
 * commit), or one statement of its own for a batch of renewals, releases or grants. Every
 * connection is used through Connections.withClient: a lost race runs again, a lost connection
 * is `unavailable`.
 */
import type { PoolClient } from 'pg';
import { isRegistryError } from '../../domain/errors.js';
import type { IdentifierRecord } from '../../domain/types.js';
import type { Tx } from '../types.js';
import type { Connections } from './connection.js';
import type { HeldRow, StatementTime } from './held.js';
import type { StoreClock } from './time.js';
import { isConnectionLoss } from './errors.js';
import { PgTx } from './tx.js';

/** A use case waiting for its transaction. */
export interface QueuedWrite {
  /** Arrival order across writes, renewals, releases and grants: a free lane takes whichever waited longest. */
  readonly seq: number;
  readonly fn: (tx: Tx) => Promise<unknown>;
  readonly durable: boolean;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

/** Someone waiting for the answer of one row of a statement. */
export interface Waiter {
  readonly resolve: (v: IdentifierRecord | null) => void;
  readonly reject: (e: unknown) => void;
}

type Outcome = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: unknown };

/** A store's connections and registry time, which every batch runs on. */
export interface BatchContext {
  readonly db: Connections;
  readonly clock: StoreClock;
}

/**
 * Runs one statement of its own (autocommit) for a batch and answers each waiter with the row
 * at its index, or null; an error that leaves it `undecided` answers every waiter null (the
 * statement failed, so changed nothing: each goes to the full use case), a lost race runs it
 * again, anything else rejects every waiter.
 */
export async function statementTogether(
  { db, clock }: BatchContext,
  waiters: readonly Waiter[],
  send: (client: PoolClient, time: StatementTime) => Promise<HeldRow[]>,
  onDone?: (rows: number) => void,
  undecided?: (e: unknown) => boolean,
): Promise<void> {
  let answers: Array<IdentifierRecord | null> | null;
  try {
    answers = await db.withClient(async (client) => {
      const sentAt = clock.monotonic();
      const done = await send(client, clock.statementTime(sentAt));
      const receivedAt = clock.monotonic();
      const found: Array<IdentifierRecord | null> = waiters.map(() => null);
      // Every row carries the statement's one reading of the server's clock.
      const reading = done[0]?.reading;
      if (reading) clock.observe(reading, sentAt, receivedAt);
      for (const r of done) {
        found[r.index] = r.rec;
        clock.saw(r.now);
      }
      onDone?.(done.length);
      return found;
    }, { retry: true, recover: (e) => (undecided?.(e) ? null : undefined) });
  } catch (e) {
    // Cut off on the way, the statement may or may not have committed: `unavailable`, never a 200.
    for (const item of waiters) item.reject(e);
    return;
  }
  waiters.forEach((item, i) => item.resolve(answers?.[i] ?? null));
}

/** Runs a batch of use cases: together in one transaction when it can, else each alone. */
export async function runWrites(ctx: BatchContext, batch: readonly QueuedWrite[]): Promise<void> {
  const only = batch[0];
  if (batch.length === 1 && only) {
    await runOne(ctx, only.fn, only.durable).then(only.resolve, only.reject);
    return;
  }
  let outcomes: Outcome[] | null;
  try {
    outcomes = await tryTogether(ctx, batch);
  } catch (e) {
    // The database is gone: the batch was not committed (or its COMMIT's fate is unknown).
    for (const item of batch) item.reject(e);
    return;
  }
  if (outcomes === null) {
    // Something in the batch needs a transaction of its own (a race lost, a statement
    // refused, a refusal after writing): each runs alone, with its own retries, in order
    // and on this lane's one connection at a time.
    for (const item of batch) await runOne(ctx, item.fn, item.durable).then(item.resolve, item.reject);
    return;
  }
  outcomes.forEach((o, i) => {
    const item = batch[i];
    if (!item) return;
    if (o.ok) item.resolve(o.value);
    else item.reject(o.error);
  });
}

/**
 * Runs the batch in one transaction; its outcomes once committed, or null (rolled back) when
 * an item failed in a way only a transaction of its own can answer. Throws on connection loss.
 */
function tryTogether({ db, clock }: BatchContext, batch: readonly QueuedWrite[]): Promise<Outcome[] | null> {
  return db.withClient(async (client) => {
    const { now, host } = await clock.begin(client, batch.some((b) => b.durable));
    const outcomes: Outcome[] = [];
    for (const item of batch) {
      const tx = new PgTx(client, now, host);
      try {
        outcomes.push({ ok: true, value: await item.fn(tx) });
      } catch (e) {
        if (isConnectionLoss(e)) throw e;
        // A refusal before any write is that item's answer; anything else undoes the batch.
        if (!isRegistryError(e) || tx.wrote) {
          await client.query('ROLLBACK');
          return null;
        }
        outcomes.push({ ok: false, error: e });
      }
    }
    const done = await client.query('COMMIT');
    if (done.command !== 'COMMIT') return null;
    return outcomes;
  }, { transaction: true, recover: () => null });
}

/** One use case in a transaction of its own, run again when it loses a race. */
function runOne<T>({ db, clock }: BatchContext, fn: (tx: Tx) => Promise<T>, durable: boolean): Promise<T> {
  // A COMMIT cut off on the way has an unknown outcome: never run again, answered `unavailable`
  // (an allocate retried by the VM gets the same answer if it did commit).
  return db.withClient(async (client) => {
    const { now, host } = await clock.begin(client, durable);
    const value = await fn(new PgTx(client, now, host));
    const done = await client.query('COMMIT');
    // A transaction that failed inside `fn` (an error swallowed there) commits as a ROLLBACK.
    if (done.command !== 'COMMIT') throw new Error(`the transaction ended in ${done.command}, not COMMIT`);
    return value;
  }, { retry: true, transaction: true });
}
