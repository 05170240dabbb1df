/**
 * Attested claims through the API (docs/configuration.md, "Attested claims"): the tests make
 * their own "regional" certificates and sign their own identity documents the way AWS does
 * (test/support/aws-iid.ts). A good document is granted, with its facts kept as `instance`;
 * a foreign signer, a tampered document, a wrong account, region, instance id or source
 * address is refused (401 before 403) and changes nothing. On the real process: a bad
 * certificate file stops start-up (exit 78 naming AWS_IID_CERT_FILE), and SIGHUP re-reads it.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Response } from 'supertest';
import { Attestation } from '../../src/aws/attestation.js';
import { createLogger } from '../../src/log.js';
import { ENGINES, useEngine } from '../support/engines.js';
import { makeRegistry, tempDir } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';
import { ROOT, eventually, json, startProcess } from '../support/process-helpers.js';
import { DOCUMENT_DEFAULTS, identityDocument, makeRegionSigner, tamper } from '../support/aws-iid.js';
import type { RegionSigner } from '../support/aws-iid.js';

const KEY = 'attested-key-0123456789abcdef';

/** `idreg ARGS` as an operator runs it: its output (stdout and stderr), whatever its status. */
function idreg(args: string[], env: Record<string, string>): Promise<string> {
  const child = spawn(process.execPath, ['--import', join(ROOT, 'node_modules/tsx/dist/loader.mjs'), join(ROOT, 'src/cli/idreg.ts'), ...args], {
    cwd: ROOT, env: { PATH: process.env['PATH'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
  return new Promise((resolve) => child.on('close', () => resolve(out)));
}
const INSTANCE = DOCUMENT_DEFAULTS.instanceId;
const ACCOUNT = DOCUMENT_DEFAULTS.accountId;

function expectError(res: Response, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.body)).to.equal(status);
  expect(res.body.error.code).to.equal(code);
}

let signer: RegionSigner;
let foreign: RegionSigner;
let certDir: ReturnType<typeof tempDir>;
let certFile: string;

describe('attested claims (documents signed by a test CA)', () => {
  before(async function () {
    this.timeout(60_000);
    [signer, foreign] = await Promise.all([makeRegionSigner('us-east-1'), makeRegionSigner('eu-west-1')]);
    certDir = tempDir();
    certFile = join(certDir.dir, 'aws-iid.pem');
    writeFileSync(certFile, `# us-east-1\n${signer.certPem}`);
  });
  after(() => certDir.cleanup());

  function attestation(more: { matchSourceIp?: boolean } = {}): Attestation {
    return new Attestation({ certFile, accountIds: [ACCOUNT, '444455556666'], regions: ['us-east-1'], matchSourceIp: more.matchSourceIp ?? false });
  }

  async function attested(opts: { matchSourceIp?: boolean; log?: ReturnType<typeof createLogger> } = {}): Promise<Harness> {
    return makeRegistry({ pool: 'w-[0-1]', claims: { holderKeys: 'optional', attestation: attestation(opts) }, ...(opts.log ? { log: opts.log } : {}) });
  }

  for (const engine of ENGINES) describe(`[${engine}] attested claims`, () => {
    useEngine(engine);

    it('a document signed by a configured certificate is granted, and what it proved is shown as instance until the lease ends', async () => {
      const h = await attested();
      const identity = await signer.sign(identityDocument());
      const lease = (await h.http.post('/allocate').send({ client_id: INSTANCE, key: KEY, identity }).expect(200)).body;
      const instance = { account_id: ACCOUNT, region: 'us-east-1', availability_zone: 'us-east-1a', instance_type: 't3.micro', image_id: 'ami-0abcdef1234567890' };
      expect(lease).to.deep.include({ identifier: 'w-0', client_id: INSTANCE, instance });
      expect((await h.http.get('/identifier/w-0')).body.instance).to.deep.equal(instance);
      expect((await h.http.get(`/client/${INSTANCE}`)).body.instance).to.deep.equal(instance);
      expect((await h.http.get('/identifiers')).body[0].instance).to.deep.equal(instance);
      expect((await h.http.get('/identifiers?limit=1')).body[0].instance).to.deep.equal(instance);
      // Liveness and release are bound to the claim by its key.
      expectError(await h.http.post('/liveness').send({ client_id: INSTANCE, identifier: 'w-0' }), 409, 'not_owner');
      await h.http.post('/liveness').send({ client_id: INSTANCE, identifier: 'w-0', key: KEY }).expect(200);
      // The same document replayed by another claimant (another key): never the same lease.
      expectError(await h.http.post('/allocate').send({ client_id: INSTANCE, key: `${KEY}-other`, identity }), 409, 'holder_conflict');
      const freed = (await h.http.post('/release').send({ client_id: INSTANCE, identifier: 'w-0', key: KEY }).expect(200)).body;
      expect(freed.instance).to.equal(null);
      expect((await h.row('w-0'))?.['instance']).to.equal(null);
    });

    it('refuses a missing, foreign, tampered or mismatched document (401 before 403), changing nothing, counted and logged by reason', async () => {
      let logged = '';
      const log = createLogger('info', new Writable({ write(chunk: Buffer, _enc, cb) { logged += chunk.toString(); cb(); } }));
      const h = await attested({ log });
      const before = JSON.stringify([await h.row('w-0'), await h.row('w-1')]);
      const good = identityDocument();
      const cases: [string, object, number, string, string][] = [
        ['missing', { client_id: INSTANCE, key: KEY }, 401, 'unauthorized', 'missing'],
        ['not base64', { client_id: INSTANCE, key: KEY, identity: 'not a document!' }, 401, 'unauthorized', 'unreadable'],
        ['a foreign signer', { client_id: INSTANCE, key: KEY, identity: await foreign.sign(good) }, 401, 'unauthorized', 'unknown_signer'],
        ['a tampered document', { client_id: INSTANCE, key: KEY, identity: tamper(await signer.sign(good), ACCOUNT, '444455556666') }, 401, 'unauthorized', 'bad_signature'],
        ['a wrong account', { client_id: INSTANCE, key: KEY, identity: await signer.sign(identityDocument({ accountId: '999988887777' })) }, 403, 'forbidden', 'account'],
        ['a wrong region', { client_id: INSTANCE, key: KEY, identity: await signer.sign(identityDocument({ region: 'us-west-2' })) }, 403, 'forbidden', 'region'],
        ['another instance', { client_id: 'i-0fffffffffffffff0', key: KEY, identity: await signer.sign(good) }, 403, 'forbidden', 'instance_id'],
      ];
      for (const [what, body, status, code, reason] of cases) {
        const res = await h.http.post('/allocate').send(body);
        expectError(res, status, code);
        expect(res.body.error.message, what).to.match(/^identity: /);
        expect(logged, `${what}: the request's log line names the reason`).to.match(new RegExp(`"error_code":"${code}","reason":"${reason}"`));
      }
      // With attestation, the key is required: 400 naming it, before any document is looked at.
      const noKey = await h.http.post('/allocate').send({ client_id: INSTANCE, identity: await signer.sign(good) });
      expectError(noKey, 400, 'invalid_request');
      expect(noKey.body.error.message).to.match(/^key: is required/);
      expect(JSON.stringify([await h.row('w-0'), await h.row('w-1')])).to.equal(before);
      expect(await h.leasedCount()).to.equal(0);
      const m = await h.metrics.render();
      for (const reason of ['missing', 'unreadable', 'unknown_signer', 'bad_signature', 'account', 'region', 'instance_id']) {
        expect(m).to.match(new RegExp(`asg_id_registry_attestation_refusals_total\\{reason="${reason}"\\} 1\\n`));
      }
      // ...and the good one still goes through.
      await h.http.post('/allocate').send({ client_id: INSTANCE, key: KEY, identity: await signer.sign(good) }).expect(200);
    });

    it('AWS_IID_MATCH_SOURCE_IP: the claim must come from the document\'s privateIp', async () => {
      const h = await attested({ matchSourceIp: true });
      const elsewhere = await h.http.post('/allocate').send({ client_id: INSTANCE, key: KEY, identity: await signer.sign(identityDocument({ privateIp: '10.0.1.23' })) });
      expectError(elsewhere, 403, 'forbidden');
      expect(elsewhere.body.error.message).to.match(/not from the instance's private address 10\.0\.1\.23/);
      expect(await h.leasedCount()).to.equal(0);
      // supertest connects from loopback.
      await h.http.post('/allocate').send({ client_id: INSTANCE, key: KEY, identity: await signer.sign(identityDocument({ privateIp: '127.0.0.1' })) }).expect(200);
    });
  });

  describe('attested claims on the real process', function () {
    this.timeout(90_000);
    let t: ReturnType<typeof tempDir>;
    beforeEach(() => { t = tempDir(); });
    afterEach(() => t.cleanup());

    it('a certificate file that is missing or holds no usable certificate, or attestation without accounts, stops start-up: exit 78 naming the variable', async () => {
      const garbage = join(t.dir, 'garbage.pem');
      writeFileSync(garbage, 'not a certificate\n');
      for (const [env, named] of [
        [{ AWS_IID_CERT_FILE: join(t.dir, 'missing.pem'), AWS_ACCOUNT_IDS: ACCOUNT }, /AWS_IID_CERT_FILE: .*missing\.pem/],
        [{ AWS_IID_CERT_FILE: garbage, AWS_ACCOUNT_IDS: ACCOUNT }, /AWS_IID_CERT_FILE: .*no "-----BEGIN CERTIFICATE-----" block/],
        [{ AWS_IID_CERT_FILE: certFile }, /AWS_ACCOUNT_IDS: is required with AWS_IID_CERT_FILE/],
        [{ AWS_ACCOUNT_IDS: ACCOUNT }, /AWS_IID_CERT_FILE: is unset while AWS_ACCOUNT_IDS is set/],
        [{ AWS_IID_CERT_FILE: certFile, AWS_ACCOUNT_IDS: '1234' }, /AWS_ACCOUNT_IDS: "1234" is not a 12-digit AWS account id/],
        [{ HOLDER_KEYS: 'yes' }, /HOLDER_KEYS: "yes" is not optional or required/],
      ] as const) {
        const r = await startProcess({ dir: t.dir, pool: 'a\n', env, wait: false });
        expect((await r.exited).code, r.output()).to.equal(78);
        const lines = r.output().trim().split('\n');
        expect(lines, r.output()).to.have.length(1);
        expect(lines[0]).to.match(named);
      }
    });

    it('SIGHUP re-reads the certificates: a new region\'s documents are accepted after it, and a bad file keeps the ones in force', async () => {
      const file = join(t.dir, 'aws-iid.pem');
      writeFileSync(file, signer.certPem);
      const reg = await startProcess({
        dir: t.dir, pool: 'a\nb\n',
        env: { AWS_IID_CERT_FILE: file, AWS_ACCOUNT_IDS: ACCOUNT, HOLDER_KEYS: 'required', REAPER_SCHEDULE: '0 0 0 1 1 *' },
      });
      try {
        const euDoc = identityDocument({ instanceId: 'i-0eeeeeeeeeeeeeee0', region: 'eu-west-1', availabilityZone: 'eu-west-1a' });
        const eu = { client_id: 'i-0eeeeeeeeeeeeeee0', key: KEY, identity: await foreign.sign(euDoc) };
        const refused = await json(reg.base, 'POST', '/allocate', eu);
        expect(refused.status).to.equal(401);
        writeFileSync(file, `${signer.certPem}${foreign.certPem}`);
        reg.child.kill('SIGHUP');
        await eventually(async () => /AWS instance identity certificates reloaded/.test(reg.output()), 10_000, 'the reload');
        const granted = await json(reg.base, 'POST', '/allocate', eu);
        expect(granted.status, JSON.stringify(granted.body)).to.equal(200);
        expect(JSON.stringify(granted.body)).to.include('"availability_zone":"eu-west-1a"');
        // The operator sees the zone: idreg list has a column for it, idreg show the facts.
        const listed = await idreg(['list'], { IDREG_URL: reg.base });
        expect(listed.split('\n')[0]).to.match(/\sAZ$/);
        expect(listed).to.match(/^a\s+i-0eeeeeeeeeeeeeee0\s+1\s+.*leased\s+eu-west-1a$/m);
        expect(await idreg(['show', 'a'], { IDREG_URL: reg.base })).to.match(/^instance: 111122223333 eu-west-1 eu-west-1a t3\.micro ami-0abcdef1234567890$/m);
        writeFileSync(file, 'truncated -----BEGIN CERTIFICATE-----\nMIIB\n');
        reg.child.kill('SIGHUP');
        await eventually(async () => /certificates reload failed; the previous certificates stay in use/.test(reg.output()), 10_000, 'the failed reload');
        const us = { client_id: INSTANCE, key: KEY, identity: await signer.sign(identityDocument()) };
        expect((await json(reg.base, 'POST', '/allocate', us)).status).to.equal(200);
      } finally {
        await reg.stop();
      }
    });
  });
});
