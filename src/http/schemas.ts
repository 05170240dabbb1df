/**
 * Request schemas: the routes validate with them and the OpenAPI document is built from
 * them, so the two cannot drift. Unknown fields are refused, so a misspelled `epoch` is an
 * error instead of a lease renewed without its fencing check.
 */
import { Ajv } from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { IDENTITY_MAX_CHARS } from '../aws/identity.js';
import { RegistryError } from '../domain/errors.js';
import { HOLDER_KEY_DESCRIPTION, HOLDER_KEY_PATTERN } from '../domain/holder-key.js';
import { CLIENT_ID_PATTERN, IDENTIFIER_PATTERN } from '../domain/identifiers.js';
import { HISTORY_EVENTS, STATUSES } from '../domain/types.js';
import type { Status } from '../domain/types.js';

export const MAX_PAGE = 10_000;

export const clientIdSchema = {
  type: 'string',
  pattern: CLIENT_ID_PATTERN,
  description: '1-255 characters of A-Z a-z 0-9 . _ : - (a hostname or an instance id)',
} as const;

export const identifierSchema = {
  type: 'string',
  pattern: IDENTIFIER_PATTERN,
  description: '1-128 characters of A-Z a-z 0-9 . _ : -',
} as const;

export const epochSchema = {
  type: 'integer',
  minimum: 0,
  maximum: Number.MAX_SAFE_INTEGER,
  description: 'the fencing token the client was granted; a mismatch is 409 stale_epoch',
} as const;

export const keySchema = {
  type: 'string',
  pattern: HOLDER_KEY_PATTERN,
  description: `${HOLDER_KEY_DESCRIPTION}: a secret the VM chose (the shipped scripts draw one per boot); a lease granted with it ` +
    'belongs to it: liveness and release must carry it, and an allocate by the same client_id with another key (or none) is 409 holder_conflict',
} as const;

export const identitySchema = {
  type: 'string',
  description: `the text IMDS serves at /latest/dynamic/instance-identity/rsa2048 (base64 PKCS#7, at most ${IDENTITY_MAX_CHARS} characters): ` +
    'required when the registry verifies attested claims (AWS_IID_CERT_FILE), ignored otherwise',
} as const;

/** The largest whole number a JSON number carries exactly: watermarks stay below 2^53. */
const MAX_WATERMARK = Number.MAX_SAFE_INTEGER;

export const watermarkSchema = {
  type: 'integer',
  minimum: 0,
  maximum: MAX_WATERMARK,
  description: 'a whole number 0 <= n < 2^53 (e.g. the last millisecond timestamp the holder put in an id): the registry keeps the ' +
    'highest per identifier, never lowering it, and tells every later holder',
} as const;

export const allocateBodySchema = {
  type: 'object',
  required: ['client_id'],
  additionalProperties: false,
  properties: { client_id: clientIdSchema, key: keySchema, identity: identitySchema },
} as const;

export const leaseBodySchema = {
  type: 'object',
  required: ['client_id', 'identifier'],
  additionalProperties: false,
  properties: { client_id: clientIdSchema, identifier: identifierSchema, epoch: epochSchema, key: keySchema, watermark: watermarkSchema },
} as const;

export const listQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: STATUSES, description: 'only identifiers with this status' },
    limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE, description: `page size, 1-${MAX_PAGE}; without it, every identifier` },
    after: { ...identifierSchema, description: 'start after this identifier (from the Link header of the previous page)' },
  },
} as const;

export const historyQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE, description: `page size, 1-${MAX_PAGE}; without it, the whole history` },
    after: {
      type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER,
      description: 'start after this position (an opaque cursor: take it from the Link header of the previous page)',
    },
  },
} as const;

export const reapQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: { force: { type: 'string', enum: ['true', 'false'], description: 'true: sweep past the startup grace and the mass-expiry guard' } },
} as const;

export interface AllocateBody { client_id: string; key?: string; identity?: string }
export interface LeaseBody { client_id: string; identifier: string; epoch?: number; key?: string; watermark?: number }
export interface ListQuery { status?: Status; limit?: number; after?: string }
export interface HistoryQuery { limit?: number; after?: number }
export interface ReapQuery { force?: 'true' | 'false' }

const bodies = new Ajv({ allErrors: false, verbose: true, strict: true });
// Query strings arrive as text: numbers are coerced, and a repeated parameter (an array) is refused.
const queries = new Ajv({ allErrors: false, verbose: true, strict: true, coerceTypes: true });

