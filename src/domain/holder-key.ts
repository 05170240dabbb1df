/**
 * Holder keys: a secret a VM sends on allocate (and then on liveness and release) so that a
 * lease belongs to the VM that was granted it, not to whoever presents its `client_id`.
 *
 * The registry keeps only a hash, and compares in constant time.
 *
 * Why SHA-256 and not bcrypt, scrypt or Argon2: those slow hashes exist to protect secrets
 * people choose (guessable in 2^30 tries), by making each guess cost milliseconds. A holder
 * key is drawn by the shipped scripts from /dev/urandom (at least 16 characters of a 64-symbol
 * alphabet: 96 bits and up), so nobody holding a stolen hash can search for its preimage,
 * slow hash or not. A slow hash would instead cost every liveness tens of milliseconds of CPU,
 * with thousands of VMs renewing every few seconds, and make the registry easy to tie up
 * with wrong keys. (A VM that chooses a guessable key weakens only its own lease.) The hash
 * is salted with nothing: equal keys give equal hashes, which tells an attacker with the
 * database nothing they can use, since keys are per boot and random.
 */
import { hash, timingSafeEqual } from 'node:crypto';

/** 16-256 of `[A-Za-z0-9._~+/=:-]`: base64, base64url, hex and UUIDs fit. */
export const HOLDER_KEY_PATTERN = '^[A-Za-z0-9._~+/=:-]{16,256}$';
export const HOLDER_KEY_RE = new RegExp(HOLDER_KEY_PATTERN);
export const HOLDER_KEY_DESCRIPTION = '16-256 characters of A-Z a-z 0-9 . _ ~ + / = : -';

/** The stored form: the algorithm, then the digest in hex; 71 characters. */
const HASH_PREFIX = 'sha256:';
const HASH_RE = /^sha256:[0-9a-f]{64}$/;

export function isHolderKey(value: unknown): value is string {
  return typeof value === 'string' && HOLDER_KEY_RE.test(value);
}

// crypto.hash, the one-shot form: a quarter of createHash().update().digest()'s cost, which
// every keyed liveness pays once (measured: about 1 µs against 4-5 µs on the bench machine).
function digest(key: string): Buffer {
  return hash('sha256', key, 'buffer');
}

/** What the store keeps for a key (never the key itself). The key must be valid (`isHolderKey`). */
export function hashHolderKey(key: string): string {
  return HASH_PREFIX + hash('sha256', key, 'hex');
}

/** Whether a stored hash has the form `hashHolderKey` writes (for an import). */
export function isHolderKeyHash(value: unknown): value is string {
  return typeof value === 'string' && HASH_RE.test(value);
}

/**
 * Whether `key` is the key whose hash is `storedHash`. Compares two 32-byte digests with
 * `timingSafeEqual`, so the time taken says nothing about how much of a guess was right, and
 * the key's length does not matter. A stored value of another form never matches.
 */
export function holderKeyMatches(key: string, storedHash: string): boolean {
  if (!HASH_RE.test(storedHash)) return false;
  const stored = Buffer.from(storedHash.slice(HASH_PREFIX.length), 'hex');
  return timingSafeEqual(digest(key), stored);
}
