/**
 * The lanes of a PostgreSQL store: what waits for a connection, and how it is batched. A free
 * lane (a connection of its own) takes the work that waited longest: up to MAX_BATCH use cases
 * in one transaction and one commit (group commit, as SQLite's engine does with the writes of a
 * tick), or one statement for a batch of renewals, of releases or of allocations (see held.ts),
 * so under load each round trip and each fsync serves many.
 */
import { RegistryError } from '../../domain/errors.js';
import type { IdentifierRecord } from '../../domain/types.js';
import { NO_CLAIM } from '../types.js';
import type { GrantAnswer, GrantClaim, Tx } from '../types.js';
import { runWrites, statementTogether } from './batches.js';
import type { BatchContext, QueuedWrite, Waiter } from './batches.js';
import { isGrantUndecided } from './errors.js';
import { grantNextAlone, heldAlone } from './held.js';
import type { HeldAsk, HeldKind } from './held.js';

/**
 * Writes one transaction takes at most: enough to spread a commit over many, few enough that
 * the rows it locks are not held long (no savepoints, so no subtransactions either).
 */
const MAX_BATCH = 32;
/** Renewals (or releases) one statement takes at most: each is a row lock held only for that statement. */
const MAX_HELD_BATCH = 128;
/**
 * Lanes the statements of each kind (renewals, releases) may take at once. One: the asks that
 * arrive while it runs all go out in the next statement, so under load each statement carries
 * many (measured: a third of PostgreSQL's CPU per renewal, against one lane per renewal), while
 * the other lanes stay free for allocations and the rest.
 */
const MAX_HELD_LANES = 1;
const HELD_KINDS: readonly HeldKind[] = ['renew', 'release'];
/** Allocations one statement takes at most (see PostgresStore.grantNext). */
const MAX_GRANT_BATCH = 128;
/**
 * Lanes the grant statements may take at once. One, as renewals: the allocations that arrive
 * while one statement waits for its fsync go out together in the next.
 */
const MAX_GRANT_LANES = 1;

interface QueuedAsk {
  readonly seq: number;
  readonly ask: HeldAsk;
  readonly resolve: (v: IdentifierRecord | null) => void;
  readonly reject: (e: unknown) => void;
}

interface QueuedGrant {
  readonly seq: number;
  readonly clientId: string;
  readonly claim: GrantClaim;
  readonly fenceCooldownMs: number;
  readonly resolve: (v: GrantAnswer | null) => void;
  readonly reject: (e: unknown) => void;
}

export class Lanes {
  private closed = false;
  private drained: (() => void) | null = null;
  private queue: QueuedWrite[] = [];
  private held: Record<HeldKind, QueuedAsk[]> = { renew: [], release: [] };
  private seq = 0;
  private lanes = 0;
  /** Statements sent of each kind, and the asks they carried (tests check that batches form). */
  readonly heldStats: Record<HeldKind, { statements: number; asks: number }> = {
    renew: { statements: 0, asks: 0 },
    release: { statements: 0, asks: 0 },
  };
  /** Lanes running a statement of each kind. */
  private heldLanes: Record<HeldKind, number> = { renew: 0, release: 0 };
  private grants: QueuedGrant[] = [];
  private grantLanes = 0;
  /** Grant statements sent, the allocations they carried, and those they granted (the rest ran the full use case). */
  readonly grantStats = { statements: 0, asks: 0, granted: 0 };
  private pumpScheduled = false;
  private readonly maxLanes: number;

  constructor(
    private readonly ctx: BatchContext,
    poolSize: number,
    /** How a free lane starts its next batch (see PostgresStoreOptions.defer); null: at once. */
    private readonly defer: ((run: () => void) => void) | null,
  ) {
    // Lanes leave connections for reads, so a queue of writes never starves /identifier or /health.
    this.maxLanes = Math.max(1, Math.ceil(poolSize / 2));
  }

