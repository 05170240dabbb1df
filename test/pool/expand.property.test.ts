/** Properties of the pool pattern expander: count, padding, order, no duplicates. */
import { expect } from 'chai';
import fc from 'fast-check';
import { PoolParseError, parsePool } from '../../src/pool/parse.js';

interface Range { from: number; len: number; padded: boolean }

const literal = fc.stringMatching(/^[a-z][a-z.:_-]{0,3}$/);
const range = fc.record({ from: fc.integer({ min: 0, max: 120 }), len: fc.integer({ min: 1, max: 12 }), padded: fc.boolean() });

/** A pattern whose ranges are separated by literals (so its names cannot collide). */
const pattern = fc.tuple(literal, fc.array(fc.tuple(range, literal), { minLength: 1, maxLength: 3 }));

function lowText(r: Range): string {
  const to = r.from + r.len - 1;
  return r.padded ? String(r.from).padStart(String(to).length + 1, '0') : String(r.from);
}

function render([head, parts]: [string, Array<[Range, string]>]): string {
  return head + parts.map(([r, lit]) => `[${lowText(r)}-${r.from + r.len - 1}]${lit}`).join('');
}

describe('pool expander properties', () => {
  it('expands to the product of the range sizes, all distinct, each valid, padded to the lower bound', () => {
    fc.assert(
      fc.property(pattern, (p) => {
        const ids = parsePool(render(p));
        const expected = p[1].reduce((n, [r]) => n * r.len, 1);
        expect(ids).to.have.length(expected);
        expect(new Set(ids).size).to.equal(ids.length);
        for (const id of ids) expect(id).to.match(/^[A-Za-z0-9._:-]{1,128}$/);
        // The first name is every range at its lower bound, written as the file wrote it.
        expect(ids[0]).to.equal(p[0] + p[1].map(([r, lit]) => lowText(r) + lit).join(''));
        // The rightmost range varies fastest.
        const last = p[1][p[1].length - 1];
        if (last && last[0].len > 1) expect(ids[1]).to.equal(p[0] + p[1].map(([r, lit], i) => (i === p[1].length - 1 ? String(r.from + 1).padStart(lowText(r).length, '0') : lowText(r)) + lit).join(''));
        // When every range is padded, every name has the same length.
        if (p[1].every(([r]) => r.padded)) expect(new Set(ids.map((x) => x.length)).size).to.equal(1);
      }),
      { numRuns: 300 },
    );
  });

  it('a file of several patterns keeps file order; a repeated line is refused with its line number', () => {
    fc.assert(
      fc.property(fc.uniqueArray(pattern.map(render), { minLength: 1, maxLength: 4 }), fc.nat(), (lines, pick) => {
        let ids: string[];
        try {
          ids = parsePool(lines.join('\n'));
        } catch (e) {
          // Two different patterns may still overlap (w-[1-3] and w-[2-5]); that must be a duplicate error.
          expect(e).to.be.instanceOf(PoolParseError);
          expect(String(e)).to.match(/already in the pool/);
          return;
        }
        const perLine = lines.map((l) => parsePool(l));
        expect(ids).to.deep.equal(perLine.flat());
        const again = lines[pick % lines.length] ?? '';
        try {
          parsePool([...lines, again].join('\n'));
          expect.fail('a repeated line must be refused');
        } catch (e) {
          expect(e).to.be.instanceOf(PoolParseError);
          if (e instanceof PoolParseError) expect(e.line).to.equal(lines.length + 1);
        }
      }),
      { numRuns: 200 },
    );
  });
});
