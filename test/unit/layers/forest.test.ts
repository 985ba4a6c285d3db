import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareBytes, planSymlinkLayer, type DirTree, type ForestEntry, type PackageTree } from '../../../src/layers/forest.js';
import { readDirTree, symlinkLayerEntries } from '../../../src/layers/walk.js';

// Small builders so that trees read like `ls -R`.
const file: DirTree = { type: 'file' };
const link = (target: string): DirTree => ({ type: 'symlink', target });
const dir = (children: Record<string, DirTree> = {}): DirTree => ({
  type: 'directory',
  children: new Map(Object.entries(children)),
});

const sp = (c: string, name: string): string => `/nix/store/${c.repeat(32)}-${name}`;
const HTOP = sp('a', 'htop-3.2.2');
const COREUTILS = sp('b', 'coreutils-9.1');
const BUSYBOX = sp('c', 'busybox-1.35.0');
const MOTD = sp('d', 'motd');
const MAN = sp('f', 'man-pages');

/** name -> "dir 755" | "-> target" */
const show = (entries: ForestEntry[]): Record<string, string> =>
  Object.fromEntries(
    entries.map((e) => [e.name, e.type === 'directory' ? `dir ${e.mode.toString(8)}` : `-> ${e.linkname}`]),
  );

describe('planSymlinkLayer', () => {
  it('links every file absolutely into its store path and merges directories', () => {
    const plan = planSymlinkLayer([
      { storePath: HTOP, tree: dir({ bin: dir({ htop: file }), share: dir({ man: dir({ man1: dir({ 'htop.1': file }) }) }) }) },
      { storePath: MAN, tree: dir({ share: dir({ man: dir({ man5: dir({ 'passwd.5': file }) }) }) }) },
    ]);
    expect(plan.conflicts).toEqual([]);
    expect(show(plan.entries)).toEqual({
      bin: 'dir 755',
      'bin/htop': `-> ${HTOP}/bin/htop`,
      share: 'dir 755',
      'share/man': 'dir 755',
      'share/man/man1': 'dir 755',
      'share/man/man1/htop.1': `-> ${HTOP}/share/man/man1/htop.1`,
      'share/man/man5': 'dir 755',
      'share/man/man5/passwd.5': `-> ${MAN}/share/man/man5/passwd.5`,
      tmp: 'dir 1777',
    });
    // Symlinks are 0777 like lstat reports them; entries sorted, parents first.
    expect(plan.entries.find((e) => e.name === 'bin/htop')?.mode).toBe(0o777);
    expect(plan.entries.map((e) => e.name)).toEqual([...plan.entries.map((e) => e.name)].sort(compareBytes));
  });

  it('keeps the first package on conflicts and reports each one', () => {
    const plan = planSymlinkLayer([
      { storePath: BUSYBOX, tree: dir({ bin: dir({ ls: link('busybox'), busybox: file, sh: link('busybox') }), etc: file }) },
      {
        storePath: COREUTILS,
        tree: dir({ bin: dir({ ls: file, env: file }), etc: dir({ x: file }), sh: dir({ y: file }) }),
      },
      { storePath: HTOP, tree: dir({ sh: file, bin: file }) },
    ]);
    expect(show(plan.entries)).toMatchObject({
      'bin/ls': `-> ${BUSYBOX}/bin/ls`,
      'bin/sh': `-> ${BUSYBOX}/bin/sh`,
      'bin/env': `-> ${COREUTILS}/bin/env`,
      etc: `-> ${BUSYBOX}/etc`,
      sh: 'dir 755',
      'sh/y': `-> ${COREUTILS}/sh/y`,
    });
    expect(show(plan.entries)['etc/x']).toBeUndefined();
    expect(plan.conflicts).toEqual([
      { path: 'bin/ls', kind: 'file', kept: BUSYBOX, dropped: COREUTILS },
      { path: 'etc', kind: 'file-over-directory', kept: BUSYBOX, dropped: COREUTILS },
      { path: 'bin', kind: 'directory-over-file', kept: BUSYBOX, dropped: HTOP },
      { path: 'sh', kind: 'directory-over-file', kept: COREUTILS, dropped: HTOP },
    ]);
  });

  it('adds usr/bin/env only when a coreutils package with bin/env is among the roots', () => {
    const withCoreutils = planSymlinkLayer([
      { storePath: BUSYBOX, tree: dir({ bin: dir({ env: link('busybox') }) }) },
      { storePath: COREUTILS, tree: dir({ bin: dir({ env: file }) }) },
    ]);
    expect(show(withCoreutils.entries)).toMatchObject({
      usr: 'dir 755',
      'usr/bin': 'dir 755',
      'usr/bin/env': `-> ${COREUTILS}/bin/env`,
      'bin/env': `-> ${BUSYBOX}/bin/env`,
    });

    const without = planSymlinkLayer([{ storePath: BUSYBOX, tree: dir({ bin: dir({ env: link('busybox') }) }) }]);
    expect(Object.keys(show(without.entries))).toEqual(['bin', 'bin/env', 'tmp']);

    const noEnv = planSymlinkLayer([{ storePath: sp('e', 'coreutils-minimal-9.1'), tree: dir({ bin: dir({ ls: file }) }) }]);
    expect(show(noEnv.entries)['usr/bin/env']).toBeUndefined();
  });

  it('lets the image essentials win over package contents', () => {
    const plan = planSymlinkLayer([
      { storePath: COREUTILS, tree: dir({ bin: dir({ env: file }) }) },
      { storePath: HTOP, tree: dir({ tmp: dir({ 'x.lock': file }), usr: dir({ bin: dir({ env: file, htop: file }) }) }) },
      { storePath: BUSYBOX, tree: dir({ tmp: file }) },
    ]);
    expect(show(plan.entries)).toMatchObject({
      tmp: 'dir 1777',
      'tmp/x.lock': `-> ${HTOP}/tmp/x.lock`,
      'usr/bin/env': `-> ${COREUTILS}/bin/env`,
      'usr/bin/htop': `-> ${HTOP}/usr/bin/htop`,
    });
    expect(plan.conflicts).toEqual([
      { path: 'usr/bin/env', kind: 'file', kept: 'image', dropped: HTOP },
      { path: 'tmp', kind: 'directory-over-file', kept: 'image', dropped: BUSYBOX },
    ]);
  });

  it('skips store paths that are single files or symlinks, and repeated store paths', () => {
    const packages: PackageTree[] = [
      { storePath: MOTD, tree: file },
      { storePath: sp('g', 'alias'), tree: link('/nix/store/x') },
      { storePath: HTOP, tree: dir({ bin: dir({ htop: file }) }) },
      { storePath: HTOP, tree: dir({ bin: dir({ htop: file }) }) },
    ];
    const plan = planSymlinkLayer(packages);
    expect(Object.keys(show(plan.entries))).toEqual(['bin', 'bin/htop', 'tmp']);
    expect(plan.conflicts).toEqual([]);
  });

  it('keeps empty directories and sorts by bytes, not UTF-16 units', () => {
    const plan = planSymlinkLayer([
      { storePath: HTOP, tree: dir({ 'a.txt': file, a: dir({ b: file }), 'a-b': file, empty: dir(), '\u{1F600}': file, '\uFB01': file }) },
    ]);
    expect(plan.entries.map((e) => e.name)).toEqual(['a', 'a-b', 'a.txt', 'a/b', 'empty', 'tmp', '\uFB01', '\u{1F600}']);
  });

  it('is deterministic for the same input', () => {
    const input = (): PackageTree[] => [
      { storePath: BUSYBOX, tree: dir({ bin: dir({ ls: file, sh: file }) }) },
      { storePath: COREUTILS, tree: dir({ bin: dir({ ls: file, env: file }) }) },
    ];
    expect(planSymlinkLayer(input())).toEqual(planSymlinkLayer(input()));
  });
});

