/**
 * Holder keys, the watermark and sticky identity, through the HTTP API, on every engine
 * (docs/api.md, "Holder keys", "Watermark", "Sticky identity"): what a VM would notice (status,
 * body, Retry-After) and what the database holds afterwards.
 */
import { expect } from 'chai';
import { Writable } from 'node:stream';
import type { Response } from 'supertest';
import { hashHolderKey } from '../../src/domain/holder-key.js';
import { createLogger, logRegistryEvent } from '../../src/log.js';
import { SECOND, makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

const KEY_A = 'key-A-0123456789abcdef0123456789';
const KEY_B = 'key-B-0123456789abcdef0123456789';

function expectError(res: Response, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.body)).to.equal(status);
  expect(res.body.error.code).to.equal(code);
}

/** The identifier's row and the count of leases: what must not move when a request is refused. */
async function state(h: Harness, name: string): Promise<string> {
  return JSON.stringify([await h.row(name), await h.leasedCount()]);
}

export const holderKeys = (): Mocha.Suite => describe('holder keys', () => {

  it('a lease granted with a key is renewed and released only with it; a wrong, missing or malformed key changes nothing', async () => {
    const h = await makeRegistry({ pool: 'w-[0-1]' });
    const lease = (await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200)).body;
    expect(lease).to.include({ identifier: 'w-0', epoch: 1, watermark: null, instance: null });
    const before = await state(h, 'w-0');
    const lease0 = { client_id: 'vm-a', identifier: 'w-0', epoch: 1 };
    h.clock.advance(5 * SECOND);
    for (const path of ['/liveness', '/release']) {
      expectError(await h.http.post(path).send(lease0), 409, 'not_owner');
      expectError(await h.http.post(path).send({ ...lease0, key: KEY_B }), 409, 'not_owner');
      for (const bad of ['short', 'has spaces in it, 0123456789', 'é'.repeat(20), 'x'.repeat(257), 1234567890123456, null, ['k'.repeat(16)]]) {
        const res = await h.http.post(path).send({ ...lease0, key: bad });
        expectError(res, 400, 'invalid_request');
        expect(res.body.error.message).to.match(/^key: /);
      }
      expect(await state(h, 'w-0'), `${path}: a refused request changed the row`).to.equal(before);
    }
    const renewed = (await h.http.post('/liveness').send({ ...lease0, key: KEY_A }).expect(200)).body;
    expect(renewed.last_seen).to.equal(new Date(h.clock.now()).toISOString());
    const freed = (await h.http.post('/release').send({ ...lease0, key: KEY_A }).expect(200)).body;
    expect(freed).to.include({ status: 'free', client_id: null, instance: null });
    // The key went with the lease.
    expect((await h.row('w-0'))?.['key_hash']).to.equal(null);
  });

  it('the store keeps the hash of the key, never the key', async () => {
    const h = await makeRegistry({ pool: 'w-0' });
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
    const row = await h.row('w-0');
    expect(row?.['key_hash']).to.equal(hashHolderKey(KEY_A)).and.match(/^sha256:[0-9a-f]{64}$/);
    expect(JSON.stringify(row)).to.not.include(KEY_A);
  });

  it('the same client id with another key, none, or a key against a keyless lease is 409 holder_conflict with Retry-After, never the identifier', async () => {
    const h = await makeRegistry({ pool: 'w-[0-2]', rules: { ttlMs: 90 * SECOND } });
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
    const before = await state(h, 'w-0');
    for (const [body, wait] of [[{ client_id: 'vm-a', key: KEY_B }, 90], [{ client_id: 'vm-a' }, 90]] as const) {
      const res = await h.http.post('/allocate').send(body);
      expectError(res, 409, 'holder_conflict');
      expect(res.headers['retry-after']).to.equal(String(wait));
      expect(JSON.stringify(res.body)).to.not.include('"epoch"');
      expect(JSON.stringify(res.body), 'the other claimant is not told which identifier').to.not.include('w-0');
    }
    // Retry-After: the seconds until that lease could end if its holder stays silent.
    h.clock.advance(30_500);
    const later = await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_B });
    expectError(later, 409, 'holder_conflict');
    expect(later.headers['retry-after']).to.equal('60');
    h.clock.advance(60 * SECOND); // expired, not yet reclaimed: still its holder's
    expect((await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_B })).headers['retry-after']).to.equal('1');
    expect(await state(h, 'w-0')).to.equal(before);
    expect(h.events.filter((e) => e.type === 'holder_conflict').map((e) => e.type === 'holder_conflict' && e.reason))
      .to.deep.equal(['other_key', 'no_key', 'other_key', 'other_key']);
    // The holder asking again with its key: same client, same answer.
    const again = (await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200)).body;
    expect(again).to.include({ identifier: 'w-0', epoch: 1 });

    // A lease granted without a key (a seed client): a key against it is a conflict too; no key is its holder.
    await h.http.post('/allocate').send({ client_id: 'vm-seed' }).expect(200);
    const keyless = await h.http.post('/allocate').send({ client_id: 'vm-seed', key: KEY_A });
    expectError(keyless, 409, 'holder_conflict');
    expect(Number(keyless.headers['retry-after'])).to.be.within(1, 90);
    expect((await h.http.post('/allocate').send({ client_id: 'vm-seed' }).expect(200)).body).to.include({ identifier: 'w-1', epoch: 1 });
    // ...and a key on its liveness is not its key.
    expectError(await h.http.post('/liveness').send({ client_id: 'vm-seed', identifier: 'w-1', key: KEY_A }), 409, 'not_owner');
    await h.http.post('/liveness').send({ client_id: 'vm-seed', identifier: 'w-1' }).expect(200);
    const m = await h.metrics.render();
    expect(m).to.match(/asg_id_registry_holder_conflicts_total\{reason="other_key"\} 3/);
    expect(m).to.match(/asg_id_registry_holder_conflicts_total\{reason="key_on_keyless"\} 1/);
  });

  it('once the lease is reclaimed, the other claimant may be granted an identifier (under its own key)', async () => {
    const h = await makeRegistry({ pool: 'w-[0-1]', rules: { ttlMs: 10 * SECOND, cooldownMs: 10 * SECOND } });
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
    h.clock.advance(11 * SECOND);
    expect((await h.registry.reap()).reclaimed).to.equal(1);
    const b = (await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_B }).expect(200)).body;
    expect(b.identifier).to.equal('w-1'); // w-0 cools down: its old holder may still use it
    expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: 'w-1', key: KEY_A }), 409, 'not_owner');
  });

  it('HOLDER_KEYS=required: an allocate without a key is 400 naming key, and changes nothing', async () => {
    const h = await makeRegistry({ pool: 'w-0', claims: { holderKeys: 'required', attestation: null } });
    const res = await h.http.post('/allocate').send({ client_id: 'vm-a' });
    expectError(res, 400, 'invalid_request');
    expect(res.body.error.message).to.match(/^key: is required/);
    expect(await h.leasedCount()).to.equal(0);
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
  });

  it('the key appears in no response, log line or metric (nor does its hash)', async () => {
    let logged = '';
    const out = new Writable({ write(chunk: Buffer, _enc, cb) { logged += chunk.toString(); cb(); } });
    const log = createLogger('trace', out);
    const h = await makeRegistry({ pool: 'w-[0-1]', log });
    const seen: string[] = [];
    const send = async (path: string, body: object): Promise<void> => {
      const res = await h.http.post(path).send(body);
      seen.push(JSON.stringify(res.headers), res.text);
    };
    await send('/allocate', { client_id: 'vm-a', key: KEY_A });
    await send('/allocate', { client_id: 'vm-a', key: KEY_B });
    await send('/allocate', { client_id: 'vm-a', key: KEY_A });
    await send('/liveness', { client_id: 'vm-a', identifier: 'w-0', key: KEY_B, watermark: 3 });
    await send('/liveness', { client_id: 'vm-a', identifier: 'w-0', key: KEY_A, watermark: 3 });
    await send('/liveness', { client_id: 'vm-a', identifier: 'w-0', key: `${KEY_A} ` });
    await send('/release', { client_id: 'vm-a', identifier: 'w-0', key: KEY_B });
    for (const path of ['/identifier/w-0', '/client/vm-a', '/identifiers', '/identifiers?limit=1', '/identifier/w-0/history', '/health']) {
      const res = await h.http.get(path);
      seen.push(JSON.stringify(res.headers), res.text);
    }
    await send('/release', { client_id: 'vm-a', identifier: 'w-0', key: KEY_A });
    for (const e of h.events) logRegistryEvent(log, e);
    log.flush();
    const metrics = await h.metrics.render();
    expect(logged).to.match(/holder conflict/); // the lines are there...
    for (const secret of [KEY_A, KEY_B, hashHolderKey(KEY_A), hashHolderKey(KEY_B), hashHolderKey(KEY_A).slice(7)]) {
      for (const [what, text] of [['responses', seen.join('\n')], ['logs', logged], ['metrics', metrics]] as const) {
        expect(text, `${what} must not carry ${secret.slice(0, 12)}…`).to.not.include(secret); // ...without the key
      }
    }
  });
});

