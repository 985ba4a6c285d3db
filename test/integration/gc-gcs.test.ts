/**
 * Garbage collection against real servers on Cloud Storage (the emulator,
 * started once for the file), and the `gc` command on both backends, checked
 * with real clients:
 *
 * - KEEP_DAYS in a server's own passes on a bucket: an image whose last pull
 *   is made to lie two days back is dropped and its own blobs deleted; the
 *   recent one is still served without a build and runs; the dropped one is
 *   built again to the same digest.
 * - `gc --dry-run` / `gc` with NIXERY_GC_MAX_BYTES, on filesystem and gcs:
 *   the least recently pulled images go first, the dry run deletes nothing
 *   and names exactly what the pass then deletes.
 * - Two servers on one bucket, both running passes under a byte limit while
 *   clients pull overlapping images from both: no failed pull, every digest
 *   verified, no record left pointing at a missing blob.
 * - A server holding an image in memory while the other server's pass drops
 *   it: the generation makes it forget, and its next pull builds again.
 * - `gc --dry-run` with NIXERY_NIX_GC_MIN_FREE: the Nix store's filesystem,
 *   the threshold and what a collection would free (never a collection).
 *
 * The servers reach the emulator through a proxy that applies GCS's delete
 * preconditions (the emulator ignores them, and the collector's conditional
 * delete relies on them: without it concurrent passes delete blobs that were
 * just marked, which real GCS would refuse). Times are derived from what the
 * servers wrote (their clocks, not this process's: under `faketime` only the
 * test process moves).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdir, readFile, statfs } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import type { GcReport } from '../../src/gc/collector.js';
import type { PassReport } from '../../src/gc/pass.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { GcsStorage } from '../../src/storage/gcs.js';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
import {
  blobSizes,
  danglingReferences,
  gcStats,
  imageRecords,
  lastPull,
  pullVerified,
  setLastPull,
  startPreconditionProxy,
  usageSettled,
  type PreconditionProxy,
  type PullTally,
  type StoredImage,
} from '../helpers/gc.js';
import { startGcsEmulator, type GcsEmulator } from '../helpers/gcs-emulator.js';
import { ROOT } from '../helpers/nix.js';
import { demoServerEnv, scratchDir, startServer, type RunningServer } from '../helpers/server.js';
import { until } from '../helpers/wait.js';

const DAY = 86_400_000;
const HOUR = 3_600_000;

let emu: GcsEmulator;
/** Where the servers send their requests: GCS's delete preconditions in front of the emulator (helpers/gc.ts). */
let proxy: PreconditionProxy;
beforeAll(async () => {
  emu = await startGcsEmulator();
  proxy = await startPreconditionProxy(emu.url);
});
afterAll(async () => {
  await proxy?.stop();
  await emu?.stop();
});

/** Servers and scratch directories of the running test, stopped and removed after it. */
let cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function scratch(prefix: string): Promise<string> {
  const d = await scratchDir(prefix);
  cleanups.push(d.remove);
  return d.path;
}

const newBucket = () => `nixery-gc-${randomUUID().slice(0, 8)}`;
const gcsEnv = (bucket: string) => ({ NIXERY_STORAGE_BACKEND: 'gcs', STORAGE_EMULATOR_HOST: proxy.url, GCS_BUCKET: bucket });
/** The bucket as the test reads (and ages) it, with the project's own backend, straight from the emulator. */
const openBucket = (bucket: string) => GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url });

/** A server stopped after the test; if the test fails, its warnings and errors are printed. */
async function server(env: Record<string, string>, storagePath?: string): Promise<RunningServer> {
  const s = await startServer({ env, ...(storagePath !== undefined ? { storagePath } : {}) });
  cleanups.push(() => s.stop());
  onTestFailed(() => {
    const bad = s.logs.filter((l) => /"level":"(warn|error|fatal)"/.test(l));
    if (bad.length > 0) console.log(`server ${s.host}, last warnings and errors:\n${bad.slice(-20).join('\n')}`);
  });
  return s;
}

/** skopeo pull into a fresh layout under `dir`, unpacked; the rootfs. */
async function pullAndUnpack(s: RunningServer, name: string, dir: string, tag: string): Promise<{ layout: string; rootfs: string }> {
  const layout = path.join(dir, `${tag}-oci`);
  await skopeoPull(`${s.host}/${name}`, layout);
  return { layout, rootfs: await unpack(layout, path.join(dir, `${tag}-bundle`)) };
}

