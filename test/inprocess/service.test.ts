/**
 * The image service in-process (fake Nix, memory storage): caches,
 * single-flight, build events and their replay, what a built image records.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { parseImageName } from '../../src/image/name.js';
import { MediaType } from '../../src/manifest/build.js';
import { decodeRecord, imageBlobs } from '../../src/service/records.js';
import type { BuildEvent } from '../../src/service/build.js';
import { fakeStorePath } from '../helpers/fake-nix.js';
import { inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const DOCKER = MediaType.dockerManifest;
let open: InProcessRegistry[] = [];
async function registry(...args: Parameters<typeof inProcessRegistry>) {
  const r = await inProcessRegistry(...args);
  open.push(r);
  return r;
}
afterEach(async () => {
  await Promise.all(open.map((r) => r.close()));
  open = [];
});

describe('image service', () => {
  it('builds once, then answers from memory; a new service on the same storage answers from the record', async () => {
    const a = await registry();
    const spec = parseImageName('hello', 'latest');
    const first = await a.service.manifest(spec, OCI);
    const again = await a.service.manifest(spec, OCI);
    expect(again.digest).toBe(first.digest);
    expect(a.nix.stats.realisations).toBe(1);
    expect(a.runtime.stats).toMatchObject({ builds: 1, manifestCacheMisses: 1, manifestCacheHits: 1 });

    const b = await registry();
    // Same storage contents, new process: the record is found, Nix is not asked.
    for (const [d, blob] of a.storage.blobs) b.storage.blobs.set(d, blob);
    const key = a.service.imageKey(spec, await a.source.resolve('latest'));
    await b.storage.putRecord('manifests', key, (await a.storage.getRecord('manifests', key))!);
    expect((await b.service.manifest(spec, OCI)).digest).toBe(first.digest);
    expect(b.nix.stats.evaluations).toBe(0);
  });

  it('runs one build for many concurrent requests, and counts the ones that joined it', async () => {
    const r = await registry();
    let open!: () => void;
    r.nix.gates.set('htop', new Promise<void>((resolve) => (open = resolve)));
    const spec = parseImageName('htop', 'latest');
    const pulls = Array.from({ length: 10 }, () => r.service.manifest(spec, OCI));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(r.service.running().map((b) => b.image)).toEqual(['htop:latest']);
    open();
    const answers = await Promise.all(pulls);
    expect(new Set(answers.map((a) => a.digest)).size).toBe(1);
    expect(r.nix.stats.realisations).toBe(1);
    expect(r.runtime.stats.singleFlightWaiters).toBe(9);
    expect(r.service.running()).toEqual([]);
  });

  it('emits phases and layers, and replays them to a subscriber that arrives late', async () => {
    let t = 1_000_000;
    const r = await registry({ now: () => (t += 10) });
    let release!: () => void;
    r.nix.gates.set('jq', new Promise<void>((resolve) => (release = resolve)));
    const spec = parseImageName('jq', 'latest');
    const early: BuildEvent[] = [];
    r.service.subscribe((e) => {
      if (e.type === 'build') e.build.subscribe((b) => early.push(b));
    });
    const pull = r.service.manifest(spec, OCI);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const [build] = r.service.running();
    const late: BuildEvent[] = [];
    build!.subscribe((e) => late.push(e));
    // What happened before the late subscriber came: replayed at once.
    // (cacert, iana-etc: realised before jq's gate, or after it: their drv paths decide.)
    expect(late.filter((e) => e.type !== 'log').map((e) => e.type === 'phase' && e.phase)).toEqual(['resolve', 'realise']);
    release();
    await pull;
    expect(late).toEqual(early);
    const phases = early.filter((e) => e.type === 'phase').map((e) => (e as { phase: string }).phase);
    expect(phases).toEqual(['resolve', 'realise', 'closure', 'group', 'pack', 'manifest']);
    const layers = early.filter((e) => e.type === 'layer');
    expect(layers.length).toBeGreaterThan(1);
    expect(layers.every((l) => l.type === 'layer' && !l.reused)).toBe(true);
    const last = early.at(-1)!;
    expect(last.type).toBe('finished');
    // The injected clock is what the events carry.
    expect(early.every((e) => e.at > 1_000_000 && e.at <= t)).toBe(true);
  });

  it('records every blob the image references, and reads records written before blob lists were kept', async () => {
    const r = await registry();
    const spec = parseImageName('htop', 'latest');
    await r.service.manifest(spec, OCI);
    const key = r.service.imageKey(spec, await r.source.resolve('latest'));
    const image = decodeRecord((await r.storage.getRecord('manifests', key))!)!;
    expect(image.platforms).toHaveLength(1);
    expect(image.platforms[0]!.platform).toEqual({ os: 'linux', architecture: 'amd64' });
    const blobs = imageBlobs(image);
    // Every blob is stored: manifests (2), config, layers, the SBOM, the empty
    // config and one artifact manifest per manifest flavour attaching it.
    expect(blobs.length).toBe(3 + image.platforms[0]!.layers.length + 4);
    expect(image.platforms[0]!.sbom).toBeDefined();
    expect(Object.keys(image.referrers ?? {}).sort()).toEqual([DOCKER, OCI].sort());
    for (const d of blobs) expect(r.storage.blobs.has(d)).toBe(true);
    // And nothing else was stored but what the image references.
    expect(new Set(r.storage.blobs.keys())).toEqual(new Set(blobs));

    const v1 = Buffer.from(JSON.stringify({ version: 1, revision: 'r', packages: ['htop'], arch: 'x86_64-linux', manifests: image.manifests }));
    expect(decodeRecord(v1)).toEqual({ revision: 'r', packages: ['htop'], system: 'x86_64-linux', platforms: [], manifests: image.manifests });
    expect(decodeRecord(Buffer.from('{"version":9}'))).toBeUndefined();
    expect(decodeRecord(Buffer.from('not json'))).toBeUndefined();
  });

  it('remembers names missing from a revision, and remembers failed builds for a while, and shows failed builds (not missing names) as recent errors', async () => {
    const r = await registry({ packages: { hello: { bin: ['hello'] }, cacert: {}, 'iana-etc': {}, broken: { bin: ['broken'] } } });
    r.nix.failing.add('broken');
    const missing = parseImageName('nosuch', 'latest');
    await expect(r.service.manifest(missing, OCI)).rejects.toThrow(/packages not found: nosuch/);
    await expect(r.service.manifest(missing, OCI)).rejects.toThrow(/packages not found: nosuch/);
    expect(r.nix.stats.evaluations).toBe(1);
    await expect(r.service.manifest(parseImageName('broken', 'latest'), OCI)).rejects.toThrow(/failed/);
    // A failed build is remembered for a while: the next pull gets the same error without running Nix.
    await expect(r.service.manifest(parseImageName('broken', 'latest'), OCI)).rejects.toThrow(/remembered failure/);
    expect(r.nix.stats.realisations).toBe(1);
    expect(r.runtime.recentErrors.list().map((e) => e.image)).toEqual(['broken:latest']);
    expect(r.runtime.stats.buildFailures).toBe(2);
  });

  it('rebuilds when storage lost a manifest the cached image names', async () => {
    const r = await registry();
    const spec = parseImageName('hello', 'latest');
    await r.service.manifest(spec, MediaType.dockerManifest);
    const key = r.service.imageKey(spec, await r.source.resolve('latest'));
    const oci = decodeRecord((await r.storage.getRecord('manifests', key))!)!.manifests[OCI].digest;
    // An operator or a lifecycle rule deletes the OCI manifest, never served yet.
    r.storage.blobs.delete(oci);
    const again = await r.service.manifest(spec, OCI);
    expect(again.digest).toBe(oci);
    expect(r.storage.blobs.has(oci)).toBe(true);
    expect(r.runtime.stats.builds).toBe(2);
  });

  it('compresses each package as soon as Nix has built it, while Nix builds the rest, and passes build log lines on', async () => {
    const r = await registry({ env: { NIXERY_LAYER_BUDGET: '2' } });
    let release!: () => void;
    // Realised in drv path order; the last one waits at its gate.
    const order = ['cacert', 'htop', 'iana-etc', 'jq'].sort((a, b) => (fakeStorePath(a) < fakeStorePath(b) ? -1 : 1));
    r.nix.gates.set(order[3]!, new Promise<void>((resolve) => (release = resolve)));
    const events: BuildEvent[] = [];
    r.service.subscribe((e) => {
      if (e.type === 'build') e.build.subscribe((b) => events.push(b));
    });
    const pull = r.service.manifest(parseImageName('htop/jq', 'latest'), OCI);
    for (let i = 0; i < 200 && r.runtime.packer.stats().entries < 3; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(r.runtime.packer.stats().entries).toBeGreaterThanOrEqual(3);
    expect(events.some((e) => e.type === 'phase' && e.phase === 'pack')).toBe(false);
    release();
    await pull;
    // The budget puts everything but the symlinks into one layer: most of it was compressed early.
    const layers = events.filter((e): e is Extract<BuildEvent, { type: 'layer' }> => e.type === 'layer');
    const store = layers.find((l) => l.description !== 'symlink layer')!;
    expect(store.cachedBytes).toBeGreaterThan(store.size / 2);
    expect(events.filter((e) => e.type === 'log').map((e) => (e as { line: string }).line)).toEqual(order.map((p) => `building ${p}`));
  });
});
