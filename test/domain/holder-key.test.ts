/** Holder keys: which keys are well-formed, what is stored for one, and how a presented key is checked. */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  HOLDER_KEY_RE,
  hashHolderKey,
  holderKeyMatches,
  isHolderKey,
  isHolderKeyHash,
} from '../../src/domain/holder-key.js';

const keyChar = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=:-'.split(''));
const validKey = fc.string({ unit: keyChar, minLength: 16, maxLength: 256 });

describe('holder keys', () => {
  describe('form: 16-256 of [A-Za-z0-9._~+/=:-]', () => {
    it('accepts the bounds and every allowed character (base64, base64url, hex, UUIDs)', () => {
      for (const key of [
        'a'.repeat(16),
        'a'.repeat(256),
        'k3y/with+all=the:chars~._-AZaz09',
        'q83vEjRWeJq83vEjRWeJqw==', // base64 of 16 random bytes
        'q83vEjRWeJq83vEjRWeJqw', // base64url, unpadded
        '0f1e2d3c4b5a69788796a5b4c3d2e1f0',
        '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d',
      ]) {
        expect(isHolderKey(key), key).to.equal(true);
      }
    });

    it('refuses too short, too long, other characters, and non-strings', () => {
      for (const key of ['a'.repeat(15), 'a'.repeat(257), '', 'sixteen chars ok', 'sixteen-chars-ok\n', 'sixteen-chars-ök', 'sixteen-chars-ok!', 'tab\there-is-bad-key']) {
        expect(isHolderKey(key), JSON.stringify(key)).to.equal(false);
      }
      for (const key of [undefined, null, 1234567890123456, ['a'.repeat(16)], { key: 'a'.repeat(16) }]) {
        expect(isHolderKey(key), String(key)).to.equal(false);
      }
    });

    it('the pattern alone, as the HTTP schema will use it, agrees', () => {
      fc.assert(fc.property(validKey, (k) => HOLDER_KEY_RE.test(k)));
      expect(HOLDER_KEY_RE.test('a'.repeat(15))).to.equal(false);
    });
  });

  describe('stored form', () => {
    it('is the SHA-256 of the key, prefixed by its algorithm: never the key', () => {
      // Vectors from `printf %s KEY | sha256sum`.
      expect(hashHolderKey('AbCdEfGh01234567')).to.equal('sha256:3f89528c2ef18b75a3c4170343eed1c4b20cfa65d443bcb4188f2101c045648d');
      expect(hashHolderKey('k3y/with+all=the:chars~._-AZaz09')).to.equal('sha256:28d97f5d7ed333357c741b4e4b75145aaf1d12dd6700042a5e7ac9d6abe39692');
      fc.assert(
        fc.property(validKey, (k) => {
          const h = hashHolderKey(k);
          return isHolderKeyHash(h) && !h.includes(k) && h === hashHolderKey(k);
        }),
      );
    });

    it('isHolderKeyHash: only what hashHolderKey writes', () => {
      for (const v of ['', 'sha256:', `sha256:${'0'.repeat(63)}`, `sha256:${'A'.repeat(64)}`, `sha1:${'0'.repeat(40)}`, '0'.repeat(64), 42, null]) {
        expect(isHolderKeyHash(v), String(v)).to.equal(false);
      }
    });
  });

  describe('check', () => {
    it('the right key matches; a wrong one, of any length, does not', () => {
      const stored = hashHolderKey('AbCdEfGh01234567');
      expect(holderKeyMatches('AbCdEfGh01234567', stored)).to.equal(true);
      for (const wrong of ['AbCdEfGh01234568', 'AbCdEfGh0123456', 'AbCdEfGh012345678', 'abcdefgh01234567', '', 'x'.repeat(1000)]) {
        expect(holderKeyMatches(wrong, stored), wrong).to.equal(false);
      }
    });

    it('every key matches its own hash and no other key\'s', () => {
      fc.assert(
        fc.property(validKey, validKey, (a, b) => {
          const stored = hashHolderKey(a);
          return holderKeyMatches(a, stored) && holderKeyMatches(b, stored) === (a === b);
        }),
        { numRuns: 500 },
      );
    });

    it('a stored value of another form never matches, and never throws', () => {
      const key = 'AbCdEfGh01234567';
      for (const stored of ['', key, `sha256:${'0'.repeat(62)}`, `sha256:${'z'.repeat(64)}`, hashHolderKey(key).toUpperCase(), `${hashHolderKey(key)}00`]) {
        expect(holderKeyMatches(key, stored), stored).to.equal(false);
      }
    });
  });
});