export const watermark = (): Mocha.Suite => describe('watermark', () => {

  it('liveness and release raise it, never lower it, across holders; the next holder learns it on allocate', async () => {
    const h = await makeRegistry({ pool: 'w-0', rules: { cooldownMs: 0 } });
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
    const ask = { client_id: 'vm-a', identifier: 'w-0', key: KEY_A };
    expect((await h.http.post('/liveness').send({ ...ask, watermark: 1_700_000_000_123 }).expect(200)).body.watermark).to.equal(1_700_000_000_123);
    expect((await h.http.post('/liveness').send({ ...ask, watermark: 5 }).expect(200)).body.watermark).to.equal(1_700_000_000_123);
    expect((await h.http.post('/liveness').send(ask).expect(200)).body.watermark).to.equal(1_700_000_000_123);
    expect((await h.http.get('/identifier/w-0')).body.watermark).to.equal(1_700_000_000_123);
    const freed = (await h.http.post('/release').send({ ...ask, watermark: 1_700_000_000_999 }).expect(200)).body;
    expect(freed).to.include({ status: 'free', watermark: 1_700_000_000_999 });
    expect((await h.http.get('/identifiers')).body[0].watermark).to.equal(1_700_000_000_999); // stays on a free identifier
    // The next holder is told the value it must stay above, and cannot lower it either.
    const next = (await h.http.post('/allocate').send({ client_id: 'vm-b' }).expect(200)).body;
    expect(next).to.include({ identifier: 'w-0', epoch: 2, watermark: 1_700_000_000_999 });
    expect((await h.http.post('/liveness').send({ client_id: 'vm-b', identifier: 'w-0', watermark: 0 }).expect(200)).body.watermark).to.equal(1_700_000_000_999);
    // An operator taking it, and the reaper reclaiming it, leave it too.
    await h.http.delete('/identifier/w-0').expect(200);
    expect((await h.http.get('/identifier/w-0')).body.watermark).to.equal(1_700_000_000_999);
    await h.http.post('/allocate').send({ client_id: 'vm-c' }).expect(200);
    h.clock.advance(91 * SECOND);
    expect((await h.registry.reap()).reclaimed).to.equal(1);
    expect((await h.http.get('/identifier/w-0')).body.watermark).to.equal(1_700_000_000_999);
  });

  it('the largest value a JSON number carries exactly is kept exactly; anything else is 400 naming watermark and changes nothing', async () => {
    const h = await makeRegistry({ pool: 'w-0' });
    await h.http.post('/allocate').send({ client_id: 'vm-a' }).expect(200);
    const ask = { client_id: 'vm-a', identifier: 'w-0' };
    const before = await state(h, 'w-0');
    for (const bad of [-1, 1.5, 2 ** 53, 1e300, '5', null, true, [1]]) {
      const res = await h.http.post('/liveness').send({ ...ask, watermark: bad });
      expectError(res, 400, 'invalid_request');
      expect(res.body.error.message).to.match(/^watermark: /);
      expectError(await h.http.post('/release').send({ ...ask, watermark: bad }), 400, 'invalid_request');
    }
    expect(await state(h, 'w-0')).to.equal(before);
    expect((await h.http.post('/liveness').send({ ...ask, watermark: Number.MAX_SAFE_INTEGER }).expect(200)).body.watermark).to.equal(Number.MAX_SAFE_INTEGER);
    expect((await h.row('w-0'))?.['watermark']).to.equal(Number.MAX_SAFE_INTEGER);
  });

  it('a refused liveness or release (another client, the wrong epoch or key) does not move it', async () => {
    const h = await makeRegistry({ pool: 'w-0' });
    await h.http.post('/allocate').send({ client_id: 'vm-a', key: KEY_A }).expect(200);
    for (const body of [
      { client_id: 'vm-b', identifier: 'w-0', watermark: 9 },
      { client_id: 'vm-a', identifier: 'w-0', epoch: 2, key: KEY_A, watermark: 9 },
      { client_id: 'vm-a', identifier: 'w-0', key: KEY_B, watermark: 9 },
    ]) {
      expect((await h.http.post('/liveness').send(body)).status).to.equal(409);
      expect((await h.http.post('/release').send(body)).status).to.equal(409);
    }
    expect((await h.http.get('/identifier/w-0')).body.watermark).to.equal(null);
  });
});