const validators = {
  allocate: bodies.compile<AllocateBody>(allocateBodySchema),
  lease: bodies.compile<LeaseBody>(leaseBodySchema),
  list: queries.compile<ListQuery>(listQuerySchema),
  history: queries.compile<HistoryQuery>(historyQuerySchema),
  reap: queries.compile<ReapQuery>(reapQuerySchema),
  clientId: bodies.compile<string>(clientIdSchema),
  identifier: bodies.compile<string>(identifierSchema),
};

function fieldOf(err: ErrorObject, where: string): string {
  const path = err.instancePath.split('/').filter(Boolean).join('.');
  const extra = err.keyword === 'required' ? String(err.params['missingProperty'])
    : err.keyword === 'additionalProperties' ? String(err.params['additionalProperty'])
      : '';
  return [path, extra].filter(Boolean).join('.') || where;
}

function describe(err: ErrorObject, where: string): string {
  const field = fieldOf(err, where);
  const parent: unknown = err.parentSchema;
  const hint = typeof parent === 'object' && parent !== null && 'description' in parent && typeof parent.description === 'string'
    ? parent.description : null;
  switch (err.keyword) {
    case 'required': return `${field}: is required`;
    case 'additionalProperties': return `${field}: is not a known field`;
    case 'type': return `${field}: must be ${where === 'body' && field === 'body' ? 'a JSON object' : `of type ${String(err.params['type'])}`}`;
    case 'pattern': return `${field}: must be ${hint ?? 'well-formed'}`;
    case 'enum': return `${field}: must be one of ${Array.isArray(err.params['allowedValues']) ? err.params['allowedValues'].join(', ') : '?'}`;
    default: return `${field}: ${err.message ?? 'is invalid'}`;
  }
}

function check<T>(validate: ValidateFunction<T>, data: unknown, where: string): T {
  if (validate(data)) return data;
  const err = validate.errors?.[0];
  throw new RegistryError('invalid_request', err ? describe(err, where) : `${where}: is invalid`);
}

export const parse = {
  allocateBody: (data: unknown): AllocateBody => check(validators.allocate, data, 'body'),
  leaseBody: (data: unknown): LeaseBody => check(validators.lease, data, 'body'),
  listQuery: (query: Readonly<Record<string, unknown>>): ListQuery => check(validators.list, { ...query }, 'query'),
  historyQuery: (query: Readonly<Record<string, unknown>>): HistoryQuery => check(validators.history, { ...query }, 'query'),
  reapQuery: (query: Readonly<Record<string, unknown>>): ReapQuery => check(validators.reap, { ...query }, 'query'),
  clientIdParam: (v: unknown): string => check(validators.clientId, v, 'client_id'),
  identifierParam: (v: unknown): string => check(validators.identifier, v, 'identifier'),
};

// ---- responses: documented in /openapi.json and checked against real answers in the tests ----

const isoTime = {
  type: 'string',
  pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$',
  description: 'ISO 8601 UTC with milliseconds',
} as const;
const isoOrNull = { ...isoTime, type: ['string', 'null'] } as const;

const watermarkViewSchema = {
  type: ['integer', 'null'], minimum: 0, maximum: MAX_WATERMARK,
  description: 'the highest watermark any holder of the identifier sent (it stays on a free identifier); null when none was',
} as const;

export const instanceSchema = {
  type: ['object', 'null'],
  required: ['account_id', 'region', 'availability_zone', 'instance_type', 'image_id'],
  additionalProperties: false,
  description: 'what an attested claim proved about the holder (its instance identity document); null when not attested or not held',
  properties: {
    account_id: { type: 'string' },
    region: { type: 'string' },
    availability_zone: { type: 'string' },
    instance_type: { type: 'string' },
    image_id: { type: 'string' },
  },
} as const;

export const leaseViewSchema = {
  type: 'object',
  required: ['identifier', 'client_id', 'epoch', 'allocated_at', 'last_seen', 'expires_at', 'fence_after_ms', 'watermark', 'instance'],
  additionalProperties: false,
  properties: {
    identifier: identifierSchema,
    client_id: clientIdSchema,
    epoch: { type: 'integer', minimum: 1, description: 'fencing token of this grant' },
    allocated_at: isoTime,
    last_seen: isoTime,
    expires_at: { ...isoTime, description: 'last_seen + LEASE_TTL_SECONDS; the reaper may reclaim after this' },
    fence_after_ms: {
      type: 'integer', minimum: 0,
      description: 'the owner stops using the identifier this long after it sent its last successful allocate/liveness: ' +
        'nobody else can be granted it sooner (the cool-down less 1 % for clock-rate drift; a window once announced is kept ' +
        'with the lease, so a lower REUSE_COOLDOWN_SECONDS never shortens it)',
    },
    watermark: watermarkViewSchema,
    instance: instanceSchema,
  },
} as const;

