/**
 * node --import tsx bench/listing.ts [N=100000] [rounds=3] [--curl] [--no-probe]
 *
 * The full listing (`GET /identifiers`, what `idreg list` does) on a pool of N identifiers,
 * 90% leased, served in this process: rows a second, the longest the event loop was held
 * (the longest gap between 1 ms timer ticks, and how much of it the event loop was busy), the
 * slowest liveness answered while the listing ran, and the CPU this process used meanwhile
 * (the registry's work, its listing worker threads included, and the probe's client; with
 * --curl, not the listing's client), and how much of the listing the event loop was busy.
 * --curl fetches the listing with curl in a process of its own. Not a test: it prints numbers
 * to compare before and after a change, on the same machine.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { FakeClock } from '../src/clock.js';
import { createApp } from '../src/http/app.js';
import { createHttpServer } from '../src/http/server.js';
import { Registry } from '../src/registry.js';
import { SqliteStore } from '../src/store/sqlite/store.js';

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const N = Number(args[0] ?? 100_000);
const ROUNDS = Number(args[1] ?? 3);
const CURL = process.argv.includes('--curl');
/** Without the liveness probe: the listing's own throughput (the probe's requests share its process and cores). */
const PROBE = !process.argv.includes('--no-probe');

const dir = mkdtempSync(join(tmpdir(), 'idreg-listing-'));
const clock = new FakeClock();
const store = new SqliteStore({ path: join(dir, 'registry.db'), clock });
const registry = new Registry({
  store,
  rules: { ttlMs: 90_000, cooldownMs: 90_000, graceMs: 0, maxFraction: 1, minHold: 10, guardedRatePerMinute: 1, reapBatchSize: 1000 },
});
const width = String(N - 1).length;
await registry.syncPool(Array.from({ length: N }, (_, i) => `p-${String(i).padStart(width, '0')}`));
store.db.prepare(`UPDATE identifiers SET client_id = 'seed-' || id, epoch = 1, allocated_at = ?, last_seen = ? WHERE id <= ?`)
  .run(clock.now(), clock.now(), Math.floor(N * 0.9));

const app = createApp({ registry, auth: { agentTokens: [], adminTokens: [] } });
const server = createHttpServer(app.callback());
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

/** The listing fetched by curl, in a process of its own, so the client's work is not ours. */
function curlListing(): Promise<{ ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('curl', ['-sS', '-o', '/dev/null', '-w', '%{size_download}', `${base}/identifiers`]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve({ ms: performance.now() - t0, bytes: Number(out) }) : reject(new Error(`curl exited ${code}`))));
  });
}

async function fullListing(): Promise<{ ms: number; bytes: number }> {
  if (CURL) return curlListing();
  const t0 = performance.now();
  const res = await fetch(`${base}/identifiers`);
  let bytes = 0;
  for await (const chunk of res.body ?? []) bytes += (chunk as Uint8Array).byteLength;
  return { ms: performance.now() - t0, bytes };
}

/** A liveness every 5 ms until `done` (a VM's sidecar, much more often); the slowest answer, and failures. */
async function probe(done: () => boolean): Promise<{ worst: number; failed: number }> {
  let worst = 0;
  let failed = 0;
  const body = JSON.stringify({ client_id: 'seed-1', identifier: `p-${'0'.repeat(width)}` });
  while (!done()) {
    const t0 = performance.now();
    try {
      const res = await fetch(`${base}/liveness`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      await res.arrayBuffer();
      if (res.status !== 200) failed++;
    } catch {
      failed++; // the server dropped it: a held event loop outlasted its header timeout
    }
    worst = Math.max(worst, performance.now() - t0);
    await new Promise((r) => setTimeout(r, 5));
  }
  return { worst, failed };
}

/**
 * The longest gap between ticks of a 1 ms timer, until stopped: how long the loop was held.
 * On a shared machine a gap can also be this process waiting for a core, so how much of the
 * longest gap the event loop was busy is reported too (its own work; the process's CPU would
 * count the listing's worker threads as well).
 */
function lagMonitor(): () => { wall: number; busy: number } {
  let last = performance.now();
  let lastElu = performance.eventLoopUtilization();
  let wall = 0;
  let busy = 0;
  const timer = setInterval(() => {
    const t = performance.now();
    const elu = performance.eventLoopUtilization();
    if (t - last > wall) {
      wall = t - last;
      busy = performance.eventLoopUtilization(elu, lastElu).active;
    }
    last = t;
    lastElu = elu;
  }, 1);
  return () => {
    clearInterval(timer);
    return { wall, busy };
  };
}

await fullListing(); // warm-up (in --curl mode, with curl too)
for (let round = 1; round <= ROUNDS; round++) {
  const stopLag = lagMonitor();
  let finished = false;
  const probing = PROBE ? probe(() => finished) : Promise.resolve({ worst: 0, failed: 0 });
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
  const r = await fullListing();
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0);
  finished = true;
  const live = await probing;
  const held = stopLag();
  console.log(
    `N=${N} round ${round}: ${r.ms.toFixed(0)} ms, ${Math.round(N / (r.ms / 1000)).toLocaleString('en')} rows/s, ` +
      `CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms (event loop busy ${elu.active.toFixed(0)} ms), ` +
      `${(r.bytes / 1e6).toFixed(1)} MB; event loop held up to ${held.wall.toFixed(1)} ms (busy ${held.busy.toFixed(1)} ms of it); slowest liveness ${live.worst.toFixed(1)} ms${live.failed ? ` (${live.failed} failed)` : ''}`,
  );
}

server.closeAllConnections();
server.close();
await registry.close();
console.log(`pages written by the listing workers: ${store.listingWorkerStats().pages}`);
await store.close();
rmSync(dir, { recursive: true, force: true });
