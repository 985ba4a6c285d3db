/**
 * Endpoints for the cluster and its operators: liveness, readiness and
 * Prometheus metrics. Readiness means a pull could succeed now: storage is
 * reachable and writable, and Nix can be run.
 */
import type { Env, Hono } from 'hono';
import type { Metrics } from '../metrics.js';

export interface OpsDeps {
  readonly metrics: Metrics;
  /** Each check throws an Error saying what is wrong. */
  readonly checks: Readonly<Record<string, () => Promise<void>>>;
}

export function registerOps<E extends Env>(app: Hono<E>, deps: OpsDeps): void {
  app.get('/livez', (c) => c.json({ status: 'ok' }));

  app.get('/readyz', async (c) => {
    const failures: Record<string, string> = {};
    await Promise.all(
      Object.entries(deps.checks).map(async ([name, check]) => {
        try {
          await check();
        } catch (e) {
          failures[name] = (e as Error).message.split('\n')[0] ?? String(e);
        }
      }),
    );
    if (Object.keys(failures).length > 0) {
      return c.json({ status: 'unavailable', reason: Object.entries(failures).map(([k, v]) => `${k}: ${v}`).join('; '), failures }, 503);
    }
    return c.json({ status: 'ready' });
  });

  app.get('/metrics', async (c) => {
    return c.body(await deps.metrics.registry.metrics(), 200, { 'Content-Type': deps.metrics.registry.contentType });
  });
}

/** The route label for metrics: a small fixed set, never the image name. */
export function routeOf(path: string): string {
  if (path === '/v2' || path === '/v2/') return 'v2';
  if (path.startsWith('/v2/')) {
    const m = /\/(manifests|blobs|tags)\//.exec(path);
    return m ? m[1]! : 'v2-other';
  }
  if (path === '/livez' || path === '/readyz' || path === '/metrics') return path.slice(1);
  return 'web';
}
