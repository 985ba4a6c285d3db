/**
 * Packs real store paths of the demo package set (nix/demo-pkgs) and checks
 * the result with GNU tar, gzip and chroot. Needs nix-build and nix-store:
 * without them this file fails (it is never skipped).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import pLimit from 'p-limit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { storePathName } from '../../src/layers/graph.js';
import { packLayer, type PackResult } from '../../src/layers/pack.js';
import { pythonGunzip } from '../helpers/clients.js';
import { ParallelPacker, type ParallelPackResult } from '../../src/layers/parallel-pack.js';
import { storePathEntries, storePathSegments, symlinkLayerEntries } from '../../src/layers/walk.js';

const repo = path.resolve(import.meta.dirname, '../..');
const ATTRS = ['htop', 'jq', 'bash', 'coreutils'];

let tmp: string;
let roots: string[];
let closure: string[];

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'nixery-pack-store-'));
  const built = await execa('nix-build', [path.join(repo, 'nix/demo-pkgs'), ...ATTRS.flatMap((a) => ['-A', a]), '--no-out-link']);
  // Image package order: sorted, as image/name.ts hands them over.
  roots = built.stdout.trim().split('\n').sort();
  expect(roots).toHaveLength(ATTRS.length);
  const req = await execa('nix-store', ['-qR', ...roots]);
  closure = req.stdout.trim().split('\n').sort();
});

afterAll(async () => {
  if (tmp === undefined) return;
  // Unpacked store directories are read-only (0555), as in the store.
  await execa('chmod', ['-R', 'u+w', tmp]);
  await rm(tmp, { recursive: true, force: true });
});

async function packToFile(file: string, entries: Parameters<typeof packLayer>[0]): Promise<PackResult> {
  return packLayer(entries, createWriteStream(file));
}

const sha256File = async (file: string): Promise<string> =>
  `sha256:${createHash('sha256').update(await readFile(file)).digest('hex')}`;

describe('packing store paths of the demo package set', () => {
  it('gives byte-identical layers and digests on every run, matching gzip and sha256sum', async () => {
    const a = path.join(tmp, 'closure-a.tar.gz');
    const b = path.join(tmp, 'closure-b.tar.gz');
    const first = await packToFile(a, storePathEntries(closure));
    const second = await packToFile(b, storePathEntries(closure));
    expect(second).toEqual(first);
    await execa('cmp', [a, b]);

    expect(first.digest).toBe(await sha256File(a));
    expect(first.size).toBe((await readFile(a)).length);
    const { stdout } = await execa('sh', ['-c', 'gzip -dc "$1" | sha256sum', 'sh', a]);
    expect(`sha256:${stdout.split(' ')[0]}`).toBe(first.diffId);
  });

  it('is listed by GNU tar with store modes, owner 0/0, mtime 1 and the same names GNU tar would pack', async () => {
    const file = path.join(tmp, 'closure-list.tar.gz');
    await packToFile(file, storePathEntries(closure));
    const { stdout } = await execa('tar', ['--numeric-owner', '--full-time', '-tvzf', file], { maxBuffer: 1 << 28 });
    const lines = stdout.split('\n');

    const parsed = lines.map((line) => {
      const m = /^(\S+) (\d+)\/(\d+)\s+\d+ (\S+ \S+) (.*)$/.exec(line);
      expect(m, line).not.toBeNull();
      const [, mode, uid, gid, time, rest] = m as RegExpExecArray;
      return { mode, owner: `${uid}/${gid}`, time, rest: rest as string };
    });
    expect(new Set(parsed.map((p) => p.owner))).toEqual(new Set(['0/0']));
    expect(new Set(parsed.map((p) => p.time))).toEqual(new Set(['1970-01-01 00:00:01']));
    expect(parsed[0]).toMatchObject({ mode: 'dr-xr-xr-x', rest: 'nix/' });
    expect(parsed[1]).toMatchObject({ mode: 'dr-xr-xr-x', rest: 'nix/store/' });

    const byName = new Map(parsed.map((p) => [p.rest.replace(/ -> .*$/, ''), p]));
    const htop = roots.find((r) => storePathName(r).startsWith('htop-')) as string;
    const bash = roots.find((r) => storePathName(r).startsWith('bash-')) as string;
    expect(byName.get(`${htop.slice(1)}/`)?.mode).toBe('dr-xr-xr-x');
    expect(byName.get(`${htop.slice(1)}/bin/htop`)?.mode).toBe('-r-xr-xr-x');
    expect(byName.get(`${bash.slice(1)}/bin/sh`)).toMatchObject({ mode: 'lrwxrwxrwx', rest: `${bash.slice(1)}/bin/sh -> bash` });

    // Same set of (mode, name, link) as GNU tar's own archive of the same paths.
    const gnu = await execa(
      'sh',
      ['-c', 'tar -c --sort=name --numeric-owner -C / "$@" | tar -tv --numeric-owner', 'sh', ...closure.map((p) => p.slice(1))],
      { maxBuffer: 1 << 28 },
    );
    const key = (line: string): string => {
      const f = line.split(/\s+/);
      return `${f[0]} ${f.slice(5).join(' ')}`;
    };
    const ours = lines.slice(2).map(key).sort();
    const theirs = gnu.stdout.split('\n').map(key).sort();
    expect(ours).toEqual(theirs);
  });

  it('runs htop, jq and bash in a chroot unpacked from per-path layers plus the symlink layer', async () => {
    const limit = pLimit(2);
    const layers = await Promise.all(
      closure.map((p, i) =>
        limit(async () => {
          const file = path.join(tmp, `layer-${i}.tar.gz`);
          return { file, ...(await packToFile(file, storePathEntries([p]))) };
        }),
      ),
    );
    const forest = await symlinkLayerEntries(roots);
    // coreutils has no file that another of these packages also has.
    expect(forest.conflicts).toEqual([]);
    const symlinkFile = path.join(tmp, 'symlinks.tar.gz');
    const symlinkLayer = await packToFile(symlinkFile, forest.entries);
    expect(new Set([...layers.map((l) => l.digest), symlinkLayer.digest]).size).toBe(closure.length + 1);

    const listing = await execa('tar', ['-tvzf', symlinkFile], { maxBuffer: 1 << 26 });
    const coreutils = roots.find((r) => storePathName(r).startsWith('coreutils-')) as string;
    expect(listing.stdout).toMatch(/^drwxrwxrwt .* tmp\/$/m);
    expect(listing.stdout).toContain(`usr/bin/env -> ${coreutils}/bin/env`);

    const rootfs = path.join(tmp, 'rootfs');
    await mkdir(rootfs);
    for (const l of [...layers, { file: symlinkFile }]) await execa('tar', ['-xzf', l.file, '-C', rootfs]);

    // Only PATH inside the chroot, as a container runtime would set it.
    const chroot = (await execa('sh', ['-c', 'command -v chroot'])).stdout;
    const run = (...argv: string[]) => execa(chroot, [rootfs, ...argv], { env: { PATH: '/bin' }, extendEnv: false });
    expect((await run('/bin/htop', '--version')).stdout).toMatch(/^htop \d/);
    expect((await run('/bin/jq', '--version')).stdout).toMatch(/^jq-\d/);
    expect((await run('/bin/bash', '-c', 'echo ok')).stdout).toBe('ok');
    expect((await run('/usr/bin/env', 'bash', '-c', 'echo "$0"')).stdout).toBe('bash');
  });
});

describe('parallel packing of store paths of the demo package set', () => {
  async function parallelToFile(file: string, packer: ParallelPacker, paths: readonly string[]): Promise<ParallelPackResult> {
    return packer.pack(storePathSegments(paths), createWriteStream(file));
  }

  it('gives the same bytes with 1 and 4 threads, the single-stream tar, and layers gzip, Python and GNU tar read', async () => {
    const one = path.join(tmp, 'par-1.tar.gz');
    const four = path.join(tmp, 'par-4.tar.gz');
    const r1 = await parallelToFile(one, new ParallelPacker({ threads: 1, cacheBytes: 0 }), closure);
    const r4 = await parallelToFile(four, new ParallelPacker({ threads: 4, cacheBytes: 0 }), closure);
    await execa('cmp', [one, four]);
    expect(r4.digest).toBe(r1.digest);
    expect(r1.digest).toBe(await sha256File(one));

    // The uncompressed tar is the single-stream packer's, byte for byte.
    const single = await packToFile(path.join(tmp, 'single.tar.gz'), storePathEntries(closure));
    expect(r1.diffId).toBe(single.diffId);
    await execa('gzip', ['-t', one]);
    const { diffId, members } = await pythonGunzip(one);
    expect(diffId).toBe(r1.diffId);
    // At least one member per store path, the prefix and the end of the archive.
    expect(members).toBeGreaterThanOrEqual(closure.length + 2);
    const listing = await execa('tar', ['-tzf', one], { maxBuffer: 1 << 28 });
    expect(listing.stdout.split('\n').slice(0, 2)).toEqual(['nix/', 'nix/store/']);

    // Within 3% of one gzip -6 stream of the same tar.
    const { stdout: gz6 } = await execa('sh', ['-c', 'gzip -dc "$1" | gzip -6 | wc -c', 'sh', one]);
    expect(r1.size / Number(gz6)).toBeLessThan(1.03);
  });

  it('reuses a store path packed for one layer in a differently grouped one, byte-identical to packing it afresh', async () => {
    const [first, ...rest] = closure as [string, ...string[]];
    const packer = new ParallelPacker({ threads: 2, cacheBytes: 256 << 20 });
    await parallelToFile(path.join(tmp, 'group-a.tar.gz'), packer, [first]);
    await parallelToFile(path.join(tmp, 'group-b.tar.gz'), packer, rest);
    const warmFile = path.join(tmp, 'group-all-warm.tar.gz');
    const warm = await parallelToFile(warmFile, packer, closure);
    const coldFile = path.join(tmp, 'group-all-cold.tar.gz');
    const cold = await parallelToFile(coldFile, new ParallelPacker({ threads: 2, cacheBytes: 0 }), closure);
    await execa('cmp', [warmFile, coldFile]);
    expect(warm.cachedBytes).toBeGreaterThan(warm.size * 0.99);
    expect(cold.cachedBytes).toBe(0);
  });
});
