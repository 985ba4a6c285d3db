/**
 * The referrers API in-process: every image gets an SPDX SBOM attached to
 * both manifest flavours as an artifact manifest; GET /v2/<name>/referrers/<digest>
 * lists it, filters by artifactType (saying so in OCI-Filters-Applied),
 * answers an empty index for an unknown digest and 400 for a malformed one;
 * garbage collection takes the referrers record with the image. The SBOM's
 * content against real Nix closures and the SPDX schema is checked in
 * test/integration/sbom.test.ts.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { MediaType } from '../../src/manifest/build.js';
import { danglingReferences } from '../helpers/gc.js';
import { inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const DOCKER = MediaType.dockerManifest;
const SPDX = 'application/spdx+json';

let open: InProcessRegistry[] = [];
afterEach(async () => {
  await Promise.all(open.map((r) => r.close()));
  open = [];
});

async function registry(env: Record<string, string> = {}) {
  const r = await inProcessRegistry({ env });
  open.push(r);
  return r;
}

interface Index {
  schemaVersion: number;
  mediaType: string;
  manifests: { mediaType: string; digest: string; size: number; artifactType: string }[];
}

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function referrers(r: InProcessRegistry, digest: string, query = '') {
  const res = await r.app.request(`/v2/hello/referrers/${digest}${query}`);
  return { res, index: res.status === 200 ? ((await res.json()) as Index) : undefined };
}

describe('referrers', () => {
  it('lists the SBOM of each manifest flavour as an artifact manifest whose subject is that manifest', async () => {
    const r = await registry();
    const sboms = new Set<string>();
    for (const type of [OCI, DOCKER]) {
      const m = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: type } });
      const digest = m.headers.get('docker-content-digest')!;
      const size = Number(m.headers.get('content-length'));
      const { res, index } = await referrers(r, digest);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(MediaType.ociIndex);
      expect(res.headers.get('oci-filters-applied')).toBeNull();
      expect(index!.schemaVersion).toBe(2);
      expect(index!.mediaType).toBe(MediaType.ociIndex);
      expect(index!.manifests).toHaveLength(1);
      const entry = index!.manifests[0]!;
      expect(entry).toMatchObject({ mediaType: OCI, artifactType: SPDX });

      // The artifact manifest: fetched by digest, verified, pointing back at the image manifest.
      const a = await r.app.request(`/v2/hello/manifests/${entry.digest}`, { headers: { Accept: OCI } });
      expect(a.status).toBe(200);
      expect(a.headers.get('content-type')).toBe(OCI);
      const bytes = new Uint8Array(await a.arrayBuffer());
      expect(sha(bytes)).toBe(entry.digest);
      expect(bytes.length).toBe(entry.size);
      const artifact = JSON.parse(Buffer.from(bytes).toString()) as {
        artifactType: string;
        config: { mediaType: string; digest: string; size: number };
        layers: { mediaType: string; digest: string; size: number }[];
        subject: { mediaType: string; digest: string; size: number };
      };
      expect(artifact.artifactType).toBe(SPDX);
      expect(artifact.subject).toEqual({ mediaType: type, digest, size });
      expect(artifact.config.mediaType).toBe('application/vnd.oci.empty.v1+json');
      const config = await r.app.request(`/v2/hello/blobs/${artifact.config.digest}`);
      expect(await config.text()).toBe('{}');
      // The SBOM blob: verified against its digest, SPDX 2.3 JSON.
      expect(artifact.layers).toHaveLength(1);
      expect(artifact.layers[0]!.mediaType).toBe(SPDX);
      const sbom = await r.app.request(`/v2/hello/blobs/${artifact.layers[0]!.digest}`);
      const sbomBytes = new Uint8Array(await sbom.arrayBuffer());
      expect(sha(sbomBytes)).toBe(artifact.layers[0]!.digest);
      expect((JSON.parse(Buffer.from(sbomBytes).toString()) as { spdxVersion: string }).spdxVersion).toBe('SPDX-2.3');
      sboms.add(artifact.layers[0]!.digest);
    }
    // One SBOM for the image, attached to both flavours.
    expect(sboms.size).toBe(1);
  });

  it('filters by artifactType and says so; an unknown digest has an empty index; a malformed one is 400', async () => {
    const r = await registry();
    const m = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: OCI } });
    const digest = m.headers.get('docker-content-digest')!;
    const spdx = await referrers(r, digest, `?artifactType=${encodeURIComponent(SPDX)}`);
    expect(spdx.res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(spdx.index!.manifests).toHaveLength(1);
    const other = await referrers(r, digest, '?artifactType=application%2Fvnd.example.signature');
    expect(other.res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(other.index!.manifests).toEqual([]);

    const unknown = await referrers(r, `sha256:${'0'.repeat(64)}`);
    expect(unknown.res.status).toBe(200);
    expect(unknown.index).toEqual({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });

    const bad = await r.app.request('/v2/hello/referrers/sha256:xyz');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('DIGEST_INVALID');
  });

  it('a garbage-collection pass that drops the image removes its referrers record before its blobs; a rebuild attaches the SBOM again', async () => {
    let t = Date.now();
    const r = await inProcessRegistry({ env: { NIXERY_GC_KEEP_DAYS: '1', NIXERY_GC_GRACE: '0', NIXERY_GC_POLL: '100ms', NIXERY_GC_USAGE_FLUSH: '100ms' }, now: () => t });
    open.push(r);
    const m = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: OCI } });
    const digest = m.headers.get('docker-content-digest')!;
    expect((await referrers(r, digest)).index!.manifests).toHaveLength(1);
    await r.runtime.gc.usage.flush();
    t += 3 * 86_400_000;
    const report = await r.runtime.gc.run();
    expect(report.images).toHaveLength(1);
    expect(await danglingReferences(r.storage)).toEqual([]);
    expect(await r.storage.getRecord('referrers', digest.slice('sha256:'.length))).toBeUndefined();
    expect((await referrers(r, digest)).index!.manifests).toEqual([]);
    // Pulled again: the same manifest, with its SBOM attached again.
    const again = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: OCI } });
    expect(again.headers.get('docker-content-digest')).toBe(digest);
    expect((await referrers(r, digest)).index!.manifests).toHaveLength(1);
  });
});
