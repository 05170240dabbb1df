import { expect } from 'chai';
import { assertOwner, guardReason, statusOf } from '../../src/domain/lease.js';
import { RegistryError } from '../../src/domain/errors.js';
import type { IdentifierRecord } from '../../src/domain/types.js';

const base: IdentifierRecord = { rowId: 1, name: 'w-1', poolOrder: 0, epoch: 3, retired: false, holder: null, availableAt: 0 };
const held: IdentifierRecord = { ...base, holder: { clientId: 'vm-a', allocatedAt: 100, lastSeen: 200 } };

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

  it('guard: holds only past both the fraction and the minimum', () => {
    const rules = { maxFraction: 0.5, minHold: 10 };
    expect(guardReason(10, 10, rules)).to.equal(null); // not more than minHold
    expect(guardReason(11, 22, rules)).to.equal(null); // exactly half
    expect(guardReason(12, 22, rules)).to.match(/12 of 22/);
    expect(guardReason(1000, 1000, { maxFraction: 1, minHold: 10 })).to.equal(null); // 1 turns it off
  });
});
