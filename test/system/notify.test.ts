/**
 * systemd's Type=notify on the real process: the registry says READY=1 on NOTIFY_SOCKET only
 * once a SIGHUP is a reload. Node dies of a SIGHUP that comes before its first line runs, so
 * readiness is the contract: systemd holds `systemctl reload` until READY=1.
 *
 * The test is the service manager: it binds the unix datagram socket with systemd's own
 * systemd-socket-activate (Node cannot bind one) and reads the datagrams through `cat`.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../support/helpers.js';
import { builtMain, eventually, json, startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';

interface NotifySocket {
  readonly path: string;
  /** Every datagram's text, run together. */
  readonly received: () => string;
  /** Calls `fn` (synchronously, as the bytes arrive) the first time READY=1 is read. */
  onReady(fn: () => void): void;
  close(): Promise<void>;
}

async function notifySocket(dir: string): Promise<NotifySocket> {
  const path = join(dir, 'notify.sock');
  const child: ChildProcess = spawn('systemd-socket-activate', ['--datagram', '-l', path, 'sh', '-c', 'exec cat <&3'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  let err = '';
  let ready: (() => void) | null = null;
  let fired = false;
  child.stdout?.on('data', (d: Buffer) => {
    text += d.toString();
    if (!fired && text.includes('READY=1') && ready) { fired = true; ready(); }
  });
  child.stderr?.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  child.on('error', () => undefined);
  await eventually(async () => err.includes('Listening on'), 10_000, `systemd-socket-activate to bind ${path} (${err})`);
  return {
    path,
    received: () => text,
    onReady(fn) { ready = fn; },
    async close() { child.kill('SIGTERM'); await exited; },
  };
}

function field(body: unknown, k: string): unknown {
  return typeof body === 'object' && body !== null ? Object.fromEntries(Object.entries(body))[k] : undefined;
}

describe('Type=notify: READY=1 once SIGHUP is a reload (real process)', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  let sock: NotifySocket | null = null;
  let reg: RunningRegistry | null = null;
  beforeEach(() => { t = tempDir(); });
  afterEach(async () => {
    await reg?.stop('SIGKILL');
    await sock?.close();
    reg = null;
    sock = null;
    t.cleanup();
  });

  it('a SIGHUP sent the moment READY=1 arrives is answered as a reload, never a death', async () => {
    sock = await notifySocket(t.dir);
    const s = sock;
    let hupAt: number | null = null;
    let registry: RunningRegistry | null = null;
    s.onReady(() => {
      // What systemd does with `systemctl reload` held until the unit is active: at once.
      if (registry) { registry.child.kill('SIGHUP'); hupAt = Date.now(); }
    });
    registry = reg = await startProcess({ dir: t.dir, pool: 'n-[0-2]\n', env: { NOTIFY_SOCKET: s.path }, entry: await builtMain(), wait: false });
    // The file the reload will read: one more identifier than at start-up.
    writeFileSync(join(t.dir, 'pool.txt'), 'n-[0-3]\n');
    let died: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    void registry.exited.then((e) => { died = e; });
    await eventually(async () => hupAt !== null || died !== null, 30_000, `READY=1 on NOTIFY_SOCKET (received: ${JSON.stringify(s.received())})`);
    expect(died, registry.output()).to.equal(null);
    expect(s.received().match(/READY=1/g), 'READY=1 once').to.have.length(1);
    // The reload happened: the new identifier is in the pool, the registry logged it and serves.
    await eventually(async () => field((await json(registry.base, 'GET', '/identifier/n-3')).body, 'status') === 'free', 10_000, `n-3 added by the reload:\n${registry.output()}`);
    expect(died, registry.output()).to.equal(null);
    expect((await json(registry.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
    await eventually(async () => /SIGHUP: re-reading the pool file/.test(registry.output()), 10_000, 'the reload logged');
    expect(registry.output()).to.match(/"level":"info".*ready: READY=1 sent to systemd/);
  });

  it('READY=1 comes only once the registry answers', async () => {
    sock = await notifySocket(t.dir);
    const s = sock;
    let answeredAtReady: Promise<number> | null = null;
    let registry: RunningRegistry | null = null;
    s.onReady(() => {
      if (registry) answeredAtReady = fetch(`${registry.base}/health`).then((r) => r.status, () => 0);
    });
    registry = reg = await startProcess({ dir: t.dir, pool: 'n-[0-2]\n', env: { NOTIFY_SOCKET: s.path }, entry: await builtMain(), wait: false });
    await eventually(async () => answeredAtReady !== null, 30_000, `READY=1 on NOTIFY_SOCKET:\n${registry.output()}`);
    expect(await answeredAtReady).to.equal(200);
  });

  it('a notice that cannot be sent is logged at error, and the registry serves on', async () => {
    // A socket nobody listens on: systemd-notify fails, as it would with systemd gone.
    reg = await startProcess({ dir: t.dir, pool: 'n-[0-2]\n', env: { NOTIFY_SOCKET: join(t.dir, 'nobody.sock') }, entry: await builtMain() });
    const r = reg;
    await eventually(async () => /"level":"error".*cannot tell systemd the registry is ready/.test(r.output()), 10_000, `the failure logged:\n${r.output()}`);
    expect((await json(r.base, 'POST', '/allocate', { client_id: 'vm-a' })).status).to.equal(200);
  });
});