async function layoutDigest(layout: string): Promise<string> {
  return (JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }).manifests[0]!.digest;
}

describe('garbage collection on gcs, in the server', () => {
  it('drops an image not pulled for NIXERY_GC_KEEP_DAYS and its own blobs from the bucket; the recent one is served without a build and runs; the dropped one rebuilds to the same digest', async () => {
    const bucket = newBucket();
    const s = await server({
      ...gcsEnv(bucket),
      NIXERY_GC_INTERVAL: '300ms',
      NIXERY_GC_KEEP_DAYS: '1',
      NIXERY_GC_GRACE: '0',
      NIXERY_GC_USAGE_FLUSH: '100ms',
      NIXERY_GC_POLL: '100ms',
    });
    const dir = await scratch('nixery-gc-gcs-keep-');
    await skopeoPull(`${s.host}/hello`, path.join(dir, 'hello-1'));
    await skopeoPull(`${s.host}/jq`, path.join(dir, 'jq-1'));
    const storage = await openBucket(bucket);
    const before = await imageRecords(storage);
    expect([...before.keys()].sort()).toEqual(['hello', 'jq']);
    const hello = before.get('hello')!;
    for (const d of hello.blobs) expect(await storage.statBlob(d), d).toBeDefined();

    // hello's last pull, two days before the server wrote it.
    await usageSettled(storage);
    const written = await lastPull(storage, hello);
    expect(written).toBeDefined();
    await setLastPull(storage, hello, written! - 2 * DAY);

    await until('a pass dropped hello', async () => (await gcStats(s)).gc.imagesDropped > 0, 30_000);
    const after = await imageRecords(storage);
    expect([...after.keys()]).toEqual(['jq']);
    const jqBlobs = new Set<string>(after.get('jq')!.blobs);
    const own = hello.blobs.filter((d) => !jqBlobs.has(d));
    expect(own.length).toBeGreaterThan(0);
    for (const d of hello.blobs) expect((await storage.statBlob(d)) !== undefined, d).toBe(jqBlobs.has(d));
    const stats = await gcStats(s);
    expect(stats.gc.imagesDropped).toBe(1);
    expect(stats.gc.blobsDeleted).toBeGreaterThanOrEqual(own.length);
    expect(await danglingReferences(storage)).toEqual([]);

    // jq was kept: served without a build, and it runs.
    const builds = stats.builds;
    const jq = await pullAndUnpack(s, 'jq', dir, 'jq-2');
    expect(await inChroot(jq.rootfs, ['jq', '--version'])).toMatch(/^jq-/);
    expect((await s.stats()).builds).toBe(builds);

    // hello is simply built again, to the same manifest.
    const again = await pullAndUnpack(s, 'hello', dir, 'hello-2');
    expect(await inChroot(again.rootfs, ['hello'])).toMatch(/Hello/);
    expect((await s.stats()).builds).toBe(builds + 1);
    expect(hello.manifests).toContain(await layoutDigest(again.layout));
  });
});

