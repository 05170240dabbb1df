/**
 * The IMDS stand-in (test/support/imds.ts) behaves as IMDSv2 does, so the VM-script tests that
 * use it exercise the token dance; and what it serves is what the registry verifies.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { attestIdentity, loadIidCertificates } from '../../src/aws/identity.js';
import { identityDocument, makeRegionSigner } from '../support/aws-iid.js';
import type { RegionSigner } from '../support/aws-iid.js';
import { startImds } from '../support/imds.js';
import type { Imds } from '../support/imds.js';

const run = promisify(execFile);

async function curl(args: string[]): Promise<{ code: number; body: string }> {
  try {
    const { stdout } = await run('curl', ['-sS', '--max-time', '5', '-w', '\n%{http_code}', ...args]);
    const at = stdout.lastIndexOf('\n');
    return { code: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) };
  } catch (e) {
    throw new Error(`curl failed: ${e instanceof Error ? e.message : String(e)}`);
  }
}

describe('IMDS stand-in (IMDSv2) serving a signed identity document', function () {
  this.timeout(60_000);
  let region: RegionSigner;
  let imds: Imds;
  const doc = identityDocument({ instanceId: 'i-0aaaabbbbccccdddd', privateIp: '10.0.7.7' });

  before(async () => {
    region = await makeRegionSigner('us-east-1');
    imds = await startImds({ document: doc, rsa2048: await region.sign(doc) });
  });
  after(() => imds.close());

  it('serves with a session token, as the claim script asks (curl)', async () => {
    const token = await curl(['-X', 'PUT', '-H', 'X-aws-ec2-metadata-token-ttl-seconds: 60', `${imds.url}/latest/api/token`]);
    expect(token.code).to.equal(200);
    const header = `X-aws-ec2-metadata-token: ${token.body}`;
    expect(await curl(['-H', header, `${imds.url}/latest/meta-data/instance-id`])).to.deep.equal({ code: 200, body: 'i-0aaaabbbbccccdddd' });
    expect(await curl(['-H', header, `${imds.url}/latest/meta-data/local-ipv4`])).to.deep.equal({ code: 200, body: '10.0.7.7' });
    const rsa2048 = await curl(['-H', header, `${imds.url}/latest/dynamic/instance-identity/rsa2048`]);
    expect(rsa2048.code).to.equal(200);
    // What the instance would send in "identity" is accepted by the registry's check.
    const trust = loadIidCertificates(region.certPem);
    const r = await attestIdentity(rsa2048.body, trust, { clientId: 'i-0aaaabbbbccccdddd', accountIds: ['111122223333'], sourceAddress: '10.0.7.7' });
    expect(r.ok && r.instance.instance_id).to.equal('i-0aaaabbbbccccdddd');
  });

  it('refuses what IMDSv2 refuses: no token, a wrong or expired token, no TTL, a proxied token request', async () => {
    expect((await curl([`${imds.url}/latest/meta-data/instance-id`])).code).to.equal(401);
    expect((await curl(['-H', 'X-aws-ec2-metadata-token: forged', `${imds.url}/latest/meta-data/instance-id`])).code).to.equal(401);
    expect((await curl(['-X', 'PUT', `${imds.url}/latest/api/token`])).code).to.equal(400);
    expect((await curl(['-X', 'PUT', '-H', 'X-aws-ec2-metadata-token-ttl-seconds: 21601', `${imds.url}/latest/api/token`])).code).to.equal(400);
    expect((await curl(['-X', 'PUT', '-H', 'X-aws-ec2-metadata-token-ttl-seconds: 60', '-H', 'X-Forwarded-For: 10.1.1.1', `${imds.url}/latest/api/token`])).code).to.equal(403);
    const token = await curl(['-X', 'PUT', '-H', 'X-aws-ec2-metadata-token-ttl-seconds: 60', `${imds.url}/latest/api/token`]);
    imds.expireTokens();
    expect((await curl(['-H', `X-aws-ec2-metadata-token: ${token.body}`, `${imds.url}/latest/meta-data/instance-id`])).code).to.equal(401);
    expect(imds.requests.filter((r) => r.status === 401).every((r) => !r.tokenValid)).to.equal(true);
  });

  it('answers 404 where nothing is served, and serves a swapped document', async () => {
    const token = (await curl(['-X', 'PUT', '-H', 'X-aws-ec2-metadata-token-ttl-seconds: 60', `${imds.url}/latest/api/token`])).body;
    const header = `X-aws-ec2-metadata-token: ${token}`;
    expect((await curl(['-H', header, `${imds.url}/latest/meta-data/nothing-here`])).code).to.equal(404);
    imds.serve({ rsa2048: null });
    expect((await curl(['-H', header, `${imds.url}/latest/dynamic/instance-identity/rsa2048`])).code).to.equal(404);
    imds.serve({ rsa2048: 'swapped' });
    expect(await curl(['-H', header, `${imds.url}/latest/dynamic/instance-identity/rsa2048`])).to.deep.equal({ code: 200, body: 'swapped' });
  });

  it('with imdsV1 allowed, answers without a token too (but never with a wrong one)', async () => {
    const v1 = await startImds({ document: doc, rsa2048: null, imdsV1: true });
    try {
      expect(await curl([`${v1.url}/latest/meta-data/instance-id`])).to.deep.equal({ code: 200, body: 'i-0aaaabbbbccccdddd' });
      expect((await curl(['-H', 'X-aws-ec2-metadata-token: forged', `${v1.url}/latest/meta-data/instance-id`])).code).to.equal(401);
    } finally {
      await v1.close();
    }
  });
});
