/**
 * Resource faults: a database locked by another writer, read-only, or removed from under the
 * registry; and the server's limits on slow and oversized requests.
 */
import { expect } from 'chai';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import request from 'supertest';
import { createApp } from '../../src/http/app.js';
import { createHttpServer, DEFAULT_LIMITS } from '../../src/http/server.js';
import { Registry } from '../../src/registry.js';
import { SqliteStore } from '../../src/store/sqlite/store.js';
import { FakeClock } from '../../src/clock.js';
import { DEFAULT_RULES, makeRegistry, tempDir } from '../support/helpers.js';

describe('faults: the database', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('locked by another writer past the busy timeout: 503 unavailable with Retry-After, never 500, nothing changed', async () => {
    const path = join(t.dir, 'r.db');
    const h = await makeRegistry({ path, pool: 'w-[0-3]' });
    const slow = new SqliteStore({ path, busyTimeoutMs: 100, clock: new FakeClock() });
    const registry = new Registry({ store: slow, rules: DEFAULT_RULES });
    const app = request(createApp({ registry, auth: { agentTokens: [], adminTokens: [] } }).callback());
    const z = await registry.allocate('vm-z');
    const other = new Database(path);
    other.exec('BEGIN IMMEDIATE');
    try {
      for (const send of [
        () => app.post('/allocate').send({ client_id: 'vm-a' }),
        () => app.post('/release').send({ client_id: 'vm-z', identifier: z.identifier }),
        () => app.delete(`/identifier/${z.identifier}`),
        // A liveness is answered only once committed: the lock stops it too.
        () => app.post('/liveness').send({ client_id: 'vm-z', identifier: z.identifier }),
      ]) {
        const res = await send();
        expect(res.status, JSON.stringify(res.body)).to.equal(503);
        expect(res.body.error.code).to.equal('unavailable');
        expect(res.headers['retry-after']).to.equal('1');
      }
      // Readers are not blocked in WAL mode, and a lock is not a sick database.
      const health = await app.get('/health');
      expect(health.status).to.equal(200);
      expect(health.body.status).to.equal('healthy');
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    expect((await h.leasedCount())).to.equal(1); // vm-z only: nothing refused took effect
    expect((await app.post('/allocate').send({ client_id: 'vm-a' })).status).to.equal(200); // and it recovers
    await slow.close();
  });

  it('read-only: writes are refused with 503 unavailable, /health is 503 unhealthy', async () => {
    const path = join(t.dir, 'r.db');
    const h = await makeRegistry({ path, pool: 'w-[0-3]' });
    await h.store.close();
    const ro = new SqliteStore({ path, readonly: true, clock: new FakeClock() });
    const registry = new Registry({ store: ro, rules: DEFAULT_RULES });
    const app = request(createApp({ registry, auth: { agentTokens: [], adminTokens: [] } }).callback());
    const res = await app.post('/allocate').send({ client_id: 'vm-a' });
    expect(res.status).to.equal(503);
    expect(res.body.error.code).to.equal('unavailable');
    expect(JSON.stringify(res.body)).to.not.match(/SQLITE|INSERT|UPDATE|\.ts:/);
    const health = await app.get('/health');
    expect(health.status).to.equal(503);
    expect(health.body.status).to.equal('unhealthy');
    expect(health.body.error).to.match(/read-only/);
    expect((await app.get('/identifier/w-0')).status).to.equal(200); // reads still served
    await ro.close();
  });

  for (const how of ['removed', 'replaced'] as const) {
    it(`${how} from under it: writes are refused (they would be lost), /health is unhealthy`, async () => {
      const path = join(t.dir, 'r.db');
      const h = await makeRegistry({ path, pool: 'w-[0-3]' });
      await h.http.post('/allocate').send({ client_id: 'vm-a' }).expect(200);
      if (how === 'removed') {
        rmSync(path);
      } else {
        renameSync(path, `${path}.old`);
        writeFileSync(path, '');
      }
      const res = await h.http.post('/allocate').send({ client_id: 'vm-b' });
      expect(res.status).to.equal(503);
      expect(res.body.error.code).to.equal('unavailable');
      expect(res.body.error.message).to.include(how);
      const health = await h.http.get('/health');
      expect(health.status).to.equal(503);
      expect(health.body).to.include({ status: 'unhealthy' });
      expect(health.body.error).to.include(how);
    });
  }
});

describe('faults: server limits', () => {
  async function serve(limits = DEFAULT_LIMITS): Promise<{ port: number; close: () => Promise<void> }> {
    const h = await makeRegistry();
    const server = createHttpServer(h.app.callback(), limits);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return {
      port: (server.address() as AddressInfo).port,
      close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
    };
  }

  function raw(port: number, text: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(text));
      let out = '';
      s.on('data', (d) => { out += d.toString(); });
      s.on('close', () => resolve(out));
      s.on('error', reject);
    });
  }

  it('has sane defaults: headers within 10 s, the request within 30 s, keep-alive 5 s, checked every second', () => {
    const server = createHttpServer(() => {});
    expect([server.headersTimeout, server.requestTimeout, server.keepAliveTimeout, server.maxHeadersCount])
      .to.deep.equal([10_000, 30_000, 5_000, 100]);
  });

  it('drops a client that sends its headers too slowly (slowloris)', async function () {
    this.timeout(10_000);
    const srv = await serve({ ...DEFAULT_LIMITS, headersTimeoutMs: 300, requestTimeoutMs: 600, checkIntervalMs: 100 });
    try {
      const started = Date.now();
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(srv.port, '127.0.0.1', () => s.write('POST /allocate HTTP/1.1\r\nHost: x\r\n'));
        const drip = setInterval(() => { if (s.writable) s.write('X-Slow: 1\r\n'); }, 100);
        s.on('close', () => { clearInterval(drip); resolve(); });
        s.on('error', () => { clearInterval(drip); resolve(); });
        setTimeout(() => { clearInterval(drip); s.destroy(); reject(new Error('the slow client was not dropped')); }, 5000);
      });
      expect(Date.now() - started).to.be.lessThan(3000);
    } finally {
      await srv.close();
    }
  });

  it('oversized headers and a garbled request line get a JSON 400, not a bare 431/400', async () => {
    const srv = await serve();
    try {
      const big = await raw(srv.port, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
      expect(big).to.match(/^HTTP\/1.1 400 /).and.include('"code":"invalid_request"').and.include('application/json');
      const garbled = await raw(srv.port, 'BLAH /\x01 HTTP/9\r\n\r\n');
      expect(garbled).to.match(/^HTTP\/1.1 400 /).and.include('"code":"invalid_request"');
      const huge = await raw(srv.port, `GET /identifier/${'x'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`);
      expect(huge).to.match(/^HTTP\/1.1 400 /).and.include('"code":"invalid_request"');
    } finally {
      await srv.close();
    }
  });
});
