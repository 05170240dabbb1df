/** Bearer tokens: agent tokens for the fleet's routes, event tokens for AWS's events, admin tokens for everything. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context, Next } from 'koa';
import { RegistryError } from '../domain/errors.js';

export type Role = 'agent' | 'admin' | 'event';

export interface AuthOptions {
  readonly agentTokens: readonly string[];
  readonly adminTokens: readonly string[];
  /** EVENT_TOKENS: POST /events/aws only (an EventBridge connection's token opens nothing else). */
  readonly eventTokens?: readonly string[];
}

const digest = (t: string): Buffer => createHash('sha256').update(t, 'utf8').digest();

/** Compares against every token, never stopping early, on fixed-length digests: no timing signal. */
export function matchesAny(presented: Buffer, known: Iterable<Buffer>): boolean {
  let found = false;
  for (const k of known) found = timingSafeEqual(presented, k) || found;
  return found;
}

function bearer(ctx: Context): string | null {
  const h = ctx.get('authorization');
  const m = /^Bearer[ ]+([^ ]+)[ ]*$/i.exec(h);
  return m?.[1] ?? null;
}

/**
 * With no tokens at all, every route is open. Auth on one side means auth on both: with agent
 * tokens set and no admin tokens, admin routes refuse every caller (403) rather than stand
 * open; with admin tokens set and no agent tokens, agent routes take admin tokens only (an
 * operator who set tokens did not mean the fleet's routes to stay open). Agent routes take
 * admin tokens too. An agent token on an admin route is 403; anything else missing or wrong
 * is 401.
 * The event route takes event tokens and admin tokens; it is open only when no tokens at all
 * are set, and closed (403) like the admin routes when only agent tokens are. An agent token
 * on it is 403. An event token is unknown everywhere else (401).
 */
export function createAuth(opts: AuthOptions): (role: Role) => (ctx: Context, next: Next) => Promise<void> {
  const agent = opts.agentTokens.map(digest);
  const admin = opts.adminTokens.map(digest);
  const event = (opts.eventTokens ?? []).map(digest);
  return function requireRole(role: Role) {
    const open = role === 'event'
      ? admin.length === 0 && agent.length === 0 && event.length === 0
      : admin.length === 0 && agent.length === 0;
    const closed = (role === 'admin' && admin.length === 0 && agent.length > 0) ||
      (role === 'event' && admin.length === 0 && event.length === 0 && agent.length > 0);
    return async function authMiddleware(ctx: Context, next: Next): Promise<void> {
      if (closed && role === 'event') throw new RegistryError('forbidden', 'the event route is closed: AGENT_TOKENS is set and neither EVENT_TOKENS nor ADMIN_TOKENS is');
      if (closed) throw new RegistryError('forbidden', 'admin routes are closed: AGENT_TOKENS is set and ADMIN_TOKENS is not');
      if (!open) {
        const token = bearer(ctx);
        if (token === null) throw new RegistryError('unauthorized', 'missing bearer token (Authorization: Bearer <token>)');
        const d = digest(token);
        const isAdmin = matchesAny(d, admin);
        const isAgent = matchesAny(d, agent);
        if (role === 'event') {
          if (matchesAny(d, event) || isAdmin) return next();
          if (isAgent) throw new RegistryError('forbidden', 'this route needs an event token (EVENT_TOKENS) or an admin token');
          throw new RegistryError('unauthorized', 'invalid bearer token');
        }
        if (role === 'admin' && !isAdmin) {
          if (isAgent) throw new RegistryError('forbidden', 'this route needs an admin token');
          throw new RegistryError('unauthorized', 'invalid bearer token');
        }
        if (role === 'agent' && !isAgent && !isAdmin) throw new RegistryError('unauthorized', 'invalid bearer token');
      }
      await next();
    };
  };
}
