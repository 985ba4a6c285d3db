/**
 * `nixery-ts build` as a user runs it: `node dist/launch.cjs build ...` with
 * real Nix and the demo package set, the archive checked with skopeo, umoci
 * and chroot, its digests against a server's, the cache's reuse from the
 * `--json` summary, bad input, SIGINT mid-build, and the output on a pipe
 * and on a terminal (script(1) gives a pseudo-terminal). docker load and
 * podman load are in cli-build-engines.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, sh, unpack } from '../helpers/clients.js';
import { DEMO_PKGS, ROOT, freshSalt } from '../helpers/nix.js';
import { scratchDir, startServer } from '../helpers/server.js';

/** The server's and the command's Nix settings: the demo set offline, arm64 built from its Debian binaries. */
const NIX_CONFIG = 'substituters =\nextra-platforms = aarch64-linux';
const BASE_ENV = { NIXERY_PKGS_PATH: DEMO_PKGS, NIXERY_OFFLINE: 'true', NIX_CONFIG };

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function start(args: readonly string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/launch.cjs'), ...args], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: work.path, ...BASE_ENV, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: work.path,
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Run>((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

/** `nixery-ts build ARGS`, to its end. */
function cli(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return start(['build', ...args], env).done;
}

interface Summary {
  image: string;
  tag: string;
  references: string[];
  platform: string;
  manifestDigest: string;
  dockerManifestDigest: string;
  configDigest: string;
  layers: { digest: string; size: number; reused: boolean }[];
  totalBytes: number;
  cached: boolean;
  output: string;
  format: string;
}

async function buildJson(args: readonly string[], env: Record<string, string> = {}): Promise<Summary> {
  const r = await cli([...args, '--json'], env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Summary;
}

let work: Awaited<ReturnType<typeof scratchDir>>;
/** One cache for the tests that share layers (each test that needs a cold one makes its own). */
let cache: string;
beforeAll(async () => {
  work = await scratchDir('nixery-cli-');
  cache = path.join(work.path, 'cache');
});
afterAll(async () => {
  await work?.remove();
});

/** What is left in a directory besides `keep`: temporary outputs would show here. */
async function leftovers(dir: string, keep: readonly string[]): Promise<string[]> {
  return (await readdir(dir)).filter((f) => !keep.includes(f));
}

describe('nixery-ts build', () => {
  it('writes shell/htop as an OCI archive that skopeo copies and umoci unpacks, and htop runs; the same as a directory; one log line per step on a pipe', async () => {
    const out = path.join(work.path, 'oci');
    const r = await cli(['shell/htop', '--format', 'oci-archive', '-o', 'oci.tar', '--cache-dir', cache]);
    expect(r.code, r.stderr).toBe(0);
    // Not a terminal: plain lines, one per step, in order, then the summary on stdout.
    const lines = r.stderr.trim().split('\n').map((l) => l.replace(/^\[\s*[\d.]+s\] /, ''));
    expect(lines.map((l) => l.split(' ')[0])).toEqual(['resolving', 'building', 'planning', 'packing', 'writing']);
    expect(lines[0]).toBe('resolving shell/htop:latest for linux/amd64');
    expect(lines[3]).toMatch(/^packing \d+ layers$/);
    expect(r.stderr).not.toContain('\u001B[');
    expect(r.stdout).toMatch(/^wrote .*oci\.tar \(oci-archive\): localhost\/shell\/htop:latest linux\/amd64, \d+ layers/);

    await sh('skopeo', ['copy', `oci-archive:${path.join(work.path, 'oci.tar')}`, `oci:${out}:latest`]);
    const rootfs = await unpack(out, path.join(work.path, 'bundle'));
    expect(await inChroot(rootfs, ['htop', '--version'])).toMatch(/^htop \d/);
    expect(await inChroot(rootfs, ['bash', '-c', 'echo ok'])).toBe('ok\n');

    // --format oci: the layout itself, which umoci reads directly; the same manifest.
    const dir = await buildJson(['shell/htop', '--format', 'oci', '-o', 'layout', '--cache-dir', cache, '-q']);
    expect(dir.cached).toBe(true);
    const index = JSON.parse(await readFile(path.join(work.path, 'layout/index.json'), 'utf8')) as { manifests: { digest: string; annotations: Record<string, string> }[] };
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0]!.digest).toBe(dir.manifestDigest);
    expect(index.manifests[0]!.annotations).toEqual({ 'org.opencontainers.image.ref.name': 'latest', 'io.containerd.image.name': 'localhost/shell/htop:latest' });
    const rootfs2 = await unpack(path.join(work.path, 'layout'), path.join(work.path, 'bundle2'));
    expect(await inChroot(rootfs2, ['htop', '--version'])).toMatch(/^htop \d/);
    // No temporary names left beside the outputs.
    expect((await readdir(work.path)).filter((f) => f.startsWith('.'))).toEqual([]);
  });

  it('gives the manifest a server with the same settings serves for the name, in both flavours, for amd64 and a pinned arm64', async () => {
    const amd = await buildJson(['shell/htop', '-o', 'htop.tar', '--cache-dir', cache]);
    const arm = await buildJson(['hello', '--platform', 'linux/arm64', '-o', 'hello-arm.tar', '--cache-dir', cache]);
    expect(arm.platform).toBe('linux/arm64');
    const server = await startServer({ env: { NIX_CONFIG } });
    try {
      const digest = async (name: string, accept: string) => {
        const res = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: accept } });
        expect(res.status).toBe(200);
        return res.headers.get('docker-content-digest');
      };
      expect(await digest('shell/htop', 'application/vnd.oci.image.manifest.v1+json')).toBe(amd.manifestDigest);
      expect(await digest('shell/htop', 'application/vnd.docker.distribution.manifest.v2+json')).toBe(amd.dockerManifestDigest);
      // --platform linux/arm64 is the arm64/ prefix: the same image.
      expect(await digest('arm64/hello', 'application/vnd.oci.image.manifest.v1+json')).toBe(arm.manifestDigest);
    } finally {
      await server.stop();
    }
    // The archive holds exactly the manifest's config and layers.
    const manifest = JSON.parse((await sh('tar', ['-xOf', path.join(work.path, 'htop.tar'), 'manifest.json'])).stdout) as { Config: string; RepoTags: string[]; Layers: string[] }[];
    expect(manifest).toEqual([
      { Config: `blobs/sha256/${amd.configDigest.slice(7)}`, RepoTags: ['localhost/shell/htop:latest'], Layers: amd.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`) },
    ]);
    const config = JSON.parse((await sh('tar', ['-xOf', path.join(work.path, 'hello-arm.tar'), `blobs/sha256/${arm.configDigest.slice(7)}`])).stdout) as { architecture: string };
    expect(config.architecture).toBe('arm64');
  });

  it('a build of shell/jq after shell/htop in the same cache packs only the layers that differ', async () => {
    const own = path.join(work.path, 'cache-reuse');
    const htop = await buildJson(['shell/htop', '-o', 'a.tar', '--cache-dir', own]);
    expect(htop.layers.every((l) => !l.reused)).toBe(true);
    expect(htop.cached).toBe(false);
    const jq = await buildJson(['shell/jq', '-o', 'b.tar', '--cache-dir', own]);
    const htopLayers = new Set(htop.layers.map((l) => l.digest));
    const shared = jq.layers.filter((l) => htopLayers.has(l.digest));
    const own_ = jq.layers.filter((l) => !htopLayers.has(l.digest));
    expect(shared.length).toBeGreaterThan(0);
    expect(own_.length).toBeGreaterThan(0);
    expect(shared.every((l) => l.reused)).toBe(true);
    expect(own_.every((l) => !l.reused)).toBe(true);
    expect(jq.totalBytes).toBe(jq.layers.reduce((n, l) => n + l.size, 0));
    // The same image again: straight from the cache, every layer reused.
    const again = await buildJson(['shell/jq', '-o', 'c.tar', '--cache-dir', own]);
    expect(again.cached).toBe(true);
    expect(again.manifestDigest).toBe(jq.manifestDigest);
    expect(again.layers.every((l) => l.reused)).toBe(true);
    // Byte for byte the same archive (compared as buffers: a deep equality of 7 MB takes a minute).
    expect((await readFile(path.join(work.path, 'c.tar'))).equals(await readFile(path.join(work.path, 'b.tar')))).toBe(true);

    // A layer lost from the cache (a cleanup tool): the image is built again, the archive complete.
    const lost = jq.layers.find((l) => !htopLayers.has(l.digest))!;
    await rm(path.join(own, 'blobs/sha256', lost.digest.slice(7)));
    const r = await cli(['shell/jq', '-o', 'd.tar', '--cache-dir', own, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`blob ${lost.digest} is missing from the cache; building the image again`);
    const rebuilt = JSON.parse(r.stdout) as Summary;
    expect(rebuilt.manifestDigest).toBe(jq.manifestDigest);
    expect(rebuilt.layers.find((l) => l.digest === lost.digest)!.reused).toBe(false);
    expect((await readFile(path.join(work.path, 'd.tar'))).equals(await readFile(path.join(work.path, 'b.tar')))).toBe(true);
  });

  it('an unknown package: exit 1 naming every missing one, no file written', async () => {
    const dir = path.join(work.path, 'bad');
    await sh('mkdir', ['-p', dir]);
    const r = await cli(['nosuchpkg/htop/alsomissing', '-o', path.join(dir, 'x.tar'), '--cache-dir', cache]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^nixery-ts build: packages not found: alsomissing, nosuchpkg$/m);
    expect(r.stdout).toBe('');
    expect(await leftovers(dir, [])).toEqual([]);
  });

  it('an output that cannot be written is reported before any work (exit 1), bad usage and configuration exit 2', async () => {
    const cold = path.join(work.path, 'cache-never');
    const missingDir = await cli(['hello', '-o', path.join(work.path, 'no/such/dir/x.tar'), '--cache-dir', cold]);
    expect(missingDir.code).toBe(1);
    expect(missingDir.stderr).toBe(`nixery-ts build: cannot write ${path.join(work.path, 'no/such/dir/x.tar')}: directory ${path.join(work.path, 'no/such/dir')} does not exist\n`);
    // Nothing was started: the cache never got its layout.
    expect(existsSync(path.join(cold, 'records'))).toBe(false);
    await sh('mkdir', ['-p', path.join(work.path, 'locked')]);
    await sh('chattr', ['+i', path.join(work.path, 'locked')]);
    try {
      const locked = await cli(['hello', '-o', 'locked/x.tar', '--cache-dir', cold]);
      expect(locked.code).toBe(1);
      expect(locked.stderr).toBe('nixery-ts build: cannot write locked/x.tar: permission denied\n');
    } finally {
      await sh('chattr', ['-i', path.join(work.path, 'locked')]);
    }
    expect(existsSync(path.join(cold, 'records'))).toBe(false);

    const usage = await cli(['hello']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--output is required/);
    expect((await cli(['Hello', '-o', 'x.tar'])).code).toBe(2);
    expect((await cli(['hello', '-o', 'x.tar', '--format', 'zip'])).stderr).toMatch(/--format "zip" is not a format/);
    expect((await cli(['arm64/hello', '--platform', 'linux/amd64', '-o', 'x.tar'])).code).toBe(2);
    const config = await cli(['hello', '-o', 'x.tar', '--cache-dir', cold], { NIXERY_PKGS_PATH: '', NIXERY_LAYER_BUDGET: '1' });
    expect(config.code).toBe(2);
    expect(config.stderr).toMatch(/configuration error: NIXERY_CHANNEL: no package source/);
    expect(config.stderr).toMatch(/configuration error: NIXERY_LAYER_BUDGET: /);
    // The server's own variables do not concern a build.
    const serverOnly = await cli(['hello', '-o', 'x.tar', '--cache-dir', cache, '-q'], { PORT: 'x', NIXERY_STORAGE_BACKEND: 'gcs', GCS_BUCKET: 'b' });
    expect(serverOnly.code, serverOnly.stderr).toBe(0);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: nixery-ts build NAME\[:TAG\] -o OUTPUT/);
    const top = await start(['--help']).done;
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/nixery-ts build NAME\[:TAG\] -o FILE/);
    expect((await start(['frobnicate']).done).code).toBe(2);
  });

  it('SIGINT during a slow build stops its Nix processes, removes the temporary output and staging files, exits 130', async () => {
    const salt = freshSalt();
    const dir = path.join(work.path, 'slow');
    const slowCache = path.join(work.path, 'cache-slow');
    await sh('mkdir', ['-p', dir]);
    const { child, done } = start(['build', 'slow-build', '-o', path.join(dir, 'slow.tar'), '--cache-dir', slowCache], {
      NIXERY_IMPORT_ARGS: JSON.stringify({ salt, slowSeconds: 30 }),
    });
    // Until the builder sleeps: a process (not the command) carrying the salt, and the .drv Nix realises.
    let drv: string | undefined;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const procs = await processesWith(salt);
      const builder = procs.find((p) => p.pid !== child.pid && p.cmdline.includes('sleep'));
      drv ??= procs.map((p) => /\/nix\/store\/[a-z0-9]{32}-slow-build-1\.0\.drv/.exec(p.cmdline)?.[0]).find((d) => d !== undefined);
      if (builder && drv) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the slow build did not start: ${JSON.stringify(procs)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await leftovers(dir, [])).toHaveLength(1); // the temporary output
    child.kill('SIGINT');
    const r = await done;
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(/interrupted \(SIGINT\); nothing written/);
    expect(await processesWith(salt)).toEqual([]);
    expect(await processesWith(drv)).toEqual([]);
    expect(await leftovers(dir, [])).toEqual([]);
    expect(await readdir(path.join(slowCache, 'staging'))).toEqual([]);
  });

  it('on a terminal: a live display of the steps that ends with the summary line', async () => {
    const cmd = [process.execPath, path.join(ROOT, 'dist/launch.cjs'), 'build', 'shell/jq', '-o', path.join(work.path, 'tty.tar'), '--cache-dir', path.join(work.path, 'cache-tty')]
      .map((a) => `'${a}'`)
      .join(' ');
    const { stdout } = await sh('script', ['-qfec', cmd, '/dev/null'], {
      env: { ...BASE_ENV, HOME: work.path, TERM: 'xterm-256color' },
    }).catch((e: { stdout?: string; stderr?: string }) => {
      throw new Error(`script failed: ${e.stdout ?? ''}${e.stderr ?? ''}`);
    });
    expect(stdout).toContain('\u001B['); // drawn in place
    // eslint-disable-next-line no-control-regex
    const plain = stdout.replace(/\u001B\[[0-9;?]*[A-Za-z]/g, '').replace(/\r/g, '');
    const lines = plain.split('\n').map((l) => l.trimEnd()).filter((l) => l !== '');
    expect(lines.at(-1)).toMatch(/^wrote .*tty\.tar \(docker-archive\): localhost\/shell\/jq:latest linux\/amd64, \d+ layers \(0 reused\), [\d.]+ [kMG]?B, manifest sha256:[0-9a-f]{64}$/);
    // The last frame stays: every step done.
    for (const row of ['resolve', 'build', 'plan', 'pack', 'write']) expect(plain).toMatch(new RegExp(`✔ ${row} `));
    expect(plain).toMatch(/pack\s+layer \d+ of \d+/);
  });
});

/** Processes whose command line or environment mentions `needle`. */
async function processesWith(needle: string): Promise<{ pid: number; cmdline: string }[]> {
  const found: { pid: number; cmdline: string }[] = [];
  for (const ent of await readdir('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    const pid = Number(ent);
    if (pid === process.pid) continue;
    try {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`)).toString().replace(/\0/g, ' ');
      const environ = (await readFile(`/proc/${pid}/environ`)).toString();
      if (cmdline.includes(needle) || environ.includes(needle)) found.push({ pid, cmdline });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}
