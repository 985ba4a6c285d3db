// Layer packing throughput against GNU `tar | gzip -6`, measured in the same
// run on the same store paths (the demo package set's closure of
// htop/jq/bash/coreutils/curl/git), plus whole-image packing and peak RSS on
// a 1 GiB file. Run with `npm run bench:pack` (builds dist/ first).
//
// Lines printed, in order:
//   input: ...            the closure measured by the one-layer and image lines
//   threads: ...          packer threads and the libuv pool size, as checked
//   one layer: ...        single-stream packLayer vs GNU, the whole closure as one layer
//   image (...): ...      one layer per store path, packLayer p-limit(2) vs GNU serial
//   big path ...: ...     one layer holding only the demo python3 store path:
//                         packLayer, a fresh ParallelPacker (threads = cores, no
//                         cache) and GNU tar|gzip -6; then
//   pack_big_vs_single=<time(packLayer) / time(ParallelPacker)>
//   pack_big_vs_gnu=<time(GNU) / time(ParallelPacker)>
//   ratio_big_vs_gzip6=<ParallelPacker layer size / size of GNU tar | gzip -6>
//   cached layer ...: ... the closure as one layer, packed by a ParallelPacker
//                         (1 GiB cache) whose cache was warmed by packing each
//                         store path as its own layer, vs packLayer and GNU;
//                         fails unless >90% of the bytes came from the cache and
//                         the digest equals a fresh ParallelPacker's; then
//   pack_cached_vs_single=<time(packLayer) / time(cached ParallelPacker)>
//   pack_cached_vs_gnu=<time(GNU) / time(cached ParallelPacker)>
//   ratio_cached_vs_gzip6=<cached layer size / size of GNU tar | gzip -6>
//   large-blob ...: ...   peak RSS of a child packing a 1 GiB file with packLayer
//   large-blob parallel ...: the same with a ParallelPacker (threads = cores,
//                         default cache DEFAULT_PACK_CACHE_BYTES); then
//   rss_parallel_1g_mib=<its peak RSS in MiB> (target < 150)
//
// Timed variants alternate within each repetition (their order rotating), so
// load from elsewhere hits them alike; figures are medians of BENCH_REPS.
// The libuv pool is sized as the server sizes it (main.ts): threads + 4,
// unless UV_THREADPOOL_SIZE is set already. Node 20 starts the pool while
// loading this module, so the script re-executes itself with the variable
// set, and checks the pool's size by counting its threads.
//
// The last line is machine-readable: pack_vs_gnu_ratio=<ours/gnu one-layer throughput>.
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createWriteStream, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pLimit from 'p-limit';
import { DEFAULT_PACK_CACHE_BYTES } from '../dist/config.js';
import { packLayer } from '../dist/layers/pack.js';
import { ParallelPacker } from '../dist/layers/parallel-pack.js';
import { storePathEntries, storePathSegments } from '../dist/layers/walk.js';

const THREADS = os.availableParallelism();
const self = fileURLToPath(import.meta.url);

// Size the libuv pool as main.ts does. It exists already (Node 20 reads
// this module through it), so a variable set now would be ignored: re-run.
if (process.env.UV_THREADPOOL_SIZE === undefined) {
  const env = { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(1024, THREADS + 4)) };
  const r = spawnSync(process.execPath, [...process.execArgv, self, ...process.argv.slice(2)], { stdio: 'inherit', env });
  if (r.error) throw r.error;
  process.exit(r.status ?? 1);
}

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const demo = path.join(here, '../nix/demo-pkgs');
const REPS = Number(process.env.BENCH_REPS ?? 7);
const NULL = '/dev/null';

// Child mode: pack the given store paths into /dev/null and report peak RSS.
if (process.argv[2] === '--rss-child') {
  const paths = process.argv.slice(3);
  const t0 = performance.now();
  const r = await packLayer(storePathEntries(paths), createWriteStream(NULL));
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(JSON.stringify({ maxRssKiB: process.resourceUsage().maxRSS, seconds, size: r.size }));
  process.exit(0);
}

