/**
 * Multi-platform indexes in-process (NIXERY_PLATFORMS=linux/amd64,linux/arm64)
 * through the HTTP app: what a tag answers by Accept header, byte stability
 * across requests and a restart on the same storage, HEAD without a build,
 * pinned names, and a platform whose package does not exist (the fake Nix
 * runner's `onlyOn`). The real clients and real arm64 binaries are in
 * test/integration/multi-arch.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { MISSING_PLATFORMS_HEADER } from '../../src/http/app.js';
import { MediaType } from '../../src/manifest/build.js';
import { decodeStoredRecord, imageBlobs, isIndex } from '../../src/service/records.js';
import { MemoryStorage } from '../../src/storage/memory.js';
import { danglingReferences } from '../helpers/gc.js';
import { FAKE_PACKAGES, inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const DOCKER = MediaType.dockerManifest;
const OCI_INDEX = MediaType.ociIndex;
const DOCKER_LIST = MediaType.dockerManifestList;
/** What skopeo, podman and containerd send: every type. */
const ALL = `${OCI}, ${DOCKER}, ${DOCKER_LIST}, ${OCI_INDEX}`;
const BOTH = { NIXERY_PLATFORMS: 'linux/amd64,linux/arm64' };

let open: InProcessRegistry[] = [];
afterEach(async () => {
  await Promise.all(open.map((r) => r.close()));
  open = [];
});

async function registry(env: Record<string, string> = BOTH, storage?: MemoryStorage) {
  const r = await inProcessRegistry({ env, ...(storage ? { storage } : {}), packages: { ...FAKE_PACKAGES, x86only: { bin: ['x86only'], deps: ['glibc'] } } });
  r.nix.onlyOn.set('x86only', 'x86_64-linux');
  open.push(r);
  return r;
}

interface IndexJson {
  schemaVersion: number;
  mediaType: string;
  manifests: { mediaType: string; digest: string; size: number; platform: { architecture: string; os: string } }[];
}

async function get(r: InProcessRegistry, path: string, accept: string, method = 'GET') {
  const res = await r.app.request(path, { method, headers: { Accept: accept } });
  return { res, body: method === 'HEAD' ? '' : await res.text() };
}

/** The architecture in the config a manifest (by digest) points at. */
async function architectureOf(r: InProcessRegistry, manifestDigest: string, accept: string): Promise<string> {
  const m = await get(r, `/v2/hello/manifests/${manifestDigest}`, accept);
  expect(m.res.status).toBe(200);
  const manifest = JSON.parse(m.body) as { config: { digest: string } };
  const config = await r.app.request(`/v2/hello/blobs/${manifest.config.digest}`);
  return ((await config.json()) as { architecture: string }).architecture;
}