/** The `gc` command, as an operator runs it: `node dist/launch.cjs gc ...` with exactly `env` (and PATH). */
async function gcCommand(args: readonly string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/launch.cjs'), 'gc', ...args], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', NIX_CONFIG: 'substituters =', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

interface Backend {
  /** The environment that selects this storage (beside demoServerEnv(storagePath)). */
  readonly env: Record<string, string>;
  readonly storagePath: string;
  open(): Promise<StorageBackend>;
}

const backends: Array<{ name: string; make: () => Promise<Backend> }> = [
  {
    name: 'filesystem',
    make: async () => {
      const storagePath = await scratch('nixery-gc-cli-fs-');
      return { env: {}, storagePath, open: () => FilesystemStorage.open(storagePath) };
    },
  },
  {
    name: 'gcs',
    make: async () => {
      const bucket = newBucket();
      return { env: gcsEnv(bucket), storagePath: await scratch('nixery-gc-cli-gcs-'), open: () => openBucket(bucket) };
    },
  },
];

// Three images sharing only the common layers (cacert, iana-etc and the like).
const [A, B, C] = ['hello', 'nano', 'jq'] as const;

describe.each(backends)('the gc command on $name storage', ({ make }) => {
  it('with NIXERY_GC_MAX_BYTES drops the least recently pulled first: the dry run deletes nothing and names what the pass then deletes; the kept image pulls without a build, a dropped one rebuilds', async () => {
    const backend = await make();
    const dir = await scratch('nixery-gc-cli-pull-');
    const first = await server(backend.env, backend.storagePath);
    const tally: PullTally = { pulls: 0, blobs: 0, failures: [] };
    for (const name of [A, B, C]) await pullVerified(first.url, name, tally);
    expect(tally.failures).toEqual([]);
    // Stopping writes the pending pull times.
    expect(await first.stop()).toBe(0);

    const storage = await backend.open();
    const images = await imageRecords(storage);
    expect([...images.keys()].sort()).toEqual([A, B, C].sort());
    const [a, b, c] = [A, B, C].map((n) => images.get(n)!) as [StoredImage, StoredImage, StoredImage];
    // Last pulls clearly ordered, A oldest, by the server's clock.
    const written = Math.max(...(await Promise.all([a, b, c].map((i) => lastPull(storage, i)))).map((t) => t ?? 0));
    expect(written).toBeGreaterThan(0);
    await setLastPull(storage, a, written - 3 * HOUR);
    await setLastPull(storage, b, written - 2 * HOUR);
    await setLastPull(storage, c, written - 1 * HOUR);

    // A limit only C (with the layers it shares) fits under: dropping A alone is not enough.
    const sizes = await blobSizes(storage);
    const bytesOf = (...is: StoredImage[]) => [...new Set(is.flatMap((i) => i.blobs))].reduce((n, d) => n + sizes.get(d)!, 0);
    const total = [...sizes.values()].reduce((n, s) => n + s, 0);
    expect(total).toBe(bytesOf(a, b, c));
    expect(bytesOf(b, c)).toBeGreaterThan(bytesOf(c));
    const maxBytes = bytesOf(c) + Math.floor((bytesOf(b, c) - bytesOf(c)) / 2);
    const env = {
      ...demoServerEnv(backend.storagePath),
      ...backend.env,
      NIXERY_GC_MAX_BYTES: String(maxBytes),
      NIXERY_GC_GRACE: '0',
    };
    const kept = new Set<string>(c.blobs);
    const doomed = [...sizes.keys()].filter((d) => !kept.has(d)).sort();

    // The dry run: A then B, the blobs only they hold; nothing deleted.
    const dry = await gcCommand(['--dry-run', '--json'], env);
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    const planned = JSON.parse(dry.stdout) as PassReport;
    expect(planned.dryRun).toBe(true);
    expect(new Set(planned.images.map((i) => i.key))).toEqual(new Set([a.key, b.key]));
    // In drop order, oldest pull first (soft: the checks below still run when only the order is wrong).
    expect.soft(planned.images.map((i) => i.key), 'dropped images, oldest pull first').toEqual([a.key, b.key]);
    expect.soft(planned.images.map((i) => i.lastPulledAt)).toEqual([written - 3 * HOUR, written - 2 * HOUR]);
    expect(planned.imagesKept).toBe(1);
    expect([...planned.blobs.digests].sort()).toEqual(doomed);
    expect(planned.blobs.bytes).toBe(total - bytesOf(c));
    expect(planned.bytesBefore).toBe(total);
    expect(planned.bytesAfter).toBe(bytesOf(c));
    expect(planned.bytesAfter).toBeLessThanOrEqual(maxBytes);
    expect([...(await blobSizes(storage)).keys()].sort()).toEqual([...sizes.keys()].sort());
    expect([...(await imageRecords(storage)).keys()].sort()).toEqual([A, B, C].sort());

    // The human dry run names the images, oldest first.
    const human = await gcCommand(['--dry-run'], env);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^dry run: would drop 2 image\(s\), kept 1$/m);
    const named = human.stdout.split('\n').filter((l) => /^ {2}\S/.test(l)).map((l) => l.trim().split(/\s+/)[0]);
    expect(new Set(named)).toEqual(new Set([A, B]));
    expect.soft(named, 'images named oldest pull first').toEqual([A, B]);
    expect(human.stdout).toContain(`would delete ${doomed.length} blob(s)`);
    expect((await blobSizes(storage)).size).toBe(sizes.size);

    // The pass does exactly that.
    const run = await gcCommand(['--json'], env);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const done = JSON.parse(run.stdout) as PassReport;
    expect(done.dryRun).toBe(false);
    expect(done.images).toEqual(planned.images);
    expect([...done.blobs.digests].sort()).toEqual([...planned.blobs.digests].sort());
    expect(done.blobs.count).toBe(planned.blobs.count);
    expect(done.blobs.bytes).toBe(planned.blobs.bytes);
    expect(done.bytesAfter).toBe(planned.bytesAfter);

    const left = await blobSizes(storage);
    expect([...left.keys()].sort()).toEqual([...kept].sort());
    expect([...left.values()].reduce((n, s) => n + s, 0)).toBeLessThanOrEqual(maxBytes);
    expect([...(await imageRecords(storage)).keys()]).toEqual([C]);
    expect(await danglingReferences(storage)).toEqual([]);

    // A server on the same storage: C without a build, A built again; both run.
    const second = await server(backend.env, backend.storagePath);
    const jq = await pullAndUnpack(second, C, dir, 'c');
    expect(await inChroot(jq.rootfs, ['jq', '--version'])).toMatch(/^jq-/);
    expect((await second.stats()).builds).toBe(0);
    const hello = await pullAndUnpack(second, A, dir, 'a');
    expect(await inChroot(hello.rootfs, ['hello'])).toMatch(/Hello/);
    expect((await second.stats()).builds).toBe(1);
    expect(a.manifests).toContain(await layoutDigest(hello.layout));
  });
});