describe('compareBytes', () => {
  it('orders like Buffer.compare of the UTF-8 encodings', () => {
    const words = ['b', 'a', 'a/b', 'a.b', 'a-b', '', '\u00e9', '\uFB01', '\u{1F600}', '\u{10000}', '\uE000', 'z', 'aa'];
    const byBuffer = [...words].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect([...words].sort(compareBytes)).toEqual(byBuffer);
  });
});

// ---------------------------------------------------------------------------
// The fs half: readDirTree and symlinkLayerEntries on a fake store.

describe('readDirTree / symlinkLayerEntries', () => {
  let root: string;
  const lib = sp('h', 'libfoo-1.0');
  const shared = sp('i', 'shared-1.0');

  beforeAll(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'nixery-forest-'));
    const at = (p: string, ...rest: string[]): string => path.join(root, p, ...rest);
    await mkdir(at(lib, 'lib'), { recursive: true });
    await writeFile(at(lib, 'lib/libfoo.so'), '');
    await symlink('lib', at(lib, 'lib64'));
    await symlink('.', at(lib, 'lib/self'));
    await symlink('../..', at(lib, 'lib/up'));
    await symlink(`${shared}/share`, at(lib, 'share'));
    await symlink('/etc/passwd', at(lib, 'passwd'));
    await symlink(`${sp('j', 'gone')}/bin`, at(lib, 'dangling'));
    await mkdir(at(shared, 'share/doc'), { recursive: true });
    await writeFile(at(shared, 'share/doc/README'), '');
    await mkdir(at(COREUTILS, 'bin'), { recursive: true });
    await writeFile(at(COREUTILS, 'bin/env'), '');
    await mkdir(at(COREUTILS, 'lib64'), { recursive: true });
    await writeFile(at(COREUTILS, 'lib64/libc-extra.so'), '');
    await mkdir(path.dirname(at(MOTD)), { recursive: true });
    await writeFile(at(MOTD), 'hello');
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('follows symlinks to store directories like lndir, but not loops or links out of the store', async () => {
    const tree = await readDirTree(lib, { root });
    expect(tree).toEqual(
      dir({
        lib: dir({ 'libfoo.so': file, self: link('.'), up: link('../..') }),
        lib64: dir({ 'libfoo.so': file, self: link('.'), up: link('../..') }),
        share: dir({ doc: dir({ README: file }) }),
        passwd: link('/etc/passwd'),
        dangling: link(`${sp('j', 'gone')}/bin`),
      }),
    );
    expect(await readDirTree(MOTD, { root })).toEqual(file);
  });

  it('plans the layer from disk, merging through followed links', async () => {
    const { entries, conflicts } = await symlinkLayerEntries([COREUTILS, lib, MOTD], { root });
    expect(show(entries)).toEqual({
      bin: 'dir 755',
      'bin/env': `-> ${COREUTILS}/bin/env`,
      dangling: `-> ${lib}/dangling`,
      lib: 'dir 755',
      'lib/libfoo.so': `-> ${lib}/lib/libfoo.so`,
      'lib/self': `-> ${lib}/lib/self`,
      'lib/up': `-> ${lib}/lib/up`,
      lib64: 'dir 755',
      'lib64/libc-extra.so': `-> ${COREUTILS}/lib64/libc-extra.so`,
      'lib64/libfoo.so': `-> ${lib}/lib64/libfoo.so`,
      'lib64/self': `-> ${lib}/lib64/self`,
      'lib64/up': `-> ${lib}/lib64/up`,
      passwd: `-> ${lib}/passwd`,
      share: 'dir 755',
      'share/doc': 'dir 755',
      'share/doc/README': `-> ${lib}/share/doc/README`,
      tmp: 'dir 1777',
      usr: 'dir 755',
      'usr/bin': 'dir 755',
      'usr/bin/env': `-> ${COREUTILS}/bin/env`,
    });
    expect(conflicts).toEqual([]);
  });

  it('rejects what is not a store path', async () => {
    await expect(readDirTree('/etc', { root })).rejects.toThrow(/not a store path/);
  });
});
