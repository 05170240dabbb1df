/**
 * Hostile input against the real process: at least 10,000 generated requests, each wrong in
 * some way by construction (random bytes, wrong types, deep or huge JSON, odd unicode and
 * control characters, unknown fields, wrong methods and content types, oversized headers and
 * paths). Every answer is a 4xx from docs/api.md "Errors", in its shape, the process stays up,
 * and the database is unchanged. FUZZ_SEED reproduces a run.
 */
import { expect } from 'chai';
import { Agent, request } from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import fc from 'fast-check';
import { STATUS_OF } from '../../src/http/errors.js';
import { snapshotDb, tempDir } from '../support/helpers.js';
import { startProcess } from '../support/process-helpers.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? Date.now() % 1_000_000);
const COUNT = Number(process.env['FUZZ_COUNT'] ?? 10_000);

interface Spec { method: string; path: string; headers: Record<string, string>; body: Buffer | null }

const nastyString = fc.oneof(
  fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }),
  fc.string({ unit: 'grapheme-composite', minLength: 1, maxLength: 20 }),
  fc.constantFrom('', ' ', '\u0000', '\u202e', 'vm\nx', 'x'.repeat(256), 'é', '../../etc/passwd', '%00', '🦄', 'a b', 'id\t1'),
).filter((s) => !/^[A-Za-z0-9._:-]{1,128}$/.test(s));
const goodish = fc.stringMatching(/^[A-Za-z0-9._:-]{1,20}$/).map((s) => `fz-${s}`);

/** A body that is never valid: a wrong shape, a wrong type, a bad value, or an unknown field. */
const badBody: fc.Arbitrary<Buffer | null> = fc.oneof(
  fc.constant(null),
  fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
  fc.json({ maxDepth: 4 }).map((j) => Buffer.from(j)).filter((b) => !/"client_id"\s*:\s*"[A-Za-z0-9._:-]{1,255}"/.test(b.toString())),
  fc.record({ client_id: fc.oneof(nastyString, fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.nat())) }).map((o) => Buffer.from(JSON.stringify(o))),
  fc.record({ client_id: goodish, identifier: fc.oneof(nastyString, fc.integer()), epoch: fc.oneof(fc.string(), fc.double(), fc.constant(-1)) }).map((o) => Buffer.from(JSON.stringify(o))),
  fc.record({ client_id: goodish, [`extra`]: fc.anything() }).map((o) => Buffer.from(JSON.stringify(o))),
  fc.nat({ max: 8000 }).map((d) => Buffer.from('['.repeat(d) + ']'.repeat(d))),
  fc.nat({ max: 3000 }).map((d) => Buffer.from(`${'{"a":'.repeat(d)}1${'}'.repeat(d)}`)),
  fc.integer({ min: 16_385, max: 60_000 }).map((n) => Buffer.from(JSON.stringify({ client_id: 'x', pad: 'p'.repeat(n) }))),
  fc.constantFrom('{"client_id": ', 'null', 'true', '"str"', '[]', '{}', '{"__proto__":{"a":1}}', '\uFEFF{}').map((s) => Buffer.from(s)),
);

const route = fc.oneof(
  fc.constantFrom('/allocate', '/liveness', '/release', '/identifiers', '/health', '/metrics', '/openapi.json', '/admin/reap', '/'),
  fc.oneof(nastyString, goodish).map((s) => `/client/${encodeURIComponent(s)}`),
  fc.oneof(nastyString, goodish).map((s) => `/identifier/${encodeURIComponent(s)}`),
  fc.oneof(nastyString, goodish).map((s) => `/identifier/${encodeURIComponent(s)}/history`),
  fc.string({ maxLength: 30 }).map((s) => `/${encodeURIComponent(s)}`),
  fc.integer({ min: 2_000, max: 30_000 }).map((n) => `/identifier/${'x'.repeat(n)}`),
);
const query = fc.oneof(
  fc.constant(''),
  fc.dictionary(fc.constantFrom('status', 'limit', 'after', 'force', 'x'), fc.oneof(nastyString, fc.integer().map(String)), { maxKeys: 3 })
    .map((d) => `?${new URLSearchParams(d).toString()}`),
);
const contentType = fc.constantFrom(
  'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x', 'application/xml', '', 'garbage', 'application/json; charset=latin1',
);

