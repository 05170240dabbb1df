/** The units: they pass `systemd-analyze verify` without a warning, and point at what we ship. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './process-helpers.js';

const dir = join(ROOT, 'systemd');
const units = readdirSync(dir).filter((f) => f.endsWith('.service'));
const text = (u: string): string => readFileSync(join(dir, u), 'utf8');

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
      'Restart=on-failure', 'RestartPreventExitStatus=78', 'EnvironmentFile=-/etc/asg-id-registry/registry.env',
      'ExecReload=/bin/kill -HUP $MAINPID', 'Environment=DB_PATH=/var/lib/asg-id-registry/registry.db']) {
      expect(u).to.include(line);
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