// The same with the parallel packer as the server runs it.
if (process.argv[2] === '--rss-parallel-child') {
  const paths = process.argv.slice(3);
  const packer = new ParallelPacker({ threads: THREADS, cacheBytes: DEFAULT_PACK_CACHE_BYTES });
  const t0 = performance.now();
  const r = await packer.pack(storePathSegments(paths), createWriteStream(NULL));
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(
    JSON.stringify({ maxRssKiB: process.resourceUsage().maxRSS, seconds, size: r.size, cacheBytes: DEFAULT_PACK_CACHE_BYTES, pool: process.env.UV_THREADPOOL_SIZE }),
  );
  process.exit(0);
}

// Threads of this process and of a node with a pool of one, both after a
// pool call: they differ by our pool's size less one.
const taskCount = () => readdirSync('/proc/self/task').length;
await readFile('/proc/self/stat');
const ourTasks = taskCount();
const probe = spawnSync(
  process.execPath,
  ['-e', "require('fs').readFile('/proc/self/stat', () => console.log(require('fs').readdirSync('/proc/self/task').length))"],
  { env: { ...process.env, UV_THREADPOOL_SIZE: '1' }, encoding: 'utf8' },
);
const poolThreads = ourTasks - Number(probe.stdout.trim()) + 1;
if (poolThreads !== Number(process.env.UV_THREADPOOL_SIZE)) {
  throw new Error(`libuv pool has ${poolThreads} threads (by /proc/self/task), UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}`);
}

const nixEnv = { ...process.env, NIX_CONFIG: 'substituters =' };

async function build(attrs, extra = []) {
  const { stdout } = await run('nix-build', [demo, ...attrs.flatMap((a) => ['-A', a]), ...extra, '--no-out-link'], {
    env: nixEnv,
  });
  return stdout.trim().split('\n');
}

async function closureOf(roots) {
  const { stdout } = await run('nix-store', ['-qR', ...roots], { env: nixEnv });
  return stdout.trim().split('\n').sort();
}

async function inputBytes(paths) {
  let n = 0;
  for await (const e of storePathEntries(paths)) if (e.type === 'file') n += e.size;
  return n;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

async function time(fn) {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

function ours(paths) {
  return packLayer(storePathEntries(paths), createWriteStream(NULL), { gzipLevel: 6 });
}

// The reference: what a shell script would do to make the same deterministic layer.
function gnu(paths) {
  return new Promise((resolve, reject) => {
    const script =
      'set -o pipefail; tar -c --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1 -C / "$@" | gzip -6 > /dev/null';
    const child = spawn('bash', ['-c', script, 'bash', ...paths.map((p) => p.slice(1))], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`GNU tar | gzip exited ${code}`))));
  });
}

function parallel(packer, paths) {
  return packer.pack(storePathSegments(paths), createWriteStream(NULL));
}

// Size of the reference layer: the same tar through `gzip -6 | wc -c`.
async function gnuGzipSize(paths) {
  const script =
    'set -o pipefail; tar -c --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1 -C / "$@" | gzip -6 | wc -c';
  const { stdout } = await run('bash', ['-c', script, 'bash', ...paths.map((p) => p.slice(1))]);
  return Number(stdout.trim());
}

/**
 * Times each variant once per repetition, in an order rotating by one each
 * time, and returns each variant's median seconds and last result.
 */
async function alternate(variants) {
  const names = Object.keys(variants);
  const times = Object.fromEntries(names.map((n) => [n, []]));
  const results = {};
  for (let i = 0; i < REPS; i++) {
    for (let j = 0; j < names.length; j++) {
      const n = names[(i + j) % names.length];
      times[n].push(await time(async () => (results[n] = await variants[n]())));
    }
  }
  return Object.fromEntries(names.map((n) => [n, { seconds: median(times[n]), result: results[n] }]));
}

const mb = (bytes) => bytes / 1e6;
const fmt = (x, d = 1) => x.toFixed(d);

