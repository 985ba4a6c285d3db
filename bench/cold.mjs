// Cold image builds, phase by phase: the baseline commit (BASELINE_REF,
// default 5ba158d) against the working tree, measured in the same run on the
// same machine. Run with `npm run bench:cold` (builds dist/ first).
//
// "Cold" means Nix builds every package of the image anew: each build gets
// NIXERY_IMPORT_ARGS={"salt":"<fresh>"}, which gives every demo package new
// store paths, no binary caches, and empty storage. Each build runs in a fresh
// child node process that loads the variant's own dist/, so no in-process
// cache (layer records, manifests, Nix evaluation) carries over. Phase times
// come from the service itself: the Build's `phase` events, from one phase's
// start to the next one's (the last to `finished`).
//
// post_nix = total - resolve - realise: everything after Nix realised the
// packages (closure, grouping, packing, manifests), the part our code owns.
//
// Environment: BASELINE_REF, BENCH_REPS (default 3), BENCH_BIG (the big image,
// default python3), BENCH_TIMEOUT_S (per build, default 1800).
// The last lines are machine-readable:
//   cold_<image>_post_nix_baseline=<s> cold_<image>_post_nix_current=<s>   (one line per image)
//   post_nix_big_ratio=<current/baseline median post-Nix of the big image>
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PHASES = ['resolve', 'realise', 'closure', 'group', 'pack', 'manifest'];
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

if (process.argv[2] === '--child') await child(process.argv[3], process.argv[4]);
else await parent();

