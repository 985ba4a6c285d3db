/**
 * Health and metrics endpoints, as a cluster and its operators use them.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
let server: RunningServer;
beforeAll(async () => {
  server = await startServer({ env: { NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) } });
});
afterAll(async () => {
  await server?.stop();
});

/** Sums every sample of a metric whose labels include `labels`. */
async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

describe('/livez and /readyz', () => {
  it('is live, and ready only while storage keeps user xattrs', async () => {
    expect((await fetch(`${server.url}/livez`)).status).toBe(200);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    // A ramfs mounted over the staging directory: the same directory, without user xattrs.
    const staging = path.join(server.storagePath, 'staging');
    execFileSync('mount', ['-t', 'ramfs', 'ramfs', staging]);
    try {
      const r = await fetch(`${server.url}/readyz`);
      expect(r.status).toBe(503);
      const body = await r.json() as { status: string; reason: string };
      expect(body.status).toBe('unavailable');
      expect(body.reason).toMatch(/^storage: .*extended attributes/);
    } finally {
      execFileSync('umount', [staging]);
    }
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
  });
});

describe('/metrics', () => {
  it('counts a cache miss then hits, one build for 20 concurrent pulls, requests and bytes', async () => {
    expect((await fetch(`${server.url}/metrics`)).headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const get = (image: string) => fetch(`${server.url}/v2/${image}/manifests/latest`, { headers: { Accept: OCI } });

    expect((await get('hello')).status).toBe(200);
    expect(await metric('nixery_manifest_cache_misses_total')).toBe(1);
    expect(await metric('nixery_builds_started_total')).toBe(1);
    expect(await metric('nixery_builds_finished_total', { outcome: 'succeeded' })).toBe(1);
    expect(await metric('nixery_build_duration_seconds_count')).toBe(1);
    expect(await metric('nixery_manifest_cache_hits_total')).toBe(0);

    const again = await get('hello');
    expect(await metric('nixery_manifest_cache_hits_total')).toBe(1);
    expect(await metric('nixery_builds_started_total')).toBe(1);

    const responses = await Promise.all(Array.from({ length: 20 }, () => get('jq')));
    expect(responses.every((r) => r.status === 200)).toBe(true);
    expect(await metric('nixery_builds_started_total')).toBe(2);
    expect(await metric('nixery_single_flight_waiters_total')).toBeGreaterThan(0);
    expect(await metric('nixery_http_requests_total', { route: 'manifests', status: '200' })).toBe(22);
    expect(await metric('nixery_nix_processes_running')).toBe(0);

    const manifest = await again.json() as { layers: { digest: string; size: number }[] };
    const layer = manifest.layers[0]!;
    await (await fetch(`${server.url}/v2/hello/blobs/${layer.digest}`)).arrayBuffer();
    expect(await metric('nixery_blob_bytes_served_total')).toBe(layer.size);

    expect((await get('broken-build')).status).toBe(500);
    expect(await metric('nixery_builds_finished_total', { outcome: 'failed' })).toBe(1);
    expect(await metric('nixery_http_requests_total', { route: 'manifests', status: '500' })).toBe(1);
  });
});
