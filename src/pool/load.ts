/** Reads and parses the pool file. */
import { readFileSync } from 'node:fs';
import { parsePool } from './parse.js';

export class PoolFileError extends Error {
  override readonly name = 'PoolFileError';
}

export function readPoolFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const why = e instanceof Error && 'code' in e ? String(e.code) : String(e);
    throw new PoolFileError(`pool file ${path}: cannot be read (${why})`);
  }
  try {
    return parsePool(text);
  } catch (e) {
    throw new PoolFileError(`pool file ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