// ---------------------------------------------------------------- child
// One cold build in this process: configuration from the environment the
// parent set (as the server reads it), the variant's runtime, one manifest
// request (what GET /v2/<name>/manifests/<tag> calls), one JSON line out.
async function child(variantRoot, image) {
  const dist = (m) => import(pathToFileURL(path.join(variantRoot, 'dist', m)).href);
  const [{ loadConfig }, { createRuntime }, { createLogger }, { parseImageName }] = await Promise.all(
    ['config.js', 'runtime.js', 'log.js', 'image/name.js'].map(dist),
  );
  const { pino } = await import('pino');
  // Warnings go to stderr, so stdout carries only the result line.
  const log = createLogger({ level: 'warn', destination: pino.destination(2) });
  const runtime = await createRuntime(await loadConfig(process.env, {}), log);
  // The parent's timeout sends SIGTERM: stop Nix before going.
  process.once('SIGTERM', () => void runtime.close().finally(() => process.exit(143)));

  const events = [];
  runtime.service.subscribe((e) => {
    if (e.type === 'build') e.build.subscribe((b) => events.push(b));
  });
  const t0 = Date.now();
  const served = await runtime.service.manifest(parseImageName(image, 'latest'), OCI_MANIFEST);
  const wall = (Date.now() - t0) / 1000;
  await runtime.close();

  const phases = events.filter((e) => e.type === 'phase');
  const end = events.find((e) => e.type === 'finished');
  if (phases.length === 0 || end === undefined) throw new Error(`no cold build seen for ${image} (events: ${events.map((e) => e.type).join(',')})`);
  const s = {};
  phases.forEach((p, i) => (s[p.phase] = ((phases[i + 1] ?? end).at - p.at) / 1000));
  const total = (end.at - phases[0].at) / 1000;
  const layers = JSON.parse(served.bytes.toString()).layers;
  const result = {
    ...Object.fromEntries(PHASES.map((p) => [p, s[p] ?? 0])),
    total,
    post_nix: total - (s.resolve ?? 0) - (s.realise ?? 0),
    wall,
    layers: layers.length,
    bytes: layers.reduce((n, l) => n + l.size, 0),
    // Fresh storage: every layer must have been packed by this build, none reused.
    reused: events.filter((e) => e.type === 'layer' && e.reused).length,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

// ---------------------------------------------------------------- parent
async function parent() {
  const baselineRef = process.env.BASELINE_REF || '5ba158d';
  const reps = Number(process.env.BENCH_REPS || 3);
  const big = process.env.BENCH_BIG || 'python3';
  const timeoutMs = Number(process.env.BENCH_TIMEOUT_S || 1800) * 1000;
  const images = ['hello', 'shell/htop', big];

  // Everything made here is undone in cleanup(), also on failure or Ctrl-C.
  let worktree;
  let current; // the child running now, killed on interrupt
  const cleanup = async () => {
    if (current) killGroup(current, 'SIGKILL');
    if (worktree) {
      await run('git', ['worktree', 'remove', '--force', worktree], { cwd: ROOT }).catch((e) => console.error(`could not remove worktree ${worktree}: ${e.message}`));
      await rm(path.dirname(worktree), { recursive: true, force: true });
      worktree = undefined;
    }
  };
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => void cleanup().finally(() => process.exit(130)));

  try {
    // The baseline's own sources, prepare-image and tsconfig; node_modules is
    // shared because the dependencies are the same.
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-bench-baseline-'));
    worktree = path.join(dir, 'tree');
    console.log(`baseline ${baselineRef}: worktree ${worktree}`);
    await run('git', ['worktree', 'add', '--detach', worktree, baselineRef], { cwd: ROOT });
    await symlink(path.join(ROOT, 'node_modules'), path.join(worktree, 'node_modules'));
    await run('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: worktree, timeout: 300_000 });
    const variants = { baseline: worktree, current: ROOT };

    const results = {}; // results[image][variant] = [run, ...]
    for (const image of images) {
      results[image] = { baseline: [], current: [] };
      for (let rep = 1; rep <= reps; rep++) {
        // Alternating, so that noise on the machine falls on both alike.
        for (const [variant, root] of Object.entries(variants)) {
          const r = await coldBuild(root, image, timeoutMs, (c) => (current = c));
          current = undefined;
          console.log(`${image} ${variant} rep ${rep}: total ${r.total.toFixed(2)} s, post-Nix ${r.post_nix.toFixed(3)} s, ${r.layers} layers`);
          results[image][variant].push(r);
        }
      }
    }

    // Medians per image and variant.
    const cols = [...PHASES, 'total', 'post_nix', 'layers', 'MB'];
    const med = (runs, k) => median(runs.map((r) => (k === 'MB' ? r.bytes / 1e6 : r[k])));
    console.log(`\ncold builds, medians of ${reps} (seconds; MB = compressed layer bytes)`);
    console.log(['image', 'variant', ...cols].map((c, i) => (i < 2 ? c.padEnd(i ? 9 : 22) : c.padStart(9))).join(''));
    for (const image of images) {
      for (const variant of Object.keys(variants)) {
        const runs = results[image][variant];
        const cells = cols.map((c) => med(runs, c).toFixed(c === 'layers' ? 0 : 3).padStart(9));
        console.log(image.padEnd(22) + variant.padEnd(9) + cells.join(''));
      }
    }
    console.log();
    for (const image of images) {
      const key = image.replace(/[^A-Za-z0-9]+/g, '_');
      const [b, c] = ['baseline', 'current'].map((v) => med(results[image][v], 'post_nix').toFixed(3));
      console.log(`cold_${key}_post_nix_baseline=${b} cold_${key}_post_nix_current=${c}`);
    }
    const ratio = med(results[big].current, 'post_nix') / med(results[big].baseline, 'post_nix');
    console.log(`post_nix_big_ratio=${ratio.toFixed(3)}`);
  } finally {
    await cleanup();
  }
}

/** One cold build in a fresh child process of `root`'s code; resolves with its result line. */
async function coldBuild(root, image, timeoutMs, started) {
  const storage = await mkdtemp(path.join(tmpdir(), 'nixery-bench-store-'));
  try {
    const env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? tmpdir(),
      NIXERY_PKGS_PATH: path.join(ROOT, 'nix/demo-pkgs'), // the same package set for both variants
      STORAGE_PATH: storage,
      NIXERY_STORAGE_BACKEND: 'filesystem',
      NIXERY_OFFLINE: 'true',
      NIX_CONFIG: 'substituters =',
      // New store paths for every package: Nix builds them all (that is "cold").
      NIXERY_IMPORT_ARGS: JSON.stringify({ salt: `bench-${randomUUID()}` }),
      // The big image's packages may take Nix longer than the 60 s default.
      NIX_TIMEOUT: String(Math.ceil(timeoutMs / 1000)),
      // Never serves, but keep the configuration loopback-only all the same.
      NIXERY_HOST: '127.0.0.1',
      PORT: '0',
    };
    // Its own process group, so that a timeout also stops the Nix processes it started.
    const c = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', root, image], {
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started(c);
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err = (err + d).slice(-4000)));
    const exited = new Promise((resolve) => c.once('close', (code, signal) => resolve(code ?? signal)));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(c, 'SIGTERM');
      setTimeout(() => killGroup(c, 'SIGKILL'), 15_000).unref();
    }, timeoutMs);
    const code = await exited;
    clearTimeout(timer);
    if (code !== 0) {
      killGroup(c, 'SIGKILL'); // Nix processes a dead child left behind (its group only)
      throw new Error(`cold build of ${image} (${root}) ${timedOut ? `timed out after ${timeoutMs / 1000} s` : `exited with ${code}`}:\n${err}`);
    }
    const r = JSON.parse(out.trim().split('\n').pop());
    if (r.reused !== 0) throw new Error(`cold build of ${image} reused ${r.reused} layers from fresh storage`);
    return r;
  } finally {
    await rm(storage, { recursive: true, force: true });
  }
}

/** Signals the process group led by a child we spawned (detached), and only that. */
function killGroup(c, signal) {
  try {
    process.kill(-c.pid, signal);
  } catch {
    // Already gone.
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
