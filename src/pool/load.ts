/** Reads the pool file; a fingerprint lets start-up skip a sync when the file has not changed. */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parsePool } from './parse.js';
import { errorMessage } from '../domain/errors.js';

export class PoolFileError extends Error {
  override readonly name = 'PoolFileError';
}

export interface PoolFile {
  readonly text: string;
  /** sha256 of the file's bytes. */
  readonly fingerprint: string;
}

export function readPoolText(path: string): PoolFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const why = e instanceof Error && 'code' in e ? String(e.code) : String(e);
    throw new PoolFileError(`pool file ${path}: cannot be read (${why})`);
  }
  return { text, fingerprint: createHash('sha256').update(text).digest('hex') };
}

export function parsePoolFile(path: string, file: PoolFile): string[] {
  try {
    return parsePool(file.text);
  } catch (e) {
    throw new PoolFileError(`pool file ${path}: ${errorMessage(e)}`);
  }
}
