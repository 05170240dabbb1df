/**
 * The VM side with holder keys, attested claims and the watermark: the real POSIX sh scripts
 * under dash, against a real registry process that verifies attested claims (its certificate a
 * test CA's) and requires keys, and a local IMDSv2 stand-in serving a document that CA signed.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { eventually, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { DOCUMENT_DEFAULTS, identityDocument, makeRegionSigner } from '../support/aws-iid.js';
import type { RegionSigner } from '../support/aws-iid.js';
import { startImds } from '../support/imds.js';
import type { Imds } from '../support/imds.js';
import { get, readIdentity, script, stopScript } from '../support/vm-helpers.js';

const INSTANCE = DOCUMENT_DEFAULTS.instanceId;
const REGISTRY_ENV = { LEASE_TTL_SECONDS: '3', REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0', HOLDER_KEYS: 'required' };

describe('VM scripts with holder keys, attested claims and the watermark', function () {
  this.timeout(90_000);
  let signer: RegionSigner;
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry;
  let imds: Imds;
  let env: Record<string, string>;
  const stateOf = (name: string): { dir: string; identity: string; key: string } =>
    ({ dir: join(t.dir, name), identity: join(t.dir, name, 'identity.env'), key: join(t.dir, name, 'holder.key') });

  before(async function () {
    this.timeout(60_000);
    expect(spawnSync('curl', ['--version']).error, 'the VM scripts need curl').to.equal(undefined);
    signer = await makeRegionSigner('us-east-1');
  });

  beforeEach(async () => {
    t = tempDir();
    const certFile = join(t.dir, 'aws-iid.pem');
    writeFileSync(certFile, signer.certPem);
    reg = await startProcess({
      dir: t.dir, pool: 'worker-[00-02]\n',
      env: { ...REGISTRY_ENV, AWS_IID_CERT_FILE: certFile, AWS_ACCOUNT_IDS: DOCUMENT_DEFAULTS.accountId, AWS_REGIONS: 'us-east-1' },
    });
    const document = identityDocument();
    imds = await startImds({ document, rsa2048: await signer.sign(document) });
    env = { ASG_ID_REGISTRY_URL: reg.base, ASG_ID_STATE_DIR: stateOf('run').dir, ASG_ID_IMDS_URL: imds.url, TMPDIR: t.dir };
  });
  afterEach(async () => {
    await reg.stop();
    await imds.close();
    t.cleanup();
  });

  it('claim: draws a key for this boot (0600), sends the IMDSv2 rsa2048 document, and is granted an attested lease; a retried claim reuses the key', async () => {
    const r = await script('asg-id-claim', env).done;
    expect(r.code, r.out).to.equal(0);
    expect(r.out).to.match(new RegExp(`claimed worker-00 \\(epoch 1\\) as ${INSTANCE} from .* \\(attested\\)`));
    const s = stateOf('run');
    expect(readIdentity(s.identity)).to.include({ ASG_ID_IDENTIFIER: 'worker-00', ASG_ID_EPOCH: '1', ASG_ID_CLIENT_ID: INSTANCE, ASG_ID_WATERMARK: '' });
    expect(statSync(s.key).mode & 0o777).to.equal(0o600);
    const [boot, key] = readFileSync(s.key, 'utf8').trim().split('\n');
    expect(boot).to.equal(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    expect(key).to.match(/^[0-9a-f]{48}$/);
    expect(readFileSync(s.identity, 'utf8')).to.not.include(key ?? '-');
    // The registry has the instance's facts, and the document came from IMDSv2 (a token on every GET).
    const lease = (await json(reg.base, 'GET', `/client/${INSTANCE}`)).body;
    expect(get(lease, 'instance')).to.deep.include({ availability_zone: 'us-east-1a', account_id: DOCUMENT_DEFAULTS.accountId });
    const fetched = imds.requests.filter((q) => q.path === '/latest/dynamic/instance-identity/rsa2048');
    expect(fetched.map((q) => [q.tokenValid, q.status])).to.deep.equal([[true, 200]]);
    // The same lease on a re-run (same key), not a conflict.
    const again = await script('asg-id-claim', env).done;
    expect(again.code, again.out).to.equal(0);
    expect(readIdentity(s.identity)['ASG_ID_EPOCH']).to.equal('1');
    expect(readFileSync(s.key, 'utf8').trim().split('\n')[1]).to.equal(key);
    // The key is the lease's: without it, a liveness is not the holder's.
    const keyless = await json(reg.base, 'POST', '/liveness', { client_id: INSTANCE, identifier: 'worker-00' });
    expect(keyless.status).to.equal(409);
  });

  it('claim: another VM with the same client id is told holder_conflict, retries with backoff, and exits 5 with a clear line', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const other = { ...env, ASG_ID_STATE_DIR: stateOf('other').dir, ASG_ID_ATTEMPTS: '2', ASG_ID_BACKOFF_INITIAL: '1' };
    const r = await script('asg-id-claim', other).done;
    expect(r.code, r.out).to.equal(5);
    expect(r.out).to.match(new RegExp(`attempt 1: client id ${INSTANCE} is held by another VM under another key \\(holder_conflict from .*; that lease ends in [1-3]s if its holder stays silent\\); retrying in 1s`));
    expect(r.out).to.match(/no identifier after 2 attempts: client id .* \(holder_conflict .*\); give each VM its own client id\n$/);
    expect(existsSync(stateOf('other').identity)).to.equal(false);
    // Once the first VM lets go, a retrying claim gets an identifier with its own key.
    const retrying = script('asg-id-claim', { ...other, ASG_ID_ATTEMPTS: '20', ASG_ID_BACKOFF_MAX: '1' });
    await eventually(async () => /attempt 1: client id/.test(retrying.out()), 20_000, 'a first conflict');
    const released = await script('asg-id-release', env).done;
    expect(released.code, released.out).to.equal(0);
    const won = await retrying.done;
    expect(won.code, won.out).to.equal(0);
    expect(readIdentity(stateOf('other').identity)).to.include({ ASG_ID_IDENTIFIER: 'worker-00', ASG_ID_EPOCH: '2' });
  });

  it('sidecar: sends the key and the watermark from ASG_ID_WATERMARK_FILE; writes the watermark it is told to identity.env; the release keeps it', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const s = stateOf('run');
    const wmFile = join(t.dir, 'watermark');
    writeFileSync(wmFile, '0001700000000123\n'); // leading zeros are not JSON: sent as 1700000000123
    const side = script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2', ASG_ID_WATERMARK_FILE: wmFile });
    try {
      await eventually(async () => readIdentity(s.identity)['ASG_ID_WATERMARK'] === '1700000000123', 15_000, 'the watermark in identity.env');
      expect(get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'watermark')).to.equal(1_700_000_000_123);
      // A lower value (a clock behind) never lowers it; garbage sends none, said once.
      writeFileSync(wmFile, '5\n');
      const seen = get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'last_seen');
      await eventually(async () => get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'last_seen') !== seen, 10_000, 'a renewal');
      writeFileSync(wmFile, 'not a number\n');
      await eventually(async () => /holds no whole number below 2\^53; sending no watermark/.test(side.out()), 10_000, 'the bad watermark said');
      const again = get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'last_seen');
      await eventually(async () => get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'last_seen') !== again, 10_000, 'a renewal');
      expect(side.out().match(/sending no watermark/g)).to.have.length(1);
      expect(get((await json(reg.base, 'GET', '/identifier/worker-00')).body, 'watermark')).to.equal(1_700_000_000_123);
      expect(readIdentity(s.identity)['ASG_ID_WATERMARK']).to.equal('1700000000123');
      writeFileSync(wmFile, '1700000000999\n');
    } finally {
      const r = await stopScript(side);
      expect(r.code, r.out).to.equal(0);
      expect(r.out).to.match(/released worker-00 \(epoch 1\)/);
    }
    const freed = (await json(reg.base, 'GET', '/identifier/worker-00')).body;
    expect(freed).to.deep.include({ status: 'free', watermark: 1_700_000_000_999, instance: null });
    // The next holder learns it on its allocate, in identity.env.
    const next = await script('asg-id-claim', { ...env, ASG_ID_STATE_DIR: stateOf('next').dir }).done;
    expect(next.code, next.out).to.equal(0);
    expect(next.out).to.match(/its watermark is 1700000000999/);
    expect(readIdentity(stateOf('next').identity)).to.include({ ASG_ID_IDENTIFIER: 'worker-00', ASG_ID_EPOCH: '2', ASG_ID_WATERMARK: '1700000000999' });
  });

  it('sidecar: an identity whose key is gone (or of another boot) is not this VM\'s lease: 409, given up (exit 3)', async () => {
    expect((await script('asg-id-claim', env).done).code).to.equal(0);
    const s = stateOf('run');
    const [, key] = readFileSync(s.key, 'utf8').trim().split('\n');
    writeFileSync(s.key, `another-boot-id\n${key ?? ''}\n`);
    const r = await script('asg-id-sidecar', { ...env, ASG_ID_INTERVAL: '0.2' }).done;
    expect(r.code, r.out).to.equal(3);
    expect(r.out).to.match(/lost: not_owner/);
    expect(existsSync(s.identity)).to.equal(false);
  });

  it('claim without IMDS (off): a key still, no document; an attesting registry refuses it (exit 2, saying why)', async () => {
    const r = await script('asg-id-claim', { ...env, ASG_ID_IMDS_URL: 'off', ASG_ID_CLIENT_ID: INSTANCE }).done;
    expect(r.code, r.out).to.equal(2);
    expect(r.out).to.match(/allocate refused by .* \(HTTP 401 unauthorized\); not retrying/);
    expect(existsSync(stateOf('run').key)).to.equal(true);
    expect(existsSync(stateOf('run').identity)).to.equal(false);
  });
});
