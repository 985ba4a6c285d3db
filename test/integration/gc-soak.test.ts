/**
 * Soak: for a minute, three clients pull overlapping images (shared layers)
 * over the registry API and fetch every blob, while the server runs a
 * garbage-collection pass every 300 ms with no grace period and a byte
 * limit that keeps dropping images, so images are dropped and built again
 * all the time. No pull may fail, every blob must match its digest, and at
 * the end every stored record points only at blobs that exist.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../src/digest.js';
import { decodeRecord, imageBlobs } from '../../src/service/records.js';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const SOAK_MS = 60_000;
// Enough images that each is pulled only every second or so: old enough to drop in between.
const IMAGES = [
  'hello', 'jq', 'htop', 'nano', 'coreutils', 'moreutils', 'curl', 'git',
  'hello/jq', 'jq/htop', 'htop/hello', 'nano/jq', 'curl/jq', 'git/hello', 'moreutils/htop', 'shell',
];
const OCI = 'application/vnd.oci.image.manifest.v1+json';

let server: RunningServer;
beforeAll(async () => {
  server = await startServer({
    env: {
      NIXERY_GC_INTERVAL: '300ms',
      NIXERY_GC_GRACE: '0',
      // About two images' worth: most passes drop something.
      NIXERY_GC_MAX_BYTES: '6M',
      NIXERY_GC_USAGE_FLUSH: '200ms',
      NIXERY_GC_POLL: '100ms',
    },
  });
});
afterAll(async () => {
  await server?.stop();
});

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Tally {
  pulls: number;
  blobs: number;
  failures: string[];
}

async function pull(name: string, t: Tally): Promise<void> {
  const res = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: OCI } });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) {
    t.failures.push(`${name}: manifest ${res.status} ${body.toString().slice(0, 200)}`);
    return;
  }
  if (sha(body) !== res.headers.get('docker-content-digest')) t.failures.push(`${name}: manifest digest mismatch`);
  const manifest = JSON.parse(body.toString()) as { config: { digest: string }; layers: Array<{ digest: string }> };
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    const blob = await fetch(`${server.url}/v2/${name}/blobs/${d}`);
    const bytes = Buffer.from(await blob.arrayBuffer());
    if (blob.status !== 200) t.failures.push(`${name}: blob ${d} ${blob.status}`);
    else if (sha(bytes) !== d) t.failures.push(`${name}: blob ${d} does not match its digest`);
    t.blobs++;
  }
  t.pulls++;
}

describe('garbage collection under load', () => {
  it(
    'passes every 300 ms with no grace while three clients pull overlapping images for a minute: no failed pull, every blob verified, no dangling record',
    async () => {
      const t: Tally = { pulls: 0, blobs: 0, failures: [] };
      const end = Date.now() + SOAK_MS;
      const client = async (seed: number) => {
        for (let i = 0; Date.now() < end && t.failures.length < 10; i++) await pull(IMAGES[(i * 7 + seed * 5) % IMAGES.length]!, t);
      };
      await Promise.all([client(0), client(1), client(2)]);
      if (t.failures.length > 0) console.log(server.logs.filter((l) => /"level":(40|50|60)/.test(l)).slice(-20).join('\n'));
      expect(t.failures).toEqual([]);
      const stats = (await server.stats()) as unknown as { builds: number; gc: { passes: number; imagesDropped: number; blobsDeleted: number } };
      console.log(`gc soak: ${t.pulls} pulls, ${t.blobs} blobs verified, ${stats.builds} builds, ${stats.gc.passes} passes, ${stats.gc.imagesDropped} images dropped, ${stats.gc.blobsDeleted} blobs deleted`);
      // It was a soak, not a quiet minute: images were dropped and built again many times.
      expect(t.pulls).toBeGreaterThan(30);
      expect(stats.gc.passes).toBeGreaterThan(20);
      expect(stats.gc.imagesDropped).toBeGreaterThan(5);
      expect(stats.builds).toBeGreaterThan(IMAGES.length);

      const storage = await FilesystemStorage.open(server.storagePath);
      for await (const { key } of storage.listRecords('manifests')) {
        const raw = await storage.getRecord('manifests', key);
        const image = raw && decodeRecord(raw);
        if (!image) continue;
        for (const d of imageBlobs(image)) expect(await storage.statBlob(d), `${key} -> ${d}`).toBeDefined();
      }
      for await (const { key } of storage.listRecords('layers')) {
        const raw = await storage.getRecord('layers', key);
        if (!raw) continue;
        const d = (JSON.parse(raw.toString()) as { digest: Digest }).digest;
        expect(await storage.statBlob(d), `layer record ${key} -> ${d}`).toBeDefined();
      }
    },
    SOAK_MS + 60_000,
  );
});
