/** OpenAPI 3.1, built from the route table and the same JSON schemas the routes validate with. */
import { STATUS_OF } from './errors.js';
import type { RouteSpec } from './routes.js';
import { errorSchema } from './schemas.js';

const toOpenApiPath = (p: string): string => p.replace(/:([A-Za-z_]+)/g, '{$1}');

function queryParameters(schema: object | undefined): object[] {
  if (!schema || !('properties' in schema) || typeof schema.properties !== 'object' || schema.properties === null) return [];
  return Object.entries(schema.properties).map(([name, s]) => ({
    name, in: 'query', required: false, schema: s,
    ...(typeof s === 'object' && s !== null && 'description' in s ? { description: s.description } : {}),
  }));
}

function errorResponses(r: RouteSpec): Record<string, object> {
  const out: Record<string, { description: string; content: object }> = {};
  for (const code of r.errors) {
    const status = String(STATUS_OF[code]);
    const entry = out[status] ?? { description: '', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
    entry.description = entry.description ? `${entry.description}, ${code}` : code;
    out[status] = entry;
  }
  if (r.path === '/health') {
    out['503'] = { description: 'unhealthy: the database cannot be read', content: { 'application/json': { schema: r.response.schema ?? {} } } };
  }
  return out;
}

export function buildOpenApi(routes: readonly RouteSpec[]): object {
  const paths: Record<string, Record<string, object>> = {};
  for (const r of routes) {
    const ok = r.response.schema
      ? { description: r.response.description, content: { 'application/json': { schema: r.response.schema } } }
      : { description: r.response.description, content: { [r.response.contentType ?? 'text/plain']: { schema: { type: 'string' } } } };
    const parameters = [
      ...Object.entries(r.params ?? {}).map(([name, schema]) => ({ name, in: 'path', required: true, schema })),
      ...queryParameters(r.query),
    ];
    const op: Record<string, unknown> = {
      operationId: r.name,
      summary: r.summary,
      ...(parameters.length ? { parameters } : {}),
      ...(r.body ? { requestBody: { required: true, content: { 'application/json': { schema: r.body } } } } : {}),
      responses: { '200': ok, ...errorResponses(r) },
      ...(r.access === 'open' ? { security: [] } : { security: [{ bearer: [] }], 'x-access': r.access }),
    };
    (paths[toOpenApiPath(r.path)] ??= {})[r.method] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'asg-id-registry',
      version: '1',
      description: 'Identifier lease registry: each VM of an Auto Scaling Group claims a unique identifier, keeps it with liveness, and loses it to the reaper when silent.',
    },
    paths,
    components: {
      schemas: { Error: errorSchema },
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer', description: 'AGENT_TOKENS for allocate/liveness/release, ADMIN_TOKENS for everything' },
      },
    },
  };
}