const specArb: fc.Arbitrary<Spec> = fc.record({
  method: fc.constantFrom('GET', 'POST', 'POST', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'),
  route, query, contentType,
  auth: fc.option(fc.oneof(nastyString, fc.constant('Bearer x')), { freq: 5 }),
  bigHeader: fc.integer({ min: 0, max: 20 }),
  body: badBody,
}).map((r) => {
  const headers: Record<string, string> = {};
  if (r.contentType) headers['content-type'] = r.contentType;
  if (r.auth !== null) headers['authorization'] = r.auth.replace(/[^\x20-\x7e]/g, '?');
  if (r.bigHeader === 20) headers['x-big'] = 'h'.repeat(20_000);
  // Never a valid state change: a DELETE only ever names identifiers the pool does not have.
  const path = r.method === 'DELETE' && r.route.startsWith('/identifier/') && !r.route.includes('fz-') && !r.route.includes('%')
    ? '/identifier/fz-missing' : r.route;
  return { method: r.method, path: path + r.query, headers, body: r.method === 'GET' || r.method === 'HEAD' ? null : r.body };
});

const LISTED = new Set(Object.keys(STATUS_OF));

function send(agent: Agent, base: string, s: Spec): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const headers = { ...s.headers, ...(s.body ? { 'content-length': String(s.body.length) } : {}) };
    const req = request(new URL(base), { path: s.path, method: s.method, agent, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(s.body ?? undefined);
  });
}

function rawGarbage(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.end(bytes));
    let out = '';
    sock.on('data', (d) => { out += d.toString('latin1'); });
    sock.on('close', () => resolve(out));
    sock.on('error', () => resolve(out));
  });
}

describe('hostile input', function () {
  this.timeout(300_000);

  it(`${COUNT} generated bad requests and raw garbage: only listed 4xx answers, the process stays up, nothing changes (seed ${SEED})`, async () => {
    const t = tempDir();
    const reg = await startProcess({ dir: t.dir, pool: 'w-[00-19]\n', env: { LOG_LEVEL: 'warn', REAPER_SCHEDULE: '0 0 1 1 *' } });
    try {
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`${reg.base}/allocate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ client_id: `vm-${i}` }) });
        expect(r.status).to.equal(200);
      }
      const dbPath = join(t.dir, 'registry.db');
      const before = snapshotDb(dbPath);
      const specs = fc.sample(specArb, { numRuns: COUNT, seed: SEED });
      const agent = new Agent({ keepAlive: true, maxSockets: 16 });
      const problems: string[] = [];
      const seen = new Map<number, number>();
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < specs.length) {
          const s = specs[next++];
          if (!s) break;
          let r: { status: number; text: string };
          try {
            r = await send(agent, reg.base, s);
          } catch (e) {
            problems.push(`${s.method} ${s.path.slice(0, 60)}: no answer (${e instanceof Error ? e.message : String(e)})`);
            continue;
          }
          seen.set(r.status, (seen.get(r.status) ?? 0) + 1);
          const what = `${s.method} ${s.path.slice(0, 80)} ${s.body?.toString('latin1').slice(0, 40) ?? ''} -> ${r.status} ${r.text.slice(0, 120)}`;
          if (r.status >= 500) problems.push(`5xx: ${what}`);
          else if (r.status >= 200 && r.status < 300 && ['POST', 'PUT', 'PATCH'].includes(s.method) && !s.path.startsWith('/admin/reap')) problems.push(`accepted: ${what}`);
          else if (r.status >= 400 && s.method !== 'HEAD') {
            let code: unknown;
            try { code = (JSON.parse(r.text) as { error: { code: unknown } }).error.code; } catch { code = undefined; }
            if (typeof code !== 'string' || !LISTED.has(code) || STATUS_OF[code as keyof typeof STATUS_OF] !== r.status) problems.push(`shape: ${what}`);
          }
        }
      };
      await Promise.all(Array.from({ length: 16 }, worker));
      agent.destroy();

      const garbage = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 200 }), { numRuns: 300, seed: SEED });
      for (const g of garbage) {
        const out = await rawGarbage(Number(new URL(reg.base).port), Buffer.concat([Buffer.from(g), Buffer.from('\r\n\r\n')]));
        if (out !== '' && !/^HTTP\/1\.1 400 [\s\S]*"code":"invalid_request"/.test(out)) problems.push(`raw garbage answered: ${out.slice(0, 80)}`);
      }

      expect(problems, `seed ${SEED}: ${problems.length} problems\n${problems.slice(0, 8).join('\n')}`).to.deep.equal([]);
      expect((await fetch(`${reg.base}/health`)).status).to.equal(200);
      expect(reg.child.exitCode).to.equal(null);
      expect(snapshotDb(dbPath)).to.equal(before);
      expect([...seen.keys()].every((s) => s < 500)).to.equal(true);
      expect(specs.length + garbage.length).to.be.at.least(10_000);
    } finally {
      await reg.stop();
      t.cleanup();
    }
  });
});
