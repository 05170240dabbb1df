/**
 * The dashboard in real headless Chromium (the build the npm package @sparticuz/chromium
 * carries, so nothing needs to be installed on the machine; driven by playwright-core) against a live
 * registry: the admin token is asked for once (a wrong one is said to be wrong), an allocation
 * made through the API shows up in the grid with its owner on hover, the degraded banner appears
 * when the guard holds, and expired, cooling and retired-but-held cells each say what they are.
 * Before a token, the counts only the listing can give are a dash, never a false 0; every cell
 * carries its identifier in its accessible name (and, in a small pool, as visible text); the
 * reaper's reason for reclaiming nothing (the startup grace) is shown.
 * A screenshot is kept in test-artifacts/.
 */
import { expect } from 'chai';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { launchChromium } from '../support/chromium.js';
import { tempDir } from '../support/helpers.js';
import { ROOT, eventually, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

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
        STARTUP_GRACE_SECONDS: '0', REAPER_MAX_FRACTION: '0.5', REAPER_MIN_HOLD: '2', REUSE_COOLDOWN_SECONDS: '600',
      },
    });
    browser = await launchChromium();
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
    expect(await page.locator('#login-error').textContent()).to.equal('');
    // /health is open, so its counts show at once; the two the listing counts do not, yet.
    await page.locator('[data-count="free"] b').waitFor();
    expect(await page.locator('[data-count="free"] b').textContent()).to.equal('64');
    expect(await page.locator('[data-count="expired"] b').textContent()).to.equal('\u2014');
    expect(await page.locator('[data-count="retired-held"] b').textContent()).to.equal('\u2014');
    // A wrong token, then an agent token: each is refused, saying why, and the form stays.
    await page.fill('#token', 'wrong-token-0123456789');
    await page.click('#login button');
    await page.locator('#login-error', { hasText: 'refused' }).waitFor();
    expect(await page.locator('#login-error').textContent()).to.equal('The registry refused that token (401): use one of its ADMIN_TOKENS.');
    await page.fill('#token', AGENT);
    await page.click('#login button');
    await page.locator('#login-error', { hasText: '403' }).waitFor();
    expect(await page.locator('#login-error').textContent()).to.match(/^That token is not an admin token \(403\)/);
    expect(await page.locator('#grid .cell').count()).to.equal(0);
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
    // Counted now that the listing is read (the 1 s lease may have expired already).
    expect(await page.locator('[data-count="expired"] b').textContent()).to.match(/^[01]$/);
    expect(await page.locator('#reaper-reason').textContent(), 'no reason when the reaper has none').to.equal('');
    // Labelled: a pool this small shows each identifier's name on its cell, and every cell has an accessible name.
    expect(await cell.textContent()).to.equal('worker-000');
    expect(await page.getByRole('listitem', { name: /^worker-000: leased, held by vm-browser-1(, expired, not reclaimed yet)?$/ }).count()).to.equal(1);
    expect(await page.getByRole('listitem', { name: 'worker-063: free', exact: true }).textContent()).to.equal('worker-063');

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
    expect(await banner.textContent()).to.match(/^Degraded: mass expiry: 4 of 4 leases \(100%\) expired within the last TTL/);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-degraded.png') });
    await page.close();
  });

  it('marks expired-but-not-reclaimed, cooling (with when it is free) and retired-but-held cells', async () => {
    const headers = { 'content-type': 'application/json', authorization: `Bearer ${AGENT}` };
    const grant = async (client: string): Promise<string> => {
      const r = await fetch(`${reg.base}/allocate`, { method: 'POST', headers, body: JSON.stringify({ client_id: client }) });
      const lease: unknown = await r.json();
      return typeof lease === 'object' && lease !== null && 'identifier' in lease ? String(lease.identifier) : '';
    };
    const cooled = await grant('vm-cool');
    const del = await fetch(`${reg.base}/identifier/${cooled}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN}` } });
    expect(del.status).to.equal(200);
    const retired = await grant('vm-retire');
    // Take it out of the pool file while it is held, and have the registry re-read the file.
    const names = Array.from({ length: 64 }, (_, i) => `worker-${String(i).padStart(3, '0')}`).filter((n) => n !== retired);
    writeFileSync(join(t.dir, 'pool.txt'), `${names.join('\n')}\n`);
    reg.child.kill('SIGHUP');
    await eventually(async () => {
      const r = await fetch(`${reg.base}/identifier/${retired}`, { headers: { authorization: `Bearer ${ADMIN}` } });
      return (await r.text()).includes('"retired":true');
    }, 10_000, 'the held identifier to be retired');

    // Before a token: the header's pool counts are /health's, and the two that only the listing
    // can count (at least 4 expired, 1 retired but held, right now) are a dash, not a false 0.
    const anonymous = await browser.newPage({ viewport: { width: 1100, height: 500 } });
    await anonymous.goto(reg.base + '/');
    await anonymous.locator('#login').waitFor({ state: 'visible' });
    await anonymous.locator('[data-count="leased"] b').waitFor();
    const health: unknown = await (await fetch(`${reg.base}/health`)).json();
    const pool = typeof health === 'object' && health !== null && 'pool' in health && typeof health.pool === 'object' && health.pool !== null ? health.pool : {};
    expect(await anonymous.locator('[data-count="leased"] b').textContent()).to.equal(String('leased' in pool ? pool.leased : '?'));
    expect(await anonymous.locator('[data-count="expired"] b').textContent()).to.equal('\u2014');
    expect(await anonymous.locator('[data-count="retired-held"] b').textContent()).to.equal('\u2014');
    expect(await anonymous.locator('[data-count="expired"]').getAttribute('title')).to.match(/needs an admin token/);
    await anonymous.screenshot({ path: join(ARTIFACTS, 'dashboard-before-token.png') });
    await anonymous.close();

    const page = await browser.newPage({ viewport: { width: 1100, height: 500 } });
    await page.addInitScript(`localStorage.setItem('idreg-token', ${JSON.stringify(ADMIN)})`);
    await page.goto(reg.base + '/');
    await page.locator(`#grid .cell[data-identifier="${retired}"]`).waitFor();
    const tipOf = async (identifier: string): Promise<string> => {
      await page.locator(`#grid .cell[data-identifier="${identifier}"]`).hover();
      const tip = page.locator('#tip');
      await tip.waitFor({ state: 'visible' });
      return (await tip.textContent()) ?? '';
    };

    // The four leases the guard held (test above) expired a while ago and are still held.
    // The page's "now" is the registry's Date header, to the second: a lease that expired within
    // the last second shows as expired from the next refresh on.
    await page.locator('#grid .cell.expired[data-owner="vm-browser-5"]').waitFor({ timeout: 15_000 });
    const expired = page.locator('#grid .cell.expired');
    expect(await expired.count()).to.be.greaterThanOrEqual(4);
    expect(await page.locator('[data-count="expired"] b').textContent()).to.equal(String(await expired.count()));
    expect(await page.getByRole('listitem', { name: /, held by vm-browser-5, expired, not reclaimed yet$/ }).count()).to.equal(1);
    const stale = page.locator('#grid .cell[data-owner="vm-browser-2"]');
    expect(await stale.getAttribute('data-expired')).to.equal('true');
    // Striped, unlike a live lease (this file is compiled without the DOM's types, hence the cast).
    const backgroundImage = await stale.evaluate((el) => (globalThis as unknown as { getComputedStyle(e: unknown): { backgroundImage: string } }).getComputedStyle(el).backgroundImage);
    expect(backgroundImage).to.include('gradient');
    expect(await tipOf(String(await stale.getAttribute('data-identifier'))))
      .to.match(/leased\s+owner vm-browser-2\s+epoch 1\s+last seen \d+s ago\s+expired \d+s ago, not reclaimed yet \(the owner can still renew\)/);

    const cooling = page.locator(`#grid .cell[data-identifier="${cooled}"]`);
    expect(await cooling.getAttribute('data-status')).to.equal('cooling');
    expect(await tipOf(cooled)).to.match(new RegExp(`^${cooled}\\s+cooling\\s+epoch 1\\s+free in (9m\\d+s|10m0s) \\(at \\d\\d:\\d\\d:\\d\\d UTC\\)$`));

    const held = page.locator(`#grid .cell[data-identifier="${retired}"]`);
    expect(await held.getAttribute('class')).to.include('retired-held');
    expect(await held.getAttribute('data-status')).to.equal('leased');
    expect(await page.locator('[data-count="retired-held"] b').textContent()).to.equal('1');
    // (Its TTL is 1 s: by now it may have expired too.)
    expect(await held.getAttribute('aria-label')).to.match(new RegExp(`^${retired}: leased \\(retired\\), held by vm-retire(, expired, not reclaimed yet)?$`));
    expect(await tipOf(retired)).to.match(new RegExp(`^${retired}\\s+leased \\(retired\\)\\s+owner vm-retire[\\s\\S]*retired from the pool file: leaves the pool once freed$`));
    await page.mouse.move(1000, 400);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-states.png') });
    await page.close();
  });

  it('a larger pool: square cells named by their labels; expired ones during the startup grace are explained by its reason', async () => {
    const u = tempDir();
    const graced = await startProcess({
      dir: u.dir, pool: 'node-[000-299]\n',
      env: { ADMIN_TOKENS: ADMIN, AGENT_TOKENS: AGENT, LEASE_TTL_SECONDS: '1', REAPER_SCHEDULE: '0 0 1 1 *', STARTUP_GRACE_SECONDS: '600' },
    });
    try {
      const r = await fetch(`${graced.base}/allocate`, {
        method: 'POST', body: JSON.stringify({ client_id: 'vm-grace' }),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${AGENT}` },
      });
      const lease: unknown = await r.json();
      const expires = typeof lease === 'object' && lease !== null && 'expires_at' in lease ? Date.parse(String(lease.expires_at)) : NaN;
      expect(expires).to.be.a('number').and.not.be.NaN;
      // The registry runs on this machine's clock: wait out the lease's real TTL (1 s), then sweep once, unforced.
      // The dashboard judges expiry by the answer's Date header, which has whole seconds: a further
      // second, or the page may see a time up to 999 ms before the expiry.
      await new Promise((done) => setTimeout(done, Math.max(0, expires - Date.now()) + 1100));
      const reap = await fetch(`${graced.base}/admin/reap`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
      expect(await reap.json()).to.include({ reclaimed: 0 });

      const page = await browser.newPage({ viewport: { width: 1100, height: 500 } });
      await page.addInitScript(`localStorage.setItem('idreg-token', ${JSON.stringify(ADMIN)})`);
      await page.goto(graced.base + '/');
      const cell = page.locator('#grid .cell[data-owner="vm-grace"]');
      await cell.waitFor();
      expect(await page.locator('#grid .cell').count()).to.equal(300);
      // Squares: no text, the name is in the accessible label (and the tooltip).
      expect(await cell.textContent()).to.equal('');
      expect(await cell.getAttribute('aria-label')).to.equal('node-000: leased, held by vm-grace, expired, not reclaimed yet');
      expect(await page.getByRole('listitem', { name: 'node-299: free', exact: true }).count()).to.equal(1);
      expect(await page.locator('[data-count="expired"] b').textContent()).to.equal('1');
      // Why "reclaimed 0" with an expired lease in sight: the grace, and how long it has left.
      expect(await page.locator('#reaper').textContent()).to.match(/reaper: last sweep \d+s ago, reclaimed 0$/);
      expect(await page.locator('#reaper-reason').textContent()).to.match(/^ · startup grace: no reclaim for another \d+s$/);
      expect(await page.locator('#banner').isVisible(), 'the grace is not a degradation').to.equal(false);
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-grace.png') });
      await page.close();
    } finally {
      await graced.stop();
      u.cleanup();
    }
  });
});