// Enough images that each is pulled only every second or so: old enough to drop in between.
const IMAGES = [
  'hello', 'jq', 'htop', 'nano', 'coreutils', 'moreutils', 'curl', 'git',
  'hello/jq', 'jq/htop', 'htop/hello', 'nano/jq', 'curl/jq', 'git/hello', 'moreutils/htop', 'shell',
];
const SOAK_MS = 40_000;

describe('garbage collection on gcs, two servers', () => {
  it(
    'both run passes every 300 ms under a byte limit while clients pull overlapping images from both: no failed pull, every digest verified, no dangling record',
    async () => {
      const bucket = newBucket();
      const gc = {
        ...gcsEnv(bucket),
        NIXERY_GC_INTERVAL: '300ms',
        NIXERY_GC_GRACE: '0',
        // About two images' worth: most passes drop something.
        NIXERY_GC_MAX_BYTES: '6M',
        NIXERY_GC_USAGE_FLUSH: '200ms',
        NIXERY_GC_POLL: '100ms',
      };
      const servers = [await server(gc), await server(gc)];
      const t: PullTally = { pulls: 0, blobs: 0, failures: [] };
      const end = Date.now() + SOAK_MS;
      const client = async (seed: number) => {
        for (let i = 0; Date.now() < end && t.failures.length < 10; i++) {
          await pullVerified(servers[(i + seed) % 2]!.url, IMAGES[(i * 7 + seed * 5) % IMAGES.length]!, t);
        }
      };
      await Promise.all([client(0), client(1), client(2), client(3)]);
      const stats = await Promise.all(servers.map((s) => gcStats(s)));
      console.log(
        `gc on gcs, two servers: ${t.pulls} pulls, ${t.blobs} blobs verified; ` +
          stats
            .map((s, i) => {
              // A build that lost a blob to a pass and started over (rare since found layers are secured as found).
              const restarts = servers[i]!.logs.filter((l) => l.includes('blobs collected during the build')).length;
              return `server ${i}: ${s.builds} builds, ${restarts} restarted, ${s.gc.passes} passes, ${s.gc.imagesDropped} dropped, ${s.gc.blobsDeleted} blobs deleted, ${s.gc.failures} failed`;
            })
            .join('; '),
      );
      expect(t.failures).toEqual([]);
      // The soak really ran (on a loaded 2-core machine a pull with verification takes seconds).
      expect(t.pulls).toBeGreaterThanOrEqual(10);
      // Passes over a bucket take a while (hundreds of requests each), so fewer than one per 300 ms run.
      for (const s of stats) {
        expect(s.gc.passes).toBeGreaterThan(5);
        expect(s.gc.imagesDropped).toBeGreaterThan(0);
        expect(s.gc.failures).toBe(0);
      }
      expect(stats.reduce((n, s) => n + s.gc.imagesDropped, 0)).toBeGreaterThan(5);
      expect(stats.reduce((n, s) => n + s.builds, 0)).toBeGreaterThan(IMAGES.length);

      // Stopped first, so that no pass runs while the bucket is checked.
      for (const s of servers) expect(await s.stop()).toBe(0);
      expect(await danglingReferences(await openBucket(bucket))).toEqual([]);
    },
    SOAK_MS + 60_000,
  );

  it('a server holding an image in memory forgets it when the other server drops it, and builds it again on its next pull', async () => {
    const bucket = newBucket();
    const common = { ...gcsEnv(bucket), NIXERY_GC_USAGE_FLUSH: '100ms', NIXERY_GC_POLL: '100ms' };
    // A runs no passes, but polls the generation.
    const a = await server(common);
    const dir = await scratch('nixery-gc-gcs-memory-');
    await skopeoPull(`${a.host}/hello`, path.join(dir, 'hello-1'));
    expect((await a.stats()).builds).toBe(1);
    // A serves it from memory now: a second pull costs no build.
    await skopeoPull(`${a.host}/hello`, path.join(dir, 'hello-2'));
    expect((await a.stats()).builds).toBe(1);

    const storage = await openBucket(bucket);
    const hello = (await imageRecords(storage)).get('hello')!;
    await usageSettled(storage);
    const written = await lastPull(storage, hello);
    expect(written).toBeDefined();
    await setLastPull(storage, hello, written! - 2 * DAY);

    const b = await server({ ...common, NIXERY_GC_INTERVAL: '300ms', NIXERY_GC_KEEP_DAYS: '1', NIXERY_GC_GRACE: '0' });
    await until('server B dropped hello', async () => (await gcStats(b)).gc.imagesDropped > 0, 30_000);
    expect((await imageRecords(storage)).has('hello')).toBe(false);
    expect(await storage.statBlob(hello.manifests[0] as `sha256:${string}`)).toBeUndefined();
    expect((await gcStats(a)).gc.passes).toBe(0);

    const again = await pullAndUnpack(a, 'hello', dir, 'hello-3');
    expect(await inChroot(again.rootfs, ['hello'])).toMatch(/Hello/);
    expect((await a.stats()).builds).toBe(2);
    expect(hello.manifests).toContain(await layoutDigest(again.layout));
  });
});

