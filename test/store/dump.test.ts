/**
 * The dump's time translation (store/dump.ts): an import moves every time of the source onto the
 * target's clock, each lease and cool-down keeping what it had left. The moves between real
 * registries through `idreg` are in test/system/cli.test.ts.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { FakeTimeSource } from '../../src/clock.js';
import { IMPORT_META, dumpLines, parseDump, translateDump } from '../../src/store/dump.js';
import { exportSqliteFile } from '../../src/store/sqlite/dump.js';
import { MIGRATIONS } from '../../src/store/sqlite/schema.js';
import { tempDir } from '../support/helpers.js';
import type { Dump } from '../../src/store/dump.js';

const T = Date.parse('2026-03-01T12:00:00.000Z');
const MIN = 60_000;

/** A source registry at T: w-0 leased (renewed 10 s ago), w-1 cooling for 4 more minutes, w-2 free since long, w-3 never used. */
const source: Dump = {
  engine: 'sqlite',
  exportedAt: T,
  identifiers: [
    {
      name: 'w-0', poolOrder: 0, retired: false, epoch: 3, clientId: 'vm-a', allocatedAt: T - 5 * MIN, lastSeen: T - 10_000, availableAt: T - 6 * MIN, fenceCooldownMs: 300_000,
      keyHash: `sha256:${'ab'.repeat(32)}`, instance: { accountId: '123456789012', region: 'eu-west-1', availabilityZone: 'eu-west-1a', instanceType: 't3.micro', imageId: 'ami-0123456789abcdef0' },
      watermark: T + 3 * MIN, lastClientId: 'vm-a', lastGrantedAt: T - 5 * MIN,
    },
    {
      name: 'w-1', poolOrder: 1, retired: false, epoch: 1, clientId: null, allocatedAt: null, lastSeen: null, availableAt: T + 4 * MIN, fenceCooldownMs: null,
      keyHash: null, instance: null, watermark: T - MIN, lastClientId: 'vm-b', lastGrantedAt: T - 2 * MIN,
    },
    {
      name: 'w-2', poolOrder: 2, retired: true, epoch: 2, clientId: null, allocatedAt: null, lastSeen: null, availableAt: T - 60 * MIN, fenceCooldownMs: null,
      keyHash: null, instance: null, watermark: null, lastClientId: null, lastGrantedAt: null,
    },
    {
      name: 'w-3', poolOrder: 3, retired: false, epoch: 0, clientId: null, allocatedAt: null, lastSeen: null, availableAt: 0, fenceCooldownMs: null,
      keyHash: null, instance: null, watermark: null, lastClientId: null, lastGrantedAt: null,
    },
  ],
  history: [
    { identifier: 'w-1', at: T - 2 * MIN, event: 'allocated', clientId: 'vm-b', epoch: 1 },
    { identifier: 'w-1', at: T - MIN, event: 'force_released', clientId: 'vm-b', epoch: 1 },
  ],
  meta: [
    { key: 'pool_fingerprint', value: 'abc' },
    { key: 'reaper_state', value: JSON.stringify({ lastRunAt: T - 5000, lastReclaimed: 2, held: false, reason: null }) },
    { key: 'service_up_since', value: String(T - 30 * MIN) },
    // The mass-expiry guard tripped 5 minutes ago on 30 of 40; its own reclaims counted out from 3 minutes ago.
    { key: 'guard_memory', value: JSON.stringify({ tripped: { at: T - 5 * MIN, expired: 30, of: 40 }, countFrom: T - 3 * MIN }) },
  ],
};

