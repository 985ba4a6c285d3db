/**
 * Many clients at once, and a server killed in the middle of a build.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { skopeoPull } from '../helpers/clients.js';
import { demoSource, freshSalt, makeRunner, processesMatching } from '../helpers/nix.js';
import { demoServerEnv, runUntilExit, scratchDir, startServer, type RunningServer } from '../helpers/server.js';
import { until } from '../helpers/wait.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const servers: RunningServer[] = [];
const dirs: { remove: () => Promise<void> }[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
  for (const d of dirs) await d.remove();
});

async function start(env: Record<string, string>, storagePath?: string): Promise<RunningServer> {
  const s = await startServer({ env, ...(storagePath ? { storagePath } : {}) });
  servers.push(s);
  return s;
}

describe('concurrent cold pulls', () => {
  it('20 skopeo pulls of a new image run one Nix build and all succeed; a repeat runs no Nix process', async () => {
    // A fresh salt gives every package new store paths: really cold.
    const server = await start({ NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) });
    const scratch = await scratchDir('nixery-conc-');
    dirs.push(scratch);
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => skopeoPull(`${server.host}/shell/htop`, `${scratch.path}/p${i}`)),
    );
    const stats = await server.stats();
    expect(stats.builds).toBe(1);
    expect(stats.nix.evaluations).toBe(1);
    expect(stats.nix.realisations).toBe(1);
    expect(stats.buildFailures).toBe(0);
    expect(stats.singleFlightWaiters).toBeGreaterThan(0);

    await skopeoPull(`${server.host}/shell/htop`, `${scratch.path}/again`);
    const head = await fetch(`${server.url}/v2/shell/htop/manifests/latest`, { method: 'HEAD', headers: { Accept: OCI } });
    expect(head.status).toBe(200);
    const after = await server.stats();
    expect(after.nix).toEqual({ ...stats.nix, running: 0 });
    expect(after.builds).toBe(1);
    expect(after.manifestCacheHits).toBeGreaterThan(stats.manifestCacheHits);
  });
});

describe('crash in the middle of a build', () => {
  it('after SIGKILL and a restart on the same storage, the pull succeeds and every blob matches its digest', async () => {
    const salt = freshSalt();
    const env = { NIXERY_IMPORT_ARGS: JSON.stringify({ salt, largeBlobMiB: 48 }) };
    const storage = await scratchDir('nixery-crash-');
    dirs.push(storage);
    const first = await start(env, storage.path);
    const pending = fetch(`${first.url}/v2/shell/htop/large-blob/manifests/latest`).catch(() => undefined);
    await until('the build to reach Nix', async () => (await first.stats()).nix.realisations > 0);
    first.process.kill('SIGKILL');
    await pending;
    // nix-store runs in its own process group and finishes its builds on its own;
    // wait (bounded) for those orphans so that nothing outlives the test.
    const drvs = (await makeRunner({ importArgs: { salt, largeBlobMiB: 48 } }).resolve(demoSource, ['htop'], 'x86_64-linux')).map((p) => p.drv);
    await until('orphaned Nix processes to finish', async () => (await processesMatching(drvs[0]!.slice(11, 43))).length === 0, 120_000);

    const second = await start(env, storage.path);
    const res = await fetch(`${second.url}/v2/shell/htop/large-blob/manifests/latest`, { headers: { Accept: OCI } });
    expect(res.status).toBe(200);
    const manifest = await res.json() as { config: { digest: string }; layers: { digest: string; size: number }[] };
    for (const blob of [manifest.config, ...manifest.layers]) {
      const b = Buffer.from(await (await fetch(`${second.url}/v2/shell/htop/large-blob/blobs/${blob.digest}`)).arrayBuffer());
      expect(`sha256:${createHash('sha256').update(b).digest('hex')}`).toBe(blob.digest);
    }
    const scratch = await scratchDir('nixery-crash-pull-');
    dirs.push(scratch);
    await skopeoPull(`${second.host}/shell/htop/large-blob`, `${scratch.path}/img`);
  });
});

describe('graceful shutdown', () => {
  it('on SIGTERM mid-build: the client gets a registry error, the server exits 0 and no Nix process is left', async () => {
    const slowSeconds = 277;
    const server = await start({
      NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds }),
      NIXERY_SHUTDOWN_GRACE_SECONDS: '1',
    });
    const pending = fetch(`${server.url}/v2/slow-chatty-build/manifests/latest`).then(
      async (r) => ({ status: r.status, body: await r.text() }),
      () => ({ status: 0, body: 'connection closed' }),
    );
    await until('the slow build to run', async () => (await processesMatching(`-lt ${slowSeconds}`)).length > 0);
    const code = await server.stop();
    expect(code).toBe(0);
    const answer = await pending;
    expect(answer.status).toBe(503);
    expect(JSON.parse(answer.body).errors[0].code).toBe('UNAVAILABLE');
    expect(await processesMatching(`-lt ${slowSeconds}`)).toEqual([]);
  });
});

describe('start-up with a bad configuration', () => {
  it('stops with one line per problem, naming each variable (a storage directory without user xattrs among them)', async () => {
    const dir = await scratchDir('nixery-ramfs-');
    dirs.push(dir);
    execFileSync('mount', ['-t', 'ramfs', 'ramfs', dir.path]);
    try {
      const { code, stderr } = await runUntilExit({ NIXERY_PKGS_PATH: '/work/x', NIXERY_CHANNEL: 'c', NIX_TIMEOUT: 'abc', STORAGE_PATH: dir.path });
      expect(code).toBe(2);
      expect(stderr.trim().split('\n')).toEqual([
        'nixery-ts: configuration error: NIXERY_CHANNEL: only one package source may be set, but NIXERY_CHANNEL and NIXERY_PKGS_PATH are set',
        'nixery-ts: configuration error: NIX_TIMEOUT: "abc" is not a whole number',
        `nixery-ts: configuration error: STORAGE_PATH: the filesystem of ${dir.path} does not support user extended attributes (Operation not supported (os error 95)); use ext4, xfs, btrfs or tmpfs`,
        'nixery-ts: configuration error: NIXERY_PKGS_PATH: /work/x does not exist',
      ]);
    } finally {
      execFileSync('umount', [dir.path]);
    }
  });
});

describe('start-up with a bad log level', () => {
  it('NIXERY_LOG_LEVEL=verbose stops start-up with one line naming the variable, exit code 2', async () => {
    const storage = await scratchDir('nixery-loglevel-');
    dirs.push(storage);
    const { code, stderr } = await runUntilExit({ ...demoServerEnv(storage.path), NIXERY_LOG_LEVEL: 'verbose' });
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toEqual([
      'nixery-ts: configuration error: NIXERY_LOG_LEVEL: "verbose" is not a log level (use fatal, error, warn, info, debug, trace or silent)',
    ]);
  });
});

describe('an unreachable git repository', () => {
  it('answers 503 UNAVAILABLE naming the repository (without its credentials), not "storage unavailable"', async () => {
    const server = await start({ NIXERY_PKGS_PATH: '', NIXERY_PKGS_REPO: 'http://user:s3cret@127.0.0.1:1/pkgs.git' });
    const res = await fetch(`${server.url}/v2/hello/manifests/latest`);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBeTruthy();
    const e = ((await res.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.message).toContain('http://127.0.0.1:1/pkgs.git');
    expect(e.message).not.toContain('storage');
    expect(JSON.stringify(e)).not.toContain('s3cret');
    expect(server.logs.join('\n')).not.toContain('s3cret');
  });
});

describe('layer budget', () => {
  it('keeps images within NIXERY_LAYER_BUDGET, and a changed budget regroups instead of serving old records', async () => {
    const storage = await scratchDir('nixery-budget-');
    dirs.push(storage);
    const layersOf = async (s: RunningServer) =>
      ((await (await fetch(`${s.url}/v2/shell/htop/manifests/latest`, { headers: { Accept: OCI } })).json()) as { layers: unknown[] }).layers.length;
    const wide = await start({}, storage.path);
    const many = await layersOf(wide);
    expect(many).toBeGreaterThan(3);
    await wide.stop();

    const narrow = await start({ NIXERY_LAYER_BUDGET: '3' }, storage.path);
    expect(await layersOf(narrow)).toBe(3); // two store-path layers and the symlink layer
    expect((await narrow.stats()).builds).toBe(1);
    await narrow.stop();

    const again = await start({ NIXERY_LAYER_BUDGET: '3' }, storage.path);
    expect(await layersOf(again)).toBe(3);
    expect((await again.stats()).builds).toBe(0);
  });
});
