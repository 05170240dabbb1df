/**
 * The dashboard in headless Chromium shows what an attested claim proved: the holder's zone on
 * its cell and in the tooltip, and the identifier's watermark (see browser.test.ts for the rest).
 */
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { launchChromium } from '../support/chromium.js';
import { tempDir } from '../support/helpers.js';
import { startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { DOCUMENT_DEFAULTS, identityDocument, makeRegionSigner } from '../support/aws-iid.js';

const ADMIN = 'admin-token-0123456789';
const AGENT = 'agent-token-0123456789';
const KEY = 'browser-key-0123456789abcdef';

async function post(base: string, path: string, body: unknown): Promise<number> {
  const r = await fetch(base + path, {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${AGENT}` },
  });
  return r.status;
}

describe('dashboard in headless Chromium: attested holders', function () {
  this.timeout(90_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry;
  let browser: Browser;

  before(async () => {
    t = tempDir();
    const signer = await makeRegionSigner('eu-west-1');
    const certFile = join(t.dir, 'aws-iid.pem');
    writeFileSync(certFile, signer.certPem);
    reg = await startProcess({
      dir: t.dir, pool: 'worker-[000-007]\n',
      env: {
        ADMIN_TOKENS: ADMIN, AGENT_TOKENS: AGENT, REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '0',
        AWS_IID_CERT_FILE: certFile, AWS_ACCOUNT_IDS: DOCUMENT_DEFAULTS.accountId,
      },
    });
    const document = identityDocument({ region: 'eu-west-1', availabilityZone: 'eu-west-1c', instanceType: 'c7g.large' });
    expect(await post(reg.base, '/allocate', { client_id: DOCUMENT_DEFAULTS.instanceId, key: KEY, identity: await signer.sign(document) })).to.equal(200);
    expect(await post(reg.base, '/liveness', { client_id: DOCUMENT_DEFAULTS.instanceId, identifier: 'worker-000', key: KEY, watermark: 1767866400123 })).to.equal(200);
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await reg?.stop();
    t.cleanup();
  });

  it('shows the holder\'s availability zone and the watermark', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 500 } });
    await page.goto(reg.base + '/');
    await page.fill('#token', ADMIN);
    await page.click('#login button');
    const cell = page.locator('#grid .cell[data-identifier="worker-000"][data-zone="eu-west-1c"]');
    await cell.waitFor({ timeout: 15_000 });
    expect(await page.locator('#grid .cell[data-identifier="worker-001"]').getAttribute('data-zone')).to.equal('');
    await cell.hover();
    const tip = page.locator('#tip');
    await tip.waitFor({ state: 'visible' });
    const text = (await tip.textContent()) ?? '';
    expect(text).to.match(/owner i-0123456789abcdef0\s+epoch 1\s+zone eu-west-1c\s+c7g\.large\s+account 111122223333/);
    expect(text).to.match(/watermark 1767866400123/);
    await page.close();
  });
});