export const identifierViewSchema = {
  type: 'object',
  required: ['identifier', 'status', 'client_id', 'epoch', 'allocated_at', 'last_seen', 'expires_at', 'fence_after_ms', 'available_at', 'watermark', 'instance'],
  additionalProperties: false,
  properties: {
    identifier: identifierSchema,
    status: { type: 'string', enum: STATUSES },
    client_id: { ...clientIdSchema, type: ['string', 'null'] },
    epoch: { type: 'integer', minimum: 0, description: 'epoch of the latest grant; 0 before the first' },
    allocated_at: isoOrNull,
    last_seen: isoOrNull,
    expires_at: isoOrNull,
    fence_after_ms: { type: ['integer', 'null'], minimum: 0 },
    available_at: { ...isoOrNull, description: 'when a cooling identifier becomes allocatable; null otherwise' },
    watermark: watermarkViewSchema,
    instance: instanceSchema,
    retired: { type: 'boolean', description: 'present (true) on a retired identifier that is still held' },
  },
} as const;

export const identifierListSchema = { type: 'array', items: identifierViewSchema } as const;

export const historySchema = {
  type: 'array',
  items: {
    type: 'object',
    required: ['at', 'event', 'client_id', 'epoch'],
    additionalProperties: false,
    properties: {
      at: isoTime,
      event: { type: 'string', enum: [...HISTORY_EVENTS] },
      client_id: { ...clientIdSchema, type: ['string', 'null'] },
      epoch: { type: 'integer', minimum: 0 },
    },
  },
} as const;

export const awsEventResultSchema = {
  type: 'object',
  required: ['released', 'noted'],
  additionalProperties: false,
  properties: {
    released: { type: 'integer', minimum: 0, maximum: 1, description: '1 when a terminated instance\'s lease ended, else 0' },
    noted: { type: 'integer', minimum: 0, maximum: 1, description: '1 when a terminating instance\'s lease got its history entry, else 0' },
  },
} as const;

export const reapResultSchema = {
  type: 'object',
  required: ['reclaimed', 'held', 'reason'],
  additionalProperties: false,
  properties: {
    reclaimed: { type: 'integer', minimum: 0 },
    held: { type: 'boolean', description: 'true when the mass-expiry guard held the sweep' },
    reason: { type: ['string', 'null'] },
  },
} as const;

const countSchema = { type: 'integer', minimum: 0 } as const;

export const healthSchema = {
  type: 'object',
  required: ['status', 'uptime', 'uptime_seconds', 'pool', 'reaper'],
  properties: {
    status: { type: 'string', enum: ['healthy', 'degraded', 'unhealthy'] },
    uptime: { type: 'string', pattern: '^(\\d+[dhms])+$', description: 'e.g. 2h34m' },
    uptime_seconds: countSchema,
    pool: {
      type: ['object', 'null'],
      required: ['total', 'leased', 'free', 'cooling', 'retired'],
      additionalProperties: false,
      properties: { total: countSchema, leased: countSchema, free: countSchema, cooling: countSchema, retired: countSchema },
    },
    reaper: {
      type: 'object',
      required: ['last_run_at', 'last_reclaimed', 'held', 'reason'],
      additionalProperties: false,
      properties: { last_run_at: isoOrNull, last_reclaimed: countSchema, held: { type: 'boolean' }, reason: { type: ['string', 'null'] } },
    },
    pool_file: {
      type: 'object',
      required: ['reason'],
      additionalProperties: false,
      properties: { reason: { type: ['string', 'null'], description: 'why the last pool reload (SIGHUP) was refused or failed; degraded until one succeeds' } },
    },
    error: { type: 'string', description: 'why the registry is unhealthy' },
  },
} as const;

export const errorSchema = {
  type: 'object',
  required: ['error'],
  additionalProperties: false,
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      additionalProperties: false,
      properties: { code: { type: 'string' }, message: { type: 'string' } },
    },
  },
} as const;
