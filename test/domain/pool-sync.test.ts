import { expect } from 'chai';
import { retirePlan, retireRefusal } from '../../src/domain/pool-sync.js';

const rows = (names: string, retired = ''): { name: string; retired: boolean }[] => [
  ...names.split(' ').filter(Boolean).map((name) => ({ name, retired: false })),
  ...retired.split(' ').filter(Boolean).map((name) => ({ name, retired: true })),
];

describe('pool sync guard', () => {
  it('counts the identifiers in service and those the file would retire; retired ones are not the pool', () => {
    expect(retirePlan(rows('a b c d', 'x y'), ['a', 'b', 'new'])).to.deep.equal({ inService: 4, retiring: 2 });
    expect(retirePlan(rows('a b', 'x y'), ['x'])).to.deep.equal({ inService: 2, retiring: 2 });
    expect(retirePlan([], ['a'])).to.deep.equal({ inService: 0, retiring: 0 });
  });

  it('lets a sync retire up to half of the pool, and refuses one that retires more', () => {
    expect(retireRefusal({ inService: 0, retiring: 0 })).to.equal(null); // a new database
    expect(retireRefusal({ inService: 10, retiring: 5 })).to.equal(null);
    expect(retireRefusal({ inService: 10, retiring: 6 })).to.match(/6 of the 10 .*60%.*idreg pool sync --force/);
    expect(retireRefusal({ inService: 20, retiring: 20 })).to.match(/20 of the 20/); // an emptied file
    expect(retireRefusal({ inService: 1, retiring: 1 })).to.not.equal(null);
    expect(retireRefusal({ inService: 3, retiring: 1 })).to.equal(null);
  });
});
