/** Starts the real registry (src/main.ts) as a child process on a free loopback port. */
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import type { Agent } from 'node:http';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';

export const ROOT = new URL('../..', import.meta.url).pathname;

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export interface RunningRegistry {
  readonly base: string;
  readonly child: ChildProcess;
  readonly output: () => string;
  /** Resolves with the exit code (or signal) once the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface StartOptions {
  readonly dir: string;
  readonly pool?: string;
  readonly env?: Record<string, string>;
  readonly port?: number;
  /** Resolve once the process is listening (default), or at once (for start-up failures). */
  readonly wait?: boolean;
  /** Extra node options before the entry point, e.g. ['--import', WALL_CLOCK_PRELOAD]. */
  readonly nodeArgs?: readonly string[];
  /** Command-line arguments for src/main.ts. */
  readonly args?: readonly string[];
  /** Run as another user (the test must be root for that). */
  readonly uid?: number;
  readonly gid?: number;
  /** The entry point instead of src/main.ts through tsx (e.g. builtMain()'s plain JavaScript). */
  readonly entry?: string;
  /** Default http. */
  readonly scheme?: 'http' | 'https';
  /** Asks /health for its status until it answers (default: fetch); an HTTPS test passes one that trusts its certificate. */
  readonly probe?: (url: string) => Promise<number>;
}

/**
 * src/ transpiled to plain JavaScript (esbuild, as tsx does it on the fly), for tests whose
 * timing must not include tsx's own start-up of about a second on a slow machine. Built once
 * per test run, under the project so that node_modules resolve. Returns main.js's path.
 */
let built: Promise<string> | null = null;
export function builtMain(): Promise<string> {
  // One build, however many processes ask for it at once.
  built ??= (async () => {
    const { build } = await import('esbuild');
    const out = join(ROOT, 'test-artifacts', `build-${process.pid}`);
    const entryPoints = readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.ts')).map((f) => join(ROOT, 'src', f));
    await build({ entryPoints, outdir: out, format: 'esm', platform: 'node', target: 'node20', logLevel: 'error' });
    writeFileSync(join(out, 'package.json'), '{"type":"module"}\n');
    process.once('exit', () => rmSync(out, { recursive: true, force: true }));
    return join(out, 'main.js');
  })();
  return built;
}

/**
 * A preload that sets this process's wall clock (Date.now) WALL_OFFSET_MS away from the
 * machine's, and steps it by WALL_STEP_MS (default an hour back) at each SIGUSR2: an NTP step
 * or an operator's `date -s`, for one process only. The monotonic clock is left alone.
 */
export const WALL_CLOCK_PRELOAD = join(ROOT, 'test', 'support', 'wall-clock.mjs');

export async function startProcess(opts: StartOptions): Promise<RunningRegistry> {
  const port = opts.port ?? (await freePort());
  const poolFile = join(opts.dir, 'pool.txt');
  if (opts.pool !== undefined) writeFileSync(poolFile, opts.pool);
  const child = spawn(process.execPath, [...(opts.entry ? [] : ['--import', 'tsx']), ...(opts.nodeArgs ?? []), opts.entry ?? 'src/main.ts', ...(opts.args ?? [])], {
    cwd: ROOT,
    ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
    ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
    env: {
      PATH: process.env['PATH'] ?? '',
      HOST: '127.0.0.1',
      PORT: String(port),
      DB_PATH: join(opts.dir, 'registry.db'),
      POOL_FILE: poolFile,
      LOG_LEVEL: 'info',
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const base = `${opts.scheme ?? 'http'}://127.0.0.1:${port}`;
  const running: RunningRegistry = {
    base, child, exited, output: () => out,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
  };
  if (opts.wait === false) return running;
  let done = false;
  void exited.then(() => { done = true; });
  // Seconds on an idle machine; 15 s were seen for five at once on a 2-core box at load 20.
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && !done) {
    try {
      if (opts.probe) {
        const status = await opts.probe(`${base}/health`);
        if (status === 200) return running;
      } else {
        const r = await fetch(`${base}/health`);
        // 503 with an error body is the socket bound while the registry is still starting.
        if (r.status === 200 || (r.status === 503 && !('error' in (await r.json() as object)))) return running;
      }
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  await running.stop('SIGKILL');
  throw new Error(`registry did not come up:\n${out}`);
}

let distBuilt: Promise<void> | null = null;

/** Runs `npm run build` (into dist/) once per test run, for tests of what is installed. */
export function buildOnce(): Promise<void> {
  distBuilt ??= new Promise((resolve, reject) => {
    const child = spawn('npm', ['run', 'build'], { cwd: ROOT, env: { PATH: process.env['PATH'] ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`npm run build failed (${code}):\n${out}`))));
  });
  return distBuilt;
}

/** Polls until `probe` holds (every 20 ms), failing with `timed out waiting for WHAT` after `timeoutMs`. */
export async function until(probe: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Whether a process of this pid is still running (signal 0 reaches it). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Polls `probe` until it returns true or the deadline passes; for real processes only. */
export async function eventually(probe: () => Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function json(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'content-type': 'application/json' };
  }
  const r = await fetch(base + path, init);
  const text = await r.text();
  try {
    return { status: r.status, body: JSON.parse(text) };
  } catch {
    return { status: r.status, body: text };
  }
}

export interface Reply { status: number; body: Record<string, unknown> }

/** One request over `agent` (keep-alive, bounded sockets); rejects when no answer comes. */
export function call(agent: Agent, base: string, method: string, path: string, body?: unknown): Promise<Reply> {
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, base), {
      method, agent,
      headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {},
    }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => {
        try { resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }); } catch (e) { reject(e); }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}
