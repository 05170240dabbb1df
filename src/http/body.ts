/**
 * JSON request bodies: 415 for anything but JSON, 413 past 16 KiB, 400 invalid_json for bad
 * JSON (koa-bodyparser's own errors, mapped by the error handler).
 *
 * koa-bodyparser handles every body. The common case — a small, uncompressed UTF-8 JSON body
 * with a Content-Length, which is what every VM sends — is read directly: bodyparser's
 * generality (inflation, charsets, stream plumbing) cost a third of the liveness throughput
 * (measured with wrk). The fast path gives the same answers: any JSON value parsed, anything
 * but an object refused as invalid_request, an empty body as {}, the size limit checked before
 * reading, `__proto__` refused.
 */
import type { IncomingMessage } from 'node:http';
import bodyParser from 'koa-bodyparser';
import type { Context, Next } from 'koa';
import { RegistryError } from '../domain/errors.js';
import { HttpError } from './errors.js';

export const BODY_LIMIT_BYTES = 16 * 1024;

const PROTO_KEY = /"__proto__"\s*:/;
const PLAIN_JSON_TYPE = /^application\/json\s*(;\s*charset\s*=\s*"?utf-8"?\s*)?$/i;

function hasBody(ctx: Context): boolean {
  const h = ctx.req.headers;
  return h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0');
}

/** The length of a body the fast path can take, or null to leave it to koa-bodyparser. */
function plainLength(req: IncomingMessage): number | null {
  const h = req.headers;
  if (h['transfer-encoding'] !== undefined) return null;
  if (h['content-encoding'] !== undefined && h['content-encoding'] !== 'identity') return null;
  if (!PLAIN_JSON_TYPE.test(h['content-type'] ?? '')) return null;
  const len = Number(h['content-length'] ?? '0');
  return Number.isSafeInteger(len) && len >= 0 ? len : null;
}

function readPlain(req: IncomingMessage, length: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    req.on('data', (c: Buffer) => {
      received += c.length;
      chunks.push(c);
    });
    req.on('end', () => {
      if (received !== length) reject(new RegistryError('invalid_request', 'the request body does not match its Content-Length'));
      else resolve((chunks.length === 1 ? chunks[0] ?? Buffer.alloc(0) : Buffer.concat(chunks)).toString('utf8'));
    });
    req.on('error', reject);
  });
}

function parseJson(text: string): unknown {
  if (text === '') return {};
  if (PROTO_KEY.test(text)) throw new HttpError('invalid_json', 'the request body is not valid JSON');
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError('invalid_json', 'the request body is not valid JSON');
  }
}

/** Valid JSON that is not an object (`"x"`, `null`, `[]`, `42`) is JSON, but not a request. */
function requireObject(body: unknown): void {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new RegistryError('invalid_request', 'body: the request body must be a JSON object');
  }
}

export function jsonBody() {
  const parser = bodyParser({
    enableTypes: ['json'],
    jsonLimit: `${BODY_LIMIT_BYTES}b`,
    // Not strict: a JSON scalar is parsed, then refused as invalid_request (it is JSON, just not an object).
    strict: false,
    onerror(err: Error) {
      // Errors with an HTTP status (entity.parse.failed, entity.too.large, ...) are mapped by the
      // error handler; others come from reading the body (a corrupt gzip stream): the client's fault.
      if ('status' in err && typeof err.status === 'number') throw err;
      throw new RegistryError('invalid_request', 'the request body could not be read (corrupt or truncated encoding)', { cause: err });
    },
  });
  return async function jsonBodyMiddleware(ctx: Context, next: Next): Promise<void> {
    // Only application/json: other +json types (merge-patch, …) mean something else, and
    // koa-bodyparser would leave their body unread.
    // A plain length means a plain application/json type: the type check is only for the rest.
    const length = plainLength(ctx.req);
    if (length === null) {
      if (hasBody(ctx) && !ctx.is('application/json')) {
        throw new HttpError('unsupported_media_type', 'the request body must be JSON (Content-Type: application/json)');
      }
      return parser(ctx, async () => {
        requireObject(ctx.request.body);
        await next();
      });
    }
    if (length > BODY_LIMIT_BYTES) throw new HttpError('payload_too_large', 'the request body is larger than 16 KiB');
    const body = length === 0 ? {} : parseJson(await readPlain(ctx.req, length));
    requireObject(body);
    ctx.request.body = body;
    return next();
  };
}
