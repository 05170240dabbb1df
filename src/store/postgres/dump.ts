/**
 * Export and import of the whole state (see ../dump.ts for the format) on PostgreSQL.
 * The export reads one snapshot (REPEATABLE READ), so a registry serving meanwhile cannot tear
 * it; the import runs in one transaction into an empty database and is refused otherwise.
 */
import type { PoolClient } from 'pg';
import { columns, instanceColumn } from '../columns.js';
import { isPortableMeta, notEmptyError, toDumpHistory, toDumpIdentifier, toDumpMeta } from '../dump.js';
import { DUMP_IDENTIFIER_COLUMNS, DUMP_SELECT } from '../sql.js';
import type { Dump } from '../dump.js';
import { POSTGRES_TYPES } from './rows.js';
import { LOCK_IMPORT, LOCK_NAMESPACE } from './statements.js';

/** Rows an import sends per statement. */
const CHUNK = 5000;

async function all(client: PoolClient, text: string): Promise<unknown[]> {
  const res = await client.query(text);
  const rows: unknown[] = res.rows;
  return rows;
}

export async function dumpFrom(client: PoolClient, exportedAt: number): Promise<Dump> {
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const identifiers = (await all(client, DUMP_SELECT.identifiers())).map((r) => toDumpIdentifier(r));
    const history = (await all(client, DUMP_SELECT.history)).map((r) => toDumpHistory(r));
    const meta = (await all(client, DUMP_SELECT.meta)).map((r) => toDumpMeta(r)).filter(isPortableMeta);
    await client.query('COMMIT');
    return { engine: 'postgres', exportedAt, identifiers, history, meta };
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

function chunks<T>(list: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += CHUNK) out.push(list.slice(i, i + CHUNK));
  return out;
}

/** Loads `d` as it is, times included (PostgresStore.load translates them first). */
export async function loadInto(client: PoolClient, d: Dump): Promise<void> {
  await client.query('BEGIN');
  try {
    // Two imports at once: the second waits, then finds the first's rows and is refused.
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_IMPORT]);
    await client.query('LOCK TABLE identifiers, history IN EXCLUSIVE MODE');
    const counts = columns((await client.query(
      'SELECT (SELECT count(*) FROM identifiers) AS identifiers, (SELECT count(*) FROM history) AS history')).rows[0], POSTGRES_TYPES);
    const held = counts.int('identifiers');
    const logged = counts.int('history');
    if (held > 0 || logged > 0) throw notEmptyError(held, logged);
    for (const part of chunks(d.identifiers)) {
      await client.query(
        `INSERT INTO identifiers (${DUMP_IDENTIFIER_COLUMNS})
         SELECT ${DUMP_IDENTIFIER_COLUMNS}
         FROM unnest($1::text[], $2::bigint[], $3::boolean[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],
                     $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::text[], $14::bigint[])
              WITH ORDINALITY AS t(${DUMP_IDENTIFIER_COLUMNS}, ord)
         ORDER BY ord`,
        [
          part.map((i) => i.name), part.map((i) => i.poolOrder), part.map((i) => i.retired), part.map((i) => i.epoch),
          part.map((i) => i.clientId), part.map((i) => i.allocatedAt), part.map((i) => i.lastSeen), part.map((i) => i.availableAt),
          part.map((i) => i.fenceCooldownMs),
          part.map((i) => i.keyHash ?? null), part.map((i) => instanceColumn(i.instance)), part.map((i) => i.watermark ?? null),
          part.map((i) => i.lastClientId ?? null), part.map((i) => i.lastGrantedAt ?? null),
        ],
      );
    }
    for (const part of chunks(d.history)) {
      await client.query(
        `INSERT INTO history (identifier_id, at, event, client_id, epoch)
         SELECT i.id, t.at, t.event, t.client_id, t.epoch
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
              WITH ORDINALITY AS t(identifier, at, event, client_id, epoch, ord)
         JOIN identifiers i ON i.name = t.identifier
         ORDER BY t.ord`,
        [part.map((h) => h.identifier), part.map((h) => h.at), part.map((h) => h.event), part.map((h) => h.clientId), part.map((h) => h.epoch)],
      );
    }
    for (const m of d.meta.filter(isPortableMeta)) {
      await client.query('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [m.key, m.value]);
    }
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}