describe('one name, every platform', () => {
  it('a client that accepts an index gets an OCI index listing amd64 then arm64, each manifest with its own architecture', async () => {
    const r = await registry();
    const { res, body } = await get(r, '/v2/hello/manifests/latest', ALL);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    expect(res.headers.get(MISSING_PLATFORMS_HEADER)).toBeNull();
    const index = JSON.parse(body) as IndexJson;
    expect(index.schemaVersion).toBe(2);
    expect(index.mediaType).toBe(OCI_INDEX);
    expect(index.manifests.map((m) => m.platform)).toEqual([
      { architecture: 'amd64', os: 'linux' },
      { architecture: 'arm64', os: 'linux' },
    ]);
    expect(index.manifests.every((m) => m.mediaType === OCI)).toBe(true);
    for (const m of index.manifests) {
      expect(await architectureOf(r, m.digest, ALL)).toBe(m.platform.architecture);
      const head = await r.app.request(`/v2/hello/manifests/${m.digest}`, { method: 'HEAD', headers: { Accept: ALL } });
      expect(head.headers.get('content-length')).toBe(String(m.size));
    }
    // Both platforms were built, once each.
    expect(r.nix.stats.realisations).toBe(2);
    // The index is served by its digest, with its media type.
    const byDigest = await get(r, `/v2/hello/manifests/${res.headers.get('docker-content-digest')}`, ALL);
    expect(byDigest.res.headers.get('content-type')).toBe(OCI_INDEX);
    expect(byDigest.body).toBe(body);
  });

  it('Docker (which lists the manifest list type) gets a manifest list of Docker manifests; a client naming only the Docker manifest type gets the amd64 manifest', async () => {
    const r = await registry();
    const docker = `${DOCKER}, ${DOCKER_LIST}, ${OCI}, ${OCI_INDEX}`;
    // Docker's order, but every type at q=1: a tie goes to the OCI index, as it does to the OCI manifest.
    expect((await get(r, '/v2/hello/manifests/latest', docker)).res.headers.get('content-type')).toBe(OCI_INDEX);
    const list = await get(r, '/v2/hello/manifests/latest', `${DOCKER}, ${DOCKER_LIST}`);
    expect(list.res.headers.get('content-type')).toBe(DOCKER_LIST);
    const parsed = JSON.parse(list.body) as IndexJson;
    expect(parsed.mediaType).toBe(DOCKER_LIST);
    expect(parsed.manifests.map((m) => [m.mediaType, m.platform.architecture])).toEqual([
      [DOCKER, 'amd64'],
      [DOCKER, 'arm64'],
    ]);
    const plain = await get(r, '/v2/hello/manifests/latest', DOCKER);
    expect(plain.res.headers.get('content-type')).toBe(DOCKER);
    expect(plain.res.headers.get('docker-content-digest')).toBe(parsed.manifests[0]!.digest);
    // Preferring manifests by q-value: no index.
    const preferred = await get(r, '/v2/hello/manifests/latest', `${OCI_INDEX};q=0.5, ${OCI}`);
    expect(preferred.res.headers.get('content-type')).toBe(OCI);
    // A wildcard is not taken as understanding indexes.
    expect((await get(r, '/v2/hello/manifests/latest', '*/*')).res.headers.get('content-type')).toBe(DOCKER);
  });

  it('the index is byte-stable: the same digest on every request, on HEAD without a build, and after a restart on the same storage', async () => {
    const storage = new MemoryStorage();
    const a = await registry(BOTH, storage);
    const first = await get(a, '/v2/shell/hello/manifests/latest', ALL);
    const digest = first.res.headers.get('docker-content-digest')!;
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const again = await get(a, '/v2/shell/hello/manifests/latest', ALL);
    expect(again.res.headers.get('docker-content-digest')).toBe(digest);
    expect(again.body).toBe(first.body);
    const realisations = a.nix.stats.realisations;
    const head = await get(a, '/v2/shell/hello/manifests/latest', ALL, 'HEAD');
    expect(head.res.status).toBe(200);
    expect(head.res.headers.get('docker-content-digest')).toBe(digest);
    expect(head.res.headers.get('content-length')).toBe(String(Buffer.byteLength(first.body)));
    expect(a.nix.stats.realisations).toBe(realisations);

    // A new server on the same storage: HEAD and GET without any Nix call.
    const b = await registry(BOTH, storage);
    const restarted = await get(b, '/v2/shell/hello/manifests/latest', ALL, 'HEAD');
    expect(restarted.res.headers.get('docker-content-digest')).toBe(digest);
    expect((await get(b, '/v2/shell/hello/manifests/latest', ALL)).body).toBe(first.body);
    expect(b.nix.stats.realisations).toBe(0);
    expect(b.nix.stats.evaluations).toBe(0);
    // The index record names every blob of both platforms: GC keeps them while the index is kept.
    let indexRecords = 0;
    for await (const { key } of storage.listRecords('manifests')) {
      const rec = decodeStoredRecord((await storage.getRecord('manifests', key))!)!;
      if (!isIndex(rec)) continue;
      indexRecords++;
      const index = JSON.parse(first.body) as IndexJson;
      const blobs = imageBlobs(rec);
      expect(blobs).toContain(digest);
      for (const m of index.manifests) expect(blobs).toContain(m.digest);
      expect(rec.platforms.map((p) => p.platform.architecture)).toEqual(['amd64', 'arm64']);
    }
    expect(indexRecords).toBe(1);
    expect(await danglingReferences(storage)).toEqual([]);
  });

  it('arm64/ and amd64/ pin one platform and answer a plain manifest, index accepted or not; they share the index platforms\' images', async () => {
    const r = await registry();
    const index = JSON.parse((await get(r, '/v2/hello/manifests/latest', ALL)).body) as IndexJson;
    const builds = r.nix.stats.realisations;
    for (const [prefix, i] of [['arm64', 1], ['amd64', 0]] as const) {
      const pinned = await get(r, `/v2/${prefix}/hello/manifests/latest`, `${OCI}, ${OCI_INDEX}`);
      expect(pinned.res.headers.get('content-type')).toBe(OCI);
      expect(pinned.res.headers.get('docker-content-digest')).toBe(index.manifests[i]!.digest);
    }
    expect(r.nix.stats.realisations).toBe(builds);
  });

  it('a package that exists only for x86_64: the index lists amd64 only and says arm64 is missing, the start page shows why; only when no platform builds is it an error', async () => {
    const r = await registry();
    const { res, body } = await get(r, '/v2/x86only/manifests/latest', ALL);
    expect(res.status).toBe(200);
    expect(res.headers.get(MISSING_PLATFORMS_HEADER)).toBe('linux/arm64');
    const index = JSON.parse(body) as IndexJson;
    expect(index.manifests.map((m) => m.platform.architecture)).toEqual(['amd64']);
    expect(await architectureOf(r, index.manifests[0]!.digest, ALL)).toBe('amd64');
    // Again: the same partial index, the failure not repeated on the start page.
    const again = await get(r, '/v2/x86only/manifests/latest', ALL);
    expect(again.res.headers.get('docker-content-digest')).toBe(res.headers.get('docker-content-digest'));
    expect(again.res.headers.get(MISSING_PLATFORMS_HEADER)).toBe('linux/arm64');
    const errors = r.runtime.recentErrors.list().filter((e) => e.image.includes('x86only'));
    expect(errors).toHaveLength(1);
    expect(errors[0]!.image).toContain('linux/arm64');
    expect(errors[0]!.message).toMatch(/x86only/);
    const page = await (await r.app.request('/')).text();
    expect(page).toContain('index without linux/arm64');

    // Pinned to arm64: it does not exist there, a plain 404.
    const arm = await r.app.request('/v2/arm64/x86only/manifests/latest', { headers: { Accept: ALL } });
    expect(arm.status).toBe(404);
    // Nowhere: the default platform's error.
    const none = await r.app.request('/v2/nosuchpackage/manifests/latest', { headers: { Accept: ALL } });
    expect(none.status).toBe(404);
    expect(((await none.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('MANIFEST_UNKNOWN');
  });

  it('a build that fails on one platform leaves it out of the index; a platform that builds later fills it in', async () => {
    const r = await registry({ ...BOTH, NIXERY_FAILED_BUILD_TTL: '0' });
    r.nix.onlyOn.set('jq', 'x86_64-linux');
    const partial = await get(r, '/v2/jq/manifests/latest', ALL);
    expect(partial.res.headers.get(MISSING_PLATFORMS_HEADER)).toBe('linux/arm64');
    // The package set gains jq for arm64 (a new revision would do the same).
    r.nix.onlyOn.delete('jq');
    r.service.forgetCaches();
    // PackagesNotFound is remembered per key until the revision changes: a fresh registry on the same storage.
    const storage = r.storage;
    const s = await registry({ ...BOTH }, storage);
    const full = await get(s, '/v2/jq/manifests/latest', ALL);
    expect(full.res.headers.get(MISSING_PLATFORMS_HEADER)).toBeNull();
    expect((JSON.parse(full.body) as IndexJson).manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    expect(full.res.headers.get('docker-content-digest')).not.toBe(partial.res.headers.get('docker-content-digest'));
    // amd64 came from storage, only arm64 was built.
    expect(s.nix.stats.realisations).toBe(1);
  });

  it('with one platform nothing changes: a plain manifest even for a client that accepts an index', async () => {
    const r = await registry({});
    const res = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: ALL } });
    expect(res.headers.get('content-type')).toBe(OCI);
  });
});

describe('NIXERY_PLATFORMS', () => {
  const base = { NIXERY_PKGS_PATH: '/x', STORAGE_PATH: '/y' };
  it('parses OCI platform notation into a fixed order, the server\'s own the default', () => {
    const c = parseConfig({ ...base, NIXERY_PLATFORMS: 'linux/arm64, linux/amd64' });
    expect(c.platforms.map((p) => p.ociArch)).toEqual(['amd64', 'arm64']);
    expect(c.defaultPlatform.ociArch).toBe(process.arch === 'arm64' ? 'arm64' : 'amd64');
    expect(parseConfig({ ...base, NIXERY_PLATFORMS: 'linux/arm64/v8' }).platforms.map((p) => p.ociArch)).toEqual(['arm64']);
    expect(parseConfig(base).platforms).toHaveLength(1);
  });

  it.each([
    ['linux/riscv64', /NIXERY_PLATFORMS: "linux\/riscv64" is not a platform this registry builds \(use linux\/amd64 and linux\/arm64/],
    ['linux/amd64,linux/amd64', /NIXERY_PLATFORMS: linux\/amd64 is listed twice/],
    ['amd64', /NIXERY_PLATFORMS: "amd64" is not a platform/],
  ])('refuses %s with one line', (value, message) => {
    expect(() => parseConfig({ ...base, NIXERY_PLATFORMS: value })).toThrow(message);
  });
});
