/**
 * NIXERY_NIX_GC_MIN_FREE in a running server: its passes collect the Nix
 * store while a slow build runs, and the build still succeeds and pulls.
 *
 * The server runs in a mount namespace of its own with a private, empty
 * directory bound on /nix (`unshare --mount`, as root): the same paths,
 * roots directory and Nix binaries as in production, but a store that
 * nothing else uses. A collection in the shared /nix/store would delete
 * paths other test files are building and reading at the same moment (see
 * nix-store-gc.test.ts). The test reads the private store from outside
 * through the bound directory.
 *
 * The package set is a git repository (its fetched checkout is a `-source`
 * path in the store), and NIXERY_NIX_GC_MIN_FREE=100% makes every pass
 * collect everything that is not rooted.
 */
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, sh, skopeoPull, unpack } from '../helpers/clients.js';
import { demoRepo, freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { until } from '../helpers/wait.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
// Unique among the test files, whose `ps` checks look for `-lt <slowSeconds>`.
const SLOW_SECONDS = 11;

let base: string;
let server: RunningServer | undefined;

beforeAll(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nixery-nixgc-server-'));
  await chmod(base, 0o755);
  await mkdir(`${base}/nix`);
  await mkdir('/nix', { recursive: true });
});
afterAll(async () => {
  await server?.stop();
  if (base) await rm(base, { recursive: true, force: true });
});

type GcStats = { gc: { passes: number; nixBytesFreed: number; failures: number } };
const gcStats = async () => ((await server!.stats()) as unknown as GcStats).gc;

/** Names of the entries in the private store (`<hash>-<name>`). */
const storeEntries = async () => new Set(await readdir(`${base}/nix/store`).catch(() => [] as string[]));

/** The store paths an OCI layout's layers hold (`<hash>-<name>`, from `nix/store/<hash>-<name>/...` entries). */
async function pathsInImage(layout: string): Promise<Set<string>> {
  const index = JSON.parse((await sh('cat', [`${layout}/index.json`])).stdout) as { manifests: { digest: string }[] };
  const blob = (d: string) => `${layout}/blobs/sha256/${d.slice('sha256:'.length)}`;
  const manifest = JSON.parse((await sh('cat', [blob(index.manifests[0]!.digest)])).stdout) as { layers: { digest: string }[] };
  const out = new Set<string>();
  for (const l of manifest.layers) {
    for (const entry of (await sh('tar', ['-tzf', blob(l.digest)])).stdout.split('\n')) {
      const m = /^nix\/store\/([^/]+)/.exec(entry);
      if (m) out.add(m[1]!);
    }
  }
  return out;
}

describe('Nix store collection in a running server', () => {
  it('collects the store while a slow build runs: the build succeeds and pulls, packed images keep nothing in the store, the package set source stays', async () => {
    // Root may make mount namespaces here; say so plainly if a machine forbids it.
    const probe = spawnSync('unshare', ['--mount', '--propagation', 'private', 'true']);
    expect(probe.status, `unshare --mount is needed: ${probe.stderr?.toString()}`).toBe(0);

    const repo = await demoRepo(`${base}/repo`);
    server = await startServer({
      wrap: ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$0" /nix && exec "$@"', `${base}/nix`],
      env: {
        NIXERY_PKGS_PATH: '',
        NIXERY_PKGS_REPO: repo.url,
        NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds: SLOW_SECONDS }),
        XDG_CACHE_HOME: `${base}/cache`,
        // No build users: the shared store's Nix hands out the same nixbld
        // users, and the end of a build kills every process of its user.
        NIX_CONFIG: 'substituters =\nbuild-users-group =',
        NIXERY_GC_INTERVAL: '1s',
        NIXERY_GC_GRACE: '0',
        NIXERY_NIX_GC_MIN_FREE: '100%',
      },
    });

    // hello is built and packed; from then on nothing roots its paths.
    await skopeoPull(`${server.host}/hello`, `${base}/hello-1`);
    const helloPaths = await pathsInImage(`${base}/hello-1`);
    expect([...helloPaths].some((p) => /^[a-z0-9]{32}-hello-/.test(p))).toBe(true);
    const sources = [...(await storeEntries())].filter((p) => p.endsWith('-source'));
    expect(sources).toHaveLength(1);
    const source = sources[0]!;

    // The slow build starts; passes (each collecting everything unrooted) run during it.
    const passesAtStart = (await gcStats()).passes;
    let done = false;
    const slow = fetch(`${server.url}/v2/slow-chatty-build/manifests/latest`, { headers: { Accept: OCI } }).finally(() => (done = true));
    await until(
      'three passes during the slow build',
      async () => (await gcStats()).passes >= passesAtStart + 3,
      (SLOW_SECONDS + 20) * 1000,
    );
    expect(done, 'the slow build was still running while the passes collected').toBe(false);
    const during = await gcStats();
    expect(during.nixBytesFreed).toBeGreaterThan(0);
    expect(during.failures).toBe(0);
    const midway = await storeEntries();
    expect(midway.has(source)).toBe(true);

    const res = await slow;
    expect(res.status, await res.clone().text()).toBe(200);
    await skopeoPull(`${server.host}/slow-chatty-build`, `${base}/slow`);
    const slowPaths = await pathsInImage(`${base}/slow`);
    expect([...slowPaths].some((p) => p.endsWith('-slow-chatty-build-1.0'))).toBe(true);
    // Midway, hello's paths were gone but for those the slow build needs too
    // (cacert, iana-etc: rooted once its evaluation holds them, or built
    // again if a collection came first).
    expect([...helloPaths].filter((p) => midway.has(p) && !slowPaths.has(p))).toEqual([]);
    expect([...helloPaths].filter((p) => !slowPaths.has(p)).length).toBeGreaterThan(0);

    // After the next collection the store holds nothing of either image, and
    // still the source (the same path: never fetched again).
    const passesAfter = (await gcStats()).passes;
    await until('two more passes', async () => (await gcStats()).passes >= passesAfter + 2, 30_000);
    const after = await storeEntries();
    expect([...helloPaths, ...slowPaths].filter((p) => after.has(p))).toEqual([]);
    expect([...after].filter((p) => p.endsWith('-source'))).toEqual([source]);
    expect(server.logs.filter((l) => l.includes('Nix store garbage collection failed'))).toEqual([]);

    // Packed images need nothing from the store: hello still pulls and runs.
    const builds = (await server.stats()).builds;
    await skopeoPull(`${server.host}/hello`, `${base}/hello-2`);
    expect(await inChroot(await unpack(`${base}/hello-2`, `${base}/hello-bundle`), ['hello'])).toMatch(/Hello/);
    expect((await server.stats()).builds).toBe(builds);
  });
});
