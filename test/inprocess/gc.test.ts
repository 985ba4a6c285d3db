/**
 * Garbage collection in-process (fake Nix, memory storage, a test clock):
 * retention by last pull and by bytes, dry runs, and the protocol that keeps
 * builds and replicas safe from a pass running at the same time.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../src/digest.js';
import { runPass } from '../../src/gc/pass.js';
import { gcSettings } from '../../src/gc/collector.js';
import { parseImageName } from '../../src/image/name.js';
import { MediaType } from '../../src/manifest/build.js';
import { decodeRecord, imageBlobs } from '../../src/service/records.js';
import { MemoryStorage } from '../../src/storage/memory.js';
import { inProcessRegistry, FAKE_PACKAGES, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const DAY = 86_400_000;
// Far from today: nothing here depends on the date.
const T0 = 5_000_000_000_000;

let open: InProcessRegistry[] = [];
afterEach(async () => {
  await Promise.all(open.map((r) => r.close()));
  open = [];
});

const GC_ENV = { NIXERY_GC_GRACE: '0', NIXERY_GC_USAGE_FLUSH: '100ms', NIXERY_GC_POLL: '100ms' };

async function registry(opts: Parameters<typeof inProcessRegistry>[0] = {}) {
  const r = await inProcessRegistry({ ...opts, env: { ...GC_ENV, ...opts.env } });
  open.push(r);
  await r.runtime.gc.start();
  return r;
}

/** A clock the test moves. */
function clock(start = T0) {
  let t = start;
  return { now: () => t, set: (v: number) => (t = v), advance: (ms: number) => (t += ms) };
}

/** Every manifest record points only at blobs that exist. */
async function recordsIntact(storage: MemoryStorage): Promise<void> {
  for await (const { key } of storage.listRecords('manifests')) {
    const image = decodeRecord((await storage.getRecord('manifests', key))!)!;
    for (const d of imageBlobs(image)) expect(await storage.statBlob(d), `${key} -> ${d}`).toBeDefined();
  }
  for await (const { key } of storage.listRecords('layers')) {
    const layer = JSON.parse((await storage.getRecord('layers', key))!.toString()) as { digest: Digest };
    expect(await storage.statBlob(layer.digest), `layer record ${key}`).toBeDefined();
  }
}

async function blobCount(storage: MemoryStorage): Promise<number> {
  let n = 0;
  for await (const _ of storage.listBlobs()) n++;
  return n;
}

const PACKAGES = {
  ...FAKE_PACKAGES,
  big1: { bin: ['big1'], deps: ['glibc'], dataBytes: 400_000 },
  big2: { bin: ['big2'], deps: ['glibc'], dataBytes: 400_000 },
  big3: { bin: ['big3'], deps: ['glibc'], dataBytes: 400_000 },
};

