// Layer packing throughput against GNU `tar | gzip -6`, measured in the same
// run on the same store paths (the demo package set's closure of
// htop/jq/bash/coreutils/curl/git), plus whole-image packing and peak RSS on
// a 1 GiB file. Run with `npm run bench:pack` (builds dist/ first).
//
// The last line is machine-readable: pack_vs_gnu_ratio=<ours/gnu one-layer throughput>.
import { execFile, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pLimit from 'p-limit';
import { packLayer } from '../dist/layers/pack.js';
import { storePathEntries } from '../dist/layers/walk.js';

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

const mb = (bytes) => bytes / 1e6;
const fmt = (x, d = 1) => x.toFixed(d);

const roots = await build(['htop', 'jq', 'bash', 'coreutils', 'curl', 'git']);
const closure = await closureOf(roots);
const bytes = await inputBytes(closure);
console.log(`input: ${closure.length} store paths, ${fmt(mb(bytes))} MB of file contents; ${REPS} repetitions, medians`);

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

// Peak RSS of a separate process packing a 1 GiB incompressible file.
const [blob] = await build(['large-blob'], ['--arg', 'largeBlobMiB', '1024']);
const child = await run(process.execPath, [fileURLToPath(import.meta.url), '--rss-child', blob], { maxBuffer: 1 << 20 });
const rss = JSON.parse(child.stdout);
const blobBytes = await inputBytes([blob]);
console.log(
  `large-blob ${fmt(blobBytes / 2 ** 20, 0)} MiB: peak RSS ${fmt(rss.maxRssKiB / 1024)} MiB (target < 150), ` +
    `${fmt(mb(blobBytes) / rss.seconds)} MB/s, gzip ${fmt(mb(rss.size))} MB`,
);

console.log(`pack_vs_gnu_ratio=${(oursMBs / gnuMBs).toFixed(2)}`);
