/**
 * EventBridge events (AWS-native release): every documented shape in test/fixtures/aws-events
 * is classified as the lease rules need, and anything that is not an event is refused naming
 * the field.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { parseAwsEvent } from '../../src/aws/events.js';
import type { AwsEvent, AwsEventError, AwsEventResult } from '../../src/aws/events.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'aws-events');

function fixture(name: string): Record<string, unknown> {
  const parsed: unknown = JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), 'utf8'));
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error(`${name}: not an object`);
  return parsed as Record<string, unknown>;
}

function detailOf(event: Record<string, unknown>): Record<string, unknown> {
  const d = event['detail'];
  if (typeof d !== 'object' || d === null || Array.isArray(d)) throw new Error('no detail');
  return d as Record<string, unknown>;
}

function ok(r: AwsEventResult): AwsEvent {
  if (!r.ok) throw new Error(`expected an event, got ${r.message}`);
  return r;
}

function invalid(r: AwsEventResult): AwsEventError {
  if (r.ok) throw new Error(`expected an error, got kind ${r.kind}`);
  return r;
}

const EXPECTED: Record<string, Pick<AwsEvent, 'kind' | 'type'> & { instanceId: string }> = {
  'autoscaling-terminate-successful': { kind: 'terminated', type: 'terminate_successful', instanceId: 'i-0123456789abcdef0' },
  'ec2-state-change-terminated': { kind: 'terminated', type: 'state_change', instanceId: 'i-0123456789abcdef0' },
  'ec2-spot-interruption-warning': { kind: 'terminating', type: 'spot_interruption', instanceId: 'i-0123456789abcdef0' },
  'autoscaling-terminate-lifecycle-action': { kind: 'terminating', type: 'terminate_lifecycle', instanceId: 'i-0123456789abcdef0' },
  'autoscaling-terminate-lifecycle-action-warm-pool': { kind: 'other', type: 'terminate_lifecycle', instanceId: 'i-0123456789abcdef0' },
  'ec2-state-change-shutting-down': { kind: 'other', type: 'state_change', instanceId: 'i-0123456789abcdef0' },
  'ec2-state-change-running': { kind: 'other', type: 'state_change', instanceId: 'i-abcd1111' },
};

describe('aws/events: EventBridge events', () => {
  describe('classifies every documented shape (test/fixtures/aws-events)', () => {
    for (const [name, want] of Object.entries(EXPECTED)) {
      it(`${name}: ${want.kind}`, () => {
        const body = fixture(name);
        const ev = ok(parseAwsEvent(body));
        expect({ kind: ev.kind, type: ev.type, instanceId: ev.instanceId }).to.deep.equal(want);
        expect(ev.eventId).to.equal(body['id']);
        expect(ev.detailType).to.equal(body['detail-type']);
        expect(ev.source).to.equal(body['source']);
        expect(ev.time).to.equal(body['time']);
        expect([ev.account, ev.region]).to.deep.equal(['111122223333', 'us-east-1']);
      });
    }

    it('every fixture file has an expectation here', () => {
      const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json')).map((f) => f.replace(/\.json$/, ''));
      expect(files.filter((f) => !(f in EXPECTED) && f !== 'autoscaling-launch-successful')).to.deep.equal([]);
    });

    it('each spot action (hibernate, stop, terminate) is terminating: the instance still runs for now', () => {
      for (const action of ['hibernate', 'stop', 'terminate']) {
        const body = fixture('ec2-spot-interruption-warning');
        const ev = ok(parseAwsEvent({ ...body, detail: { ...detailOf(body), 'instance-action': action } }));
        expect([ev.kind, ev.note]).to.deep.equal(['terminating', `spot interruption: ${action}`]);
      }
    });

    it('only the state terminated ends a lease; every other state is other', () => {
      const body = fixture('ec2-state-change-terminated');
      for (const state of ['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'some-future-state']) {
        expect(ok(parseAwsEvent({ ...body, detail: { ...detailOf(body), state } })).kind, state).to.equal('other');
      }
      expect(ok(parseAwsEvent(body)).note).to.equal('state terminated');
    });

    it('a terminate that sends the instance to the warm pool ends nothing (it comes back with the same id)', () => {
      const body = fixture('autoscaling-terminate-successful');
      const ev = ok(parseAwsEvent({ ...body, detail: { ...detailOf(body), Origin: 'AutoScalingGroup', Destination: 'WarmPool' } }));
      expect([ev.kind, ev.note]).to.deep.equal(['other', 'to the warm pool']);
      const toEc2 = ok(parseAwsEvent({ ...body, detail: { ...detailOf(body), Origin: 'AutoScalingGroup', Destination: 'EC2' } }));
      expect(toEc2.kind).to.equal('terminated');
    });
  });

  describe('acknowledges well-formed events it does not act on as other', () => {
    it('another Auto Scaling event (a launch), naming no instance to act on', () => {
      const ev = ok(parseAwsEvent(fixture('autoscaling-launch-successful')));
      expect([ev.kind, ev.type, ev.instanceId]).to.deep.equal(['other', 'unknown', undefined]);
    });

    it('a documented detail-type from the wrong source, and a custom source (a test event)', () => {
      const body = fixture('autoscaling-terminate-successful');
      expect(ok(parseAwsEvent({ ...body, source: 'aws.ec2' })).kind).to.equal('other');
      expect(ok(parseAwsEvent({ ...body, source: 'idreg.test' })).kind).to.equal('other');
    });

    it('minimal envelopes: no version, account, region or resources; extra fields', () => {
      const ev = ok(parseAwsEvent({ id: 'x-1', 'detail-type': 'Something', source: 'custom.app', time: '2026-01-08T10:00:00.5+01:00', detail: {}, extra: [1] }));
      expect([ev.kind, ev.account, ev.region]).to.deep.equal(['other', undefined, undefined]);
    });
  });

  describe('refuses what is not an EventBridge event, naming the field (400 invalid_request)', () => {
    const base = fixture('ec2-state-change-terminated');
    const without = (field: string): Record<string, unknown> => Object.fromEntries(Object.entries(base).filter(([k]) => k !== field));

    for (const field of ['id', 'source', 'detail-type', 'time', 'detail']) {
      it(`missing ${field}`, () => {
        const err = invalid(parseAwsEvent(without(field)));
        expect([err.code, err.field]).to.deep.equal(['invalid_request', field]);
        expect(err.message).to.match(new RegExp(`^${field}: is required`));
        expect(err.message).to.contain('not an EventBridge event');
      });
    }

    it('not an object: an array, a string, null, a number', () => {
      for (const body of [[base], 'event', null, 7]) {
        const err = invalid(parseAwsEvent(body));
        expect([err.code, err.field], JSON.stringify(body)).to.deep.equal(['invalid_request', 'body']);
      }
    });

    it('malformed envelope fields', () => {
      const cases: [Record<string, unknown>, string][] = [
        [{ detail: 'terminated' }, 'detail'],
        [{ detail: [] }, 'detail'],
        [{ time: 'yesterday' }, 'time'],
        [{ time: 1767866400 }, 'time'],
        [{ source: '' }, 'source'],
        [{ 'detail-type': 42 }, 'detail-type'],
        [{ id: 'has spaces' }, 'id'],
        [{ id: 'x'.repeat(129) }, 'id'],
        [{ account: '1234' }, 'account'],
        [{ resources: 'arn:aws:ec2:…' }, 'resources'],
      ];
      for (const [patch, field] of cases) {
        const err = invalid(parseAwsEvent({ ...base, ...patch }));
        expect([err.code, err.field], JSON.stringify(patch)).to.deep.equal(['invalid_request', field]);
        expect(err.message.startsWith(`${field}: must be`), err.message).to.equal(true);
      }
    });

    it('a documented event without its instance id, with each shape\'s own field name', () => {
      const cases: [string, string, string[]][] = [
        ['autoscaling-terminate-successful', 'EC2InstanceId', []],
        ['autoscaling-terminate-lifecycle-action', 'EC2InstanceId', []],
        ['ec2-state-change-terminated', 'instance-id', ['state']],
        ['ec2-spot-interruption-warning', 'instance-id', ['instance-action']],
      ];
      for (const [name, idField, others] of cases) {
        const body = fixture(name);
        const { [idField]: _, ...rest } = detailOf(body);
        const err = invalid(parseAwsEvent({ ...body, detail: rest }));
        expect([err.code, err.field, err.message], name).to.deep.equal(['invalid_request', `detail.${idField}`, `detail.${idField}: is required`]);
        for (const other of others) {
          const { [other]: __, ...noOther } = detailOf(body);
          expect(invalid(parseAwsEvent({ ...body, detail: noOther })).field, `${name} ${other}`).to.equal(`detail.${other}`);
        }
      }
    });

    it('a documented event whose instance id is not one (the wrong field spelling is missing, not guessed)', () => {
      const body = fixture('ec2-state-change-terminated');
      for (const id of ['i-123', 'vm-0123456789abcdef0', 'i-0123456789ABCDEF0', 42, null]) {
        const err = invalid(parseAwsEvent({ ...body, detail: { ...detailOf(body), 'instance-id': id } }));
        expect([err.field, err.message], String(id)).to.deep.equal(['detail.instance-id', 'detail.instance-id: must be an EC2 instance id (i- and 8 or 17 hexadecimal digits)']);
      }
      const spelled = invalid(parseAwsEvent({ ...body, detail: { instance_id: 'i-0123456789abcdef0', state: 'terminated' } }));
      expect(spelled.field).to.equal('detail.instance-id');
      const asg = fixture('autoscaling-terminate-successful');
      const { EC2InstanceId: _, ...rest } = detailOf(asg);
      expect(invalid(parseAwsEvent({ ...asg, detail: { ...rest, Ec2InstanceId: 'i-0123456789abcdef0' } })).field).to.equal('detail.EC2InstanceId');
    });
  });
});
