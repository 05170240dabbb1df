/**
 * What a holder left behind outlives the process and the engine: the watermark never goes down
 * across restarts and a SQLite -> PostgreSQL move (`idreg export` / `idreg import`), a lease
 * keeps its key (its hash: the file never holds a key) and its instance facts, and a VM that
 * released gets its identifier back on the new store (sticky identity).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { FakeClock } from '../../src/clock.js';
import { hashHolderKey } from '../../src/domain/holder-key.js';
import type { InstanceInfo } from '../../src/domain/types.js';
import { Registry } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { MIGRATIONS } from '../../src/store/sqlite/schema.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import { DEFAULT_RULES, SECOND, errorCode, makeRegistryOn, tempDir } from '../support/helpers.js';
import { ROOT } from '../support/process-helpers.js';
import { closeAfterTest, freshDatabase } from '../support/postgres.js';

/** `idreg ARGS` as an operator runs it: its output, or a rejection with its exit status. */
function idreg(args: string[], env: Record<string, string> = {}): Promise<string> {
  const child = spawn(process.execPath, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'src/cli/idreg.ts'), ...args], {
    cwd: ROOT, env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
  return new Promise((resolve, reject) => child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`idreg ${args.join(' ')}: exit ${String(code)}: ${out}`)))));
}

const KEY = 'key-move-0123456789abcdef';
const FACTS: InstanceInfo = { accountId: '111122223333', region: 'eu-west-1', availabilityZone: 'eu-west-1b', instanceType: 'c7g.large', imageId: 'ami-0abc' };

describe('holders across restarts and engines', function () {
  this.timeout(120_000);

  it('the watermark never goes down, and keys, instance facts and sticky names survive a restart and a SQLite -> PostgreSQL move', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'registry.db');
      const clock = new FakeClock();
      const first = makeRegistryOn(path, clock);
      await first.syncPool(['w-0', 'w-1', 'w-2']);
      await first.allocate('vm-a', { key: KEY });
      await first.renew('vm-a', 'w-0', 1, { key: KEY, watermark: 100 });
      await first.release('vm-a', 'w-0', 1, { key: KEY, watermark: 150 });
      await first.allocate('i-0123456789abcdef0', { key: KEY, instance: FACTS });
      await first.renew('i-0123456789abcdef0', 'w-1', 1, { key: KEY, watermark: 42 });
      await first.close();

      // A restart: the same file, a new process.
      clock.advance(SECOND);
      const again = makeRegistryOn(path, clock);
      expect((await again.identifier('w-0')).watermark).to.equal(150);
      expect((await again.leaseOfClient('i-0123456789abcdef0'))).to.include({ watermark: 42 }).and.deep.include({ instance: FACTS });
      expect(await errorCode(again.renew('i-0123456789abcdef0', 'w-1', 1, { watermark: 1 }))).to.equal('not_owner');
      await again.renew('i-0123456789abcdef0', 'w-1', 1, { key: KEY, watermark: 41 });
      expect((await again.identifier('w-1')).watermark).to.equal(42);
      await again.close();

      // idreg export from the file, idreg import into PostgreSQL.
      const file = join(t.dir, 'state.jsonl');
      const url = await freshDatabase();
      expect(await idreg(['export', '--db', path, file])).to.match(/^exported 3 identifiers/);
      const text = readFileSync(file, 'utf8');
      expect(text).to.not.include(KEY);
      expect(text).to.include(hashHolderKey(KEY));
      const imported = await idreg(['import', file], { DATABASE_URL: url });
      expect(imported).to.match(/^imported 3 identifiers/);
      // The import moves every time onto the target's clock (its real one here): the registry on
      // the target goes on from there, so this test's clock moves by the same shift.
      const shift = /times moved ([+-]?\d+) ms/.exec(imported);
      expect(shift, imported).to.not.equal(null);
      clock.advance(Number(shift?.[1]));

      const store = await openPostgresStore({ url, clock, poolSize: 2 });
      closeAfterTest(store);
      const moved = new Registry({ store, rules: DEFAULT_RULES });
      expect((await moved.identifier('w-0')).watermark).to.equal(150);
      const lease = await moved.leaseOfClient('i-0123456789abcdef0');
      expect(lease).to.include({ identifier: 'w-1', watermark: 42 }).and.deep.include({ instance: FACTS });
      expect(await errorCode(moved.renew('i-0123456789abcdef0', 'w-1', 1))).to.equal('not_owner');
      expect(await errorCode(moved.allocate('i-0123456789abcdef0', { key: 'another-key-0123456789' }))).to.equal('holder_conflict');
      await moved.renew('i-0123456789abcdef0', 'w-1', 1, { key: KEY, watermark: 7 });
      expect((await moved.identifier('w-1')).watermark).to.equal(42);
      // w-2 was never used and comes first in the allocation order; vm-a gets its own back.
      expect((await moved.allocate('vm-a')).identifier).to.equal('w-0');
      expect((await moved.allocate('vm-new')).identifier).to.equal('w-2');
    } finally {
      t.cleanup();
    }
  });

  it('a database from before holder keys: its leases and last holders carry over, and a keyless lease stays keyless', async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'old.db');
      const old = new Database(path);
      old.pragma('journal_mode = WAL');
      const before = MIGRATIONS.findIndex((m) => m.includes('ADD COLUMN key_hash'));
      expect(before).to.be.above(0);
      for (const m of MIGRATIONS.slice(0, before)) old.exec(m);
      old.pragma(`user_version = ${before}`);
      old.exec(`INSERT INTO identifiers (name, pool_order, epoch, client_id, allocated_at, last_seen, available_at) VALUES
        ('w-0', 0, 1, 'vm-held', 1000, 1000, 0), ('w-1', 1, 2, NULL, NULL, NULL, 900), ('w-2', 2, 0, NULL, NULL, NULL, 0);
        INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES
        (2, 100, 'allocated', 'vm-first', 1), (2, 200, 'released', 'vm-first', 1), (2, 300, 'allocated', 'vm-back', 2), (2, 900, 'released', 'vm-back', 2),
        (1, 1000, 'allocated', 'vm-held', 1);
        UPDATE pool_counts SET total = 3, leased = 1;`);
      old.close();
      const store = new SqliteStore({ path, clock: new FakeClock(10_000) });
      const registry = new Registry({ store, rules: DEFAULT_RULES });
      try {
        expect((await registry.allocate('vm-held')).identifier).to.equal('w-0'); // keyless: asked without a key, its own
        expect(await errorCode(registry.allocate('vm-held', { key: KEY }))).to.equal('holder_conflict');
        expect((await registry.allocate('vm-back')).identifier).to.equal('w-1'); // its last, not the never-used w-2
        expect((await registry.allocate('vm-first')).identifier).to.equal('w-2');
      } finally {
        await store.close();
      }
    } finally {
      t.cleanup();
    }
  });
});