export const stickyIdentity = (): Mocha.Suite => describe('sticky identity', () => {

  it('a client that holds nothing gets back the identifier it held last when it is allocatable, else the allocation order', async () => {
    const h = await makeRegistry({ pool: 'w-[0-3]', rules: { cooldownMs: 60 * SECOND } });
    const take = async (client: string, key?: string): Promise<string> =>
      (await h.http.post('/allocate').send({ client_id: client, ...(key ? { key } : {}) }).expect(200)).body.identifier;
    expect([await take('vm-a'), await take('vm-b', KEY_B), await take('vm-c')]).to.deep.equal(['w-0', 'w-1', 'w-2']);
    await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'w-0' }).expect(200);
    h.clock.advance(SECOND);
    await h.http.post('/release').send({ client_id: 'vm-b', identifier: 'w-1', key: KEY_B }).expect(200);
    h.clock.advance(SECOND);
    // The allocation order would give w-3 (never used), then w-0 (free longest): each gets its own back, under a new epoch and key.
    const b = (await h.http.post('/allocate').send({ client_id: 'vm-b', key: KEY_A }).expect(200)).body;
    expect(b).to.include({ identifier: 'w-1', epoch: 2 });
    expect(await take('vm-a')).to.equal('w-0');
    expect(await take('vm-new')).to.equal('w-3');

    // Not allocatable now (cooling after a force release): the allocation order, not a wait.
    await h.http.delete('/identifier/w-2').expect(200);
    const c = (await h.http.post('/allocate').send({ client_id: 'vm-c' })).status;
    expect(c).to.equal(503); // w-2 cools, every other one is held
    h.clock.advance(60 * SECOND);
    expect(await take('vm-c')).to.equal('w-2');
  });

  it('an identifier granted to another client since is that client\'s, not sticky to its earlier holder', async () => {
    const h = await makeRegistry({ pool: 'w-[0-1]', rules: { cooldownMs: 0 } });
    const take = async (client: string): Promise<string> => (await h.http.post('/allocate').send({ client_id: client }).expect(200)).body.identifier;
    expect(await take('vm-a')).to.equal('w-0');
    await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'w-0' }).expect(200);
    h.clock.advance(SECOND);
    expect(await take('vm-b')).to.equal('w-1'); // never used first
    await h.http.post('/release').send({ client_id: 'vm-b', identifier: 'w-1' }).expect(200);
    h.clock.advance(SECOND);
    expect(await take('vm-d')).to.equal('w-0');
    await h.http.post('/release').send({ client_id: 'vm-d', identifier: 'w-0' }).expect(200);
    h.clock.advance(SECOND);
    // w-1 (free longer) by the allocation order; w-0 is vm-d's to get back now.
    expect(await take('vm-a')).to.equal('w-1');
    expect(await take('vm-d')).to.equal('w-0');
  });
});

export const stickyLookup = (): Mocha.Suite => describe('sticky identity is one index lookup', () => {
  it('SQLite finds a client\'s last identifier through the index of last holders, not a scan of the pool', async () => {
    const h = await makeRegistry({ pool: 'w-[0-9]', engine: 'sqlite' });
    const db = h.sqlite?.db;
    if (!db) throw new Error('expected SQLite');
    const sticky = `SELECT * FROM identifiers WHERE last_client_id = ? ORDER BY last_granted_at DESC, id DESC LIMIT 1`;
    const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sticky}`).all('vm-a') as { detail: string }[]).map((r) => r.detail).join('; ');
    expect(plan).to.match(/SEARCH identifiers USING INDEX identifiers_by_last_client \(last_client_id=\?\)/);
    expect(plan).to.not.match(/TEMP B-TREE/); // ordered by the index too
  });
});
