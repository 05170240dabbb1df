/** The version in package.json, for --version (src/ and dist/ both sit one level below it). */
import { readFileSync } from 'node:fs';

export function packageVersion(): string {
  const parsed: unknown = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  return typeof parsed === 'object' && parsed !== null && 'version' in parsed && typeof parsed.version === 'string' ? parsed.version : 'unknown';
}
