/**
 * The dashboard in real headless Chromium (the build the npm package @sparticuz/chromium
 * carries, so nothing needs to be installed on the machine; driven by playwright-core) against a live
 * registry: the admin token is asked for once, an allocation made through the API shows up in
 * the grid with its owner on hover, and the degraded banner appears when the guard holds.
 * A screenshot is kept in test-artifacts/.
 */
import { expect } from 'chai';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { bundledChromium } from './chromium.js';
import { tempDir } from './helpers.js';
import { ROOT, startProcess } from './process-helpers.js';
import type { RunningRegistry } from './process-helpers.js';

const ADMIN = 'admin-token-0123456789';
const AGENT = 'agent-token-0123456789';
const ARTIFACTS = join(ROOT, 'test-artifacts');

async function post(base: string, path: string, body: unknown, token: string): Promise<number> {
  const r = await fetch(base + path, {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
  });
  return r.status;
}

describe('dashboard in headless Chromium', function () {
  this.timeout(90_000);
  let t: ReturnType<typeof tempDir>;
  let reg: RunningRegistry;
  let browser: Browser;

  before(async () => {
    t = tempDir();
    mkdirSync(ARTIFACTS, { recursive: true });
    reg = await startProcess({
      dir: t.dir, pool: 'worker-[000-063]\n',
      env: {
        ADMIN_TOKENS: ADMIN, AGENT_TOKENS: AGENT, LEASE_TTL_SECONDS: '1', REAPER_SCHEDULE: '0 0 1 1 *',
        STARTUP_GRACE_SECONDS: '0', REAPER_MAX_FRACTION: '0.5', REAPER_MIN_HOLD: '2',
      },
    });
    const bundled = bundledChromium();
    browser = await chromium.launch({
      executablePath: bundled.executablePath,
      env: { ...process.env, ...bundled.env },
      args: ['--no-zygote', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await reg?.stop();
    t.cleanup();
  });

  it('asks for the admin token once, then shows a new allocation in the grid with its owner', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 500 } });
    await page.goto(reg.base + '/');
    await page.locator('#login').waitFor({ state: 'visible' });
    await page.fill('#token', ADMIN);
    await page.click('#login button');
    await page.locator('#grid .cell').first().waitFor();
    expect(await page.locator('#grid .cell').count()).to.equal(64);
    expect(await page.locator('[data-count="free"] b').textContent()).to.equal('64');

    expect(await post(reg.base, '/allocate', { client_id: 'vm-browser-1' }, AGENT)).to.equal(200);
    const cell = page.locator('#grid .cell[data-identifier="worker-000"]');
    await page.locator('#grid .cell[data-identifier="worker-000"][data-owner="vm-browser-1"]').waitFor({ timeout: 15_000 });
    expect(await cell.getAttribute('data-status')).to.equal('leased');
    expect(await page.locator('[data-count="leased"] b').textContent()).to.equal('1');

    await cell.hover();
    const tip = page.locator('#tip');
    await tip.waitFor({ state: 'visible' });
    expect(await tip.textContent()).to.match(/worker-000\s+leased\s+owner vm-browser-1\s+epoch 1\s+last seen \d+s ago/);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png') });

    // The token was kept: a reload goes straight to the grid.
    await page.reload();
    await page.locator('#grid .cell').first().waitFor();
    expect(await page.locator('#login').isVisible()).to.equal(false);
    await page.close();
  });

  it('shows the degraded banner while the mass-expiry guard holds', async () => {
    expect(await post(reg.base, '/release', { client_id: 'vm-browser-1', identifier: 'worker-000' }, AGENT)).to.equal(200);
    let latest = 0;
    for (let i = 2; i <= 5; i++) {
      const r = await fetch(`${reg.base}/allocate`, {
        method: 'POST', body: JSON.stringify({ client_id: `vm-browser-${i}` }),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${AGENT}` },
      });
      const lease: unknown = await r.json();
      const expires = typeof lease === 'object' && lease !== null && 'expires_at' in lease ? Date.parse(String(lease.expires_at)) : NaN;
      latest = Math.max(latest, expires);
    }
    // The registry runs on this machine's clock: wait until every lease's real TTL (1 s) has passed, then sweep once.
    await new Promise((r) => setTimeout(r, Math.max(0, latest - Date.now()) + 100));
    const reap = await fetch(`${reg.base}/admin/reap`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
    expect(await reap.text()).to.include('"held":true');
    const page = await browser.newPage({ viewport: { width: 1100, height: 500 } });
    await page.addInitScript(`localStorage.setItem('idreg-token', ${JSON.stringify(ADMIN)})`);
    await page.goto(reg.base + '/');
    const banner = page.locator('#banner.degraded');
    await banner.waitFor({ state: 'visible' });
    expect(await banner.textContent()).to.match(/^Degraded: mass expiry: 4 of 4 leases \(100%\) expired at once/);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-degraded.png') });
    await page.close();
  });
});