describe('garbage collection', () => {
  it('drops images not pulled for NIXERY_GC_KEEP_DAYS, keeps recent ones, and rebuilds a dropped one on its next pull', async () => {
    const c = clock();
    const r = await registry({ now: c.now, env: { NIXERY_GC_KEEP_DAYS: '7' } });
    const hello = parseImageName('hello', 'latest');
    const jq = parseImageName('jq', 'latest');
    const helloFirst = await r.service.manifest(hello, OCI);
    await r.service.manifest(jq, OCI);
    c.advance(5 * DAY);
    await r.service.manifest(jq, OCI); // pulled again: recent
    c.advance(3 * DAY);
    const before = await blobCount(r.storage);

    const report = await r.runtime.gc.run();
    expect(report.images.map((i) => i.packages)).toEqual([['cacert', 'hello', 'iana-etc']]);
    expect(report.imagesKept).toBe(1);
    expect(report.blobs.count).toBeGreaterThan(0);
    expect(await blobCount(r.storage)).toBe(before - report.blobs.count);
    // hello's own layer and manifests are gone; what jq shares (glibc, cacert, iana-etc) stays.
    expect(await r.storage.statBlob(helloFirst.digest)).toBeUndefined();
    await recordsIntact(r.storage);

    const realisations = r.nix.stats.realisations;
    await r.service.manifest(jq, OCI);
    expect(r.nix.stats.realisations).toBe(realisations);
    const helloAgain = await r.service.manifest(hello, OCI);
    expect(r.nix.stats.realisations).toBe(realisations + 1);
    // Same inputs, same bytes: the rebuilt image is the one that was dropped.
    expect(helloAgain.digest).toBe(helloFirst.digest);
    await recordsIntact(r.storage);
  });

  it('drops the least recently pulled images first while blobs exceed NIXERY_GC_MAX_BYTES', async () => {
    const c = clock();
    const r = await registry({ now: c.now, packages: PACKAGES });
    for (const name of ['big1', 'big2', 'big3']) {
      await r.service.manifest(parseImageName(name, 'latest'), OCI);
      c.advance(DAY);
    }
    await r.service.manifest(parseImageName('big1', 'latest'), OCI); // big2 is now the least recently pulled, then big3
    c.advance(DAY);
    await r.runtime.gc.usage.flush();
    let total = 0;
    for await (const b of r.storage.listBlobs()) total += b.size;
    const pass = (maxBytes: number) => runPass({ storage: r.storage, now: c.now, settings: { ...gcSettings(r.runtime.config.gc), maxBytes, propagationMs: 0 } });
    const big = (report: Awaited<ReturnType<typeof pass>>) => report.images.map((i) => i.packages.find((p) => p.startsWith('big')));

    // One byte over: the least recently pulled image goes, and only it.
    const first = await pass(total - 1);
    expect(big(first)).toEqual(['big2']);
    expect(first.bytesAfter).toBeLessThanOrEqual(total - 1);
    // One byte under what is left: the next least recently pulled.
    const second = await pass(first.bytesAfter - 1);
    expect(big(second)).toEqual(['big3']);
    // Enough room: nothing more.
    expect((await pass(second.bytesAfter)).images).toEqual([]);
    await recordsIntact(r.storage);
    expect((await r.service.manifest(parseImageName('big1', 'latest'), OCI)).digest).toMatch(/^sha256:/);
  });

  it('never drops an image pulled within two usage flushes, even over NIXERY_GC_MAX_BYTES, and reports by how much storage stays over', async () => {
    const c = clock();
    const r = await registry({ now: c.now, packages: PACKAGES, env: { NIXERY_GC_MAX_BYTES: '1k' } });
    await r.service.manifest(parseImageName('big1', 'latest'), OCI);
    let total = 0;
    for await (const b of r.storage.listBlobs()) total += b.size;

    const hot = await r.runtime.gc.run();
    expect(hot.images).toEqual([]);
    expect(hot.imagesKept).toBe(1);
    expect(hot.overLimitBytes).toBe(total - 1024);
    expect(r.runtime.gc.stats.lastPass?.overLimitBytes).toBe(total - 1024);

    // Not pulled for longer than two flushes: it goes, and nothing is over.
    c.advance(DAY);
    const cold = await r.runtime.gc.run();
    expect(cold.images.map((i) => i.packages.find((p) => p.startsWith('big')))).toEqual(['big1']);
    expect(cold.overLimitBytes).toBe(0);
    expect(cold.bytesAfter).toBe(0);
  });

  it('a dry run deletes nothing, and its report is what the next real pass deletes', async () => {
    const c = clock();
    const r = await registry({ now: c.now, env: { NIXERY_GC_KEEP_DAYS: '1' } });
    await r.service.manifest(parseImageName('hello', 'latest'), OCI);
    await r.service.manifest(parseImageName('htop', 'latest'), OCI);
    c.advance(2 * DAY);
    const blobs = await blobCount(r.storage);
    const dry = await r.runtime.gc.run({ dryRun: true });
    expect(await blobCount(r.storage)).toBe(blobs);
    expect(dry.images).toHaveLength(2);
    const real = await r.runtime.gc.run();
    expect(real.images).toEqual(dry.images);
    expect([...real.blobs.digests].sort()).toEqual([...dry.blobs.digests].sort());
    expect(real.blobs.bytes).toBe(dry.blobs.bytes);
    expect(real.layerRecords).toBe(dry.layerRecords);
    expect(await blobCount(r.storage)).toBe(0);
  });

  it('a build racing a pass that deletes a layer it is about to reuse packs that layer again, without a second build or a missing blob (storage paused by the test)', async () => {
    const c = clock();
    const storage = new MemoryStorage({ now: c.now });
    const r = await registry({ now: c.now, storage, env: { NIXERY_GC_KEEP_DAYS: '1' } });
    // htop and jq share glibc, cacert and iana-etc layers.
    await r.service.manifest(parseImageName('htop', 'latest'), OCI);
    c.advance(2 * DAY);
    // Pause jq's build after it has found a shared layer's record but
    // before the lease naming it is written: the one interleaving a grace
    // period exists for.
    let paused!: () => void;
    const reachedLease = new Promise<void>((resolve) => (paused = resolve));
    let resume!: () => void;
    const gate = new Promise<void>((resolve) => (resume = resolve));
    const putRecord = storage.putRecord.bind(storage);
    let first = true;
    storage.putRecord = async (kind, key, bytes) => {
      if (kind === 'leases' && first) {
        first = false;
        paused();
        await gate;
      }
      return putRecord(kind, key, bytes);
    };
    const pull = r.service.manifest(parseImageName('jq', 'latest'), OCI);
    await reachedLease;
    const report = await runPass({ storage, now: c.now, settings: gcSettings(r.runtime.config.gc) });
    // htop dropped; the shared layers were unreferenced and unleased, so deleted.
    expect(report.images).toHaveLength(1);
    expect(report.blobs.count).toBeGreaterThan(0);
    resume();
    const served = await pull;
    // One build each: the deleted layer was packed again within jq's build.
    expect(r.nix.stats.realisations).toBe(2);
    await recordsIntact(storage);
    const jq = decodeRecord((await storage.getRecord('manifests', r.service.imageKey(parseImageName('jq', 'latest'), await r.source.resolve('latest'))))!)!;
    const repacked = jq.platforms[0]!.layers.filter((l) => report.blobs.digests.includes(l.digest));
    expect(repacked.length).toBeGreaterThan(0);
    for (const l of repacked) expect(await storage.statBlob(l.digest), l.digest).toBeDefined();
    expect(jq.manifests[OCI].digest).toBe(served.digest);
  });

  it('a replica holding an image in memory forgets it when another replica\'s pass drops it, and its next pull rebuilds', async () => {
    const c = clock();
    const storage = new MemoryStorage({ now: c.now });
    const a = await registry({ now: c.now, storage, env: { NIXERY_GC_KEEP_DAYS: '1' } });
    const b = await registry({ now: c.now, storage, env: { NIXERY_GC_KEEP_DAYS: '1' } });
    const hello = parseImageName('hello', 'latest');
    await a.service.manifest(hello, OCI); // a holds it in memory
    c.advance(2 * DAY);
    await b.runtime.gc.run();
    // Within two of a's polls a has forgotten it (b's pass waited that long before deleting).
    const realisations = a.nix.stats.realisations;
    const again = await a.service.manifest(hello, OCI);
    expect(a.nix.stats.realisations).toBe(realisations + 1);
    for (const d of imageBlobs(decodeRecord((await storage.getRecord('manifests', a.service.imageKey(hello, await a.source.resolve('latest'))))!)!)) {
      expect(await storage.statBlob(d)).toBeDefined();
    }
    expect((await storage.readBlob(again.digest))?.length).toBeGreaterThan(0);
  });

  it('counts pulls by digest as pulls of the image', async () => {
    const c = clock();
    const r = await registry({ now: c.now, env: { NIXERY_GC_KEEP_DAYS: '7' } });
    const m = await r.service.manifest(parseImageName('hello', 'latest'), OCI);
    c.advance(6 * DAY);
    await r.service.manifestByDigest(m.digest);
    c.advance(6 * DAY);
    const report = await r.runtime.gc.run();
    expect(report.images).toEqual([]);
  });
});

describe('garbage collection outrunning a build', () => {
  it('answers 503 with Retry-After (a fault injected: every mark finds its blob deleted, as a pass deleting each blob right before it is secured would), and the next pull builds, not remembered as a failure', async () => {
    const c = clock();
    const storage = new MemoryStorage({ now: c.now });
    const r = await registry({ now: c.now, storage });
    // Stored layers whose marks all fail: every reuse and every protect sees a deleted blob.
    await r.service.manifest(parseImageName('htop', 'latest'), OCI);
    const markBlobUsed = storage.markBlobUsed.bind(storage);
    storage.markBlobUsed = async () => false;
    const res = await r.app.request('/v2/jq/manifests/latest', { headers: { Accept: OCI } });
    expect(res.status).toBe(503);
    expect(res.headers.get('Retry-After')).toBe('5');
    const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
    expect(body.errors[0]!.code).toBe('UNAVAILABLE');
    expect(body.errors[0]!.message).toMatch(/garbage collection|garbage-collected/);
    storage.markBlobUsed = markBlobUsed;
    const again = await r.app.request('/v2/jq/manifests/latest', { headers: { Accept: OCI } });
    expect(again.status).toBe(200);
    await recordsIntact(storage);
  });
});