const roots = await build(['htop', 'jq', 'bash', 'coreutils', 'curl', 'git']);
const closure = await closureOf(roots);
const bytes = await inputBytes(closure);
console.log(`input: ${closure.length} store paths, ${fmt(mb(bytes))} MB of file contents; ${REPS} repetitions, medians`);
console.log(`threads: ${THREADS} for the parallel packer, libuv pool ${poolThreads} (UV_THREADPOOL_SIZE, checked in /proc/self/task)`);

// Warm the page cache and the JIT for both sides.
await ours(closure);
await gnu(closure);

// One layer: the whole closure.
const oursT = [];
const gnuT = [];
for (let i = 0; i < REPS; i++) {
  oursT.push(await time(() => ours(closure)));
  gnuT.push(await time(() => gnu(closure)));
}
const oursMBs = mb(bytes) / median(oursT);
const gnuMBs = mb(bytes) / median(gnuT);
console.log(`one layer: ours ${fmt(oursMBs)} MB/s (${fmt(median(oursT), 3)} s), GNU tar|gzip -6 ${fmt(gnuMBs)} MB/s (${fmt(median(gnuT), 3)} s)`);

// Whole image: one layer per store path, ours two at a time, GNU one after another.
const imageOurs = [];
const imageGnu = [];
for (let i = 0; i < REPS; i++) {
  imageOurs.push(
    await time(() => {
      const limit = pLimit(2);
      return Promise.all(closure.map((p) => limit(() => ours([p]))));
    }),
  );
  imageGnu.push(
    await time(async () => {
      for (const p of closure) await gnu([p]);
    }),
  );
}
console.log(
  `image (${closure.length} layers): ours p-limit(2) ${fmt(median(imageOurs), 3)} s (${fmt(mb(bytes) / median(imageOurs))} MB/s), ` +
    `GNU serial ${fmt(median(imageGnu), 3)} s (${fmt(mb(bytes) / median(imageGnu))} MB/s), ratio ${fmt(median(imageGnu) / median(imageOurs), 2)}`,
);

// One big store path as a layer of its own: the parallel packer splits it
// into pieces for every core; the single-stream packer has one.
{
  const [py] = await build(['python3']);
  const pyBytes = await inputBytes([py]);
  const fresh = () => parallel(new ParallelPacker({ threads: THREADS, cacheBytes: 0 }), [py]);
  await ours([py]);
  await fresh();
  await gnu([py]);
  const r = await alternate({ single: () => ours([py]), parallel: fresh, gnu: () => gnu([py]) });
  const gzip6 = await gnuGzipSize([py]);
  const { single, parallel: par, gnu: ref } = r;
  console.log(
    `big path ${path.basename(py)} (${fmt(mb(pyBytes))} MB of files, ${fmt(mb(par.result.tarBytes))} MB tar): ` +
      `single ${fmt(single.seconds, 3)} s (${fmt(mb(pyBytes) / single.seconds)} MB/s, ${fmt(mb(single.result.size), 2)} MB), ` +
      `parallel x${THREADS} ${fmt(par.seconds, 3)} s (${fmt(mb(pyBytes) / par.seconds)} MB/s, ${fmt(mb(par.result.size), 2)} MB), ` +
      `GNU tar|gzip -6 ${fmt(ref.seconds, 3)} s (${fmt(mb(pyBytes) / ref.seconds)} MB/s, ${fmt(mb(gzip6), 2)} MB)`,
  );
  console.log(`pack_big_vs_single=${(single.seconds / par.seconds).toFixed(2)}`);
  console.log(`pack_big_vs_gnu=${(ref.seconds / par.seconds).toFixed(2)}`);
  console.log(`ratio_big_vs_gzip6=${(par.result.size / gzip6).toFixed(4)}`);
}

