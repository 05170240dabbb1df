/**
 * The promise, checked after every step of a race (test/reliability/interleaving*.test.ts), from what the
 * store holds and what each VM was told:
 *  - no acknowledged allocate/liveness is reclaimed less than a TTL after the last_seen it
 *    answered (SPEC: "no sweep ever reclaims a lease less than a TTL after a renewal it
 *    acknowledged");
 *  - no identifier is granted while its previous holder may still use it (a VM stops at
 *    fence_after_ms after it sent its last acknowledged allocate/liveness, or when it releases),
 *    and epochs only grow;
 *  - one client holds at most one identifier;
 *  - what the VMs were told is what history says: every acknowledged allocate has its
 *    `allocated` entry (same identifier, epoch and client), and no identifier under one epoch
 *    was told to two different clients.
 */
import { expect } from 'chai';
import { fenceAfterMs } from '../../src/domain/lease.js';
import type { HistoryEntry } from '../../src/domain/types.js';
import type { RegistryRules } from '../../src/registry.js';
import type { Store } from '../../src/store/types.js';

/** What a VM was told (by an allocate or a liveness) and when it sent the request that told it. */
export interface Ack {
  op: 'allocate' | 'renew'; client: string; identifier: string; epoch: number; sentAt: number; lastSeen: number;
  /** Who was told, when several VMs present one client id (each with its own key); default: the client. */
  claimant?: string;
  /** The fence_after_ms it was told, when the race records it (instances set differently); else the rules'. */
  fence?: number;
}

export interface RaceRecord {
  readonly pool: readonly string[];
  readonly acks: readonly Ack[];
  /** identifier#epoch -> when its holder sent the release (it stopped using it before sending). */
  readonly releasedAt: ReadonlyMap<string, number>;
  readonly rules: RegistryRules;
}

export async function checkRaceInvariants(store: Pick<Store, 'read'>, race: RaceRecord, where: string): Promise<void> {
  const { pool, acks, releasedAt, rules } = race;
  const fence = fenceAfterMs(rules);
  // The acks so far, before history is read: an allocate acknowledged while the check reads is
  // committed, but may be missing from what it already read.
  const ackedBefore = acks.slice();
  const hist = new Map<string, HistoryEntry[]>();
  for (const id of pool) hist.set(id, await store.read(async (r) => r.history((await r.byName(id))?.rowId ?? -1)));
  for (const a of acks) {
    const reclaim = hist.get(a.identifier)?.find((h) => h.event === 'reclaimed' && h.epoch === a.epoch);
    if (reclaim) {
      expect(reclaim.at, `${where}: ${a.identifier}#${a.epoch} reclaimed at ${reclaim.at}, less than a TTL after the last_seen ${a.lastSeen} answered to ${a.client}`)
        .to.be.at.least(a.lastSeen + rules.ttlMs);
    }
  }
  const toldTo = new Map<string, string>();
  for (const a of acks) {
    const lease = `${a.identifier}#${a.epoch}`;
    const who = a.claimant ?? a.client;
    const other = toldTo.get(lease);
    expect(other === undefined || other === who, `${where}: ${lease} was told to ${other ?? '?'} and to ${who}`).to.equal(true);
    toldTo.set(lease, who);
  }
  for (const a of ackedBefore) {
    if (a.op !== 'allocate') continue;
    const lease = `${a.identifier}#${a.epoch}`;
    const entry = hist.get(a.identifier)?.find((h) => h.event === 'allocated' && h.epoch === a.epoch);
    expect(entry, `${where}: ${lease} was granted to ${a.client} with no 'allocated' history entry`).not.to.equal(undefined);
    expect(entry?.clientId, `${where}: ${lease} was granted to ${a.client}, history says to ${entry?.clientId ?? '?'}`).to.equal(a.client);
  }
  for (const [id, h] of hist) {
    const grants = h.filter((e) => e.event === 'allocated');
    for (let i = 1; i < grants.length; i++) {
      const prev = grants[i - 1];
      const next = grants[i];
      if (!prev || !next) continue;
      expect(next.epoch, `${where}: epochs of ${id} must grow`).to.be.above(prev.epoch);
      // The holder stops fence_after_ms after it sent the request whose answer told it that window.
      const told = acks.filter((a) => a.identifier === id && a.epoch === prev.epoch).map((a) => a.sentAt + (a.fence ?? fence));
      let end = told.length ? Math.max(...told) : -Infinity;
      const rel = releasedAt.get(`${id}#${prev.epoch}`);
      if (rel !== undefined) end = Math.min(end, rel);
      expect(next.at, `${where}: ${id} granted to ${next.clientId} at ${next.at} while ${prev.clientId} may use it until ${end}`)
        .to.be.at.least(end);
    }
  }
  const leased = (await store.read((r) => r.list({ status: 'leased', now: r.now, after: null, limit: null }))).map((r) => r.holder?.clientId);
  expect(new Set(leased).size, `${where}: a client holds two identifiers`).to.equal(leased.length);
}
