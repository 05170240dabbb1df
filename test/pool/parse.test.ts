import { expect } from 'chai';
import { PoolParseError, parsePool } from '../../src/pool/parse.js';

function parseError(text: string): PoolParseError {
  try {
    parsePool(text);
  } catch (e) {
    if (e instanceof PoolParseError) return e;
    throw e;
  }
  throw new Error('expected a PoolParseError');
}

describe('pool file', () => {
  it('expands a range without padding', () => {
    expect(parsePool('worker-[0-3]')).to.deep.equal(['worker-0', 'worker-1', 'worker-2', 'worker-3']);
  });

  it('zero-pads to the width of a lower bound with a leading zero', () => {
    const ids = parsePool('node-[000-255]');
    expect(ids).to.have.length(256);
    expect(ids[0]).to.equal('node-000');
    expect(ids[9]).to.equal('node-009');
    expect(ids[255]).to.equal('node-255');
  });

  it('expands every combination of several ranges, the rightmost fastest', () => {
    const ids = parsePool('az[1-3]-slot[00-99]');
    expect(ids).to.have.length(300);
    expect(ids.slice(0, 2)).to.deep.equal(['az1-slot00', 'az1-slot01']);
    expect(ids[100]).to.equal('az2-slot00');
    expect(ids[299]).to.equal('az3-slot99');
  });

  it('ignores comments and blank lines, keeps file order, and takes plain identifiers', () => {
    const text = '# the pool\n\nsolo   # trailing comment\n  w-[08-10]\r\nip-10-0-0-1.ec2:internal\n';
    expect(parsePool(text)).to.deep.equal(['solo', 'w-08', 'w-09', 'w-10', 'ip-10-0-0-1.ec2:internal']);
  });

  it('an empty file is an empty pool', () => {
    expect(parsePool('# nothing yet\n')).to.deep.equal([]);
  });

  it('names the line of a backwards range', () => {
    const e = parseError('ok-1\n\nbad-[9-1]\n');
    expect(e.line).to.equal(3);
    expect(e.message).to.match(/^line 3: .*backwards/);
  });

  it('names the line of a malformed bracket', () => {
    expect(parseError('a\nw-[0-x]\n').line).to.equal(2);
    expect(parseError('w-[0-3\n').line).to.equal(1);
    expect(parseError('w-0-3]\n').line).to.equal(1);
  });

  it('refuses characters docs/api.md "Names" does not allow in identifiers', () => {
    const e = parseError('good\nhas space\n');
    expect(e.line).to.equal(2);
    expect(parseError('naïve\n').line).to.equal(1);
    expect(parseError('slash/name\n').line).to.equal(1);
  });

  it('refuses identifiers longer than 128 characters', () => {
    expect(parsePool('x'.repeat(128))).to.have.length(1);
    expect(parseError('x'.repeat(129)).line).to.equal(1);
    expect(parsePool(`${'x'.repeat(127)}[0-9]`)).to.have.length(10);
    expect(parseError(`${'x'.repeat(127)}[10-11]`).line).to.equal(1);
  });

  it('refuses a duplicate, naming both lines', () => {
    const e = parseError('w-[0-5]\nw-3\n');
    expect(e.line).to.equal(2);
    expect(e.message).to.include('line 1');
  });

  it('refuses a duplicate within one entry, between plain lines, and from a range after a plain line', () => {
    const within = parseError('a\nx[1-11][1-11]\n'); // x1 then 11 and x11 then 1 are both x111
    expect(within.line).to.equal(2);
    expect(within.message).to.include('"x111" is already in the pool (line 2)');
    const plain = parseError('# the pool\nw-1\nw-2\n\nw-1 # again\n');
    expect(plain.line).to.equal(5);
    expect(plain.message).to.include('"w-1" is already in the pool (line 2)');
    const later = parseError('w-07\nw-[00-09]\n');
    expect(later.line).to.equal(2);
    expect(later.message).to.include('(line 1)');
  });

  it('parses a long file of plain lines and a 1,000,000-identifier range in file order', () => {
    const lines = Array.from({ length: 50_000 }, (_, i) => `n-${i}`);
    expect(parsePool(`${lines.join('\n')}\n`)).to.deep.equal(lines);
    const big = parsePool('p-[000000-999999]\n');
    expect(big).to.have.length(1_000_000);
    expect([big[0], big[1], big[999_999]]).to.deep.equal(['p-000000', 'p-000001', 'p-999999']);
  });

  it('refuses a pool too large to hold, before expanding it', () => {
    expect(parseError('w-[0-99999999999]').message).to.match(/exceed/);
  });
});
