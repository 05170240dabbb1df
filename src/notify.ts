/**
 * systemd's readiness notice (`Type=notify`): `READY=1` on the datagram socket named by
 * NOTIFY_SOCKET. Node cannot send a unix datagram, so the notice goes through `systemd-notify`,
 * which ships with systemd itself: no native module to compile on the host (the npm packages
 * for this, sd-notify and unix-dgram, both build one with node-gyp). It runs as a child of the
 * registry, so the unit needs `NotifyAccess=all`; it waits (systemd's barrier) until the service
 * manager has read the notice, so the notice is never dropped for a sender that already exited.
 */
import { spawn } from 'node:child_process';

export interface Notified {
  readonly sent: boolean;
  /** Why not, when it was not: for a log line. */
  readonly problem: string | null;
}

/** Sends READY=1 when `socket` is set (the service manager waits for it); resolves when done. */
export function notifyReady(socket: string | undefined, command = 'systemd-notify'): Promise<Notified> {
  if (socket === undefined || socket === '') return Promise.resolve({ sent: false, problem: null });
  return new Promise((resolve) => {
    let err = '';
    const child = spawn(command, ['--ready'], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('error', (e) => resolve({ sent: false, problem: `cannot run ${command}: ${e.message}` }));
    child.on('close', (code, signal) => {
      if (code === 0) resolve({ sent: true, problem: null });
      else resolve({ sent: false, problem: `${command} --ready failed (${signal ?? `exit ${String(code)}`}): ${err.trim() || 'no message'}` });
    });
  });
}
