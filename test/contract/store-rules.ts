/**
 * The database itself refuses what the rules forbid (the CHECKs, unique indexes and triggers of
 * src/store/sqlite/schema.ts and src/store/postgres/schema.ts), so neither a bug in a use case
 * nor an operator's SQL can give one identifier to two holders: written once, run on every
 * engine (test/contract/sqlite.test.ts, test/contract/postgres.test.ts).
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { currentEngine } from '../support/engines.js';
import { makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

/** Raw SQL on the registry's database, as an operator (or a buggy caller) would run it: the error it meets, or null. */
function refusal(h: Harness, text: string): Promise<unknown> {
  return h.sql(text).then(() => null, (e: unknown) => e);
}

const CHECK = /CHECK constraint failed|violates check constraint/;

export const storeRules = (): Mocha.Suite => describe('store: the database refuses what the rules forbid', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await makeRegistry({ pool: 'a\nb\n' });
    await h.registry.allocate('vm-1'); // a, epoch 1
  });

  it('one client cannot hold two identifiers, even through raw SQL', async () => {
    const err = await refusal(h, `UPDATE identifiers SET client_id = 'vm-1', allocated_at = 1, last_seen = 1, epoch = epoch + 1 WHERE name = 'b'`);
    if (currentEngine() === 'sqlite') expect(err).to.be.instanceOf(Database.SqliteError).with.property('message').that.matches(/UNIQUE/);
    else expect(err).to.have.property('code', '23505');
  });

  it('an identifier cannot pass between holders without being freed', async () => {
    const err = await refusal(h, `UPDATE identifiers SET client_id = 'vm-2', epoch = epoch + 1 WHERE name = 'a'`);
    expect(String(err)).to.match(/without being freed/);
  });

  it('epochs never go back, and a grant must take a new one', async () => {
    expect(String(await refusal(h, `UPDATE identifiers SET epoch = 0 WHERE name = 'a'`))).to.match(/may not decrease/);
    await h.registry.release('vm-1', 'a');
    expect(String(await refusal(h, `UPDATE identifiers SET client_id = 'vm-2', allocated_at = 1, last_seen = 1 WHERE name = 'a'`))).to.match(/new epoch/);
  });

  it('a watermark never goes down, not even to none, and stays a whole number below 2^53', async () => {
    await h.registry.renew('vm-1', 'a', 1, { watermark: 100 });
    expect(String(await refusal(h, `UPDATE identifiers SET watermark = 99 WHERE name = 'a'`))).to.match(/watermark may not decrease/);
    expect(String(await refusal(h, `UPDATE identifiers SET watermark = NULL WHERE name = 'a'`))).to.match(/watermark may not decrease/);
    expect(String(await refusal(h, `UPDATE identifiers SET watermark = -1 WHERE name = 'b'`))).to.match(CHECK);
    expect(String(await refusal(h, `UPDATE identifiers SET watermark = 9007199254740992 WHERE name = 'b'`))).to.match(CHECK);
    expect((await h.row('a'))?.['watermark']).to.equal(100);
  });

  it('a free identifier carries no key hash and no instance facts: they go with the lease', async () => {
    expect(String(await refusal(h, `UPDATE identifiers SET key_hash = 'sha256:00' WHERE name = 'b'`))).to.match(CHECK);
    expect(String(await refusal(h, `UPDATE identifiers SET instance = '{}' WHERE name = 'b'`))).to.match(CHECK);
    expect(await h.row('b')).to.include({ key_hash: null, instance: null });
  });
});
