/**
 * Instance identity documents (attested claims): what is accepted, what is refused and with
 * which status. The documents are signed at test time by test/support/aws-iid.ts (AWS's
 * layout) and by the openssl CLI (an independent signer), with certificates made here.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { webcrypto } from 'node:crypto';
import { expect } from 'chai';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import {
  IDENTITY_MAX_CHARS,
  IidCertificateError,
  attestIdentity,
  checkInstance,
  loadIidCertificates,
  plainAddress,
  readIdentity,
} from '../../src/aws/identity.js';
import type { IidPolicy, IidRefusal, IidResult, IidTrust, InstanceFacts } from '../../src/aws/identity.js';
import { DOCUMENT_DEFAULTS, identityDocument, makeRegionSigner, tamper, wrap76 } from '../support/aws-iid.js';
import type { RegionSigner } from '../support/aws-iid.js';

const POLICY: IidPolicy = {
  clientId: DOCUMENT_DEFAULTS.instanceId,
  accountIds: [DOCUMENT_DEFAULTS.accountId, '999988887777'],
  regions: ['us-east-1', 'eu-west-1'],
  sourceAddress: null,
};

function refused(r: IidResult): IidRefusal {
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.instance)}`);
  return r;
}

function accepted(r: IidResult): InstanceFacts {
  if (!r.ok) throw new Error(`expected acceptance, got ${r.code} ${r.reason}: ${r.message}`);
  return r.instance;
}

function openssl(dir: string, args: string[]): string {
  return execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe('aws/identity: instance identity documents', function () {
  this.timeout(120_000); // four RSA-2048 key pairs on a loaded machine

  let dir: string;
  let east: RegionSigner;
  let west: RegionSigner;
  let foreign: RegionSigner;
  let impostor: RegionSigner;
  let trust: IidTrust;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'iid-'));
    [east, west, foreign] = await Promise.all([makeRegionSigner('us-east-1'), makeRegionSigner('eu-west-1'), makeRegionSigner('us-east-1')]);
    // Same subject and serial as the configured us-east-1 certificate, another key.
    impostor = await makeRegionSigner('us-east-1', { serial: east.serial });
    trust = loadIidCertificates(`# AWS RSA-2048 certificates\n${east.certPem}\n${west.certPem}`);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  describe('accepts', () => {
    it('a document signed as AWS signs it: the instance facts it carries', async () => {
      const text = await east.sign(identityDocument());
      expect(accepted(await attestIdentity(text, trust, POLICY))).to.deep.equal({
        instance_id: 'i-0123456789abcdef0',
        account_id: '111122223333',
        region: 'us-east-1',
        availability_zone: 'us-east-1a',
        instance_type: 't3.micro',
        image_id: 'ami-0abcdef1234567890',
        private_ip: '10.0.1.23',
      });
    });

    it('each region by its own certificate among several in the file', async () => {
      const doc = identityDocument({ region: 'eu-west-1', availabilityZone: 'eu-west-1b' });
      expect(accepted(await attestIdentity(await west.sign(doc), trust, POLICY)).availability_zone).to.equal('eu-west-1b');
    });

    it('DER, no signed attributes, an embedded certificate, SHA-512: what OpenSSL\'s documented check accepts', async () => {
      const doc = identityDocument();
      const variants = [
        await east.sign(doc, { layout: 'der' }),
        await east.sign(doc, { signedAttributes: false }),
        await east.sign(doc, { embedCertificate: true }),
        await east.sign(doc, { digest: 'SHA-512' }),
      ];
      writeFileSync(join(dir, 'east.pem'), east.certPem);
      for (const [i, text] of variants.entries()) {
        writeFileSync(join(dir, `v${i}.p7`), `-----BEGIN PKCS7-----\n${text}\n-----END PKCS7-----\n`);
        openssl(dir, ['smime', '-verify', '-in', `v${i}.p7`, '-inform', 'PEM', '-certfile', 'east.pem', '-noverify', '-out', `v${i}.json`]);
        expect(accepted(await attestIdentity(text, trust, POLICY)).instance_id, `variant ${i}`).to.equal(POLICY.clientId);
      }
    });

    it('a document signed by the openssl CLI (BER streaming, rsaEncryption), not by the library that verifies', async () => {
      writeFileSync(join(dir, 'doc.json'), identityDocument());
      writeFileSync(join(dir, 'east.pem'), east.certPem);
      writeFileSync(join(dir, 'east.key'), east.keyPem);
      openssl(dir, ['cms', '-sign', '-binary', '-nodetach', '-stream', '-md', 'sha256', '-nocerts', '-nosmimecap',
        '-signer', 'east.pem', '-inkey', 'east.key', '-in', 'doc.json', '-outform', 'PEM', '-out', 'doc.p7']);
      const pemText = readFileSync(join(dir, 'doc.p7'), 'utf8');
      // As armoured PEM (openssl's CMS armour; AWS's instructions wrap the text in PKCS7's) and as the bare base64 IMDS serves.
      expect(accepted(await attestIdentity(pemText, trust, POLICY)).account_id).to.equal('111122223333');
      const pkcs7 = pemText.replace('-----BEGIN CMS-----', '-----BEGIN PKCS7-----').replace('-----END CMS-----', '-----END PKCS7-----');
      expect(accepted(await attestIdentity(pkcs7, trust, POLICY)).account_id).to.equal('111122223333');
      const bare = pemText.replace(/-----[^-]+-----/g, '');
      expect(accepted(await attestIdentity(bare, trust, POLICY)).account_id).to.equal('111122223333');
    });

    it('the source address, IPv4-mapped as a dual-stack socket reports it, when it must match', async () => {
      const text = await east.sign(identityDocument());
      expect(accepted(await attestIdentity(text, trust, { ...POLICY, sourceAddress: '::ffff:10.0.1.23' })).private_ip).to.equal('10.0.1.23');
      expect(accepted(await attestIdentity(text, trust, { ...POLICY, sourceAddress: '10.0.1.23' })).private_ip).to.equal('10.0.1.23');
    });

    it('any region when none are configured', async () => {
      const text = await west.sign(identityDocument({ region: 'ap-south-2' }));
      expect(accepted(await attestIdentity(text, trust, { ...POLICY, regions: null })).region).to.equal('ap-south-2');
      refused(await attestIdentity(text, trust, POLICY));
    });
  });

  describe('refuses with 401 unauthorized', () => {
    it('a missing document: absent, null, empty, blank', async () => {
      for (const identity of [undefined, null, '', '  \n']) {
        const r = refused(await readIdentity(identity, trust));
        expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'missing']);
        expect(r.message).to.match(/^identity: /);
      }
    });

    it('a foreign signer (a certificate not in the file): unknown signer, naming its serial', async () => {
      const r = refused(await attestIdentity(await foreign.sign(identityDocument()), trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'unknown_signer']);
      expect(r.message).to.contain(foreign.serial);
    });

    it('an impostor: AWS\'s subject and a configured serial, another key: bad signature', async () => {
      const r = refused(await attestIdentity(await impostor.sign(identityDocument()), trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'bad_signature']);
    });

    it('an impostor that embeds its own certificate: only configured certificates vouch', async () => {
      const r = refused(await attestIdentity(await impostor.sign(identityDocument(), { embedCertificate: true }), trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'bad_signature']);
      const f = refused(await attestIdentity(await foreign.sign(identityDocument(), { embedCertificate: true }), trust, POLICY));
      expect([f.code, f.reason]).to.deep.equal(['unauthorized', 'unknown_signer']);
    });

    it('a tampered document (another account written over the signed one), with and without signed attributes', async () => {
      for (const signedAttributes of [true, false]) {
        const text = tamper(await east.sign(identityDocument(), { signedAttributes }), '111122223333', '999988887777');
        const r = refused(await attestIdentity(text, trust, POLICY));
        expect([r.code, r.reason], `signedAttributes ${signedAttributes}`).to.deep.equal(['unauthorized', 'bad_signature']);
      }
    });

    it('a tampered signature', async () => {
      const bytes = Buffer.from((await east.sign(identityDocument(), { layout: 'der' })).replace(/\s+/g, ''), 'base64');
      bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0x01; // DER: the signature is last
      const r = refused(await attestIdentity(wrap76(bytes), trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'bad_signature']);
    });

    it('a SHA-1 digest, which AWS\'s rsa2048 signature never uses', async () => {
      const r = refused(await attestIdentity(await east.sign(identityDocument(), { digest: 'SHA-1' }), trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'bad_signature']);
      expect(r.message).to.contain('SHA-256');
    });

    it('garbage: not base64, base64 of something else, not a string, too long, deeply nested BER', async () => {
      const cases: unknown[] = [
        'not base64 at all!',
        'QUJD', // "ABC"
        Buffer.from('{"instanceId":"i-0123456789abcdef0"}').toString('base64'),
        Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]).toString('base64'), // a SEQUENCE, not a ContentInfo
        42,
        { instanceId: 'i-0123456789abcdef0' },
        'A'.repeat(IDENTITY_MAX_CHARS + 4),
        Buffer.from('3080'.repeat(6000), 'hex').toString('base64'),
      ];
      for (const identity of cases) {
        const r = refused(await readIdentity(identity, trust));
        expect([r.code, r.reason], String(identity).slice(0, 40)).to.deep.equal(['unauthorized', 'unreadable']);
      }
    });

    it('a signed-data of another kind: a detached signature, a signed non-document', async () => {
      const detached = refused(await readIdentity(await east.sign(identityDocument(), { detached: true }), trust));
      expect([detached.code, detached.reason]).to.deep.equal(['unauthorized', 'unreadable']);
      expect(detached.message).to.contain('detached');
      const notJson = refused(await readIdentity(await east.sign('hello'), trust));
      expect([notJson.code, notJson.reason]).to.deep.equal(['unauthorized', 'unreadable']);
      const noAccount = identityDocument();
      const r = refused(await readIdentity(await east.sign(noAccount.replace(/\s*"accountId" : "\d+",/, '')), trust));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'unreadable']);
      expect(r.message).to.contain('accountId');
    });

    it('a signature whose signed content type is not the data it carries', async () => {
      const text = await east.sign(identityDocument(), { signedContentType: '1.2.840.113549.1.7.2' });
      const r = refused(await attestIdentity(text, trust, POLICY));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'bad_signature']);
    });

    it('a structure with two signers', async () => {
      const text = await east.sign(identityDocument(), { layout: 'der' });
      const info = pkijs.ContentInfo.fromBER(Buffer.from(text.replace(/\s+/g, ''), 'base64'));
      const sd = new pkijs.SignedData({ schema: info.content });
      const first = sd.signerInfos[0];
      if (!first) throw new Error('no signer');
      sd.signerInfos.push(new pkijs.SignerInfo({ schema: first.toSchema() }));
      const twice = new pkijs.ContentInfo({ contentType: info.contentType, content: sd.toSchema(true) });
      const r = refused(await readIdentity(wrap76(twice.toSchema().toBER(false)), trust));
      expect([r.code, r.reason]).to.deep.equal(['unauthorized', 'unreadable']);
    });
  });

  describe('refuses a valid document that does not match the claim with 403 forbidden', () => {
    const cases: [string, Partial<IidPolicy>, Parameters<typeof identityDocument>[0], IidRefusal['reason'], string][] = [
      ['a wrong account', {}, { accountId: '444455556666' }, 'account', '444455556666'],
      ['a wrong region', {}, { region: 'ap-south-2' }, 'region', 'ap-south-2'],
      ['a wrong instance id (another instance\'s document)', { clientId: 'i-0fedcba9876543210' }, {}, 'instance_id', 'i-0fedcba9876543210'],
      ['a wrong source address', { sourceAddress: '10.0.9.9' }, {}, 'source_address', '10.0.9.9'],
    ];
    for (const [what, policy, doc, reason, named] of cases) {
      it(`${what}: says which`, async () => {
        const r = refused(await attestIdentity(await east.sign(identityDocument(doc)), trust, { ...POLICY, ...policy }));
        expect([r.code, r.reason]).to.deep.equal(['forbidden', reason]);
        expect(r.message).to.contain(named);
      });
    }

    it('checks in order (account, region, instance id, source) and 401 before 403', async () => {
      const facts: InstanceFacts = { ...accepted(await readIdentity(await east.sign(identityDocument()), trust)) };
      const wrongEverything: IidPolicy = { clientId: 'i-x', accountIds: ['000000000000'], regions: ['eu-north-1'], sourceAddress: '10.9.9.9' };
      expect(refused(checkInstance(facts, wrongEverything)).reason).to.equal('account');
      expect(refused(checkInstance(facts, { ...wrongEverything, accountIds: ['111122223333'] })).reason).to.equal('region');
      expect(refused(checkInstance(facts, { ...wrongEverything, accountIds: ['111122223333'], regions: null })).reason).to.equal('instance_id');
      const foreignAndWrong = refused(await attestIdentity(await foreign.sign(identityDocument({ accountId: '444455556666' })), trust, POLICY));
      expect(foreignAndWrong.code).to.equal('unauthorized');
    });
  });

  describe('certificates (AWS_IID_CERT_FILE)', () => {
    it('reads each certificate with its serial, ignoring text between blocks', () => {
      expect(trust.certificates.map((c) => c.serial)).to.deep.equal([east.serial, west.serial]);
      expect(trust.certificates[0]?.subject).to.equal('C=US, ST=Washington State, L=Seattle, O=Amazon Web Services LLC');
    });

    it('refuses a file without certificates, another PEM block, a broken block, with a line naming it', () => {
      const fail = (pem: string): string => {
        try {
          loadIidCertificates(pem);
        } catch (e) {
          if (e instanceof IidCertificateError) return e.message;
          throw e;
        }
        throw new Error('expected an IidCertificateError');
      };
      expect(fail('')).to.contain('no "-----BEGIN CERTIFICATE-----"');
      expect(fail(`${east.certPem}-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n`)).to.contain('block 2 is "PKCS7"');
      expect(fail('-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n')).to.contain('certificate 1 does not parse');
    });

    it('refuses the certificates AWS publishes for the other signatures (DSA, RSA-1024) and other key types', async () => {
      const rsa1024 = await makeRegionSigner('us-east-1', { bits: 1024 });
      expect(() => loadIidCertificates(rsa1024.certPem)).to.throw(IidCertificateError, /RSA-1024 key: use AWS's RSA-2048/);
      openssl(dir, ['genpkey', '-genparam', '-algorithm', 'DSA', '-pkeyopt', 'dsa_paramgen_bits:1024', '-out', 'dsa.param']);
      openssl(dir, ['req', '-x509', '-newkey', 'dsa:dsa.param', '-nodes', '-keyout', 'dsa.key', '-out', 'dsa.pem', '-days', '1', '-subj', '/O=Amazon Web Services LLC']);
      const dsa = readFileSync(join(dir, 'dsa.pem'), 'utf8');
      expect(() => loadIidCertificates(`${east.certPem}${dsa}`)).to.throw(IidCertificateError, /certificate 2 .* has a DSA key/);
      const ec = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
      const cert = new pkijs.Certificate();
      cert.serialNumber = new asn1js.Integer({ value: 1 });
      cert.issuer.typesAndValues.push(new pkijs.AttributeTypeAndValue({ type: '2.5.4.10', value: new asn1js.PrintableString({ value: 'x' }) }));
      cert.subject.typesAndValues.push(new pkijs.AttributeTypeAndValue({ type: '2.5.4.10', value: new asn1js.PrintableString({ value: 'x' }) }));
      await cert.subjectPublicKeyInfo.importKey(ec.publicKey);
      await cert.sign(ec.privateKey, 'SHA-256');
      const ecPem = `-----BEGIN CERTIFICATE-----\n${Buffer.from(cert.toSchema().toBER(false)).toString('base64')}\n-----END CERTIFICATE-----\n`;
      expect(() => loadIidCertificates(ecPem)).to.throw(IidCertificateError, /EC key/);
    });
  });

  it('verifications running at once do not interfere (the parsed certificates are shared)', async () => {
    const good = await east.sign(identityDocument());
    const bad = tamper(good, '111122223333', '999988887777');
    const alien = await foreign.sign(identityDocument());
    const inputs = Array.from({ length: 30 }, (_, i) => [good, bad, alien][i % 3] ?? good);
    const results = await Promise.all(inputs.map((t) => attestIdentity(t, trust, POLICY)));
    expect(results.map((r) => (r.ok ? 'ok' : r.reason))).to.deep.equal(inputs.map((_, i) => ['ok', 'bad_signature', 'unknown_signer'][i % 3]));
  });

  it('plainAddress: unwraps IPv4-mapped IPv6 only', () => {
    expect(plainAddress('::ffff:10.1.2.3')).to.equal('10.1.2.3');
    expect(plainAddress('10.1.2.3')).to.equal('10.1.2.3');
    expect(plainAddress('fd00::1')).to.equal('fd00::1');
  });
});
