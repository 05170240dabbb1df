/** The 401/403 matrix for every route, token rotation, and constant-time comparison. */
import { expect } from 'chai';
import { createAuth, matchesAny } from '../../src/http/auth.js';
import { ROUTES } from '../../src/http/routes.js';
import { makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

const AGENTS = ['agent-token-one-0123456789', 'agent-token-two-0123456789'];
const ADMINS = ['admin-token-one-0123456789', 'admin-token-two-0123456789'];
type Who = 'missing' | 'wrong' | 'agent' | 'agent2' | 'admin' | 'admin2' | 'malformed';
const HEADER: Record<Who, string | null> = {
  missing: null,
  wrong: 'Bearer not-a-token-0123456789',
  malformed: `Basic ${Buffer.from('admin:pw').toString('base64')}`,
  agent: `Bearer ${AGENTS[0]}`,
  agent2: `Bearer ${AGENTS[1]}`,
  admin: `Bearer ${ADMINS[0]}`,
  admin2: `Bearer ${ADMINS[1]}`,
};

function expected(access: string, who: Who): 'pass' | 401 | 403 {
  if (access === 'open') return 'pass';
  if (who === 'admin' || who === 'admin2') return 'pass';
  if (who === 'agent' || who === 'agent2') return access === 'agent' ? 'pass' : 403;
  return 401;
}

async function call(h: Harness, method: string, path: string, auth: string | null): Promise<{ status: number; code: string | undefined; www: string | undefined }> {
  const concrete = path.replace(':client_id', 'vm-a').replace(':identifier', 'w-0');
  let req = method === 'get' ? h.http.get(concrete) : method === 'delete' ? h.http.delete(concrete) : h.http.post(concrete);
  if (auth) req = req.set('Authorization', auth);
  const res = method === 'post' ? await req.send({ client_id: 'vm-a', ...(concrete === '/allocate' ? {} : { identifier: 'w-0' }) }) : await req;
  return { status: res.status, code: res.body?.error?.code, www: res.headers['www-authenticate'] };
}

describe('auth matrix', () => {
  for (const route of ROUTES) {
    it(`${route.method.toUpperCase()} ${route.path} (${route.access})`, async () => {
      const h = await makeRegistry({ auth: { agentTokens: AGENTS, adminTokens: ADMINS } });
      await h.registry.allocate('vm-a');
      const before = JSON.stringify((await h.row('w-0')));
      for (const who of Object.keys(HEADER) as Who[]) {
        const want = expected(route.access, who);
        const got = await call(h, route.method, route.path, HEADER[who]);
        if (want === 'pass') {
          expect([401, 403].includes(got.status), `${who}: ${got.status} ${got.code}`).to.equal(false);
        } else {
          expect(got.status, `${who}`).to.equal(want);
          expect(got.code, `${who}`).to.equal(want === 401 ? 'unauthorized' : 'forbidden');
          if (want === 401) expect(got.www).to.equal('Bearer');
        }
        if (want !== 'pass' && route.method !== 'get') {
          expect(JSON.stringify((await h.row('w-0'))), `${who} changed state`).to.equal(before);
        }
      }
    });
  }

  it('with only AGENT_TOKENS set, admin routes refuse every caller (403) and change nothing; agent routes need a token', async () => {
    const h = await makeRegistry({ auth: { agentTokens: AGENTS, adminTokens: [] } });
    await h.registry.allocate('vm-a');
    const before = JSON.stringify(await h.row('w-0'));
    for (const route of ROUTES.filter((r) => r.access === 'admin')) {
      for (const who of Object.keys(HEADER) as Who[]) {
        const got = await call(h, route.method, route.path, HEADER[who]);
        expect(got.status, `${route.method} ${route.path} as ${who}`).to.equal(403);
        expect(got.code).to.equal('forbidden');
      }
    }
    expect(JSON.stringify(await h.row('w-0'))).to.equal(before);
    expect((await h.http.post('/allocate').send({ client_id: 'vm-b' })).status).to.equal(401);
    expect((await h.http.post('/allocate').set('Authorization', HEADER.agent ?? '').send({ client_id: 'vm-b' })).status).to.equal(200);
    expect((await h.http.get('/health')).status).to.equal(200);
  });

  it('with no tokens at all, every route is open', async () => {
    const h = await makeRegistry({ auth: { agentTokens: [], adminTokens: [] } });
    expect((await h.http.post('/allocate').send({ client_id: 'vm-a' })).status).to.equal(200);
    expect((await h.http.get('/identifiers')).status).to.equal(200);
    expect((await h.http.delete('/identifier/w-0')).status).to.equal(200);
  });

  it('with only ADMIN_TOKENS set, agent routes take admin tokens only (401 without one) and a refused call changes nothing', async () => {
    const h = await makeRegistry({ auth: { agentTokens: [], adminTokens: ADMINS } });
    await h.registry.allocate('vm-a'); // vm-a holds w-0
    for (const route of ROUTES.filter((r) => r.access !== 'open')) {
      for (const who of Object.keys(HEADER) as Who[]) {
        const before = JSON.stringify(await h.row('w-0'));
        const got = await call(h, route.method, route.path, HEADER[who]);
        if (who === 'admin' || who === 'admin2') {
          expect([401, 403].includes(got.status), `${route.method} ${route.path} as ${who}: ${got.status}`).to.equal(false);
          continue;
        }
        // No agent token is configured: an "agent" token is as unknown as any other.
        expect(got.status, `${route.method} ${route.path} as ${who}`).to.equal(401);
        expect(got.code).to.equal('unauthorized');
        expect(got.www).to.equal('Bearer');
        expect(JSON.stringify(await h.row('w-0')), `${route.method} ${route.path} as ${who} changed state`).to.equal(before);
      }
    }
  });

  it('with only ADMIN_TOKENS set, a tokenless caller cannot release another VM\'s identifier and take it (issue 21, finding 8)', async () => {
    const h = await makeRegistry({ pool: 'w-0', auth: { agentTokens: [], adminTokens: ADMINS } });
    const lease = await h.registry.allocate('vm-a');
    const released = await h.http.post('/release').send({ client_id: 'vm-a', identifier: 'w-0' });
    expect(released.status).to.equal(401);
    const taken = await h.http.post('/allocate').send({ client_id: 'intruder' });
    expect(taken.status).to.equal(401);
    const row = await h.row('w-0');
    expect(row).to.include({ client_id: 'vm-a', epoch: lease.epoch });
    // The fleet runs with an admin token instead.
    const renewed = await h.http.post('/liveness').set('Authorization', HEADER.admin ?? '').send({ client_id: 'vm-a', identifier: 'w-0' });
    expect(renewed.status).to.equal(200);
    expect((await h.http.get('/health')).status).to.equal(200);
  });
});

describe('token comparison', () => {
  it('looks at every configured token, whichever matches (no early exit)', () => {
    const digests = ['a', 'b', 'c', 'd'].map((x) => Buffer.alloc(32, x));
    let visited = 0;
    const counting = {
      *[Symbol.iterator]() {
        for (const d of digests) {
          visited++;
          yield d;
        }
      },
    };
    expect(matchesAny(Buffer.alloc(32, 'a'), counting)).to.equal(true);
    expect(visited).to.equal(4);
    visited = 0;
    expect(matchesAny(Buffer.alloc(32, 'z'), counting)).to.equal(false);
    expect(visited).to.equal(4);
  });

  it('compares fixed-length digests, so a token of any length is checked the same way', async () => {
    const guard = createAuth({ agentTokens: AGENTS, adminTokens: ADMINS })('admin');
    for (const token of ['x', 'a'.repeat(10_000), ADMINS[0]?.slice(0, -1) ?? '', `${ADMINS[0]}x`]) {
      const ctx = { get: () => `Bearer ${token}` };
      let code = '';
      try {
        await guard(ctx as never, async () => {});
      } catch (e) {
        code = e instanceof Error && 'code' in e ? String(e.code) : 'thrown';
      }
      expect(code, token.slice(0, 20)).to.equal('unauthorized');
    }
  });
});
