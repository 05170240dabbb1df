/**
 * node --import tsx bench/pages.ts [rounds=5] [--against DIR ...]
 *
 * `GET /identifiers?limit=1000&after=…` (the "1,000-row page" of npm run bench) on the built
 * registry (dist/main.js) of this tree and of each --against tree (another checkout, built),
 * each a process of its own on the same pool (21,000 identifiers, 10,000 of them leased),
 * measured in alternating rounds of 5 s with 8 connections: pages a second, medians. Not a
 * test: it compares versions on the same machine, in the same run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, load, median, post, startServer, writePool } from './lib.js';
import type { Request, Server } from './lib.js';

const args = process.argv.slice(2);
const ROUNDS = Number(args.find((a) => /^\d+$/.test(a)) ?? 5);
const trees = [ROOT, ...args.flatMap((a, i) => (args[i - 1] === '--against' ? [a] : []))];
const POOL = 21_000;
const LEASED = 10_000;
let nextPort = 40_000 + Math.floor(Math.random() * 10_000);

async function start(tree: string): Promise<{ tree: string; server: Server; dir: string; names: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'idreg-pages-'));
  const server = await startServer(join(tree, 'dist/main.js'), {
    DB_PATH: join(dir, 'registry.db'), POOL_FILE: writePool(dir, `t-[000000-${POOL - 1}]\n`), REAPER_SCHEDULE: '0 0 1 1 *', LOG_LEVEL: 'warn',
  }, nextPort++);
  const names: string[] = [];
  for (let i = 0; i < LEASED; i += 100) {
    const batch = await Promise.all(Array.from({ length: 100 }, (_, k) => post(server.base, '/allocate', { client_id: `live-${i + k}` })));
    for (const r of batch) {
      const b = r.body;
      if (r.status !== 200 || typeof b !== 'object' || b === null || !('identifier' in b) || typeof b.identifier !== 'string') throw new Error(`allocate failed: ${JSON.stringify(b)}`);
      names.push(b.identifier);
    }
  }
  return { tree, server, dir, names };
}

function pageRequests(names: readonly string[]): Request[] {
  let i = 0;
  return [{ method: 'GET', setupRequest(req) { req.path = `/identifiers?limit=1000&after=${names[(i++ * 997) % names.length]}`; return req; } }];
}

const regs = [];
for (const tree of trees) regs.push(await start(tree));
try {
  for (const r of regs) await load({ url: r.server.base, seconds: 1, connections: 8, requests: pageRequests(r.names) });
  const series = new Map<string, number[]>(trees.map((t) => [t, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const r of regs) {
      const res = await load({ url: r.server.base, seconds: 5, connections: 8, requests: pageRequests(r.names) });
      if (res.errors > 0 || res.non2xx > 0) console.warn(`  ! ${r.tree}: ${res.errors} errors, ${res.non2xx} non-2xx`);
      series.get(r.tree)?.push(res.rps);
      console.log(`round ${round} ${r.tree}: ${Math.round(res.rps)} pages/s`);
    }
  }
  for (const [tree, xs] of series) {
    const sorted = [...xs].sort((a, b) => a - b);
    console.log(`${tree}: median ${Math.round(median(xs))} pages/s (${Math.round(sorted[0] ?? 0)}-${Math.round(sorted[sorted.length - 1] ?? 0)})`);
  }
} finally {
  for (const r of regs) {
    await r.server.stop();
    rmSync(r.dir, { recursive: true, force: true });
  }
}
