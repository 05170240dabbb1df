/** Benchmark plumbing: real processes on loopback, autocannon as the load, medians. */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';

export const ROOT = new URL('..', import.meta.url).pathname;

export interface Server {
  readonly base: string;
  readonly child: ChildProcess;
  /** Milliseconds from spawn to the first answer. */
  readonly startMs: number;
  rssMb(): number;
  /** CPU time (user + system) the process has used so far, in milliseconds (10 ms ticks). */
  cpuMs(): number;
  stop(): Promise<void>;
}

async function waitFor(url: string, child: ChildProcess, output: () => string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited (${child.exitCode}):\n${output()}`);
    try {
      const r = await fetch(url);
      if (r.status < 500) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`server did not answer ${url}:\n${output()}`);
}

export async function startServer(script: string, env: Record<string, string>, port: number, probe = '/health'): Promise<Server> {
  const started = Date.now();
  const child = spawn(process.execPath, [...(process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter(Boolean), script], {
    cwd: ROOT,
    env: { PATH: process.env['PATH'] ?? '', HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out = (out + d.toString()).slice(-4000); });
  child.stderr?.on('data', (d: Buffer) => { out = (out + d.toString()).slice(-4000); });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(base + probe, child, () => out);
  const startMs = Date.now() - started;
  return {
    base, child, startMs,
    rssMb() {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      return kb / 1024;
    },
    cpuMs() {
      // /proc/PID/stat: fields 14 and 15 (utime, stime) in clock ticks, after the command in parentheses.
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) * 10;
    },
    stop() {
      return new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      });
    },
  };
}

export interface LoadResult {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly errors: number;
  readonly non2xx: number;
  readonly total: number;
}

export type Request = autocannon.Request;

export async function load(opts: {
  url: string;
  seconds: number;
  connections?: number;
  rate?: number;
  requests: Request[];
}): Promise<LoadResult> {
  const r = await autocannon({
    url: opts.url,
    duration: opts.seconds,
    connections: opts.connections ?? 32,
    pipelining: 1,
    ...(opts.rate ? { overallRate: opts.rate } : {}),
    requests: opts.requests,
  });
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    max: r.latency.max,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
    total: r.requests.total,
  };
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

export const percentile = (xs: readonly number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
};

export function writePool(dir: string, text: string): string {
  const file = join(dir, 'pool.txt');
  writeFileSync(file, text);
  return file;
}

export async function post(base: string, path: string, body: unknown): Promise<{ status: number; body: unknown }> {
  const r = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

/** A sample from Prometheus text. */
export function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : NaN;
}
