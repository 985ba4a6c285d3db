/**
 * The offline demo package set for aarch64-linux on this x86_64 machine:
 * packages made from Debian's arm64 binaries (the sysroot that
 * scripts/setup-system.sh unpacks), built by Nix here because the tests allow
 * `extra-platforms = aarch64-linux` (never in nix.conf), and run under
 * qemu-aarch64-static in a chroot made of their closure.
 */
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PackagesNotFoundError } from '../../src/errors.js';
import { storePathName } from '../../src/layers/graph.js';
import { elfMachines, inChroot, sh } from '../helpers/clients.js';
import { DEMO_PKGS, demoSource, freshSalt, makeRunner } from '../helpers/nix.js';

/** What lets Nix run the aarch64-linux builders (x86_64 shell scripts that copy files) here. */
const ARM64_NIX_CONFIG = 'substituters =\nextra-platforms = aarch64-linux';
/** The three the brief names, plus the rest of the `shell` meta-package, the always-added data packages and a C program. */
const ATTRS = ['htop', 'bashInteractive', 'jq', 'coreutils', 'moreutils', 'nano', 'cacert', 'iana-etc', 'hello'];

async function nixBuild(system: string, attrs: readonly string[], salt: string, nixConfig = ARM64_NIX_CONFIG): Promise<string[]> {
  const { stdout } = await sh(
    'nix-build',
    [DEMO_PKGS, '--no-out-link', '--argstr', 'system', system, '--argstr', 'salt', salt, ...attrs.flatMap((a) => ['-A', a])],
    { env: { NIX_CONFIG: nixConfig }, timeoutMs: 240_000 },
  );
  return stdout.trim().split('\n');
}

async function closureOf(paths: readonly string[]): Promise<string[]> {
  const { stdout } = await sh('nix-store', ['-qR', ...paths]);
  return stdout.trim().split('\n').sort();
}

/** Every ELF file in the given store paths, by architecture. */
async function machinesIn(paths: readonly string[]): Promise<Map<string, string>> {
  const all = new Map<string, string>();
  for (const p of paths) for (const [f, m] of await elfMachines(p)) all.set(f, m);
  return all;
}

describe('nix/demo-pkgs for aarch64-linux', () => {
  const salt = freshSalt();
  let tmp: string;
  let arm: string[];
  let x86: string[];
  let armClosure: string[];

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'demo-pkgs-arm64-'));
    arm = await nixBuild('aarch64-linux', ATTRS, salt);
    x86 = await nixBuild('x86_64-linux', ATTRS, salt);
    armClosure = await closureOf(arm);
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('builds closures whose ELF files are all aarch64 (x86-64 for x86_64-linux), with the same shape', async () => {
    expect(arm).toHaveLength(ATTRS.length);
    const armElves = await machinesIn(armClosure);
    expect(armElves.size).toBeGreaterThan(100); // coreutils alone has ~100 programs
    expect(new Set(armElves.values())).toEqual(new Set(['aarch64']));

    const x86Closure = await closureOf(x86);
    const x86Elves = await machinesIn(x86Closure);
    expect(x86Elves.size).toBeGreaterThan(100);
    expect(new Set(x86Elves.values())).toEqual(new Set(['x86-64']));

    // Same packages in both closures (one glibc leaf, ncurses shared by bash, htop and nano, ...).
    const names = (c: readonly string[]) => c.map(storePathName).sort();
    expect(names(armClosure)).toEqual(names(x86Closure));
    expect(armClosure.filter((p) => storePathName(p).startsWith('glibc-'))).toHaveLength(1);
    const glibc = armClosure.find((p) => storePathName(p) === 'glibc-2.36')!;
    const htop = arm[ATTRS.indexOf('htop')]!;
    const interp = (await sh('patchelf', ['--print-interpreter', `${htop}/bin/htop`])).stdout.trim();
    expect(interp).toBe(`${glibc}/lib/ld-linux-aarch64.so.1`);
    const ncurses = armClosure.find((p) => storePathName(p) === 'ncurses-6.4')!;
    for (const attr of ['htop', 'bashInteractive', 'nano']) {
      expect((await sh('nix-store', ['-q', '--references', arm[ATTRS.indexOf(attr)]!])).stdout).toContain(ncurses);
    }
  });

  it('runs the programs under qemu-aarch64-static in a chroot made of the closure', async () => {
    const root = path.join(tmp, 'root');
    await mkdir(path.join(root, 'nix/store'), { recursive: true });
    await sh('cp', ['-a', ...armClosure, path.join(root, 'nix/store')]);
    // /bin as in an image: absolute links into the store.
    await mkdir(path.join(root, 'bin'));
    for (const out of arm) {
      const bin = path.join(out, 'bin');
      const entries = await readdir(bin).catch(() => [] as string[]);
      for (const e of entries) await symlink(path.join(bin, e), path.join(root, 'bin', e)).catch(() => undefined);
    }
    const arm64 = { arch: 'arm64' } as const;
    expect(await inChroot(root, ['htop', '--version'], arm64)).toMatch(/^htop 3\.\d+\.\d+/);
    expect(await inChroot(root, ['bash', '-c', 'echo ok'], arm64)).toBe('ok\n');
    expect(await inChroot(root, ['jq', '--version'], arm64)).toMatch(/^jq-1\.6/);
    expect(await inChroot(root, ['ls', '--version'], arm64)).toMatch(/^ls \(GNU coreutils\)/);
    expect(await inChroot(root, ['nano', '--version'], arm64)).toMatch(/GNU nano/);
    expect(await inChroot(root, ['/bin/hello'], arm64)).toMatch(/^Hello/);
    // Everything in the chroot is aarch64 but the emulator that inChroot copied in.
    const machines = await elfMachines(root);
    expect(machines.get(path.join(root, 'qemu-aarch64-static'))).toBe('x86-64');
    machines.delete(path.join(root, 'qemu-aarch64-static'));
    expect(new Set(machines.values())).toEqual(new Set(['aarch64']));
  });

  it('x86only throws a clear error for aarch64-linux (the server sees it as not found) and builds for x86_64-linux', async () => {
    const err = await sh('nix-instantiate', [DEMO_PKGS, '-A', 'x86only', '--argstr', 'system', 'aarch64-linux']).catch(
      (e: unknown) => e as { stderr: string },
    );
    expect((err as { stderr?: string }).stderr).toContain('demo-pkgs: x86only is not available on aarch64-linux (platforms: x86_64-linux)');

    const missing = await makeRunner().resolve(demoSource, ['htop', 'x86only'], 'aarch64-linux').catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(PackagesNotFoundError);
    expect((missing as PackagesNotFoundError).packages).toEqual([{ name: 'x86only', kind: 'not_found' }]);

    const [x86only] = await nixBuild('x86_64-linux', ['x86only'], salt);
    expect((await sh(`${x86only}/bin/x86only`, [])).stdout).toMatch(/^x86only \(nixery-ts demo\) 1\.0: x86-64, CPU vendor /);
    expect([...(await elfMachines(x86only!)).values()]).toEqual(['x86-64']);
  });

  it('needs extra-platforms: without it Nix refuses to build for aarch64-linux', async () => {
    const err = await nixBuild('aarch64-linux', ['jq'], freshSalt(), 'substituters =').catch((e: unknown) => e as { stderr: string });
    expect((err as { stderr?: string }).stderr).toMatch(/a 'aarch64-linux' with features \{[^}]*\} is required to build/);
  });
});
