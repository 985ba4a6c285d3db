// A cold pull through a two-platform index against a cold pull of the same
// image from a one-platform server, measured in the same run. Run with
// `npm run bench:index` (builds dist/ first).
//
// Each pull starts a fresh server (dist/launch.cjs, loopback, any port) on
// empty filesystem storage, serving the demo package set with a fresh salt
// (NIXERY_IMPORT_ARGS={"salt":...}: every package gets new store paths, so Nix
// builds them all: "cold"), and times `skopeo copy` of BENCH_IMAGE (default
// shell/htop) into an OCI layout: the manifest (or index, then the amd64
// manifest) and every blob. The single server has NIXERY_PLATFORMS unset
// (amd64); the index server has linux/amd64,linux/arm64 and builds both
// platforms for the first pull, in parallel (the arm64 builders of the demo
// set only copy Debian's arm64 files, with extra-platforms = aarch64-linux).
//
// Environment: BENCH_REPS (3), BENCH_IMAGE (shell/htop), BENCH_TIMEOUT_S (600).
// The last line is machine-readable:
//   index_vs_single=<median index pull / median single pull>
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { listeningPort, spawnDemoServer } from './lib.mjs';

const run = promisify(execFile);
const reps = Number(process.env.BENCH_REPS || 3);
const image = process.env.BENCH_IMAGE || 'shell/htop';
const timeoutMs = Number(process.env.BENCH_TIMEOUT_S || 600) * 1000;

const variants = {
  single: {},
  index: { NIXERY_PLATFORMS: 'linux/amd64,linux/arm64' },
};

const times = { single: [], index: [] };
for (let rep = 1; rep <= reps; rep++) {
  // Alternating, so that noise on the machine falls on both alike.
  for (const [name, env] of Object.entries(variants)) {
    const s = await coldPull(env);
    times[name].push(s);
    console.log(`${image} ${name} rep ${rep}: ${s.toFixed(2)} s`);
  }
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
console.log(`single_median_s=${median(times.single).toFixed(2)} index_median_s=${median(times.index).toFixed(2)}`);
console.log(`index_vs_single=${(median(times.index) / median(times.single)).toFixed(3)}`);

/** Seconds for one cold skopeo pull from a fresh server with `extra` in its environment. */
async function coldPull(extra) {
  const dir = await mkdtemp(path.join(tmpdir(), 'nixery-bench-index-'));
  await mkdir(path.join(dir, 'storage'));
  const server = spawnDemoServer({
    STORAGE_PATH: path.join(dir, 'storage'),
    NIX_CONFIG: 'substituters =\nextra-platforms = aarch64-linux',
    NIXERY_IMPORT_ARGS: JSON.stringify({ salt: `bench-${randomUUID()}` }),
    NIX_TIMEOUT: String(Math.ceil(timeoutMs / 1000)),
    ...extra,
  });
  const logs = [];
  try {
    const port = await listeningPort(server, { onLine: (l) => logs.push(l) });
    const t0 = process.hrtime.bigint();
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://127.0.0.1:${port}/${image}:latest`, `oci:${path.join(dir, 'oci')}:latest`], {
      timeout: timeoutMs,
    }).catch((e) => {
      throw new Error(`skopeo copy failed: ${e.stderr ?? e.message}\n${logs.slice(-20).join('\n')}`);
    });
    return Number(process.hrtime.bigint() - t0) / 1e9;
  } finally {
    try {
      process.kill(-server.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    await new Promise((resolve) => {
      if (server.exitCode !== null || server.signalCode !== null) resolve();
      else {
        const t = setTimeout(() => {
          try {
            process.kill(-server.pid, 'SIGKILL');
          } catch {
            // gone
          }
          resolve();
        }, 15_000);
        server.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      }
    });
    await rm(dir, { recursive: true, force: true });
  }
}
