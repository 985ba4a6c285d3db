/**
 * Garbage collection in a running server on filesystem storage, checked
 * with real clients: an image whose last pull is made to lie two days back
 * (its usage records rewritten in storage, as a replica's flush would have
 * left them) is dropped by the server's own passes; the recent one is not
 * and still pulls and runs; the dropped one is built again on its next pull.
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
import { imageRecords, lastPull, setLastPull, usageSettled } from '../helpers/gc.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

let server: RunningServer;
let scratch: { path: string; remove: () => Promise<void> };

beforeAll(async () => {
  scratch = await scratchDir('nixery-gc-e2e-');
  server = await startServer({
    env: {
      NIXERY_GC_INTERVAL: '300ms',
      NIXERY_GC_KEEP_DAYS: '1',
      NIXERY_GC_GRACE: '0',
      NIXERY_GC_USAGE_FLUSH: '100ms',
      NIXERY_GC_POLL: '100ms',
    },
  });
});
afterAll(async () => {
  await server?.stop();
  await scratch?.remove();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('garbage collection in a running server', () => {
  it('drops an image not pulled for NIXERY_GC_KEEP_DAYS while serving; the recent one still pulls and runs; the dropped one rebuilds', async () => {
    await skopeoPull(`${server.host}/hello`, `${scratch.path}/hello-1`);
    await skopeoPull(`${server.host}/jq`, `${scratch.path}/jq-1`);
    const storage = await FilesystemStorage.open(server.storagePath);
    const before = await imageRecords(storage);
    expect([...before.keys()].sort()).toEqual(['hello', 'jq']);
    const hello = before.get('hello')!;

    // Let the server flush its pull times, then make hello's two days older
    // than the server wrote them (its clock, not this process's: under the
    // any-date run only this process is moved).
    await usageSettled(storage);
    const written = await lastPull(storage, hello);
    expect(written).toBeDefined();
    await setLastPull(storage, hello, written! - 2 * 86_400_000);

    // The server's passes (every 300 ms) drop it, and its own blobs go
    // (the pass that drops it deletes them after two generation polls).
    const dropped = async () => ((await server.stats()) as unknown as { gc: { imagesDropped: number } }).gc.imagesDropped;
    for (let i = 0; i < 100 && (await dropped()) === 0; i++) await sleep(100);
    const after = await imageRecords(storage);
    expect([...after.keys()]).toEqual(['jq']);
    const jqBlobs = new Set(after.get('jq')!.blobs);
    for (const d of hello.blobs) {
      const exists = (await storage.statBlob(d as `sha256:${string}`)) !== undefined;
      expect(exists, d).toBe(jqBlobs.has(d));
    }
    const stats = (await server.stats()) as unknown as { gc: { passes: number; imagesDropped: number } };
    expect(stats.gc.imagesDropped).toBe(1);
    expect(await (await fetch(`${server.url}/metrics`)).text()).toMatch(/^nixery_gc_images_dropped_total 1$/m);

    // jq was kept, and is served without a build.
    const builds = (await server.stats()).builds;
    const jq = await unpack(await pullAgain('jq', 2), `${scratch.path}/jq-bundle`);
    expect(await inChroot(jq, ['jq', '--version'])).toMatch(/^jq-/);
    expect((await server.stats()).builds).toBe(builds);

    // hello is simply built again, to the same digest.
    const rebuilt = await unpack(await pullAgain('hello', 2), `${scratch.path}/hello-bundle`);
    expect(await inChroot(rebuilt, ['hello'])).toMatch(/Hello/);
    expect((await server.stats()).builds).toBe(builds + 1);
    const index = JSON.parse(await readFile(`${scratch.path}/hello-2/index.json`, 'utf8'));
    expect(hello.manifests).toContain(index.manifests[0].digest);
  });
});

async function pullAgain(name: string, n: number): Promise<string> {
  const layout = `${scratch.path}/${name}-${n}`;
  await skopeoPull(`${server.host}/${name}`, layout);
  return layout;
}
