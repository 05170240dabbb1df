/**
 * The migration that lets history say `terminated` and `terminating` (and keeps the ids of the
 * AWS events acted on), applied to a database that already has history: every entry and its id
 * kept, the new events accepted, an EventBridge event acting on a lease granted before it.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { FakeClock } from '../../src/clock.js';
import { Registry } from '../../src/registry.js';
import { openPostgresStore } from '../../src/store/postgres/store.js';
import { MIGRATIONS as PG_MIGRATIONS } from '../../src/store/postgres/schema.js';
import { MIGRATIONS as SQLITE_MIGRATIONS } from '../../src/store/sqlite/schema.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import type { Store } from '../../src/store/types.js';
import { DEFAULT_RULES, tempDir } from '../support/helpers.js';
import { closeAfterTest, freshDatabase, sharedPostgres } from '../support/postgres.js';

const before = (list: readonly string[]): readonly string[] => list.slice(0, list.findIndex((m) => m.includes('CREATE TABLE aws_events')));

async function actOnOldLease(store: Store): Promise<unknown[]> {
  const registry = new Registry({ store, rules: DEFAULT_RULES });
  const r = await registry.awsEvent({
    kind: 'terminated', type: 'state_change', instanceId: 'i-0123456789abcdef0', eventId: 'e-1', detailType: 'EC2 Instance State-change Notification',
    source: 'aws.ec2', time: '2026-01-08T10:00:00Z', note: 'test',
  });
  expect(r).to.include({ released: 1, noted: 0 });
  return (await registry.history('w-0')).map((h) => [h.event, h.clientId, h.epoch]);
}

describe('AWS events migration, on a database with history', () => {
  it('SQLite: history rebuilt with its rows and ids; terminated accepted', async () => {
    const { dir, cleanup } = tempDir();
    try {
      const path = join(dir, 'registry.db');
      const db = new Database(path);
      const old = before(SQLITE_MIGRATIONS);
      expect(old.length).to.be.above(0).and.below(SQLITE_MIGRATIONS.length);
      for (const m of old) db.exec(m);
      db.pragma(`user_version = ${old.length}`);
      db.exec(`INSERT INTO identifiers (id, name, pool_order, epoch, client_id, allocated_at, last_seen, last_client_id, last_granted_at)
               VALUES (1, 'w-0', 0, 2, 'i-0123456789abcdef0', 5, 5, 'i-0123456789abcdef0', 5)`);
      db.exec(`INSERT INTO history (id, identifier_id, at, event, client_id, epoch) VALUES
               (7, 1, 1, 'allocated', 'vm-a', 1), (8, 1, 2, 'reclaimed', 'vm-a', 1), (9, 1, 5, 'allocated', 'i-0123456789abcdef0', 2)`);
      db.close();
      const store = new SqliteStore({ path, clock: new FakeClock() });
      try {
        expect(await actOnOldLease(store)).to.deep.equal([
          ['allocated', 'vm-a', 1], ['reclaimed', 'vm-a', 1], ['allocated', 'i-0123456789abcdef0', 2], ['terminated', 'i-0123456789abcdef0', 2],
        ]);
        expect(store.db.prepare('SELECT id FROM history ORDER BY id').all()).to.deep.equal([{ id: 7 }, { id: 8 }, { id: 9 }, { id: 10 }]);
        expect(store.db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'history' ORDER BY name`).all())
          .to.deep.equal([{ name: 'history_by_identifier' }, { name: 'history_reclaimed_at' }]);
      } finally {
        await store.close();
      }
    } finally {
      cleanup();
    }
  });

  it('PostgreSQL: the CHECK widened in place; terminated accepted', async () => {
    const url = await freshDatabase();
    const database = new URL(url).pathname.slice(1);
    const server = await sharedPostgres();
    const old = before(PG_MIGRATIONS);
    expect(old.length).to.be.above(0).and.below(PG_MIGRATIONS.length);
    await server.sql(`CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`, [], database);
    for (const [i, m] of old.entries()) {
      await server.sql(m, [], database);
      await server.sql('INSERT INTO schema_version (version) VALUES ($1)', [i + 1], database);
    }
    await server.sql(`INSERT INTO identifiers (id, name, pool_order, epoch, client_id, allocated_at, last_seen, last_client_id, last_granted_at)
                      VALUES (1, 'w-0', 0, 2, 'i-0123456789abcdef0', 5, 5, 'i-0123456789abcdef0', 5)`, [], database);
    await server.sql(`INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES
                      (1, 1, 'allocated', 'vm-a', 1), (1, 2, 'reclaimed', 'vm-a', 1), (1, 5, 'allocated', 'i-0123456789abcdef0', 2)`, [], database);
    const store = await openPostgresStore({ url, clock: new FakeClock(), poolSize: 2 });
    closeAfterTest(store);
    expect(await actOnOldLease(store)).to.deep.equal([
      ['allocated', 'vm-a', 1], ['reclaimed', 'vm-a', 1], ['allocated', 'i-0123456789abcdef0', 2], ['terminated', 'i-0123456789abcdef0', 2],
    ]);
  });
});
