/**
 * How idreg writes an output FILE (export, backup): checked before any work, so a refusal
 * writes nothing; written beside it as FILE.partial; then put in place, never replacing a file
 * by accident.
 */
import { existsSync, linkSync, realpathSync, renameSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { usageError } from './args.js';
import type { CliError } from './args.js';

const errnoOf = (e: unknown): string => (e instanceof Error && 'code' in e ? String(e.code) : '');

const exists = (cmd: string, dest: string): CliError =>
  usageError(`${cmd}: ${dest} already exists; nothing written (--force replaces it)`);

/**
 * The checks on an output FILE, before any work, so a refusal writes nothing: not a folder,
 * not the database being read, and not an existing file unless --force.
 */
export function checkOutput(cmd: string, dest: string, force: boolean, db: string | null): void {
  if (!existsSync(dest)) return;
  const real = realpathSync(dest);
  if (db !== null && existsSync(db) && real === realpathSync(db)) throw usageError(`${cmd}: ${dest} is the database itself; write elsewhere`);
  if (statSync(real).isDirectory()) throw usageError(`${cmd}: ${dest} is a folder; FILE names the file to write`);
  if (!force) throw exists(cmd, dest);
}

/**
 * Puts a finished `partial` file in place at `dest`, replacing `dest` only with --force.
 * Without, a hard link, which fails if `dest` appeared since the check: nothing is ever
 * replaced by accident, even by a race. (On a file system without hard links, the check
 * before the work stands alone.)
 */
export function place(cmd: string, partial: string, dest: string, force: boolean): void {
  if (force) {
    renameSync(partial, dest);
    return;
  }
  try {
    linkSync(partial, dest);
  } catch (e) {
    if (errnoOf(e) === 'EEXIST') {
      rmSync(partial, { force: true });
      throw exists(cmd, dest);
    }
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes(errnoOf(e))) throw e;
    if (existsSync(dest)) {
      rmSync(partial, { force: true });
      throw exists(cmd, dest);
    }
    renameSync(partial, dest);
    return;
  }
  unlinkSync(partial);
}

/** Removes what a failed write left beside its FILE: the partial file, and SQLite's side files of one. */
export function discard(partial: string): void {
  for (const f of [partial, `${partial}-journal`, `${partial}-wal`, `${partial}-shm`]) rmSync(f, { force: true });
}
