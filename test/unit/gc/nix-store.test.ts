/**
 * src/gc/nix-store.ts without Nix: the threshold syntax, Nix's summary line,
 * store path names, and the roots directory (plain symlinks).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  GcRoots,
  freeSpace,
  minFreeBytes,
  parseGcSummary,
  parseMinFree,
  reapStaleRootDirs,
  toStorePath,
} from '../../../src/gc/nix-store.js';

describe('parseMinFree', () => {
  it('reads bytes with 1024-based units', () => {
    expect(parseMinFree('0')).toEqual({ bytes: 0 });
    expect(parseMinFree('1073741824')).toEqual({ bytes: 1073741824 });
    expect(parseMinFree('4096B')).toEqual({ bytes: 4096 });
    expect(parseMinFree('512k')).toEqual({ bytes: 512 * 1024 });
    expect(parseMinFree('512K')).toEqual({ bytes: 512 * 1024 });
    expect(parseMinFree('300M')).toEqual({ bytes: 300 * 1024 ** 2 });
    expect(parseMinFree('300MiB')).toEqual({ bytes: 300 * 1024 ** 2 });
    expect(parseMinFree('10G')).toEqual({ bytes: 10 * 1024 ** 3 });
    expect(parseMinFree(' 10 g ')).toEqual({ bytes: 10 * 1024 ** 3 });
    expect(parseMinFree('1.5G')).toEqual({ bytes: 1.5 * 1024 ** 3 });
    expect(parseMinFree('2T')).toEqual({ bytes: 2 * 1024 ** 4 });
  });

  it('reads percentages of the filesystem', () => {
    expect(parseMinFree('10%')).toEqual({ percent: 10 });
    expect(parseMinFree('0%')).toEqual({ percent: 0 });
    expect(parseMinFree('2.5 %')).toEqual({ percent: 2.5 });
    expect(parseMinFree('100%')).toEqual({ percent: 100 });
  });

  it.each([
    ['', /empty/],
    ['   ', /empty/],
    ['abc', /not a size/],
    ['-5G', /not a size/],
    ['10X', /not a size/],
    ['1e9', /not a size/],
    ['10 G B', /not a size/],
    ['.5G', /not a size/],
    ['10GB', /write 10G or 10GiB/],
    ['101%', /between 0 and 100/],
    ['-1%', /not a size/],
    ['99999999999T', /too large/],
  ])('refuses %j with a one-line reason', (value, reason) => {
    let err: unknown;
    try {
      parseMinFree(value);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(reason);
    expect((err as Error).message).not.toContain('\n');
  });

  it('turns a threshold into bytes for a filesystem', () => {
    expect(minFreeBytes({ bytes: 123 }, 1000)).toBe(123);
    expect(minFreeBytes({ percent: 10 }, 1000)).toBe(100);
    expect(minFreeBytes({ percent: 10 }, 1001)).toBe(101);
    expect(minFreeBytes({ percent: 0 }, 1000)).toBe(0);
  });
});

describe('parseGcSummary', () => {
  it('reads the line nix-store --gc prints on stdout', () => {
    expect(parseGcSummary('3 store paths deleted, 12.34 MiB freed\n')).toEqual({ pathsDeleted: 3, freedBytes: Math.round(12.34 * 1024 ** 2) });
    expect(parseGcSummary('0 store paths deleted, 0.00 MiB freed\n')).toEqual({ pathsDeleted: 0, freedBytes: 0 });
    // Later Nix versions pick the unit.
    expect(parseGcSummary('1 store paths deleted, 1.5 GiB freed')).toEqual({ pathsDeleted: 1, freedBytes: 1.5 * 1024 ** 3 });
    expect(parseGcSummary('')).toBeUndefined();
  });
});

describe('toStorePath', () => {
  const h = '0123456789abcdfghijklmnpqrsvwxyz';
  it('gives the top-level store path of a path in the store', () => {
    expect(toStorePath(`/nix/store/${h}-hello-2.12`)).toBe(`/nix/store/${h}-hello-2.12`);
    expect(toStorePath(`/nix/store/${h}-hello-2.12/bin/hello`)).toBe(`/nix/store/${h}-hello-2.12`);
    expect(toStorePath(`/nix/store/${h}-x.drv`)).toBe(`/nix/store/${h}-x.drv`);
    expect(toStorePath(`/tmp/s/${h}-src`, '/tmp/s')).toBe(`/tmp/s/${h}-src`);
  });
  it('refuses what is not a store path', () => {
    expect(toStorePath('/work/main/nix/demo-pkgs')).toBeUndefined();
    expect(toStorePath('/nix/store')).toBeUndefined();
    expect(toStorePath('/nix/store/.links/abc')).toBeUndefined();
    expect(toStorePath('/nix/store/tooshort-x')).toBeUndefined();
    expect(toStorePath(`/nix/store/${h.replace('a', 'e')}-x`)).toBeUndefined(); // 'e' is not Nix base32
    expect(toStorePath(`/nix/store-other/${h}-x`)).toBeUndefined();
  });
});

describe('freeSpace', () => {
  it('reports the filesystem like df', async () => {
    const s = await freeSpace('/');
    expect(s.totalBytes).toBeGreaterThan(0);
    expect(s.freeBytes).toBeGreaterThanOrEqual(0);
    expect(s.freeBytes).toBeLessThanOrEqual(s.totalBytes);
    const df = execFileSync('df', ['-B1', '--output=avail,size', '/'], { encoding: 'utf8' }).trim().split('\n')[1]!.trim().split(/\s+/).map(Number);
    expect(Math.abs(s.freeBytes - df[0]!)).toBeLessThan(512 * 1024 ** 2); // others write meanwhile
    expect(s.totalBytes).toBe(df[1]);
  });
});

describe('GcRoots directory', () => {
  const dirs: string[] = [];
  const scratch = async () => {
    const d = await mkdtemp(path.join(tmpdir(), 'nixery-gcroots-'));
    dirs.push(d);
    return d;
  };
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const h1 = `/nix/store/${'a'.repeat(32)}-one`;
  const h2 = `/nix/store/${'b'.repeat(32)}-two.drv`;

  /** A PID that was just used and is gone. */
  const deadPid = () => spawnSync('true').pid!;

  it('holds store paths as symlinks, one directory per hold, and releases them', async () => {
    const parent = await scratch();
    const roots = await GcRoots.open({ parentDir: parent });
    expect(path.dirname(roots.dir)).toBe(parent);
    expect(path.basename(roots.dir)).toMatch(new RegExp(`^${process.pid}-[0-9a-f]+$`));
    // Outputs that are not built yet can be held; subpaths hold their store path.
    const release = await roots.hold([h1, `${h1}/bin/x`, h2], 'build hello/jq');
    const [sub] = (await readdir(roots.dir)).filter((n) => n !== 'owner.json');
    expect(sub).toMatch(/^1-build_hello_jq$/);
    const links = (await readdir(path.join(roots.dir, sub!))).sort();
    expect(links).toEqual([path.basename(h1), path.basename(h2)]);
    expect(await readlink(path.join(roots.dir, sub!, path.basename(h1)))).toBe(h1);
    expect(await roots.rooted()).toEqual([h1, h2]);
    const release2 = await roots.hold([h1], 'another');
    expect(roots.holds).toBe(2);
    await release();
    await release(); // idempotent
    expect(await roots.rooted()).toEqual([h1]);
    expect(roots.holds).toBe(1);
    await release2();
    await expect(roots.hold(['/etc/passwd'], 'x')).rejects.toThrow(/not in the Nix store/);
    await roots.close();
    await expect(readdir(roots.dir)).rejects.toThrow(/ENOENT/);
    await expect(roots.hold([h1], 'late')).rejects.toThrow(/closed/);
  });

  it('removes the directories of dead servers at open, and only those', async () => {
    const parent = await scratch();
    const dead = path.join(parent, `${deadPid()}-abc123`);
    const deadNoOwner = path.join(parent, `${deadPid()}-def456`);
    const reused = path.join(parent, `${process.ppid}-0a0b0c`); // a live PID, but another process started with it
    const alive = path.join(parent, `${process.ppid}-123abc`);
    const other = path.join(parent, 'not-ours');
    for (const d of [dead, deadNoOwner, reused, alive, other]) {
      await mkdir(d);
      await symlink(h1, path.join(d, path.basename(h1)));
    }
    await writeFile(path.join(dead, 'owner.json'), JSON.stringify({ pid: Number(path.basename(dead).split('-')[0]) }));
    await writeFile(path.join(reused, 'owner.json'), JSON.stringify({ pid: process.ppid, start: '1' }));
    const roots = await GcRoots.open({ parentDir: parent });
    const left = (await readdir(parent)).sort();
    expect(left).toEqual([path.basename(alive), path.basename(roots.dir), 'not-ours'].sort());
    // A second server's open leaves the first one's directory alone.
    const roots2 = await GcRoots.open({ parentDir: parent });
    expect(await readdir(parent)).toContain(path.basename(roots.dir));
    expect(await reapStaleRootDirs(parent)).toEqual([]);
    await roots2.close();
    roots.closeSync();
    expect((await readdir(parent)).sort()).toEqual([path.basename(alive), 'not-ours'].sort());
  });
});