// A layer grouped differently from the layers that warmed the piece cache:
// every store path's members are copied (and inflated for the diff_id), none
// compressed.
{
  const packer = new ParallelPacker({ threads: THREADS, cacheBytes: 2 ** 30 });
  for (const p of closure) await parallel(packer, [p]);
  const warmed = packer.stats();
  const freshResult = await parallel(new ParallelPacker({ threads: THREADS, cacheBytes: 0 }), closure);
  await ours(closure);
  await gnu(closure);
  const r = await alternate({ cached: () => parallel(packer, closure), single: () => ours(closure), gnu: () => gnu(closure) });
  const gzip6 = await gnuGzipSize(closure);
  const { cached, single, gnu: ref } = r;
  const res = cached.result;
  if (!(res.cachedBytes > 0.9 * res.size)) {
    throw new Error(`cached layer: only ${res.cachedBytes} of ${res.size} bytes came from the piece cache (stats ${JSON.stringify(packer.stats())})`);
  }
  if (res.digest !== freshResult.digest || res.diffId !== freshResult.diffId || res.size !== freshResult.size) {
    throw new Error(`cached layer differs from a fresh packing: ${res.digest} (${res.size} B) vs ${freshResult.digest} (${freshResult.size} B)`);
  }
  if (res.diffId !== single.result.diffId) {
    throw new Error(`cached layer's diff_id ${res.diffId} differs from packLayer's ${single.result.diffId}`);
  }
  console.log(
    `cached layer (${closure.length} paths, ${fmt(mb(res.tarBytes))} MB tar, cache ${warmed.entries} paths/${fmt(mb(warmed.bytes))} MB, ` +
      `${fmt((100 * res.cachedBytes) / res.size)}% of bytes cached, digest = fresh): ` +
      `cached x${THREADS} ${fmt(cached.seconds, 3)} s (${fmt(mb(bytes) / cached.seconds)} MB/s, ${fmt(mb(res.size), 2)} MB), ` +
      `single ${fmt(single.seconds, 3)} s (${fmt(mb(single.result.size), 2)} MB), ` +
      `GNU tar|gzip -6 ${fmt(ref.seconds, 3)} s (${fmt(mb(gzip6), 2)} MB)`,
  );
  console.log(`pack_cached_vs_single=${(single.seconds / cached.seconds).toFixed(2)}`);
  console.log(`pack_cached_vs_gnu=${(ref.seconds / cached.seconds).toFixed(2)}`);
  console.log(`ratio_cached_vs_gzip6=${(res.size / gzip6).toFixed(4)}`);
}

// Peak RSS of a separate process packing a 1 GiB incompressible file.
const [blob] = await build(['large-blob'], ['--arg', 'largeBlobMiB', '1024']);
const child = await run(process.execPath, [fileURLToPath(import.meta.url), '--rss-child', blob], { maxBuffer: 1 << 20 });
const rss = JSON.parse(child.stdout);
const blobBytes = await inputBytes([blob]);
console.log(
  `large-blob ${fmt(blobBytes / 2 ** 20, 0)} MiB: peak RSS ${fmt(rss.maxRssKiB / 1024)} MiB (target < 150), ` +
    `${fmt(mb(blobBytes) / rss.seconds)} MB/s, gzip ${fmt(mb(rss.size))} MB`,
);

const prss = JSON.parse(
  (await run(process.execPath, [fileURLToPath(import.meta.url), '--rss-parallel-child', blob], { maxBuffer: 1 << 20 })).stdout,
);
console.log(
  `large-blob parallel x${THREADS} (cache ${fmt(prss.cacheBytes / 2 ** 20, 0)} MiB, UV_THREADPOOL_SIZE=${prss.pool}): ` +
    `peak RSS ${fmt(prss.maxRssKiB / 1024)} MiB (target < 150), ${fmt(mb(blobBytes) / prss.seconds)} MB/s, gzip ${fmt(mb(prss.size))} MB`,
);
console.log(`rss_parallel_1g_mib=${Math.round(prss.maxRssKiB / 1024)}`);

console.log(`pack_vs_gnu_ratio=${(oursMBs / gnuMBs).toFixed(2)}`);
