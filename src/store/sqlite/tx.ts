/**
 * A use case's view of the database: SqliteReader for reads, SqliteTx inside the write
 * transaction the commit queue (commit-queue.ts) holds. Every method runs its statements
 * synchronously and resolves at once; `now` is the batch's registry time.
 */
import { recordOf } from '../../domain/lease.js';
import type { HistoryEntry, HistoryEvent, IdentifierRecord, RecordTuple } from '../../domain/types.js';
import { asRow, instanceColumn, recordTuples } from '../columns.js';
import { NO_CLAIM, NO_PROOF } from '../types.js';
import type { ListJson, ViewRules } from '../listing.js';
import type { FreeEntry, GrantClaim, HeldProof, HistoryRows, InstanceBeat, ListQuery, PoolRow, RawCounts, Reader, Tx } from '../types.js';
import { intColumn, scalar, toHistoryEntry, toHistoryRows, toRecord } from './rows.js';
import type { Statements } from './statements.js';

/** An instance that has not beaten for this long (crashed long ago) is dropped from the table. */
const INSTANCE_FORGOTTEN_MS = 24 * 3600_000;
/** Identifiers a bulk insert sends per statement. */
const INSERT_CHUNK = 10_000;

function toBeat(raw: unknown): InstanceBeat | null {
  if (raw === undefined) return null;
  const r = asRow(raw);
  const seen = r['fleet_seen_at'];
  return {
    id: String(r['id']),
    startedAt: intColumn(r, 'started_at'),
    at: intColumn(r, 'at'),
    fleetSeenAt: typeof seen === 'number' && seen > 0 ? seen : null,
  };
}

/** Reads on the connection; every method runs synchronously and resolves at once. */
export class SqliteReader implements Reader {
  constructor(protected readonly s: Statements, readonly now: number) {}

  async byName(name: string): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.byName.get(name);
    return r === undefined ? null : toRecord(r);
  }

  async byClient(clientId: string): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.byClient.get(clientId);
    return r === undefined ? null : toRecord(r);
  }

  async history(rowId: number): Promise<HistoryEntry[]> {
    return this.s.history.all(rowId).map(toHistoryEntry);
  }

  async historyPage(rowId: number, after: number | null, limit: number): Promise<HistoryRows> {
    // One row past the page tells whether another follows.
    return toHistoryRows(this.s.historyPage.all({ rowId, after: after ?? 0, limit: limit + 1 }), limit);
  }

  async list(q: ListQuery): Promise<IdentifierRecord[]> {
    return (await this.listRows(q)).map(recordOf);
  }

  async listRows(q: ListQuery): Promise<RecordTuple[]> {
    const stmt = this.s.lists.get(`${q.status ?? 'all'}:${q.after ? 'after' : 'first'}`);
    if (!stmt) throw new Error('no list statement');
    const params: Record<string, number> = { now: q.now, limit: q.limit ?? -1 };
    if (q.after) {
      params['afterOrder'] = q.after.poolOrder;
      params['afterId'] = q.after.rowId;
    }
    return recordTuples(stmt.all(params));
  }

  /** The listing capability's pageJson (store.ts) on this reader's connection: see listing-json.ts. */
  listJson(q: ListQuery, view: ViewRules): ListJson | null {
    return this.s.listingJson.write(q, view);
  }

  async counts(now: number): Promise<RawCounts> {
    const r = asRow(this.s.counts.get({ now }));
    return {
      total: intColumn(r, 'total'),
      leased: intColumn(r, 'leased'),
      cooling: intColumn(r, 'cooling'),
      retired: intColumn(r, 'retired'),
    };
  }

  async oldestLastSeen(): Promise<number | null> {
    return scalar(this.s.oldestLastSeen.get());
  }

  async meta(key: string): Promise<string | null> {
    const r: unknown = this.s.metaGet.get(key);
    if (r === undefined) return null;
    const v = asRow(r)['value'];
    return typeof v === 'string' ? v : null;
  }

  async latestBeat(exceptId: string | null): Promise<InstanceBeat | null> {
    return toBeat(exceptId === null ? this.s.latestBeatAny.get() : this.s.latestBeatOther.get(exceptId));
  }

  async fleetSeenAt(): Promise<number | null> {
    const n = scalar(this.s.fleetSeenAt.get());
    return n !== null && n > 0 ? n : null;
  }
}

/** A use case's view of the write transaction. */
export class SqliteTx extends SqliteReader implements Tx {
  async claimFor(clientId: string, now: number): Promise<{ rec: IdentifierRecord; held: boolean } | null> {
    const held: unknown = this.s.byClient.get(clientId);
    if (held !== undefined) return { rec: toRecord(held), held: true };
    const sticky: unknown = this.s.sticky.get({ clientId, now });
    if (sticky !== undefined) return { rec: toRecord(sticky), held: false };
    const next: unknown = this.s.nextAllocatable.get({ now });
    return next === undefined ? null : { rec: toRecord(next), held: false };
  }

  async grant(rowId: number, clientId: string, epoch: number, now: number, fenceCooldownMs: number, claim: GrantClaim = NO_CLAIM): Promise<void> {
    const r = this.s.grant.run({ rowId, clientId, epoch, now, fence: fenceCooldownMs, keyHash: claim.keyHash, instance: instanceColumn(claim.instance) });
    if (r.changes !== 1) throw new Error(`grant of row ${rowId} changed ${r.changes} rows`);
    this.s.historyInsert.run({ rowId, at: now, event: 'allocated', clientId, epoch });
  }

