/** Secure defaults on the real process: protected mode, TLS settings, HTTPS and its reload. */
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { tempDir } from '../support/helpers.js';
import { eventually, json, startProcess } from '../support/process-helpers.js';

interface Cert { readonly cert: string; readonly key: string; readonly fingerprint: string }

/** A self-signed certificate for 127.0.0.1, made by the test. */
async function makeCert(name: string): Promise<Cert> {
  const pems = await generate([{ name: 'commonName', value: name }], {
    keySize: 2048,
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  return { cert: pems.cert, key: pems.private, fingerprint: pems.fingerprint.toUpperCase() };
}

/** GET over a new TLS connection that trusts only `ca`; the status and the certificate the server showed. */
function httpsGet(url: string, ca: string | string[]): Promise<{ status: number; body: string; peer: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, agent: false }, (res) => {
      const peer = (res.socket as TLSSocket).getPeerCertificate().fingerprint;
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, peer }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function exitOf(env: Record<string, string>, dir: string): Promise<{ code: number | null; lines: string[] }> {
  const reg = await startProcess({ dir, pool: 'a\n', env, wait: false });
  const stopAnyway = setTimeout(() => void reg.stop('SIGKILL'), 20_000); // if it starts after all
  const { code } = await reg.exited;
  clearTimeout(stopAnyway);
  return { code, lines: reg.output().trim().split('\n') };
}

describe('protected mode and TLS settings (real process)', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => { t = tempDir(); });
  afterEach(() => t.cleanup());

  it('a non-loopback HOST with no tokens refuses to start: exit 78, one line naming ALLOW_OPEN=true', async () => {
    const r = await exitOf({ HOST: '0.0.0.0' }, t.dir);
    expect(r.code).to.equal(78);
    expect(r.lines).to.have.length(1);
    expect(r.lines[0]).to.match(/HOST/).and.match(/ALLOW_OPEN=true/);
  });

  it('ALLOW_OPEN=true, or tokens, let it listen on every interface', async () => {
    for (const env of [{ HOST: '0.0.0.0', ALLOW_OPEN: 'true' }, { HOST: '0.0.0.0', AGENT_TOKENS: 'agent-token-0123456789', ADMIN_TOKENS: 'admin-token-0123456789' }]) {
      const reg = await startProcess({ dir: t.dir, pool: 'a\n', env });
      try {
        expect((await json(reg.base, 'GET', '/health')).status).to.equal(200);
      } finally {
        await reg.stop();
      }
    }
  });

  it('TLS files: both or neither, and readable; otherwise exit 78 naming the variable', async () => {
    const c = await makeCert('127.0.0.1');
    writeFileSync(join(t.dir, 'cert.pem'), c.cert);
    writeFileSync(join(t.dir, 'key.pem'), c.key);
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ TLS_CERT_FILE: join(t.dir, 'cert.pem') }, /^asg-id-registry: configuration error: TLS_KEY_FILE: /],
      [{ TLS_KEY_FILE: join(t.dir, 'key.pem') }, /^asg-id-registry: configuration error: TLS_CERT_FILE: /],
      [{ TLS_CERT_FILE: join(t.dir, 'missing.pem'), TLS_KEY_FILE: join(t.dir, 'key.pem') }, /TLS_CERT_FILE: .*missing\.pem cannot be read \(ENOENT\)/],
      [{ TLS_CERT_FILE: join(t.dir, 'cert.pem'), TLS_KEY_FILE: join(t.dir, 'nope.pem') }, /TLS_KEY_FILE: .*nope\.pem cannot be read/],
      [{ TLS_CERT_FILE: join(t.dir, 'key.pem'), TLS_KEY_FILE: join(t.dir, 'key.pem') }, /TLS_CERT_FILE: .*not a PEM certificate/],
      [{ ALLOW_OPEN: 'yes' }, /ALLOW_OPEN: "yes" is not true or false/],
    ];
    for (const [env, want] of cases) {
      const r = await exitOf(env, t.dir);
      expect(r.code, JSON.stringify(env)).to.equal(78);
      expect(r.lines, JSON.stringify(env)).to.have.length(1);
      expect(r.lines[0], JSON.stringify(env)).to.match(want);
    }
  });
});

describe('listening (real process)', function () {
  this.timeout(30_000);

  it('a port in use is a configuration error: exit 78, one line naming PORT', async () => {
    const t = tempDir();
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      const { port } = taken.address() as AddressInfo;
      const r = await exitOf({ PORT: String(port) }, t.dir);
      expect(r.code).to.equal(78);
      // The socket is bound before the database is touched: one plain line, no log of a sync.
      expect(r.lines.some((l) => l.includes('pool synced'))).to.equal(false);
      const plain = r.lines.filter((l) => !l.startsWith('{'));
      expect(plain, r.lines.join('\n')).to.have.length(1);
      expect(plain[0]).to.match(new RegExp(`PORT: ${port} on 127.0.0.1 is already in use`));
    } finally {
      taken.close();
      t.cleanup();
    }
  });
});

describe('HTTPS (real process)', function () {
  this.timeout(60_000);

  it('serves HTTPS with the configured certificate, and a SIGHUP swaps in a new one', async () => {
    const t = tempDir();
    const first = await makeCert('registry-first');
    const second = await makeCert('registry-second');
    const certFile = join(t.dir, 'cert.pem');
    const keyFile = join(t.dir, 'key.pem');
    writeFileSync(certFile, first.cert);
    writeFileSync(keyFile, first.key);
    const both = [first.cert, second.cert];
    const reg = await startProcess({
      dir: t.dir, pool: 'w-[0-2]\n', scheme: 'https',
      env: { TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile },
      probe: async (url) => (await httpsGet(url, both)).status,
    });
    try {
      const health = await httpsGet(`${reg.base}/health`, first.cert);
      expect(health.status).to.equal(200);
      expect(health.peer).to.equal(first.fingerprint);
      expect(JSON.parse(health.body)).to.include({ status: 'healthy' });
      // Plain HTTP on the HTTPS port gets no answer it could mistake for one.
      let plain: unknown = null;
      try { plain = (await fetch(reg.base.replace('https:', 'http:') + '/health')).status; } catch (e) { plain = e; }
      expect(plain).to.be.instanceOf(Error);

      writeFileSync(certFile, second.cert);
      writeFileSync(keyFile, second.key);
      reg.child.kill('SIGHUP');
      await eventually(async () => (await httpsGet(`${reg.base}/health`, both)).peer === second.fingerprint, 10_000, 'the new certificate');
      expect((await httpsGet(`${reg.base}/health`, second.cert)).status).to.equal(200);

      // A broken pair on reload is logged; the certificate in use stays.
      writeFileSync(keyFile, 'not a key');
      reg.child.kill('SIGHUP');
      await eventually(async () => /TLS certificate reload failed/.test(reg.output()), 10_000, 'the failed reload to be logged');
      expect((await httpsGet(`${reg.base}/health`, second.cert)).peer).to.equal(second.fingerprint);
      expect(reg.child.exitCode).to.equal(null);
    } finally {
      await reg.stop();
      t.cleanup();
    }
  });
});
