import { expect } from 'chai';
import {
  GUARD_AT_REST, assertOwner, decideSweep, expiryCutoff, fenceAfterMs, guardCountFrom, historyKeptMs, reapedAvailableAt, statusOf, takenAvailableAt,
} from '../../src/domain/lease.js';
import type { GuardMemory, SweepFacts } from '../../src/domain/lease.js';
import { RegistryError } from '../../src/domain/errors.js';
import type { IdentifierRecord } from '../../src/domain/types.js';

const base: IdentifierRecord = { rowId: 1, name: 'w-1', poolOrder: 0, epoch: 3, retired: false, holder: null, availableAt: 0 };
const held: IdentifierRecord = { ...base, holder: { clientId: 'vm-a', allocatedAt: 100, lastSeen: 200, fenceCooldownMs: null } };

function codeOf(fn: () => void): string | null {
  try {
    fn();
    return null;
  } catch (e) {
    return e instanceof RegistryError ? e.code : 'other';
  }
}

describe('lease rules', () => {
  it('derives the status from holder, retirement and cool-down', () => {
    expect(statusOf(held, 0)).to.equal('leased');
    expect(statusOf({ ...held, retired: true }, 0)).to.equal('leased'); // a retired one keeps its lease
    expect(statusOf({ ...base, retired: true }, 0)).to.equal('retired');
    expect(statusOf({ ...base, availableAt: 500 }, 499)).to.equal('cooling');
    expect(statusOf({ ...base, availableAt: 500 }, 500)).to.equal('free');
  });

  it('owner check: not_owner for strangers and free identifiers, stale_epoch for the wrong epoch', () => {
    expect(codeOf(() => assertOwner(held, 'vm-a', undefined))).to.equal(null);
    expect(codeOf(() => assertOwner(held, 'vm-a', 3))).to.equal(null);
    expect(codeOf(() => assertOwner(held, 'vm-a', 2))).to.equal('stale_epoch');
    expect(codeOf(() => assertOwner(held, 'vm-b', 3))).to.equal('not_owner');
    expect(codeOf(() => assertOwner(held, 'vm-b', 2))).to.equal('not_owner');
    expect(codeOf(() => assertOwner(base, 'vm-a', undefined))).to.equal('not_owner');
  });

  it('the fence window is the cool-down less 1 % for clock-rate drift', () => {
    expect(fenceAfterMs({ cooldownMs: 90_000 })).to.equal(89_100);
    expect(fenceAfterMs({ cooldownMs: 0 })).to.equal(0);
  });

  it('a lease last seen at the cutoff has expired: the cutoff is a TTL before now', () => {
    expect(expiryCutoff(100_000, 90_000)).to.equal(10_000);
    expect(guardCountFrom(100_000, 90_000, GUARD_AT_REST)).to.equal(10_000);
    expect(guardCountFrom(100_000, 90_000, { tripped: null, countFrom: 20_000 })).to.equal(20_000);
  });

  it('an identifier taken from its holder cools for the longer of the setting and the window its holder was told', () => {
    const rules = { ttlMs: 90_000, cooldownMs: 30_000 };
    const holder = { clientId: 'vm-a', allocatedAt: 100, lastSeen: 200, fenceCooldownMs: null };
    expect(takenAvailableAt(holder, 1_000, rules)).to.equal(31_000);
    expect(takenAvailableAt({ ...holder, fenceCooldownMs: 60_000 }, 1_000, rules)).to.equal(61_000);
    // The reaper: a TTL after the last liveness, then that cool-down.
    expect(reapedAvailableAt(holder, rules)).to.equal(200 + 90_000 + 30_000);
    expect(reapedAvailableAt({ ...holder, fenceCooldownMs: 60_000 }, rules)).to.equal(200 + 90_000 + 60_000);
  });

  it('history pruning keeps what the guard counts whatever the retention: the last TTL and the last minute', () => {
    expect(historyKeptMs(3_600_000, 90_000)).to.equal(3_600_000);
    expect(historyKeptMs(1_000, 90_000)).to.equal(90_000);
    expect(historyKeptMs(1_000, 10_000)).to.equal(60_000);
  });

  describe('the sweep decision', () => {
    const rules = { maxFraction: 0.5, minHold: 10, guardedRatePerMinute: 2 };
    const NOW = 1_000_000;
    const calm: SweepFacts = {
      force: false, now: NOW, graceLeftMs: 0, expired: 0, leased: 40, reclaimedInTtl: 0, reclaimedInMinute: 0,
      refusedClientsInMinute: 0, fleetSilentMs: 1000, clockStepAgoMs: null, ttlMs: 90_000, guard: GUARD_AT_REST,
    };
    const decide = (f: Partial<SweepFacts>, r = rules) => decideSweep({ ...calm, ...f }, r);

    it('reclaims every expired lease when few expire', () => {
      expect(decide({ expired: 10 })).to.deep.equal({ allowance: Infinity, held: false, reason: null, guard: GUARD_AT_REST }); // not more than minHold
      expect(decide({ expired: 20 })).to.include({ allowance: Infinity, held: false }); // exactly half
      expect(decide({ expired: 1000, leased: 1000 }, { ...rules, maxFraction: 1 })).to.include({ held: false }); // 1 turns it off
    });

    it('counts expiries across sweeps within the last TTL: a cut spread over sweeps still trips it', () => {
      expect(decide({ expired: 10, leased: 30, reclaimedInTtl: 10 })).to.include({ held: false }); // 20 of 40
      const d = decide({ expired: 10, leased: 20, reclaimedInTtl: 20 }); // 30 of 40
      expect(d).to.include({ held: true, allowance: 2 });
      expect(d.reason).to.match(/30 of 40 leases \(75%\)/);
      expect(d.guard).to.deep.equal({ tripped: { at: NOW, expired: 30, of: 40 }, countFrom: 0 });
    });

    describe('once tripped', () => {
      const tripped: GuardMemory = { tripped: { at: NOW - 200_000, expired: 30, of: 40 }, countFrom: 0 };

      it('stays tripped while any lease is left expired, though the cut is more than a TTL old and the counts are low now', () => {
        const d = decide({ guard: tripped, expired: 2, leased: 12, reclaimedInTtl: 0 }); // 2 of 12: would not trip it
        expect(d).to.include({ held: true, allowance: 2 });
        expect(d.guard).to.deep.equal(tripped);
        expect(d.reason).to.match(/^mass expiry: 30 of 40 leases \(75%\) expired within the last TTL before the guard tripped 200s ago.*2 still expired/);
        expect(decide({ guard: tripped, expired: 2, reclaimedInMinute: 2 })).to.include({ held: true, allowance: 0 }); // the guarded rate, spent
        expect(decide({ guard: tripped, expired: 2, fleetSilentMs: 90_000 })).to.include({ held: true, allowance: 0 }); // lost its fleet
      });

      it('rests once a sweep finds no expired lease left; what was reclaimed while tripped never counts again', () => {
        const d = decide({ guard: tripped, expired: 0 });
        expect(d).to.deep.equal({ allowance: Infinity, held: false, reason: null, guard: { tripped: null, countFrom: NOW } });
        // The count of reclaims toward the next trip starts there, not a TTL back.
        expect(guardCountFrom(NOW + 10_000, 90_000, d.guard)).to.equal(NOW);
        expect(guardCountFrom(NOW + 200_000, 90_000, d.guard)).to.equal(NOW + 110_000);
      });

      it('a forced sweep and the start-up grace leave it as it is', () => {
        expect(decide({ guard: tripped, expired: 5, force: true })).to.include({ allowance: Infinity, held: false, guard: tripped });
        expect(decide({ guard: tripped, expired: 5, graceLeftMs: 10 })).to.include({ allowance: 0, guard: tripped });
        expect(decide({ guard: tripped, expired: 0, graceLeftMs: 10 })).to.include({ guard: tripped });
      });
    });

    it('when tripped, reclaims at the guarded rate, less what the last minute already took', () => {
      expect(decide({ expired: 30, leased: 40 })).to.include({ held: true, allowance: 2 });
      expect(decide({ expired: 30, leased: 40, reclaimedInMinute: 1 })).to.include({ allowance: 1 });
      expect(decide({ expired: 30, leased: 40, reclaimedInMinute: 5 })).to.include({ allowance: 0 });
      expect(decide({ expired: 30, leased: 40 }, { ...rules, guardedRatePerMinute: 0 })).to.include({ held: true, allowance: 0 });
    });

    it('meets the demand of refused clients, so a churning fleet never stalls the pool', () => {
      const d = decide({ expired: 40, leased: 40, refusedClientsInMinute: 25, reclaimedInMinute: 5 });
      expect(d).to.include({ held: true, allowance: 20 });
      expect(d.reason).to.match(/25 refused clients/);
    });

    it('reclaims none when the registry lost its fleet or its time', () => {
      expect(decide({ expired: 30, leased: 40, fleetSilentMs: 90_000 })).to.include({ allowance: 0, held: true });
      expect(decide({ expired: 30, leased: 40, fleetSilentMs: null })).to.include({ allowance: 0, held: true });
      expect(decide({ expired: 30, leased: 40, clockStepAgoMs: 89_999 }).reason).to.match(/clock step/);
      expect(decide({ expired: 30, leased: 40, clockStepAgoMs: 90_000 })).to.include({ allowance: 2 });
      expect(decide({ expired: 30, leased: 40, fleetSilentMs: 89_999, refusedClientsInMinute: 9 })).to.include({ allowance: 9 });
    });

    it('grace holds everything without degrading; force takes everything', () => {
      expect(decide({ expired: 1, graceLeftMs: 1500 })).to.deep.equal({ allowance: 0, held: false, reason: 'startup grace: no reclaim for another 2s', guard: GUARD_AT_REST });
      expect(decide({ expired: 40, leased: 40, fleetSilentMs: null, graceLeftMs: 5, force: true })).to.include({ allowance: Infinity, held: false });
    });
  });
});
