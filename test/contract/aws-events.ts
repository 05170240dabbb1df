/**
 * POST /events/aws on every engine (docs/operations.md, "AWS events"): each documented
 * EventBridge event shape (test/fixtures/aws-events, fields as AWS names them) against an
 * attested and an unattested lease, redelivery, an instance that holds nothing, an instance id
 * whose identifier was reclaimed and granted to another, bad bodies and auth. What a user would
 * notice: the answer, the identifier's view and history, what the database holds, the metrics.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import type { Response } from 'supertest';
import type { InstanceInfo } from '../../src/domain/types.js';
import { SECOND, makeRegistry } from '../support/helpers.js';
import type { Harness } from '../support/helpers.js';

const FIXTURES = new URL('../fixtures/aws-events/', import.meta.url);
const INSTANCE = 'i-0123456789abcdef0';
const KEY = 'key-A-0123456789abcdef0123456789';
const FACTS: InstanceInfo = { accountId: '111122223333', region: 'us-east-1', availabilityZone: 'us-east-1a', instanceType: 'm5.large', imageId: 'ami-0abcdef1234567890' };

type Json = Record<string, unknown>;

function fixture(name: string, over: { id?: string; instance?: string } = {}): Json {
  const e = JSON.parse(readFileSync(new URL(`${name}.json`, FIXTURES), 'utf8')) as Json;
  const detail = { ...(e['detail'] as Json) };
  if (over.instance !== undefined) {
    if ('EC2InstanceId' in detail) detail['EC2InstanceId'] = over.instance;
    else detail['instance-id'] = over.instance;
  }
  return { ...e, detail, ...(over.id !== undefined ? { id: over.id } : {}) };
}

/** Every fixture, what it must do to the lease of the instance it names. */
const SHAPES: readonly { name: string; does: 'terminated' | 'terminating' | 'nothing' }[] = [
  { name: 'autoscaling-terminate-successful', does: 'terminated' },
  { name: 'ec2-state-change-terminated', does: 'terminated' },
  { name: 'ec2-spot-interruption-warning', does: 'terminating' },
  { name: 'autoscaling-terminate-lifecycle-action', does: 'terminating' },
  { name: 'autoscaling-terminate-lifecycle-action-warm-pool', does: 'nothing' },
  { name: 'ec2-state-change-shutting-down', does: 'nothing' },
  { name: 'ec2-state-change-running', does: 'nothing' },
  { name: 'autoscaling-launch-successful', does: 'nothing' },
];

function expectError(res: Response, status: number, code: string): void {
  expect(res.status, JSON.stringify(res.body)).to.equal(status);
  expect(res.body.error.code).to.equal(code);
}

async function history(h: Harness, name: string): Promise<{ event: string; client_id: string | null; epoch: number; at: string }[]> {
  return (await h.http.get(`/identifier/${name}/history`).expect(200)).body;
}

/** Everything a refused or idle event must leave as it was. */
async function state(h: Harness): Promise<string> {
  return JSON.stringify([await h.row('w-0'), await h.row('w-1'), await history(h, 'w-0'), await history(h, 'w-1')]);
}

/** w-0 held by the instance (attested or not), w-1 by another VM; the pool has nothing else. */
async function fleet(attested: boolean, rules = {}): Promise<Harness> {
  const h = await makeRegistry({ pool: 'w-[0-1]', rules });
  await h.registry.allocate(INSTANCE, { key: KEY, instance: attested ? FACTS : null });
  await h.registry.allocate('vm-other');
  return h;
}

const postEvent = (h: Harness, body: unknown) => h.http.post('/events/aws').set('Content-Type', 'application/json').send(JSON.stringify(body));

