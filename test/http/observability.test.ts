import { expect } from 'chai';
import { Writable } from 'node:stream';
import { Ajv } from 'ajv';
import { Validator } from '@seriousme/openapi-schema-validator';
import { createLogger, isoTimeOncePerMs } from '../../src/log.js';
import { ROUTES, createRouter } from '../../src/http/routes.js';
import { healthSchema, historySchema, identifierListSchema, identifierViewSchema, leaseViewSchema } from '../../src/http/schemas.js';
import { SECOND, makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

/** The value of one sample in Prometheus text, e.g. metric('x_total{kind="owner"}'). */
function sample(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no sample ${name} in\n${text.slice(0, 2000)}`);
  return Number(line.slice(name.length + 1));
}

async function scrape(h: Harness): Promise<string> {
  const r = await h.http.get('/metrics');
  expect(r.status).to.equal(200);
  expect(r.headers['content-type']).to.match(/^text\/plain; version=0.0.4/);
  return r.text;
}

describe('metrics', () => {
  it('counts allocations, renewals, releases, reclaims and errors by code as traffic flows', async () => {
    const h = await makeRegistry({ pool: 'w-[0-3]', rules: { cooldownMs: 10 * SECOND, minHold: 0, maxFraction: 1 } });
    const P = 'asg_id_registry_';
    const before = await scrape(h);
    expect(sample(before, `${P}allocations_total`)).to.equal(0);

    const a = (await h.http.post('/allocate').send({ client_id: 'vm-a' })).body;
    await h.http.post('/allocate').send({ client_id: 'vm-b' });
    await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier });
    await h.http.post('/liveness').send({ client_id: 'vm-z', identifier: a.identifier }); // 409 not_owner
    await h.http.post('/allocate').send({}); // 400 invalid_request
    await h.http.post('/release').send({ client_id: 'vm-a', identifier: a.identifier });
    await h.http.delete('/identifier/w-1');
    await h.http.post('/allocate').send({ client_id: 'vm-c' });
    h.clock.advance(91 * SECOND);
    await h.http.post('/admin/reap');

    const m = await scrape(h);
    expect(sample(m, `${P}allocations_total`)).to.equal(3);
    expect(sample(m, `${P}renewals_total`)).to.equal(1);
    expect(sample(m, `${P}releases_total{kind="owner"}`)).to.equal(1);
    expect(sample(m, `${P}releases_total{kind="forced"}`)).to.equal(1);
    expect(sample(m, `${P}reclaims_total`)).to.equal(1);
    expect(sample(m, `${P}http_errors_total{status="409",code="not_owner"}`)).to.equal(1);
    expect(sample(m, `${P}http_errors_total{status="400",code="invalid_request"}`)).to.equal(1);
    expect(sample(m, `${P}reaper_runs_total{result="reclaimed"}`)).to.equal(1);
    expect(sample(m, `${P}reaper_last_reclaimed`)).to.equal(1);
    expect(sample(m, `${P}reaper_last_run_timestamp_seconds`)).to.equal(h.clock.now() / 1000);
    expect(sample(m, `${P}http_request_duration_seconds_count{method="POST",route="/allocate",status="200"}`)).to.equal(3);
    expect(sample(m, `${P}http_request_duration_seconds_count{method="POST",route="/liveness",status="409"}`)).to.equal(1);
  });

  it('gauges the pool by status, the oldest liveness and the guard', async () => {
    const h = await makeRegistry({ pool: 'w-[0-29]', rules: { maxFraction: 0.5, minHold: 10 } });
    const P = 'asg_id_registry_';
    for (let i = 0; i < 20; i++) await h.registry.allocate(`vm-${i}`);
    h.clock.advance(30 * SECOND);
    await h.registry.renew('vm-0', 'w-0');
    let m = await scrape(h);
    expect(sample(m, `${P}pool_identifiers{status="leased"}`)).to.equal(20);
    expect(sample(m, `${P}pool_identifiers{status="free"}`)).to.equal(10);
    expect(sample(m, `${P}oldest_lease_age_seconds`)).to.equal(30);
    expect(sample(m, `${P}reaper_held`)).to.equal(0);
    h.clock.advance(91 * SECOND);
    await h.registry.reap();
    m = await scrape(h);
    expect(sample(m, `${P}reaper_held`)).to.equal(1);
    expect(sample(m, `${P}reaper_runs_total{result="held"}`)).to.equal(1);
    expect(sample(m, `${P}oldest_lease_age_seconds`)).to.equal(121);
  });
});

describe('metrics when the database is sick', () => {
  it('/metrics still answers 200, says database_healthy 0, and keeps the last pool counts', async () => {
    const h = await makeRegistry({ pool: 'w-[0-3]' });
    await h.registry.allocate('vm-a');
    let m = await scrape(h);
    expect(sample(m, 'asg_id_registry_database_healthy')).to.equal(1);
    expect(sample(m, 'asg_id_registry_pool_identifiers{status="leased"}')).to.equal(1);
    await h.breakStore();
    m = await scrape(h);
    expect(sample(m, 'asg_id_registry_database_healthy')).to.equal(0);
    expect(sample(m, 'asg_id_registry_pool_identifiers{status="leased"}')).to.equal(1);
    expect(sample(m, 'asg_id_registry_allocations_total')).to.equal(1);
  });
});

describe('logs', () => {
  function capture(): { lines: () => Record<string, unknown>[]; raw: () => string; stream: Writable } {
    let raw = '';
    const stream = new Writable({ write(chunk: Buffer, _enc, cb) { raw += chunk.toString(); cb(); } });
    return {
      stream,
      raw: () => raw,
      lines: () => raw.trim().split('\n').map((l) => {
        const v: unknown = JSON.parse(l); // every line must be JSON
        return typeof v === 'object' && v !== null ? Object.fromEntries(Object.entries(v)) : {};
      }),
    };
  }

  it('one JSON line per request (method, route, status, duration, request id, client_id, caller\'s address, pid) and per ownership change; never a token', async () => {
    const out = capture();
    const log = createLogger('info', out.stream);
    const AGENT = 'agent-token-SECRET-0123456789';
    const ADMIN = 'admin-token-SECRET-9876543210';
    const h = await makeRegistry({ log, auth: { agentTokens: [AGENT], adminTokens: [ADMIN] } });
    // The registry's own events go to the same logger, as main.ts wires them.
    const { logRegistryEvent } = await import('../../src/log.js');
    const seen = h.events.length;
    const res = await h.http.post('/allocate').set('Authorization', `Bearer ${AGENT}`).set('X-Request-Id', 'req-42').send({ client_id: 'vm-a' });
    expect(res.headers['x-request-id']).to.equal('req-42');
    for (const e of h.events.slice(seen)) logRegistryEvent(log, e);
    await h.http.get('/identifiers').set('Authorization', `Bearer ${ADMIN}`);
    await h.http.get('/identifiers').set('Authorization', 'Bearer wrong-token-SECRET');
    const generated = await h.http.get('/health').set('X-Request-Id', 'bad id with spaces');
    expect(generated.headers['x-request-id']).to.match(/^[0-9a-f-]{36}$/);

    const lines = out.lines();
    const requests = lines.filter((l) => l['msg'] === 'request');
    expect(requests).to.have.length(4);
    expect(requests[0]).to.include({ req_id: 'req-42', method: 'POST', route: '/allocate', path: '/allocate', status: 200, client_id: 'vm-a', level: 'info' });
    expect(requests[0]?.['duration_ms']).to.be.a('number');
    expect(requests[0]?.['remote_addr']).to.match(/^(::ffff:)?127\.0\.0\.1$/);
    expect(lines.every((l) => l['pid'] === process.pid), 'every line names the process').to.equal(true);
    expect(requests[2]).to.include({ status: 401, error_code: 'unauthorized' });
    expect(lines.find((l) => l['msg'] === 'ownership allocated')).to.include({ event: 'allocated', identifier: 'w-0', client_id: 'vm-a', epoch: 1 });
    expect(out.raw()).to.not.include('SECRET');
  });

  it('each line carries the ISO time of its own millisecond, formatted once a millisecond', () => {
    let now = Date.UTC(2026, 10, 22, 10, 0, 0, 999);
    const time = isoTimeOncePerMs(() => now);
    expect(time()).to.equal(',"time":"2026-11-22T10:00:00.999Z"');
    expect(time()).to.equal(',"time":"2026-11-22T10:00:00.999Z"');
    now += 1;
    expect(time()).to.equal(',"time":"2026-11-22T10:00:01.000Z"');
    now -= 60_000; // the wall clock stepped back: the line says so
    expect(time()).to.equal(',"time":"2026-11-22T09:59:01.000Z"');
    // And a logger's lines are parseable JSON with that field.
    const out = capture();
    createLogger('info', out.stream).info('x');
    expect(Date.parse(String(out.lines()[0]?.['time']))).to.be.closeTo(Date.now(), 5_000);
  });

  it('a routine 200 liveness is counted and timed in /metrics but logged only at debug; a refused one is logged at info', async () => {
    for (const level of ['info', 'debug'] as const) {
      const out = capture();
      const h = await makeRegistry({ log: createLogger(level, out.stream) });
      const l = (await h.http.post('/allocate').send({ client_id: 'vm-a' })).body;
      await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: l.identifier }).expect(200);
      await h.http.post('/liveness').send({ client_id: 'vm-b', identifier: l.identifier }).expect(409);
      const lines = out.lines().filter((x) => x['msg'] === 'request').map((x) => [x['level'], x['route'], x['status']]);
      expect(lines, level).to.deep.equal([
        ['info', '/allocate', 200],
        ...(level === 'debug' ? [['debug', '/liveness', 200]] : []),
        ['info', '/liveness', 409],
      ]);
      expect(await h.metrics.render()).to.match(/http_request_duration_seconds_count\{method="POST",route="\/liveness",status="200"\} 1/);
    }
  });

  it('sweeps log at info when they reclaim or are forced, at warn when the guard holds, else only at debug', async () => {
    const out = capture();
    const log = createLogger('debug', out.stream);
    const { logRegistryEvent } = await import('../../src/log.js');
    const sweep = { type: 'sweep', expired: 0, leased: 4, reason: null, forced: false, durationMs: 1 } as const;
    logRegistryEvent(log, { ...sweep, reclaimed: 2, held: false });
    logRegistryEvent(log, { ...sweep, reclaimed: 0, held: true, reason: 'mass expiry' });
    logRegistryEvent(log, { ...sweep, reclaimed: 0, held: false, forced: true });
    logRegistryEvent(log, { ...sweep, reclaimed: 0, held: false });
    expect(out.lines().map((l) => [l['level'], l['msg']])).to.deep.equal([
      ['info', 'reaper sweep'], ['warn', 'reaper held by the mass-expiry guard'], ['info', 'reaper sweep'], ['debug', 'reaper sweep'],
    ]);
  });

  it('LOG_LEVEL=warn keeps request lines out', async () => {
    const out = capture();
    const h = await makeRegistry({ log: createLogger('warn', out.stream) });
    await h.http.get('/health');
    expect(out.raw()).to.equal('');
  });
});

describe('openapi.json', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const h = await makeRegistry();
    const res = await h.http.get('/openapi.json');
    expect(res.status).to.equal(200);
    expect(res.body.openapi).to.equal('3.1.0');
    const result = await new Validator().validate(res.body);
    expect(result.valid, JSON.stringify(result.errors)).to.equal(true);
  });

  it('lists every route the app serves, with the methods it serves, and nothing else', async () => {
    const h = await makeRegistry();
    const doc = (await h.http.get('/openapi.json')).body;
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>)
      .flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`)).sort();
    // What the router really serves (HEAD rides along with GET).
    const router = createRouter({ registry: h.registry, metrics: h.metrics }, () => async (_ctx, next) => next());
    const served = router.stack
      .flatMap((layer) => layer.methods.filter((m) => m !== 'HEAD').map((m) => `${m} ${String(layer.path).replace(/:(\w+)/g, "{$1}")}`))
      .sort();
    expect(documented).to.deep.equal(served);
    expect(documented).to.include.members([
      'POST /allocate', 'POST /liveness', 'POST /release', 'GET /identifiers', 'GET /client/{client_id}',
      'GET /identifier/{identifier}', 'GET /identifier/{identifier}/history', 'DELETE /identifier/{identifier}',
      'POST /admin/reap', 'GET /health', 'GET /metrics', 'GET /openapi.json',
    ]);
    // Every documented route answers something other than 404 not_found / 405.
    for (const r of ROUTES) {
      const path = r.path.replace(':client_id', 'vm-a').replace(':identifier', 'w-0');
      const res = await h.http[r.method](path).send(r.method === 'post' ? {} : undefined);
      expect([404, 405].includes(res.status) && ['not_found', 'method_not_allowed'].includes(res.body?.error?.code), `${r.method} ${path}`).to.equal(false);
    }
  });

  it('the documented response schemas match what the routes answer', async () => {
    const h = await makeRegistry();
    const ajv = new Ajv({ strict: false });
    const check = (schema: object, body: unknown, what: string): void => {
      const validate = ajv.compile(schema);
      expect(validate(body), `${what}: ${ajv.errorsText(validate.errors)}`).to.equal(true);
    };
    const a = await h.http.post('/allocate').send({ client_id: 'vm-a' });
    check(leaseViewSchema, a.body, 'allocate');
    check(leaseViewSchema, (await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: 'w-0' })).body, 'liveness');
    check(identifierListSchema, (await h.http.get('/identifiers')).body, 'identifiers');
    check(historySchema, (await h.http.get('/identifier/w-0/history')).body, 'history');
    check(healthSchema, (await h.http.get('/health')).body, 'health');
    check(identifierViewSchema, (await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'w-0' })).body, 'release');
  });
});

describe('dashboard route', () => {
  it('GET / serves the page, which reads the JSON API', async () => {
    const h = await makeRegistry();
    const res = await h.http.get('/');
    expect(res.status).to.equal(200);
    expect(res.headers['content-type']).to.equal('text/html; charset=utf-8');
    expect(res.text).to.include('<title>asg-id-registry</title>').and.include("get('/identifiers?limit=").and.include("get('/health')");
    // The script lives in a template literal, where one backslash too few breaks it silently.
    const script = res.text.slice(res.text.indexOf('<script>') + '<script>'.length, res.text.indexOf('</script>'));
    expect(() => new Function(script), 'the page\'s script parses').to.not.throw();
  });
});
