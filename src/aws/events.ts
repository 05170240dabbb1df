/**
 * Amazon EventBridge events about EC2 instances, as an API destination delivers them (the
 * event itself as the JSON body): validated against the shapes AWS documents, and classified
 * by what they mean for a lease.
 *
 * - `terminated`: the instance is gone and never runs again. "EC2 Instance Terminate
 *   Successful" (source `aws.autoscaling`, `detail.EC2InstanceId`) and "EC2 Instance
 *   State-change Notification" (source `aws.ec2`, `detail["instance-id"]`) with
 *   `detail.state` `terminated`.
 * - `terminating`: the instance is about to go but still runs. "EC2 Spot Instance
 *   Interruption Warning" (`aws.ec2`, `detail["instance-id"]`, `detail["instance-action"]`)
 *   and "EC2 Instance-terminate Lifecycle Action" (`aws.autoscaling`, `detail.EC2InstanceId`).
 * - `other`: any other well-formed event, among them the documented ones that end nothing:
 *   another instance state (`running`, `stopped`, even `shutting-down`: only `terminated`
 *   is final), and an instance that Auto Scaling moves into its warm pool (`Destination`
 *   `WarmPool`): it is stopped or kept, not terminated, and comes back with the same id.
 *
 * A body that is not an EventBridge event (no `id`, `source`, `detail-type`, `time` or
 * `detail`), or a documented event whose instance id is missing or malformed, is an error
 * naming the field, for a 400 `invalid_request`. Pure: no store, no HTTP, no clock.
 */
import { Ajv } from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';

/** Bounded labels for metrics (the detail-type itself is the sender's text). */
export type AwsEventType = 'terminate_successful' | 'state_change' | 'spot_interruption' | 'terminate_lifecycle' | 'unknown';

export type AwsEventKind = 'terminated' | 'terminating' | 'other';

export interface AwsEvent {
  readonly kind: AwsEventKind;
  readonly type: AwsEventType;
  /** The EC2 instance the event is about, when its type names one (`i-…`). */
  readonly instanceId?: string;
  /** EventBridge's event id: the same event redelivered carries the same id. */
  readonly eventId: string;
  readonly detailType: string;
  readonly source: string;
  /** When AWS says it happened, as it says it (never acted on: the registry's clock rules). */
  readonly time: string;
  readonly account?: string;
  readonly region?: string;
  /** Why this kind, in a few words, for a log line: `state terminated`, `to the warm pool`. */
  readonly note: string;
}

export interface AwsEventError {
  readonly ok: false;
  readonly code: 'invalid_request';
  /** The field at fault, as a path: `detail-type`, `detail.EC2InstanceId`. */
  readonly field: string;
  readonly message: string;
}

export type AwsEventResult = ({ readonly ok: true } & AwsEvent) | AwsEventError;

// EC2 instance ids: i- and 8 (older) or 17 hexadecimal digits.
const instanceIdSchema = {
  type: 'string',
  pattern: '^i-[0-9a-f]{8}([0-9a-f]{9})?$',
  description: 'an EC2 instance id (i- and 8 or 17 hexadecimal digits)',
} as const;

const text = (description: string) => ({ type: 'string', minLength: 1, maxLength: 1024, description }) as const;

/** The envelope every EventBridge event has; other top-level fields (version, account, ...) may come. */
export const envelopeSchema = {
  type: 'object',
  required: ['id', 'detail-type', 'source', 'time', 'detail'],
  properties: {
    id: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,128}$', description: 'an EventBridge event id (1-128 of A-Z a-z 0-9 . _ : -)' },
    'detail-type': text('the event type, e.g. "EC2 Instance Terminate Successful"'),
    source: text('the sending service, e.g. "aws.autoscaling"'),
    time: {
      type: 'string',
      pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?(Z|[+-]\\d{2}:\\d{2})$',
      description: 'an RFC 3339 time, e.g. 2026-01-08T10:00:00Z',
    },
    detail: { type: 'object', description: 'an object' },
    account: { type: 'string', pattern: '^[0-9]{12}$', description: 'a 12-digit AWS account id' },
    region: text('an AWS region'),
    version: { type: 'string', description: 'a string' },
    resources: { type: 'array', items: { type: 'string' }, description: 'an array of ARNs' },
  },
} as const;

const autoscalingDetailSchema = (extra: Record<string, unknown>) =>
  ({
    type: 'object',
    required: ['EC2InstanceId'],
    properties: {
      EC2InstanceId: instanceIdSchema,
      AutoScalingGroupName: text('a group name'),
      Origin: text('EC2, AutoScalingGroup or WarmPool'),
      Destination: text('EC2, AutoScalingGroup or WarmPool'),
      ...extra,
    },
  }) as const;

const ec2DetailSchema = (field: string, description: string) =>
  ({
    type: 'object',
    required: ['instance-id', field],
    properties: { 'instance-id': instanceIdSchema, [field]: text(description) },
  }) as const;

