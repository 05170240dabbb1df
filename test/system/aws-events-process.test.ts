/**
 * POST /events/aws through a real registry process: EVENT_TOKENS read from the environment, the
 * event's effect on disk before the 200 (the process killed with SIGKILL right after the answer,
 * then started again on the same file), and the log line an operator greps for.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { startProcess } from '../support/process-helpers.js';
import type { RunningRegistry } from '../support/process-helpers.js';
import { tempDir } from '../support/helpers.js';

const AGENT = 'agent-token-0123456789abcdef';
const ADMIN = 'admin-token-0123456789abcdef';
const EVENT = 'event-token-0123456789abcdef';
const INSTANCE = 'i-0123456789abcdef0';

async function call(base: string, token: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: await res.json() };
}

describe('AWS events in a real registry process', function () {
  this.timeout(120_000);
  let reg: RunningRegistry | null = null;
  const { dir, cleanup } = tempDir();
  after(async () => {
    await reg?.stop('SIGKILL').catch(() => undefined);
    cleanup();
  });

  it('EVENT_TOKENS open the route and nothing else; a terminated event is on disk before its 200', async () => {
    const env = { AGENT_TOKENS: AGENT, ADMIN_TOKENS: ADMIN, EVENT_TOKENS: EVENT };
    reg = await startProcess({ dir, pool: 'w-0\nw-1\n', env });
    expect((await call(reg.base, AGENT, 'POST', '/allocate', { client_id: INSTANCE })).status).to.equal(200);
    expect((await call(reg.base, EVENT, 'GET', '/identifiers')).status).to.equal(401);
    expect((await call(reg.base, EVENT, 'POST', '/allocate', { client_id: 'vm-x' })).status).to.equal(401);
    const event = JSON.parse(readFileSync(new URL('../fixtures/aws-events/autoscaling-terminate-successful.json', import.meta.url), 'utf8'));
    const res = await call(reg.base, EVENT, 'POST', '/events/aws', event);
    expect(res).to.deep.equal({ status: 200, body: { released: 1, noted: 0 } });
    await reg.stop('SIGKILL');
    reg = await startProcess({ dir, env });
    const view = await call(reg.base, ADMIN, 'GET', '/identifier/w-0');
    expect(view.body).to.include({ status: 'cooling', client_id: null });
    const history = (await call(reg.base, ADMIN, 'GET', '/identifier/w-0/history')).body as { event: string }[];
    expect(history.map((h) => h.event)).to.deep.equal(['allocated', 'terminated']);
    // The event id survived the kill too: a redelivery changes nothing.
    expect((await call(reg.base, EVENT, 'POST', '/events/aws', event)).body).to.deep.equal({ released: 0, noted: 0 });
    // The line an operator greps for (logs are buffered: flushed by a clean stop, not a SIGKILL).
    const other = 'i-0fedcba9876543210';
    expect((await call(reg.base, AGENT, 'POST', '/allocate', { client_id: other })).status).to.equal(200);
    expect((await call(reg.base, EVENT, 'POST', '/events/aws', { ...event, id: 'another-event', detail: { ...event.detail, EC2InstanceId: other } })).body)
      .to.deep.equal({ released: 1, noted: 0 });
    await reg.stop('SIGTERM');
    expect(reg.output()).to.match(/"msg":"aws event released"/).and.match(/"instance_id":"i-0fedcba9876543210"/);
  });
});
