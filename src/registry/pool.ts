/**
 * The pool sync: bringing the store in line with the pool file (at start-up, on a reload, by
 * `idreg pool sync`), under the guard against an emptied or truncated file (domain/pool-sync.ts).
 */
import { RegistryError } from '../domain/errors.js';
import { retirePlan, retireRefusal } from '../domain/pool-sync.js';
import type { SyncResult } from '../domain/types.js';
import type { Store } from '../store/types.js';
import { POOL_FINGERPRINT } from './meta.js';
import type { RegistryObserver } from './types.js';

export class PoolSync {
  /** Why the last pool reload (SIGHUP to this process) failed or was refused; null once one succeeds. */
  private problem: string | null = null;

  constructor(private readonly store: Store, private readonly observe: RegistryObserver) {}

  /**
   * Brings the store in line with the pool file in one transaction: new identifiers are
   * added free, missing ones retired (a held one keeps its lease), returning ones restored.
   * Errors: pool_sync_refused when it would retire more than half of the pool, unless `force`.
   */
  async sync(names: readonly string[], fingerprint: string | null, opts: { force?: boolean }): Promise<SyncResult> {
    const result = await this.store.write(async (tx) => {
      const existing = new Map((await tx.poolRows()).map((r) => [r.name, r]));
      const refusal = opts.force ? null : retireRefusal(retirePlan(existing.values(), names));
      if (refusal !== null) throw new RegistryError('pool_sync_refused', refusal);
      // Recorded with the sync it describes, so a start-up with the same file can skip it.
      await tx.setMeta(POOL_FINGERPRINT, fingerprint ?? '');
      const now = tx.now;
      const added: { name: string; poolOrder: number }[] = [];
      let restored = 0;
      let retired = 0;
      for (const [order, name] of names.entries()) {
        const row = existing.get(name);
        if (!row) {
          added.push({ name, poolOrder: order });
          continue;
        }
        existing.delete(name);
        if (row.retired) {
          await tx.setRetired(row.rowId, false, order);
          await tx.appendHistory(row.rowId, now, 'restored', row.clientId, row.epoch);
          restored++;
        } else if (row.poolOrder !== order) {
          await tx.setPoolOrder(row.rowId, order);
        }
      }
      await tx.insertIdentifiers(added);
      for (const row of existing.values()) {
        if (row.retired) continue;
        await tx.setRetired(row.rowId, true, row.poolOrder);
        await tx.appendHistory(row.rowId, now, 'retired', row.clientId, row.epoch);
        retired++;
      }
      return { total: names.length, added: added.length, retired, restored };
    }, { durable: true });
    this.problem = null;
    this.observe({ type: 'pool_synced', result });
    return result;
  }

  /**
   * What became of the last pool reload (SIGHUP): null when it succeeded, else why it did
   * not. /health is degraded with that reason until a reload or sync succeeds.
   */
  noteReload(problem: string | null): void {
    this.problem = problem;
  }

  /** Why the last pool reload failed or was refused, until a reload or sync succeeds. */
  reloadProblem(): string | null {
    return this.problem;
  }

  /** The fingerprint of the pool file last synced, if it was recorded. */
  fingerprint(): Promise<string | null> {
    return this.store.read(async (r) => (await r.meta(POOL_FINGERPRINT)) || null);
  }
}

/**
 * What the store holds of the pool: the fingerprint of the file last synced and how many
 * identifiers are in service. Start-up reads it before building the registry, so an unchanged
 * pool file (a million lines) is neither parsed nor held in memory.
 */
export function storedPool(store: Store): Promise<{ fingerprint: string | null; inService: number }> {
  return store.read(async (r) => {
    const c = await r.counts(r.now);
    return { fingerprint: (await r.meta(POOL_FINGERPRINT)) || null, inService: c.total - c.retired };
  });
}
