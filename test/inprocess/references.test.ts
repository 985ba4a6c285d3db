/**
 * Manifest references that cannot exist, through the real app and service
 * in-process (fake Nix): what strict clients and the OCI conformance suite
 * expect, and that no such request reaches the Nix runner.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

let r: InProcessRegistry;
beforeAll(async () => {
  r = await inProcessRegistry();
});
afterAll(async () => {
  await r?.close();
});

async function errorOf(res: Response) {
  expect(res.headers.get('content-type')).toBe('application/json');
  const json = (await res.json()) as { errors: { code: string; message: string; detail: Record<string, unknown> }[] };
  expect(json.errors).toHaveLength(1);
  return json.errors[0]!;
}

describe('manifest references', () => {
  it.each([
    ['.INVALID_MANIFEST_NAME', /neither a tag/],
    ['-x', /neither a tag/],
    ['a'.repeat(200), /at most 128 characters; this reference has 200/],
    ['tag with space', /neither a tag/],
    ['ünïcode', /neither a tag/],
  ])('%s is 404 MANIFEST_UNKNOWN with the reason, for GET and for a bodiless HEAD, and never reaches Nix', async (ref, reason) => {
    const before = { ...r.nix.stats };
    const path = `/v2/hello/manifests/${encodeURIComponent(ref)}`;
    const get = await r.app.request(path);
    expect(get.status).toBe(404);
    const e = await errorOf(get);
    expect(e.code).toBe('MANIFEST_UNKNOWN');
    expect(String(e.detail['reason'])).toMatch(reason);
    expect(e.detail['requestId']).toEqual(expect.any(String));

    const head = await r.app.request(path, { method: 'HEAD' });
    expect(head.status).toBe(404);
    expect(head.headers.get('content-type')).toBe('application/json');
    expect((await head.arrayBuffer()).byteLength).toBe(0);
    expect(r.nix.stats).toEqual(before);
  });

  it('keeps 400 DIGEST_INVALID for digest-shaped references and 400 NAME_INVALID for bad names', async () => {
    for (const ref of ['sha256:totallywrong', 'sha256:ABCDEF', 'md5:0123', `sha256:${'0'.repeat(63)}`]) {
      const res = await r.app.request(`/v2/hello/manifests/${ref}`);
      expect(res.status, ref).toBe(400);
      expect((await errorOf(res)).code).toBe('DIGEST_INVALID');
    }
    // The name is checked before the reference.
    const res = await r.app.request('/v2/Hello/manifests/.INVALID_MANIFEST_NAME');
    expect(res.status).toBe(400);
    expect((await errorOf(res)).code).toBe('NAME_INVALID');
    expect(r.nix.stats.evaluations).toBe(0);
  });

  it('a valid digest that was never served is 404 MANIFEST_UNKNOWN', async () => {
    const res = await r.app.request(`/v2/hello/manifests/sha256:${'0'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect((await errorOf(res)).code).toBe('MANIFEST_UNKNOWN');
  });

  it('a valid tag of a known package builds, and the manifest is served by digest afterwards', async () => {
    const byTag = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(byTag.status).toBe(200);
    const digest = byTag.headers.get('docker-content-digest')!;
    expect(r.nix.stats.realisations).toBe(1);
    const byDigest = await r.app.request(`/v2/hello/manifests/${digest}`);
    expect(byDigest.status).toBe(200);
    expect(Buffer.from(await byDigest.arrayBuffer()).equals(Buffer.from(await byTag.arrayBuffer()))).toBe(true);
  });
});
