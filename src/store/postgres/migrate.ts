/**
 * Brings the schema up to date in one transaction under an advisory lock, so instances that
 * start together take turns: the first migrates, the others find it done. DDL is
 * transactional in PostgreSQL, so a failed migration leaves the database as it was.
 */
import type { PoolClient } from 'pg';
import { scalar } from './rows.js';
import { MIGRATIONS } from './schema.js';
import { LOCK_MIGRATE, LOCK_NAMESPACE } from './statements.js';

export class SchemaTooNewError extends Error {
  override readonly name = 'SchemaTooNewError';
}

/** Applies the missing migrations; resolves with the schema version now in force. */
export async function migrate(client: PoolClient): Promise<number> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_MIGRATE]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_version (
      version    INTEGER PRIMARY KEY,
      applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )`);
    const res = await client.query('SELECT coalesce(max(version), 0) AS n FROM schema_version');
    const current = scalar(res.rows[0]) ?? 0;
    if (current > MIGRATIONS.length) {
      throw new SchemaTooNewError(
        `the database schema is at version ${current}, newer than this registry knows (${MIGRATIONS.length}); upgrade the registry`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      await client.query(MIGRATIONS[v] ?? '');
      await client.query('INSERT INTO schema_version (version) VALUES ($1)', [v + 1]);
    }
    await client.query('COMMIT');
    return MIGRATIONS.length;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}