export const awsEvents = (): Mocha.Suite => describe('POST /events/aws', () => {

  for (const attested of [true, false]) {
    for (const shape of SHAPES) {
      it(`${shape.name} against an ${attested ? 'attested' : 'unattested'} lease: ${shape.does}`, async () => {
        const h = await fleet(attested);
        h.clock.advance(10 * SECOND);
        const before = await state(h);
        const other = await h.row('w-1');
        const res = await postEvent(h, fixture(shape.name, { instance: INSTANCE }));
        expect(res.status, JSON.stringify(res.body)).to.equal(200);
        expect(res.body).to.deep.equal({
          released: shape.does === 'terminated' ? 1 : 0, noted: shape.does === 'terminating' ? 1 : 0,
        });
        expect(await h.row('w-1'), 'another VM\'s lease moved').to.deep.equal(other);
        const now = new Date(h.clock.now()).toISOString();
        if (shape.does === 'nothing') {
          expect(await state(h)).to.equal(before);
          return;
        }
        const last = (await history(h, 'w-0')).at(-1);
        expect(last).to.deep.equal({ at: now, event: shape.does, client_id: INSTANCE, epoch: 1 });
        const view = (await h.http.get('/identifier/w-0').expect(200)).body;
        if (shape.does === 'terminating') {
          expect(view).to.include({ status: 'leased', client_id: INSTANCE, epoch: 1 });
          // Still its holder's: it renews as before.
          await h.http.post('/liveness').send({ client_id: INSTANCE, identifier: 'w-0', epoch: 1, key: KEY }).expect(200);
          return;
        }
        // Terminated: free at once when attested (the instance never runs again), cooling as
        // after a force release otherwise.
        expect(view).to.include({ status: attested ? 'free' : 'cooling', client_id: null, instance: null });
        if (!attested) expect(view.available_at).to.equal(new Date(h.clock.now() + 90 * SECOND).toISOString());
        const next = await h.http.post('/allocate').send({ client_id: 'vm-new' });
        if (attested) expect(next.body).to.include({ identifier: 'w-0', epoch: 2 });
        else expectError(next, 503, 'pool_exhausted');
        // The terminated instance's key is gone with its lease.
        expectError(await h.http.post('/liveness').send({ client_id: INSTANCE, identifier: 'w-0', epoch: 1, key: KEY }), 409, 'not_owner');
      });
    }
  }

  it('a redelivered event (same id) changes nothing and adds no history; another event id acts', async () => {
    const h = await fleet(false, { cooldownMs: 0 });
    const warn = fixture('ec2-spot-interruption-warning', { instance: INSTANCE });
    expect((await postEvent(h, warn).expect(200)).body).to.deep.equal({ released: 0, noted: 1 });
    const once = await state(h);
    h.clock.advance(SECOND);
    expect((await postEvent(h, warn).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
    expect(await state(h)).to.equal(once);

    const gone = fixture('autoscaling-terminate-successful', { instance: INSTANCE });
    expect((await postEvent(h, gone).expect(200)).body).to.deep.equal({ released: 1, noted: 0 });
    // The identifier is granted again; the old event delivered again must not touch the new holder.
    await h.http.post('/allocate').send({ client_id: 'vm-new' }).expect(200);
    const regranted = await state(h);
    h.clock.advance(SECOND);
    expect((await postEvent(h, gone).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
    expect(await state(h)).to.equal(regranted);
    expect((await history(h, 'w-0')).filter((e) => e.event === 'terminated')).to.have.length(1);
    const metrics = (await h.http.get('/metrics').expect(200)).text;
    expect(metrics).to.match(/asg_id_registry_aws_events_total\{type="terminate_successful",outcome="duplicate"\} 1/);
    expect(metrics).to.match(/asg_id_registry_aws_events_total\{type="spot_interruption",outcome="duplicate"\} 1/);
  });

  it('an event id is remembered a day: within it a redelivery is refused, after it the id is forgotten (pruned)', async () => {
    const h = await fleet(true);
    const gone = fixture('ec2-state-change-terminated', { instance: INSTANCE });
    await postEvent(h, gone).expect(200);
    // Another instance takes w-0 (free at once) and is then, under the same instance id, terminated again
    // more than a day later: a fresh delivery of an old id acts again only once it is forgotten.
    h.clock.advance(23 * 3600 * SECOND);
    await h.registry.allocate(INSTANCE, { key: KEY, instance: FACTS });
    expect((await postEvent(h, gone).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
    h.clock.advance(2 * 3600 * SECOND);
    await h.http.post('/liveness').send({ client_id: INSTANCE, identifier: 'w-0', epoch: 2, key: KEY }).expect(200);
    expect((await postEvent(h, fixture('ec2-spot-interruption-warning', { instance: 'i-0aaaaaaaaaaaaaaaa' })).expect(200)).body)
      .to.deep.equal({ released: 0, noted: 0 }); // prunes
    expect((await postEvent(h, gone).expect(200)).body).to.deep.equal({ released: 1, noted: 0 });
  });

  it('an event for an instance that holds nothing counts 0 and changes nothing', async () => {
    const h = await fleet(true);
    const before = await state(h);
    for (const name of ['autoscaling-terminate-successful', 'ec2-state-change-terminated', 'ec2-spot-interruption-warning', 'autoscaling-terminate-lifecycle-action']) {
      expect((await postEvent(h, fixture(name, { instance: 'i-0fffffffffffffff0' })).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
    }
    expect(await state(h)).to.equal(before);
    expect((await h.http.get('/metrics').expect(200)).text).to.match(/asg_id_registry_aws_events_total\{type="state_change",outcome="no_lease"\} 1/);
  });

  it('an instance id whose lease was reclaimed and granted to another instance: nothing happens to the new holder', async () => {
    const h = await makeRegistry({ pool: 'w-0' });
    await h.registry.allocate(INSTANCE, { key: KEY, instance: FACTS });
    h.clock.advance(91 * SECOND);
    expect((await h.registry.reap()).reclaimed).to.equal(1);
    h.clock.advance(91 * SECOND);
    const next = await h.registry.allocate('i-0bbbbbbbbbbbbbbbb', { key: KEY, instance: FACTS });
    expect(next).to.include({ identifier: 'w-0', epoch: 2 });
    const before = JSON.stringify([await h.row('w-0'), await history(h, 'w-0')]);
    for (const name of ['autoscaling-terminate-successful', 'ec2-state-change-terminated', 'ec2-spot-interruption-warning', 'autoscaling-terminate-lifecycle-action']) {
      expect((await postEvent(h, fixture(name, { instance: INSTANCE })).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
    }
    expect(JSON.stringify([await h.row('w-0'), await history(h, 'w-0')])).to.equal(before);
  });

  it('bad bodies are 400 invalid_request naming the field, and change nothing', async () => {
    const h = await fleet(true);
    const good = fixture('ec2-state-change-terminated', { instance: INSTANCE });
    const without = (k: string): Json => Object.fromEntries(Object.entries(good).filter(([x]) => x !== k));
    const cases: [unknown, RegExp][] = [
      [without('detail-type'), /^detail-type: /],
      [without('source'), /^source: /],
      [without('detail'), /^detail: /],
      [without('time'), /^time: /],
      [without('id'), /^id: /],
      [{ ...good, time: 'yesterday' }, /^time: /],
      [{ ...good, detail: 'gone' }, /^detail: /],
      [{ ...good, detail: { state: 'terminated' } }, /^detail\.instance-id: /],
      [{ ...good, detail: { 'instance-id': 'i-xyz', state: 'terminated' } }, /^detail\.instance-id: /],
      [{ ...fixture('autoscaling-terminate-successful'), detail: {} }, /^detail\.EC2InstanceId: /],
      [[good], /^body: /],
    ];
    const before = await state(h);
    for (const [body, field] of cases) {
      const res = await postEvent(h, body);
      expectError(res, 400, 'invalid_request');
      expect(res.body.error.message).to.match(field);
    }
    expectError(await h.http.post('/events/aws').set('Content-Type', 'application/json').send('{"id":'), 400, 'invalid_json');
    expectError(await h.http.post('/events/aws').set('Content-Type', 'text/plain').send('x'), 415, 'unsupported_media_type');
    expect(await state(h)).to.equal(before);
    expect((await h.http.get('/metrics').expect(200)).text).to.match(/asg_id_registry_aws_events_total\{type="unknown",outcome="invalid"\} 10/); // the array: refused before (not an object)
  });

  it('metrics: events by type and outcome, identifiers returned early, and how much sooner than the reaper', async () => {
    const h = await makeRegistry({ pool: 'w-[0-1]' });
    await h.registry.allocate(INSTANCE, { key: KEY, instance: FACTS });
    await h.registry.allocate('i-0ccccccccccccccc0');
    h.clock.advance(10 * SECOND);
    await postEvent(h, fixture('autoscaling-terminate-successful', { instance: INSTANCE })).expect(200);
    await postEvent(h, fixture('ec2-state-change-terminated', { instance: 'i-0ccccccccccccccc0' })).expect(200);
    await postEvent(h, fixture('autoscaling-launch-successful')).expect(200);
    const m = (await h.http.get('/metrics').expect(200)).text;
    expect(m).to.match(/asg_id_registry_aws_events_total\{type="terminate_successful",outcome="released"\} 1/);
    expect(m).to.match(/asg_id_registry_aws_events_total\{type="state_change",outcome="released"\} 1/);
    expect(m).to.match(/asg_id_registry_aws_events_total\{type="unknown",outcome="ignored"\} 1/);
    expect(m).to.match(/asg_id_registry_releases_total\{kind="terminated"\} 2/);
    // Attested: free now instead of at last liveness + TTL + cool-down = 170 s later; unattested:
    // cooling from now instead of from expiry = 80 s later.
    expect(m).to.match(/asg_id_registry_aws_early_release_seconds_sum 250\n/);
    expect(m).to.match(/asg_id_registry_aws_early_release_seconds_count 2\n/);
  });

  it('auth: event or admin token; none or a wrong one 401, an agent token 403; an event token opens nothing else (401)', async () => {
    const agent = 'agent-token-0123456789abcdef';
    const admin = 'admin-token-0123456789abcdef';
    const event = 'event-token-0123456789abcdef';
    const h = await makeRegistry({ pool: 'w-[0-1]', auth: { agentTokens: [agent], adminTokens: [admin], eventTokens: [event] } });
    await h.registry.allocate(INSTANCE, { key: KEY, instance: FACTS });
    const body = JSON.stringify(fixture('ec2-spot-interruption-warning', { instance: INSTANCE }));
    const send = (token: string | null, b = body) => {
      const r = h.http.post('/events/aws').set('Content-Type', 'application/json');
      return (token === null ? r : r.set('Authorization', `Bearer ${token}`)).send(b);
    };
    expectError(await send(null), 401, 'unauthorized');
    expectError(await send('wrong-token-0123456789abcdef'), 401, 'unauthorized');
    expectError(await send(agent), 403, 'forbidden');
    expect((await h.http.get('/identifier/w-0/history').set('Authorization', `Bearer ${admin}`).expect(200)).body).to.have.length(1);
    expect((await send(event).expect(200)).body).to.deep.equal({ released: 0, noted: 1 });
    expect((await send(admin, JSON.stringify(fixture('ec2-spot-interruption-warning', { instance: INSTANCE, id: 'another-id' }))).expect(200)).body)
      .to.deep.equal({ released: 0, noted: 1 });
    const asEvent = { Authorization: `Bearer ${event}` };
    expectError(await h.http.post('/allocate').set(asEvent).send({ client_id: 'vm-x' }), 401, 'unauthorized');
    expectError(await h.http.post('/liveness').set(asEvent).send({ client_id: INSTANCE, identifier: 'w-0' }), 401, 'unauthorized');
    expectError(await h.http.get('/identifiers').set(asEvent), 401, 'unauthorized');
    expectError(await h.http.get('/identifier/w-0/history').set(asEvent), 401, 'unauthorized');
    expectError(await h.http.delete('/identifier/w-0').set(asEvent), 401, 'unauthorized');
    expectError(await h.http.post('/admin/reap').set(asEvent), 401, 'unauthorized');
    expect((await h.http.get('/identifier/w-0').set('Authorization', `Bearer ${admin}`).expect(200)).body).to.include({ status: 'leased', client_id: INSTANCE });
  });

  it('auth: only agent tokens set closes the event route (403); with admin tokens only, it takes the admin token', async () => {
    const agent = 'agent-token-0123456789abcdef';
    const admin = 'admin-token-0123456789abcdef';
    const body = JSON.stringify(fixture('autoscaling-launch-successful'));
    const closed = await makeRegistry({ pool: 'w-0', auth: { agentTokens: [agent], adminTokens: [] } });
    expectError(await closed.http.post('/events/aws').set('Content-Type', 'application/json').set('Authorization', `Bearer ${agent}`).send(body), 403, 'forbidden');
    expectError(await closed.http.post('/events/aws').set('Content-Type', 'application/json').send(body), 403, 'forbidden');
    const adminOnly = await makeRegistry({ pool: 'w-0', auth: { agentTokens: [], adminTokens: [admin] } });
    expectError(await adminOnly.http.post('/events/aws').set('Content-Type', 'application/json').send(body), 401, 'unauthorized');
    await adminOnly.http.post('/events/aws').set('Content-Type', 'application/json').set('Authorization', `Bearer ${admin}`).send(body).expect(200);
    const open = await makeRegistry({ pool: 'w-0' });
    expect((await open.http.post('/events/aws').set('Content-Type', 'application/json').send(body).expect(200)).body).to.deep.equal({ released: 0, noted: 0 });
  });
});
