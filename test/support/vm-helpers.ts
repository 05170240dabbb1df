/** The VM side's test kit: run the sh scripts under dash, and stand-ins for sick networks. */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { ROOT } from './process-helpers.js';

export interface Ran { code: number | null; out: string; ms: number; /** Date.now() when the exit was seen. */ at: number }

export interface Script {
  readonly child: ChildProcess;
  readonly done: Promise<Ran>;
  readonly out: () => string;
  /** Undefined while it runs. */
  readonly exited: () => Ran | undefined;
}

/** Runs scripts/NAME under dash (Debian's /bin/sh, the strictest shell the scripts meet). */
export function script(name: string, env: Record<string, string>): Script {
  const started = Date.now();
  const child = spawn('dash', [join(ROOT, 'scripts', name)], {
    env: { PATH: process.env['PATH'] ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let ran: Ran | undefined;
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const closed = (stream: NodeJS.ReadableStream | null): Promise<void> =>
    stream ? new Promise((r) => { stream.once('close', () => r()); }) : Promise.resolve();
  const drained = Promise.all([closed(child.stdout), closed(child.stderr)]);
  const done = new Promise<Ran>((resolve) => child.once('exit', (code) => {
    const at = Date.now();
    // 'exit' can come before the pipes are read to the end: `out` is complete once both have
    // closed, which is when every process holding them (the script, its curl) has gone. A
    // process the script left behind could hold them on: then what was read after 2 s.
    let bound: NodeJS.Timeout | undefined;
    const late = new Promise<void>((r) => { bound = setTimeout(r, 2000); });
    void Promise.race([drained, late]).then(() => {
      clearTimeout(bound);
      ran = { code, out, ms: at - started, at };
      resolve(ran);
    });
  }));
  return { child, done, out: () => out, exited: () => ran };
}

/** Settles with the script's end, or with undefined if it still runs after `ms`. */
export async function exitWithin(s: Script, ms: number): Promise<Ran | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), ms); });
  const r = await Promise.race([s.done, late]);
  clearTimeout(timer);
  return r;
}

export async function stopScript(s: Script): Promise<Ran> {
  if (s.exited() === undefined) s.child.kill('SIGTERM');
  const r = await exitWithin(s, 10_000);
  if (r) return r;
  s.child.kill('SIGKILL');
  return s.done;
}

export function readIdentity(file: string): Record<string, string> {
  return Object.fromEntries(readFileSync(file, 'utf8').trim().split('\n').map((l) => {
    const i = l.indexOf('=');
    return [l.slice(0, i), l.slice(i + 1)];
  }));
}

export function get(body: unknown, k: string): unknown {
  return typeof body === 'object' && body !== null ? Object.fromEntries(Object.entries(body))[k] : undefined;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Stub {
  readonly base: string;
  /** Requests seen, by path. */
  readonly hits: Map<string, number>;
  /** Requests that arrived and were never answered (held). */
  readonly held: () => number;
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void | Promise<void>;

/** A loopback HTTP server with a handler; a handler that does not answer holds the request. */
export async function stub(handler: Handler): Promise<Stub> {
  const hits = new Map<string, number>();
  const sockets = new Set<Socket>();
  let held = 0;
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      const path = req.url ?? '';
      hits.set(path, (hits.get(path) ?? 0) + 1);
      held += 1;
      res.on('finish', () => { held -= 1; });
      void Promise.resolve(handler(req, body, res)).catch(() => res.destroy());
    });
  });
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    base: `http://127.0.0.1:${port}`,
    hits,
    held: () => held,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
  res.end(JSON.stringify(body));
}

export interface Proxy extends Stub {
  /** 'forward' passes requests on; 'hold' is a partition: requests arrive and get no answer. */
  mode: 'forward' | 'hold';
}

/** One request through a proxy: Date.now() when it arrived and when its answer was written. */
export interface Passed { path: string; status: number; arrivedAt: number; answeredAt: number }

/**
 * Forwards to `target`, unless cut; `before` runs ahead of each forwarded request, `after` once
 * its answer is written (status 0: the target gave none, and the client's connection is cut).
 */
export async function proxy(target: string, before?: (path: string) => void, after?: (p: Passed) => void): Promise<Proxy> {
  const p: { mode: 'forward' | 'hold' } = { mode: 'forward' };
  const s = await stub(async (req, body, res) => {
    if (p.mode === 'hold') return;
    // When the request was whole here: after the client sent it.
    const arrivedAt = Date.now();
    const path = req.url ?? '';
    before?.(path);
    const headers: Record<string, string> = {};
    for (const h of ['content-type', 'authorization']) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const init: RequestInit = { method: req.method ?? 'GET', headers };
    if (body !== '') init.body = body;
    let r: Response;
    let text: string;
    try {
      r = await fetch(target + path, init);
      text = await r.text();
    } catch (e) {
      after?.({ path, status: 0, arrivedAt, answeredAt: Date.now() });
      throw e; // the stub cuts the client's connection
    }
    // Before the answer is written: the client cannot have it (nor send its next request) sooner.
    after?.({ path, status: r.status, arrivedAt, answeredAt: Date.now() });
    res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
    res.end(text);
  });
  return Object.assign(p, s);
}
