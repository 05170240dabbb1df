/**
 * A local stand-in for the EC2 instance metadata service (IMDS), IMDSv2 as AWS runs it:
 * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600) answers a
 * session token; every `GET` must carry it in `X-aws-ec2-metadata-token` (401 otherwise,
 * unless `imdsV1` is allowed); a `PUT` carrying `X-Forwarded-For` is refused (403), as AWS
 * refuses tokens to proxied requests.
 *
 * Serves the identity document and its `rsa2048` signature (from test/support/aws-iid.ts)
 * and the few meta-data paths the VM scripts read. For the VM-script and HTTP tests: point
 * `ASG_ID_IMDS_URL` at `url`.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface ImdsOptions {
  /** The identity document's text, as /latest/dynamic/instance-identity/document serves it. */
  readonly document: string;
  /** The rsa2048 text; null: the path answers 404 (an instance or region without it). */
  readonly rsa2048: string | null;
  /** Answer GETs without a token too (IMDSv1, "optional" tokens). Default false: IMDSv2 required. */
  readonly imdsV1?: boolean;
}

export interface ImdsRequest {
  readonly method: string;
  readonly path: string;
  /** Whether the request carried a token this stand-in issued and still honours. */
  readonly tokenValid: boolean;
  readonly status: number;
}

export interface Imds {
  /** `http://127.0.0.1:<port>`, without a trailing slash. */
  readonly url: string;
  readonly requests: readonly ImdsRequest[];
  /** Every token issued so far stops working (as when their TTL runs out). */
  expireTokens(): void;
  /** Serve another document or signature from now on (a test that swaps in a bad one). */
  serve(next: Partial<Pick<ImdsOptions, 'document' | 'rsa2048'>>): void;
  close(): Promise<void>;
}

const TOKEN_PATH = '/latest/api/token';

function field(document: string, name: string): string | null {
  try {
    const parsed: unknown = JSON.parse(document);
    const value: unknown = typeof parsed === 'object' && parsed !== null ? Object.getOwnPropertyDescriptor(parsed, name)?.value : undefined;
    return typeof value === 'string' ? value : null;
  } catch {
    // a document that is not JSON serves no meta-data derived from it
  }
  return null;
}

export async function startImds(options: ImdsOptions): Promise<Imds> {
  let current = { document: options.document, rsa2048: options.rsa2048 };
  const tokens = new Set<string>();
  const requests: ImdsRequest[] = [];

  const paths = (): Record<string, string | null> => ({
    '/latest/dynamic/instance-identity/document': current.document,
    '/latest/dynamic/instance-identity/rsa2048': current.rsa2048,
    '/latest/meta-data/instance-id': field(current.document, 'instanceId'),
    '/latest/meta-data/local-ipv4': field(current.document, 'privateIp'),
    '/latest/meta-data/placement/availability-zone': field(current.document, 'availabilityZone'),
    '/latest/meta-data/placement/region': field(current.document, 'region'),
    '/latest/meta-data/instance-type': field(current.document, 'instanceType'),
    '/latest/meta-data/ami-id': field(current.document, 'imageId'),
  });

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const presented = req.headers['x-aws-ec2-metadata-token'];
    const tokenValid = typeof presented === 'string' && tokens.has(presented);
    const answer = (status: number, body = ''): void => {
      requests.push({ method: req.method ?? '', path, tokenValid, status });
      res.writeHead(status, { 'Content-Type': 'text/plain' });
      res.end(body);
    };
    if (req.method === 'PUT' && path === TOKEN_PATH) {
      if (req.headers['x-forwarded-for'] !== undefined) return answer(403);
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) return answer(400);
      const token = randomBytes(32).toString('base64');
      tokens.add(token);
      return answer(200, token);
    }
    if (req.method !== 'GET') return answer(405);
    if (!tokenValid && (presented !== undefined || !options.imdsV1)) return answer(401);
    const body = paths()[path];
    return body === undefined || body === null ? answer(404) : answer(200, body);
  };

  const server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('imds stand-in: no TCP address');
  return {
    url: `http://127.0.0.1:${address.port}`,
    requests,
    expireTokens: () => tokens.clear(),
    serve: (next) => {
      current = { ...current, ...next };
    },
    close: () => new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve()))),
  };
}