describe('the gc command and the Nix store', () => {
  it('a dry run with NIXERY_NIX_GC_MIN_FREE reports the store filesystem, the threshold and what a collection would free, and collects nothing', async () => {
    const storagePath = await scratch('nixery-gc-cli-nix-');
    const env = { ...demoServerEnv(storagePath), NIXERY_GC_GRACE: '0' };
    const before = await statfs('/nix/store');
    const total = before.blocks * before.bsize;
    const storeEntries = (await readdir('/nix/store')).length;

    // 100%: the store can never have that much free; a collection is due.
    const low = await gcCommand(['--dry-run', '--json'], { ...env, NIXERY_NIX_GC_MIN_FREE: '100%' });
    expect(low.stderr).toBe('');
    expect(low.code).toBe(0);
    const report = JSON.parse(low.stdout) as GcReport;
    expect(report.nixStore).toBeDefined();
    const n = report.nixStore!;
    expect(n.totalBytes).toBe(total);
    expect(n.thresholdBytes).toBe(total);
    expect(n.freeBytes).toBeGreaterThan(0);
    expect(n.shortfallBytes).toBe(total - n.freeBytes);
    expect(report.nixBytesFreed).toBe(0);
    const human = await gcCommand(['--dry-run'], { ...env, NIXERY_NIX_GC_MIN_FREE: '100%' });
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^Nix store: [\d.]+ MB free of [\d.]+ MB, NIXERY_NIX_GC_MIN_FREE [\d.]+ MB: a collection would free [\d.]+ MB$/m);
    // A dry run never runs Nix's collector: every store path is still there.
    expect((await readdir('/nix/store')).length).toBeGreaterThanOrEqual(storeEntries);

    // 1 KiB: always free; nothing to collect.
    const fine = await gcCommand(['--dry-run'], { ...env, NIXERY_NIX_GC_MIN_FREE: '1k' });
    expect(fine.code).toBe(0);
    expect(fine.stdout).toMatch(/^Nix store: .*: no collection needed$/m);
    // Without the setting the report says nothing about the store.
    const off = await gcCommand(['--dry-run', '--json'], env);
    expect((JSON.parse(off.stdout) as GcReport).nixStore).toBeUndefined();
  });
});
