/**
 * Basic authentication for the registry routes and the policy for requests
 * without credentials (NIXERY_ANONYMOUS):
 *
 *   build  anyone may pull and make the server build (no htpasswd: today's behaviour)
 *   pull   anonymous clients may pull what is built; building needs a login
 *   none   everything under /v2/ needs a login (the default with htpasswd)
 *
 * Credentials that are sent are always checked: a wrong password is 401
 * under every policy, so `docker login` and a mistyped secret fail loudly.
 * A verified Authorization header is remembered for a short while under a
 * hash of the header (never the header itself), and forgotten when the
 * htpasswd file changes, so warm pulls do not pay a bcrypt verification per
 * blob. Nothing here logs or echoes what the client sent.
 */
import { createHash } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import { LRUCache } from 'lru-cache';
import type { Htpasswd } from '../auth/htpasswd.js';
import type { AnonymousPolicy } from '../config.js';
import { UnauthorizedError } from '../errors.js';

export interface Identity {
  /** The user name, when the request carried valid credentials. */
  readonly user: string | undefined;
  /** Whether this request may make the server build an image. */
  readonly mayBuild: boolean;
}

export type AuthVariables = { identity: Identity };

const ANONYMOUS_BUILDER: Identity = { user: undefined, mayBuild: true };
const ANONYMOUS_PULLER: Identity = { user: undefined, mayBuild: false };

/** How long a verified header is trusted without asking bcrypt again. */
const VERIFIED_TTL_MS = 30_000;

export interface Authenticator {
  /** The identity of a request, or UnauthorizedError (wrong or malformed credentials). */
  identify(authorization: string | undefined): Promise<Identity | undefined>;
  readonly policy: AnonymousPolicy;
}

export function authenticator(users: Htpasswd | undefined, policy: AnonymousPolicy, now: () => number = Date.now): Authenticator {
  const verified = new LRUCache<string, { user: string; generation: number }>({
    max: 10_000,
    ttl: VERIFIED_TTL_MS,
    ttlResolution: 0,
    perf: { now: () => now() },
  });
  return {
    policy,
    async identify(authorization) {
      if (authorization === undefined || users === undefined) {
        if (policy === 'build') return ANONYMOUS_BUILDER;
        if (policy === 'pull') return ANONYMOUS_PULLER;
        return undefined;
      }
      const key = createHash('sha256').update(authorization).digest('hex');
      const hit = verified.get(key);
      if (hit && hit.generation === users.generation) return { user: hit.user, mayBuild: true };
      const creds = parseBasic(authorization);
      if (creds === undefined) throw new UnauthorizedError('malformed Authorization header: this registry takes Basic credentials');
      const generation = users.generation;
      if (!(await users.verify(creds.user, creds.password))) throw new UnauthorizedError('invalid user name or password');
      verified.set(key, { user: creds.user, generation });
      return { user: creds.user, mayBuild: true };
    },
  };
}

/** `Basic base64(user:password)`; undefined for anything else. */
export function parseBasic(header: string): { user: string; password: string } | undefined {
  const m = /^Basic[ \t]+([A-Za-z0-9+/]+={0,2})[ \t]*$/i.exec(header);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/**
 * Sets `identity` for every request below it; refuses requests that need a
 * login they do not have. Only the registry API is guarded here; the app
 * decides what the start page and operator endpoints show.
 */
export function requireIdentity(auth: Authenticator): MiddlewareHandler<{ Variables: AuthVariables }> {
  return async (c, next) => {
    const identity = await auth.identify(c.req.header('authorization'));
    if (identity === undefined) throw new UnauthorizedError('authentication required');
    c.set('identity', identity);
    await next();
  };
}

/** The identity of a request outside the guarded routes: anonymous when the credentials are missing or wrong. */
export async function softIdentity(auth: Authenticator, c: Context): Promise<Identity | undefined> {
  try {
    return await auth.identify(c.req.header('authorization'));
  } catch {
    return undefined;
  }
}
