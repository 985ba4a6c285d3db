/**
 * Soak: for a minute, three clients pull overlapping images (shared layers)
 * over the registry API and fetch every blob, while the server runs a
 * garbage-collection pass every 300 ms with no grace period and a byte
 * limit that keeps dropping images, so images are dropped and built again
 * all the time. No pull may fail, every blob must match its digest, and at
 * the end every stored record points only at blobs that exist.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { danglingReferences, pullVerified, type PullTally } from '../helpers/gc.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const SOAK_MS = 60_000;
// Enough images that each is pulled only every second or so: old enough to drop in between.
const IMAGES = [
  'hello', 'jq', 'htop', 'nano', 'coreutils', 'moreutils', 'curl', 'git',
  'hello/jq', 'jq/htop', 'htop/hello', 'nano/jq', 'curl/jq', 'git/hello', 'moreutils/htop', 'shell',
];

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

describe('garbage collection under load', () => {
  it(
    'passes every 300 ms with no grace while three clients pull overlapping images for a minute: no failed pull, every blob verified, no dangling record',
    async () => {
      const t: PullTally = { pulls: 0, blobs: 0, failures: [] };
      const end = Date.now() + SOAK_MS;
      const client = async (seed: number) => {
        for (let i = 0; Date.now() < end && t.failures.length < 10; i++) await pullVerified(server.url, IMAGES[(i * 7 + seed * 5) % IMAGES.length]!, t);
      };
      await Promise.all([client(0), client(1), client(2)]);
      if (t.failures.length > 0) console.log(server.logs.filter((l) => /"level":"(warn|error|fatal)"/.test(l)).slice(-20).join('\n'));
      expect(t.failures).toEqual([]);
      const stats = (await server.stats()) as unknown as { builds: number; gc: { passes: number; imagesDropped: number; blobsDeleted: number } };
      console.log(`gc soak: ${t.pulls} pulls, ${t.blobs} blobs verified, ${stats.builds} builds, ${stats.gc.passes} passes, ${stats.gc.imagesDropped} images dropped, ${stats.gc.blobsDeleted} blobs deleted`);
      // It was a soak, not a quiet minute: images were dropped and built again many times.
      expect(t.pulls).toBeGreaterThan(30);
      expect(stats.gc.passes).toBeGreaterThan(20);
      expect(stats.gc.imagesDropped).toBeGreaterThan(5);
      expect(stats.builds).toBeGreaterThan(IMAGES.length);

      const storage = await FilesystemStorage.open(server.storagePath);
      expect(await danglingReferences(storage)).toEqual([]);
    },
    SOAK_MS + 60_000,
  );
});
