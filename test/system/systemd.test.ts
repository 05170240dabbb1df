/** The units: they pass `systemd-analyze verify` without a warning, and point at what we ship. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../../src/config.js';
import { ROOT } from '../support/process-helpers.js';

const dir = join(ROOT, 'systemd');
const units = readdirSync(dir).filter((f) => f.endsWith('.service'));
const text = (u: string): string => readFileSync(join(dir, u), 'utf8');

/** KEY=VALUE lines of an environment file; comments and blanks skipped. */
function envFile(body: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of body.split('\n')) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m?.[1] !== undefined && m[2] !== undefined) out[m[1]] = m[2];
  }
  return out;
}

/** The unit's Environment= assignments (several a line allowed). */
function unitEnvironment(unit: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=(.*)$/gm)) {
    for (const pair of (m[1] ?? '').split(/\s+/)) {
      const eq = pair.indexOf('=');
      if (eq > 0) out[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return out;
}

function refusal(env: Record<string, string>): ConfigError | null {
  try {
    loadConfig(env);
    return null;
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
}

describe('systemd units', function () {
  this.timeout(30_000);

  it('ships the registry, claim, sidecar and an example application unit', () => {
    expect(units).to.include.members(['asg-id-registry.service', 'asg-id-claim.service', 'asg-id-sidecar.service', 'example-app.service']);
  });

  it('all pass systemd-analyze verify with no warning', () => {
    const r = spawnSync('systemd-analyze', ['verify', ...units.map((u) => join(dir, u))], { encoding: 'utf8' });
    expect(r.error, 'systemd-analyze must be installed (.ci/run installs it)').to.equal(undefined);
    expect(r.stderr + r.stdout).to.equal('');
    expect(r.status).to.equal(0);
  });

  it('the registry unit is hardened and reloads the pool on SIGHUP', () => {
    const u = text('asg-id-registry.service');
    for (const line of ['DynamicUser=yes', 'StateDirectory=asg-id-registry', 'ProtectSystem=strict', 'NoNewPrivileges=yes',
      'Restart=on-failure', 'RestartPreventExitStatus=78', 'EnvironmentFile=/etc/asg-id-registry/registry.env',
      'ExecReload=/bin/kill -HUP $MAINPID', 'Environment=DB_PATH=/var/lib/asg-id-registry/registry.db']) {
      expect(u).to.include(line);
    }
    // No reload before the registry takes SIGHUP: it says READY=1 then (test/system/notify.test.ts),
    // through systemd-notify, its child, which only NotifyAccess=all lets systemd hear.
    expect(u).to.match(/^Type=notify$/m).and.match(/^NotifyAccess=all$/m);
  });

  it('the registry is safe as shipped: its settings file is required, and its placeholder tokens refuse to start', () => {
    const u = text('asg-id-registry.service');
    expect(u).to.not.match(/^EnvironmentFile=-/m); // no settings, no start
    expect(u).to.not.match(/^Environment=HOST=/m); // the address is chosen in registry.env; the default is loopback
    expect(u).to.match(/^#LoadCredential=tls-key:/m).and.include('TLS_CERT_FILE').and.include('TLS_KEY_FILE');
    const shipped = { ...unitEnvironment(u), ...envFile(readFileSync(join(dir, 'registry.env.example'), 'utf8')) };
    expect(shipped['HOST']).to.equal('0.0.0.0');
    for (const name of ['AGENT_TOKENS', 'ADMIN_TOKENS']) {
      expect(shipped[name]?.length, name).to.be.at.least(16);
      const e = refusal({ ...shipped, ...(name === 'ADMIN_TOKENS' ? { AGENT_TOKENS: 'a-real-agent-secret-0123456789' } : {}) });
      expect(e?.variable, name).to.equal(name);
      expect(e?.message).to.include('placeholder');
    }
    // With the placeholders replaced, the shipped settings start.
    const real = loadConfig({ ...shipped, AGENT_TOKENS: 'a-real-agent-secret-0123456789', ADMIN_TOKENS: 'a-real-admin-secret-0123456789' });
    expect(real).to.include({ host: '0.0.0.0', port: 8080, dbPath: '/var/lib/asg-id-registry/registry.db', tls: null });
    // The shipped scripts always send a holder key: the shipped registry requires one.
    expect(real).to.include({ holderKeys: 'required', attestation: null });
    // Without the file (or with its tokens deleted) the unit's own settings would not serve open.
    expect(loadConfig(unitEnvironment(u)).host).to.equal('127.0.0.1');
    expect(refusal({ ...shipped, AGENT_TOKENS: '', ADMIN_TOKENS: '' })?.variable).to.equal('HOST');
  });

  it('the registry unit with its TLS lines uncommented still verifies', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'unit-'));
    try {
      const tls = text('asg-id-registry.service').replace(/^#(LoadCredential=|Environment=TLS_)/gm, '$1');
      writeFileSync(join(tmp, 'asg-id-registry.service'), tls);
      const r = spawnSync('systemd-analyze', ['verify', join(tmp, 'asg-id-registry.service')], { encoding: 'utf8' });
      expect(r.stderr + r.stdout).to.equal('');
      expect(r.status).to.equal(0);
      expect(unitEnvironment(tls)).to.include({ TLS_CERT_FILE: '%d/tls-cert', TLS_KEY_FILE: '%d/tls-key' });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('the VM units are ordered claim -> sidecar -> application, and release on stop', () => {
    const claim = text('asg-id-claim.service');
    const sidecar = text('asg-id-sidecar.service');
    const app = text('example-app.service');
    expect(claim).to.match(/^Type=oneshot$/m).and.match(/^RemainAfterExit=yes$/m).and.match(/^ExecStop=.*asg-id-release$/m);
    expect(sidecar).to.match(/^Requires=asg-id-claim.service$/m).and.match(/^After=asg-id-claim.service$/m);
    expect(sidecar).to.match(/^Restart=on-failure$/m).and.match(/^RestartPreventExitStatus=3 4 66$/m);
    expect(app).to.match(/^BindsTo=asg-id-sidecar.service$/m).and.match(/^EnvironmentFile=\/run\/asg-id\/identity.env$/m);
  });

  // The exit codes the units rely on (3, 4, 66, 78) are asserted where the scripts and the registry run.
  it('every script a unit runs is one we ship', () => {
    for (const u of units) {
      for (const m of text(u).matchAll(/\/usr\/local\/lib\/asg-id\/([\w-]+)/g)) {
        expect(existsSync(join(ROOT, 'scripts', m[1] ?? '')), `${u} runs ${m[1]}`).to.equal(true);
      }
    }
  });
});