  write<T>(fn: (tx: Tx) => Promise<T>, durable: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(closedError());
      this.queue.push({ seq: this.seq++, fn, durable, resolve: (v) => resolve(v as T), reject });
      this.pump();
    });
  }

  ask(kind: HeldKind, ask: HeldAsk): Promise<IdentifierRecord | null> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(closedError());
      this.held[kind].push({ seq: this.seq++, ask, resolve, reject });
      this.pump();
    });
  }

  grant(clientId: string, fenceCooldownMs: number, claim: GrantClaim): Promise<GrantAnswer | null> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(closedError());
      this.grants.push({ seq: this.seq++, clientId, fenceCooldownMs, claim, resolve, reject });
      this.pump();
    });
  }

  /** Refuses new work and resolves once the queued work (and a step being recorded) is done. */
  async close(): Promise<void> {
    this.closed = true;
    if (!this.idle()) await new Promise<void>((resolve) => { this.drained = resolve; });
  }

  /** Tells a close waiting for the work to end that it may have (see StoreClock's recordings). */
  settled(): void {
    if (this.idle()) this.drained?.();
  }

  private idle(): boolean {
    return this.lanes === 0 && !this.ctx.clock.recording && this.queue.length === 0 && this.held.renew.length === 0 &&
      this.held.release.length === 0 && this.grants.length === 0;
  }

  private pump(): void {
    if (!this.defer) return this.startWork();
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    this.defer(() => {
      this.pumpScheduled = false;
      this.startWork();
    });
  }

  /** Free lanes take the work that waited longest: a batch of writes, of renewals or of releases. */
  private startWork(): void {
    while (this.lanes < this.maxLanes) {
      const work = this.nextWork();
      if (!work) return;
      this.lanes++;
      void work().finally(() => {
        this.lanes--;
        this.pump();
        this.settled();
      });
    }
  }

  private nextWork(): (() => Promise<void>) | null {
    let oldest: { seq: number; take: () => () => Promise<void> } | null = null;
    const write = this.queue[0];
    if (write) {
      oldest = { seq: write.seq, take: () => { const batch = this.queue.splice(0, MAX_BATCH); return () => runWrites(this.ctx, batch); } };
    }
    for (const kind of HELD_KINDS) {
      const head = this.heldLanes[kind] < MAX_HELD_LANES ? this.held[kind][0] : undefined;
      if (head && (!oldest || head.seq < oldest.seq)) {
        oldest = { seq: head.seq, take: () => { const batch = this.held[kind].splice(0, MAX_HELD_BATCH); return () => this.runHeld(kind, batch); } };
      }
    }
    const grant = this.grantLanes < MAX_GRANT_LANES ? this.grants[0] : undefined;
    if (grant && (!oldest || grant.seq < oldest.seq)) {
      oldest = { seq: grant.seq, take: () => { const batch = this.grants.splice(0, MAX_GRANT_BATCH); return () => this.runGrants(batch); } };
    }
    return oldest ? oldest.take() : null;
  }

  private async runGrants(batch: readonly QueuedGrant[]): Promise<void> {
    this.grantLanes++;
    try {
      // One row per client: the same client twice in a batch gets the one answer (same client,
      // same identifier and epoch), the grant for its first ask only (the others are answered
      // as the full use case answers a held lease). In arrival order (a Map keeps its keys in
      // insertion order): the statement pairs the k-th client with the k-th identifier free
      // the longest. No order is needed against deadlocks: the statement waits for a lock only
      // at the unique index on client_id, for a grant to one of its clients in flight elsewhere,
      // and only briefly (its own lock_timeout); that, a deadlock, or a unique violation leaves
      // the whole batch to the full use case (GRANT_NEXT_SQL changed nothing).
      // Only asks with the key of the client's first ask share its answer: another key (or none
      // against a key) is another claimant presenting the same client id, never told the same
      // identifier; it goes to the full use case, which answers holder_conflict.
      const byClient = new Map<string, QueuedGrant[]>();
      for (const g of batch) {
        const list = byClient.get(g.clientId);
        if (!list) byClient.set(g.clientId, [g]);
        else if (list[0]?.claim.keyHash === g.claim.keyHash) list.push(g);
        else g.resolve(null);
      }
      const clients = [...byClient.keys()];
      // A client asking twice announces the longer window (the same registry asks with one);
      // its first ask's claim (the others share its key) is the one granted.
      const asks = clients.map((clientId) => ({
        clientId, fenceCooldownMs: Math.max(...(byClient.get(clientId) ?? []).map((g) => g.fenceCooldownMs)),
        claim: byClient.get(clientId)?.[0]?.claim ?? NO_CLAIM,
      }));
      const waiters: Waiter[] = clients.map((id) => {
        const list = byClient.get(id) ?? [];
        return {
          resolve: (rec) => { list.forEach((g, i) => g.resolve(rec ? { rec, granted: i === 0 } : null)); },
          reject: (e) => { for (const g of list) g.reject(e); },
        };
      });
      this.grantStats.statements++;
      this.grantStats.asks += clients.length;
      await statementTogether(this.ctx, waiters, (client, time) => grantNextAlone(client, asks, time),
        (n) => { this.grantStats.granted += n; }, isGrantUndecided);
    } finally {
      this.grantLanes--;
    }
  }

  /** One statement renews (or releases) the batch (see held.ts); a lost race runs it again, anything else answers each ask. */
  private async runHeld(kind: HeldKind, batch: readonly QueuedAsk[]): Promise<void> {
    this.heldLanes[kind]++;
    try {
      // Every batch locks its rows in name order, so two batches never deadlock over them.
      const sorted = [...batch].sort((a, b) => (a.ask.name < b.ask.name ? -1 : a.ask.name > b.ask.name ? 1 : 0));
      this.heldStats[kind].statements++;
      this.heldStats[kind].asks += sorted.length;
      await statementTogether(this.ctx, sorted, (client, time) => heldAlone(client, kind, sorted.map((r) => r.ask), time));
    } finally {
      this.heldLanes[kind]--;
    }
  }
}

function closedError(): RegistryError {
  return new RegistryError('unavailable', 'the store is closed');
}