describe('dump: times translated on import', () => {
  for (const skew of [10 * MIN, -10 * MIN, 0]) {
    it(`a target whose clock is ${skew / MIN} min from the source's: every time moves by it, nothing else changes`, () => {
      const { dump, shiftMs } = translateDump(source, T + skew);
      expect(shiftMs).to.equal(skew);
      const [w0, w1, w2, w3] = dump.identifiers;
      // Each keeps what it had left at the export.
      expect([w0?.lastSeen, w0?.allocatedAt, w0?.availableAt]).to.deep.equal([T + skew - 10_000, T + skew - 5 * MIN, T + skew - 6 * MIN]);
      expect(w1?.availableAt, 'the cool-down keeps its 4 minutes').to.equal(T + skew + 4 * MIN);
      expect(w2?.availableAt).to.equal(T + skew - 60 * MIN);
      expect(w3?.availableAt, 'never used stays never used').to.equal(0);
      expect(dump.identifiers.map((i) => [i.name, i.epoch, i.clientId, i.retired, i.fenceCooldownMs])).to.deep.equal(
        source.identifiers.map((i) => [i.name, i.epoch, i.clientId, i.retired, i.fenceCooldownMs]));
      // The last holder's grant time is registry time and moves; the key hash, the instance facts
      // and the watermark (a time on the holders' clocks, not the registry's) are carried as they are.
      expect(dump.identifiers.map((i) => i.lastGrantedAt)).to.deep.equal([T + skew - 5 * MIN, T + skew - 2 * MIN, null, null]);
      expect(dump.identifiers.map((i) => [i.keyHash, i.instance, i.watermark, i.lastClientId])).to.deep.equal(
        source.identifiers.map((i) => [i.keyHash, i.instance, i.watermark, i.lastClientId]));
      expect(dump.history.map((h) => h.at)).to.deep.equal([T + skew - 2 * MIN, T + skew - MIN]);
      const meta = Object.fromEntries(dump.meta.map((m) => [m.key, m.value]));
      expect(meta['pool_fingerprint']).to.equal('abc');
      expect(meta['service_up_since']).to.equal(String(T + skew - 30 * MIN));
      expect(JSON.parse(meta['reaper_state'] ?? '{}')).to.deep.equal({ lastRunAt: T + skew - 5000, lastReclaimed: 2, held: false, reason: null });
      // A tripped guard stays tripped on the target, on the target's clock: it tripped 5 minutes
      // before the export there too (a guard left on the source's clock would, 10 minutes behind,
      // count reclaims the guard itself made; 10 minutes ahead, trip "in the future").
      expect(JSON.parse(meta['guard_memory'] ?? '{}'), 'the guard memory moves with the leases').to.deep.equal(
        { tripped: { at: T + skew - 5 * MIN, expired: 30, of: 40 }, countFrom: T + skew - 3 * MIN });
      expect(JSON.parse(meta[IMPORT_META] ?? '{}')).to.include({ engine: 'sqlite', exported_at: T, time_base: T, imported_at: T + skew, shift_ms: skew });
    });
  }

  it('a guard at rest stays at rest (countFrom 0 is "never tripped", not a time)', () => {
    const atRest: Dump = { ...source, meta: [{ key: 'guard_memory', value: JSON.stringify({ tripped: null, countFrom: 0 }) }] };
    const { dump } = translateDump(atRest, T + 10 * MIN);
    const meta = Object.fromEntries(dump.meta.map((m) => [m.key, m.value]));
    expect(JSON.parse(meta['guard_memory'] ?? '{}')).to.deep.equal({ tripped: null, countFrom: 0 });
  });

  it('the file carries the export time as version 2, and reads it back', () => {
    const lines = [...dumpLines(source)];
    expect(JSON.parse(lines[0] ?? '{}')).to.include({ version: 2, exported_at: T });
    const back = parseDump(lines);
    expect(back.legacyExportTime).to.equal(undefined);
    expect(back.identifiers).to.deep.equal(source.identifiers);
    expect(translateDump(back, T + MIN).shiftMs).to.equal(MIN);
  });

  it('a version 1 file: its exported_at is not trusted; times are measured from the latest time written in it', () => {
    // As the previous version wrote it: no fence_cooldown_ms, exported_at the exporting host's
    // wall clock, here 10 minutes ahead of the registry time of everything in the file.
    const v1 = [...dumpLines(source)].map((line, i) => {
      const o = JSON.parse(line) as Record<string, Record<string, unknown> | number | string>;
      if (i === 0) return JSON.stringify({ ...o, version: 1, exported_at: T + 10 * MIN });
      const rec = o['identifier'];
      if (typeof rec === 'object') {
        const { fence_cooldown_ms: _, ...rest } = rec;
        return JSON.stringify({ identifier: rest });
      }
      return line;
    });
    const d = parseDump(v1);
    expect(d.legacyExportTime).to.equal(true);
    expect(d.identifiers.every((i) => i.fenceCooldownMs === null)).to.equal(true);
    const { dump, shiftMs } = translateDump(d, T + 20 * MIN);
    // The latest time written is the last sweep, 5 s before the export: taken as the export.
    expect(shiftMs).to.equal(20 * MIN + 5000);
    expect(dump.identifiers[1]?.availableAt, 'the cool-down is not shortened (5 s longer)').to.equal(T + 20 * MIN + 4 * MIN + 5000);
    expect(dump.identifiers[0]?.lastSeen, 'nor the lease').to.equal(T + 20 * MIN - 10_000 + 5000);
    expect(JSON.parse(dump.meta.find((m) => m.key === IMPORT_META)?.value ?? '{}')).to.include({
      time_base: T - 5000, time_base_from: 'latest time in a version 1 dump',
    });
  });

  it('an unknown version is refused, naming the ones it reads', () => {
    const [head, ...rest] = [...dumpLines(source)];
    expect(() => parseDump([JSON.stringify({ ...JSON.parse(head ?? '{}'), version: 3 }), ...rest])).to.throw(/version 3 is not one this registry reads \(1, 2\)/);
  });

  it('idreg export reads a file a previous version left (not yet migrated, opened read-only): no fence window recorded, times from its floor', () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'old.db');
      const old = new Database(path);
      for (const m of MIGRATIONS.slice(0, 4)) old.exec(m);
      old.pragma('user_version = 4');
      old.prepare(`INSERT INTO identifiers (name, pool_order, epoch, client_id, allocated_at, last_seen) VALUES ('w-0', 0, 1, 'vm-a', ?, ?)`).run(T - MIN, T - 10_000);
      old.prepare(`INSERT INTO history (identifier_id, at, event, client_id, epoch) VALUES (1, ?, 'allocated', 'vm-a', 1)`).run(T - MIN);
      old.close();
      // Another boot than the one that anchored it (none here): registry time resumes from the floor.
      const d = exportSqliteFile(path, new FakeTimeSource(T + 60 * MIN));
      expect(d.exportedAt).to.equal(T - 10_000);
      expect(d.identifiers[0]).to.include({ name: 'w-0', clientId: 'vm-a', fenceCooldownMs: null });
    } finally {
      t.cleanup();
    }
  });
});