  async renewHeld(name: string, clientId: string, epoch: number | null, now: number, fenceCooldownMs: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.renewHeld.get({ name, clientId, epoch, now, fence: fenceCooldownMs, keyHash: proof.keyHash, watermark: proof.watermark });
    return r === undefined ? null : toRecord(r);
  }

  async releaseHeld(name: string, clientId: string, epoch: number | null, now: number, proof: HeldProof = NO_PROOF): Promise<IdentifierRecord | null> {
    const r: unknown = this.s.releaseHeld.get({ name, clientId, epoch, now, keyHash: proof.keyHash, watermark: proof.watermark });
    if (r === undefined) return null;
    const rec = toRecord(r);
    this.s.historyInsert.run({ rowId: rec.rowId, at: now, event: 'released', clientId, epoch: rec.epoch });
    return rec;
  }

  async free(rowId: number, availableAt: number, entry: FreeEntry): Promise<void> {
    this.s.free.run({ rowId, availableAt });
    this.s.historyInsert.run({ rowId, ...entry });
  }

  async appendHistory(rowId: number, at: number, event: HistoryEvent, clientId: string | null, epoch: number): Promise<void> {
    this.s.historyInsert.run({ rowId, at, event, clientId, epoch });
  }

  async pruneHistory(before: number, limit: number): Promise<number> {
    return this.s.historyPrune.run({ before, limit }).changes;
  }

  async noteAwsEvent(eventId: string, at: number): Promise<boolean> {
    return this.s.awsEventInsert.run(eventId, at).changes === 1;
  }

  async pruneAwsEvents(before: number): Promise<void> {
    this.s.awsEventsPrune.run(before);
  }

  async trySweepLock(): Promise<boolean> {
    return true; // BEGIN IMMEDIATE: this transaction is the only writer of the file
  }

  async countExpired(cutoff: number): Promise<number> {
    return scalar(this.s.countExpired.get(cutoff)) ?? 0;
  }

  async countLeased(): Promise<number> {
    return scalar(this.s.countLeased.get()) ?? 0;
  }

  async countEvents(event: HistoryEvent, since: number): Promise<number> {
    return scalar(this.s.countEvents[event].get(since)) ?? 0;
  }

  async reclaimExpired(cutoff: number, limit: number, now: number, cooldownMs: number): Promise<IdentifierRecord[]> {
    const recs = this.s.expired.all({ cutoff, limit }).map(toRecord);
    if (recs.length === 0) return recs;
    const ids = JSON.stringify(recs.map((r) => r.rowId));
    this.s.reclaimHistory.run({ ids, now });
    this.s.reclaimFree.run({ ids, now, cooldown: cooldownMs });
    return recs;
  }

  async recordRefusal(clientId: string, at: number): Promise<void> {
    this.s.refusalInsert.run(clientId, at);
  }

  async countRefusedClients(since: number): Promise<number> {
    return scalar(this.s.refusedClients.get(since)) ?? 0;
  }

  async pruneRefusals(before: number): Promise<void> {
    this.s.refusalsPrune.run(before);
  }

  async poolRows(): Promise<PoolRow[]> {
    return this.s.poolRows.all().map((raw) => {
      const r = asRow(raw);
      const clientId = r['client_id'];
      return {
        rowId: intColumn(r, 'id'),
        name: String(r['name']),
        poolOrder: intColumn(r, 'pool_order'),
        retired: intColumn(r, 'retired') === 1,
        clientId: typeof clientId === 'string' ? clientId : null,
        epoch: intColumn(r, 'epoch'),
      };
    });
  }

  async insertIdentifiers(rows: readonly { readonly name: string; readonly poolOrder: number }[]): Promise<void> {
    for (let i = 0; i < rows.length; i += INSERT_CHUNK) {
      this.s.insert.run(JSON.stringify(rows.slice(i, i + INSERT_CHUNK).map((r) => [r.name, r.poolOrder])));
    }
    if (rows.length > 0) this.s.addToTotal.run(rows.length); // new rows are free: only the total moves
  }

  async setRetired(rowId: number, retired: boolean, poolOrder: number): Promise<void> {
    this.s.setRetired.run({ rowId, retired: retired ? 1 : 0, poolOrder });
  }

  async setPoolOrder(rowId: number, poolOrder: number): Promise<void> {
    this.s.setOrder.run(poolOrder, rowId);
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.s.metaSet.run(key, value);
  }

  async beat(b: InstanceBeat): Promise<void> {
    this.s.beat.run({ id: b.id, startedAt: b.startedAt, at: b.at, fleetSeenAt: b.fleetSeenAt });
    if (b.fleetSeenAt !== null) this.s.fleetSeen.run({ seenAt: b.fleetSeenAt });
    this.s.pruneInstances.run(b.at - INSTANCE_FORGOTTEN_MS);
  }

  async forgetInstance(id: string): Promise<void> {
    this.s.forgetInstance.run(id);
  }

  async lostAcknowledgedWrites(): Promise<boolean> {
    return false; // a commit is in the WAL before it is acknowledged: only the host can lose it, and a reboot is found at open
  }
}