interface EnvelopeBody {
  id: string;
  'detail-type': string;
  source: string;
  time: string;
  detail: Record<string, unknown>;
  account?: string;
  region?: string;
}

type Detail = Record<string, unknown>;

const ajv = new Ajv({ allErrors: false, verbose: true, strict: true });

interface KnownType {
  readonly type: Exclude<AwsEventType, 'unknown'>;
  readonly validate: ValidateFunction<Detail>;
  readonly instanceField: string;
  readonly classify: (detail: Detail) => { kind: AwsEventKind; note: string };
}

const toWarmPool = (detail: Detail): boolean => detail['Destination'] === 'WarmPool';

/** Keyed by `source` and `detail-type`, exactly as AWS names them. */
const KNOWN: ReadonlyMap<string, KnownType> = new Map([
  [
    'aws.autoscaling\u0000EC2 Instance Terminate Successful',
    {
      type: 'terminate_successful',
      validate: ajv.compile<Detail>(autoscalingDetailSchema({ StatusCode: text('a status') })),
      instanceField: 'EC2InstanceId',
      classify: (d) => (toWarmPool(d) ? { kind: 'other', note: 'to the warm pool' } : { kind: 'terminated', note: 'terminated by Auto Scaling' }),
    },
  ],
  [
    'aws.ec2\u0000EC2 Instance State-change Notification',
    {
      type: 'state_change',
      validate: ajv.compile<Detail>(ec2DetailSchema('state', 'an instance state (pending, running, stopping, stopped, shutting-down, terminated)')),
      instanceField: 'instance-id',
      classify: (d) => ({ kind: d['state'] === 'terminated' ? 'terminated' : 'other', note: `state ${String(d['state'])}` }),
    },
  ],
  [
    'aws.ec2\u0000EC2 Spot Instance Interruption Warning',
    {
      type: 'spot_interruption',
      validate: ajv.compile<Detail>(ec2DetailSchema('instance-action', 'hibernate, stop or terminate')),
      instanceField: 'instance-id',
      classify: (d) => ({ kind: 'terminating', note: `spot interruption: ${String(d['instance-action'])}` }),
    },
  ],
  [
    'aws.autoscaling\u0000EC2 Instance-terminate Lifecycle Action',
    {
      type: 'terminate_lifecycle',
      validate: ajv.compile<Detail>(
        autoscalingDetailSchema({
          LifecycleHookName: text('a lifecycle hook name'),
          LifecycleTransition: text('autoscaling:EC2_INSTANCE_TERMINATING'),
          LifecycleActionToken: text('a token'),
        }),
      ),
      instanceField: 'EC2InstanceId',
      classify: (d) =>
        toWarmPool(d) ? { kind: 'other', note: 'to the warm pool' } : { kind: 'terminating', note: `lifecycle hook ${String(d['LifecycleHookName'] ?? '')}`.trimEnd() },
    },
  ],
]);

const validateEnvelope = ajv.compile<EnvelopeBody>(envelopeSchema);

function fieldOf(err: ErrorObject, prefix: string): string {
  const path = err.instancePath.split('/').filter(Boolean).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (err.keyword === 'required') path.push(String(err.params['missingProperty']));
  return [prefix, ...path].filter(Boolean).join('.') || 'body';
}

function failure(err: ErrorObject | undefined, prefix: string): AwsEventError {
  const field = err ? fieldOf(err, prefix) : prefix || 'body';
  const parent: unknown = err?.parentSchema;
  const hint = typeof parent === 'object' && parent !== null && 'description' in parent && typeof parent.description === 'string'
    ? parent.description : 'well-formed';
  let message: string;
  if (field === 'body') message = 'body: must be an EventBridge event (a JSON object)';
  else if (err?.keyword === 'required') message = `${field}: is required${prefix === '' ? ' (the body is not an EventBridge event)' : ''}`;
  else message = `${field}: must be ${hint}`;
  return { ok: false, code: 'invalid_request', field, message };
}

/**
 * Validates one event and says what it means. Unknown events (another source or type) are
 * `other`, so the caller can acknowledge them: EventBridge retries what is refused.
 */
export function parseAwsEvent(body: unknown): AwsEventResult {
  if (!validateEnvelope(body)) return failure(validateEnvelope.errors?.[0], '');
  const base = {
    eventId: body.id,
    detailType: body['detail-type'],
    source: body.source,
    time: body.time,
    ...(body.account !== undefined ? { account: body.account } : {}),
    ...(body.region !== undefined ? { region: body.region } : {}),
  };
  const known = KNOWN.get(`${body.source}\u0000${body['detail-type']}`);
  if (!known) return { ok: true, kind: 'other', type: 'unknown', note: 'not an instance event this registry acts on', ...base };
  if (!known.validate(body.detail)) return failure(known.validate.errors?.[0], 'detail');
  const instanceId = body.detail[known.instanceField];
  if (typeof instanceId !== 'string') return failure(undefined, `detail.${known.instanceField}`); // the schema requires it
  return { ok: true, ...known.classify(body.detail), type: known.type, instanceId, ...base };
}
