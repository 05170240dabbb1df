/** Plain-text tables and times for the operator command. */
import { humanUptime } from '../http/views.js';

/** "12s ago", "3m20s ago", "-" for never. */
export function ago(iso: string | null, nowMs: number): string {
  if (iso === null) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '?';
  return `${humanUptime(Math.max(0, nowMs - t) / 1000)} ago`;
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
