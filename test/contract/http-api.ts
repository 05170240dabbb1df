import { expect } from 'chai';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import type { Response } from 'supertest';
import { SECOND, makeRegistry } from '../support/helpers.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** A raw request: chunked when no content-length is given (supertest cannot send that), or any bytes. */
async function rawPost(app: { callback(): Parameters<typeof createServer>[1] }, path: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const server = createServer(app.callback());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const { port } = server.address() as AddressInfo;
    return await new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => { text += c.toString(); });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      });
      req.on('error', reject);
      for (let i = 0; i < body.length; i += 7000) req.write(body.slice(i, i + 7000)); // several chunks
      req.end();
    });
  } finally {
    server.close();
  }
}

function expectError(res: Response, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.body)).to.equal(status);
  expect(res.headers['content-type']).to.equal('application/json; charset=utf-8');
  expect(res.body).to.have.keys('error');
  expect(res.body.error.code).to.equal(code);
  expect(res.body.error.message).to.be.a('string').and.not.equal('');
}

export function httpApi(): void {

  describe('http: allocate', () => {
    it('returns the lease view with ISO times', async () => {
      const { http, clock } = await makeRegistry({ pool: 'w-[0-2]' });
      const res = await http.post('/allocate').send({ client_id: 'i-0abc123' });
      expect(res.status).to.equal(200);
      expect(res.headers['content-type']).to.equal('application/json; charset=utf-8');
      expect(res.body).to.deep.equal({
        identifier: 'w-0',
        client_id: 'i-0abc123',
        epoch: 1,
        allocated_at: new Date(clock.now()).toISOString(),
        last_seen: new Date(clock.now()).toISOString(),
        expires_at: new Date(clock.now() + 90 * SECOND).toISOString(),
        fence_after_ms: 89_100, // the default cool-down (= TTL 90 s) less 1 %
        watermark: null,
        instance: null,
      });
      expect(res.body.allocated_at).to.match(ISO);
    });

    it('503 pool_exhausted when nothing is allocatable', async () => {
      const { http } = await makeRegistry({ pool: 'only' });
      await http.post('/allocate').send({ client_id: 'a' }).expect(200);
      expectError(await http.post('/allocate').send({ client_id: 'b' }), 503, 'pool_exhausted');
    });

    const badBodies: Array<[string, unknown, RegExp]> = [
      ['missing client_id', {}, /client_id/],
      ['a number', { client_id: 42 }, /client_id/],
      ['a space', { client_id: 'has space' }, /client_id/],
      ['too long', { client_id: 'x'.repeat(256) }, /client_id/],
      ['empty', { client_id: '' }, /client_id/],
      ['unicode', { client_id: 'vm-é' }, /client_id/],
      ['an unknown field', { client_id: 'vm', clientid: 'vm' }, /clientid/],
      ['an array body', [{ client_id: 'vm' }], /body/],
    ];
    for (const [what, body, field] of badBodies) {
      it(`400 invalid_request naming the field for ${what}, and no change`, async () => {
        const h = await makeRegistry();
        const res = await h.http.post('/allocate').send(body as object);
        expectError(res, 400, 'invalid_request');
        expect(res.body.error.message).to.match(field);
        expect((await h.leasedCount())).to.equal(0);
      });
    }

    it('accepts the longest client_id', async () => {
      const { http } = await makeRegistry();
      await http.post('/allocate').send({ client_id: 'x'.repeat(255) }).expect(200);
    });
  });

  describe('http: liveness and release', () => {
    it('liveness renews the lease and returns it', async () => {
      const { http, clock } = await makeRegistry();
      const a = (await http.post('/allocate').send({ client_id: 'vm-a' })).body;
      clock.advance(10 * SECOND);
      const res = await http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier, epoch: a.epoch });
      expect(res.status).to.equal(200);
      expect(res.body).to.include({ identifier: a.identifier, client_id: 'vm-a', epoch: 1, allocated_at: a.allocated_at });
      expect(res.body.last_seen).to.equal(new Date(clock.now()).toISOString());
    });

    it('liveness errors: 404, 409 not_owner, 409 stale_epoch, 400 with the field named', async () => {
      const h = await makeRegistry();
      const a = (await h.http.post('/allocate').send({ client_id: 'vm-a' })).body;
      const before = (await h.row(a.identifier));
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: 'nope' }), 404, 'identifier_not_found');
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-b', identifier: a.identifier }), 409, 'not_owner');
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: 'w-3' }), 409, 'not_owner');
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier, epoch: 2 }), 409, 'stale_epoch');
      const bad = await h.http.post('/liveness').send({ client_id: 'vm-a' });
      expectError(bad, 400, 'invalid_request');
      expect(bad.body.error.message).to.match(/identifier/);
      const badEpoch = await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier, epoch: '1' });
      expectError(badEpoch, 400, 'invalid_request');
      expect(badEpoch.body.error.message).to.match(/epoch/);
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier, epoch: -1 }), 400, 'invalid_request');
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: a.identifier, epoch: 1.5 }), 400, 'invalid_request');
      expect((await h.row(a.identifier))).to.deep.equal(before);
    });

    it('release frees the identifier and returns its view', async () => {
      const h = await makeRegistry({ pool: 'only' });
      await h.http.post('/allocate').send({ client_id: 'vm-a' }).expect(200);
      expectError(await h.http.post('/release').send({ client_id: 'vm-b', identifier: 'only' }), 409, 'not_owner');
      const res = await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'only', epoch: 1 });
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({
        identifier: 'only', status: 'free', client_id: null, epoch: 1, allocated_at: null, last_seen: null, expires_at: null,
        fence_after_ms: null, available_at: null, watermark: null, instance: null,
      });
      expect((await h.row('only'))?.['client_id']).to.equal(null);
      expectError(await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'only' }), 409, 'not_owner');
    });
  });

  describe('http: inspection', () => {
    it('GET /client/:client_id and /identifier/:identifier', async () => {
      const { http } = await makeRegistry();
      const a = (await http.post('/allocate').send({ client_id: 'vm-a' })).body;
      expect((await http.get('/client/vm-a')).body).to.deep.equal(a);
      const i = await http.get(`/identifier/${a.identifier}`);
      expect(i.body).to.deep.equal({ ...a, status: 'leased', available_at: null });
      expectError(await http.get('/client/nobody'), 404, 'client_not_found');
      expectError(await http.get('/identifier/nothing'), 404, 'identifier_not_found');
      expectError(await http.get('/client/bad%20name'), 400, 'invalid_request');
      expectError(await http.get(`/identifier/${'x'.repeat(129)}`), 400, 'invalid_request');
    });

    it('GET /identifier/:identifier/history lists ownership changes oldest first', async () => {
      const { http, clock } = await makeRegistry({ pool: 'only' });
      await http.post('/allocate').send({ client_id: 'vm-a' });
      const t0 = new Date(clock.now()).toISOString();
      clock.advance(SECOND);
      await http.delete('/identifier/only').expect(200);
      const res = await http.get('/identifier/only/history');
      expect(res.body).to.deep.equal([
        { at: t0, event: 'allocated', client_id: 'vm-a', epoch: 1 },
        { at: new Date(clock.now()).toISOString(), event: 'force_released', client_id: 'vm-a', epoch: 1 },
      ]);
      expectError(await http.get('/identifier/none/history'), 404, 'identifier_not_found');
    });

    it('GET /identifiers filters by status and pages with a Link header', async () => {
      const { http } = await makeRegistry({ pool: 'w-[0-4]' });
      await http.post('/allocate').send({ client_id: 'vm-a' });
      const leased = await http.get('/identifiers?status=leased');
      expect(leased.body.map((x: { identifier: string }) => x.identifier)).to.deep.equal(['w-0']);
      expect(leased.headers['link']).to.equal(undefined);
      const p1 = await http.get('/identifiers?status=free&limit=3');
      expect(p1.body.map((x: { identifier: string }) => x.identifier)).to.deep.equal(['w-1', 'w-2', 'w-3']);
      const link = String(p1.headers['link']);
      expect(link).to.match(/^<\/identifiers\?[^>]+>; rel="next"$/);
      const next = /^<([^>]+)>/.exec(link)?.[1] ?? '';
      expect(next).to.include('status=free').and.include('limit=3').and.include('after=w-3');
      const p2 = await http.get(next);
      expect(p2.body.map((x: { identifier: string }) => x.identifier)).to.deep.equal(['w-4']);
      expect(p2.headers['link']).to.equal(undefined);
    });

    it('GET /identifiers refuses bad query values, naming them', async () => {
      const { http } = await makeRegistry();
      for (const [q, field] of [
        ['status=busy', 'status'], ['limit=0', 'limit'], ['limit=10001', 'limit'], ['limit=ten', 'limit'],
        ['after=bad%20id', 'after'], ['after=unknown', 'after'], ['colour=red', 'colour'], ['status=free&status=leased', 'status'],
      ]) {
        const res = await http.get(`/identifiers?${q}`);
        expectError(res, 400, 'invalid_request');
        expect(res.body.error.message, q).to.include(field);
      }
    });
  });

  describe('http: admin', () => {
    it('DELETE /identifier/:identifier force-releases into cooling', async () => {
      const h = await makeRegistry({ pool: 'only' });
      await h.http.post('/allocate').send({ client_id: 'vm-a' });
      const res = await h.http.delete('/identifier/only');
      expect(res.status).to.equal(200);
      expect(res.body).to.include({ identifier: 'only', status: 'cooling', client_id: null, epoch: 1 });
      expectError(await h.http.post('/liveness').send({ client_id: 'vm-a', identifier: 'only' }), 409, 'not_owner');
      expectError(await h.http.delete('/identifier/none'), 404, 'identifier_not_found');
    });

    it('POST /admin/reap sweeps now and reports how many it reclaimed', async () => {
      const h = await makeRegistry({ pool: 'w-[0-1]' });
      await h.http.post('/allocate').send({ client_id: 'vm-a' });
      h.clock.advance(91 * SECOND);
      const res = await h.http.post('/admin/reap');
      expect(res.status).to.equal(200);
      expect(res.body.reclaimed).to.equal(1);
      expect((await h.leasedCount())).to.equal(0);
      expectError(await h.http.post('/admin/reap?force=maybe'), 400, 'invalid_request');
    });
  });

  describe('http: health', () => {
    it('reports status, human uptime, pool counts and the reaper', async () => {
      const { http, clock } = await makeRegistry({ pool: 'w-[0-3]' });
      await http.post('/allocate').send({ client_id: 'vm-a' });
      clock.advance((2 * 3600 + 34 * 60 + 5) * SECOND);
      const res = await http.get('/health');
      expect(res.status).to.equal(200);
      expect(res.body).to.deep.equal({
        status: 'healthy',
        uptime: '2h34m',
        uptime_seconds: 2 * 3600 + 34 * 60 + 5,
        pool: { total: 4, leased: 1, free: 3, cooling: 0, retired: 0 },
        reaper: { last_run_at: null, last_reclaimed: 0, held: false, reason: null },
        pool_file: { reason: null },
      });
    });

    it('is degraded, with the reason, while the last pool reload stands refused', async () => {
      const { http, registry } = await makeRegistry({ pool: 'w-[0-3]' });
      registry.notePoolReload('pool reload refused: the pool file would retire 4 of the 4 identifiers in service');
      const res = await http.get('/health').expect(200);
      expect(res.body).to.deep.include({ status: 'degraded', pool_file: { reason: 'pool reload refused: the pool file would retire 4 of the 4 identifiers in service' } });
      await registry.syncPool(['w-0', 'w-1', 'w-2', 'w-3', 'w-4']);
      expect((await http.get('/health')).body).to.deep.include({ status: 'healthy', pool_file: { reason: null } });
    });

    it('is 503 unhealthy when the database cannot be read', async () => {
      const h = await makeRegistry();
      await h.breakStore();
      const res = await h.http.get('/health');
      expect(res.status).to.equal(503);
      expect(res.body.status).to.equal('unhealthy');
      expect(JSON.stringify(res.body)).to.not.match(/SELECT|at .*\.ts/);
    });
  });

  describe('http: protocol errors', () => {
    it('400 invalid_json for a body that is not JSON', async () => {
      const h = await makeRegistry();
      for (const raw of ['{"client_id": ', 'not json', '{"client_id":"a"}}']) {
        const res = await h.http.post('/allocate').set('Content-Type', 'application/json').send(raw);
        expectError(res, 400, 'invalid_json');
      }
      expect((await h.leasedCount())).to.equal(0);
    });

    it('400 invalid_request for JSON that is not an object, naming the body', async () => {
      const h = await makeRegistry();
      for (const raw of ['"a string"', 'null', '42', 'true', '[]', '[{"client_id":"a"}]']) {
        const res = await h.http.post('/allocate').set('Content-Type', 'application/json').send(raw);
        expectError(res, 400, 'invalid_request');
        expect(res.body.error.message, raw).to.match(/body/);
      }
      expect((await h.leasedCount())).to.equal(0);
    });

    it('415 for JSON types the registry does not read as a request (merge-patch, problem+json)', async () => {
      const h = await makeRegistry();
      for (const type of ['application/merge-patch+json', 'application/problem+json', 'text/plain']) {
        const res = await h.http.post('/allocate').set('Content-Type', type).send('{"client_id":"vm-a"}');
        expectError(res, 415, 'unsupported_media_type');
      }
      expect((await h.leasedCount())).to.equal(0);
    });

    it('413 payload_too_large past 16 KiB', async () => {
      const h = await makeRegistry();
      const res = await h.http.post('/allocate').send({ client_id: 'vm', pad: 'x'.repeat(20_000) });
      expectError(res, 413, 'payload_too_large');
      expect((await h.leasedCount())).to.equal(0);
    });

    it('415 for a non-JSON content type on a POST', async () => {
      const h = await makeRegistry();
      for (const type of ['application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data; boundary=x']) {
        const res = await h.http.post('/allocate').set('Content-Type', type).send('client_id=vm');
        expectError(res, 415, 'unsupported_media_type');
      }
      expect((await h.leasedCount())).to.equal(0);
    });

    it('404 not_found for an unknown route, 405 with Allow for a known route', async () => {
      const { http } = await makeRegistry();
      expectError(await http.get('/nope'), 404, 'not_found');
      expectError(await http.post('/nope').send({}), 404, 'not_found');
      const m = await http.get('/allocate');
      expectError(m, 405, 'method_not_allowed');
      expect(m.headers['allow']).to.include('POST');
      const d = await http.put('/identifier/w-0').send({});
      expectError(d, 405, 'method_not_allowed');
      expect(d.headers['allow']).to.include('GET').and.include('DELETE');
      const unknownMethod = await http.patch('/health');
      expectError(unknownMethod, 405, 'method_not_allowed');
    });

    it('bodies koa-bodyparser reads (chunked, gzip, another charset) get the same answers as plain ones', async () => {
      const h = await makeRegistry();
      expect((await rawPost(h.app, '/allocate', '{"client_id":"vm-chunked"}')).status).to.equal(200);
      const zipped = gzipSync('{"client_id":"vm-gzip"}');
      expect((await rawPost(h.app, '/allocate', zipped, { 'content-encoding': 'gzip', 'content-length': String(zipped.length) })).status).to.equal(200);
      const corrupt = await rawPost(h.app, '/allocate', Buffer.from('not gzip at all'), { 'content-encoding': 'gzip', 'content-length': '15' });
      expect(corrupt.status).to.equal(400);
      expect((corrupt.body as { error: { code: string } }).error.code).to.equal('invalid_request');
      const latin1 = await h.http.post('/allocate').set('Content-Type', 'application/json; charset=latin1').send('{"client_id":"vm-latin1"}');
      expect(latin1.status, JSON.stringify(latin1.body)).to.equal(200);
      expect((await h.leasedCount())).to.equal(3);
      // The same bad bodies are refused the same way on both paths.
      const bad: Array<[string, number, string]> = [
        ['{"client_id": ', 400, 'invalid_json'],
        ['"just a string"', 400, 'invalid_request'],
        ['null', 400, 'invalid_request'],
        ['{"__proto__": {"x": 1}, "client_id": "vm-p"}', 400, 'invalid_json'],
        [JSON.stringify({ client_id: 'vm', pad: 'x'.repeat(20_000) }), 413, 'payload_too_large'],
        ['[]', 400, 'invalid_request'],
      ];
      for (const [body, status, code] of bad) {
        expectError(await h.http.post('/allocate').set('Content-Type', 'application/json').send(body), status, code);
        const viaParser = await rawPost(h.app, '/allocate', body);
        expect([viaParser.status, (viaParser.body as { error: { code: string } }).error.code], body.slice(0, 30)).to.deep.equal([status, code]);
      }
      expect((await h.leasedCount())).to.equal(3);
    });

    it('a POST with no body at all is a 400 naming the missing field, not a 415', async () => {
      const { http } = await makeRegistry();
      const res = await http.post('/allocate');
      expectError(res, 400, 'invalid_request');
      expect(res.body.error.message).to.include('client_id');
    });
  });
}
