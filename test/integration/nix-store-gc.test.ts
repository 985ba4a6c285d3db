/**
 * GC roots and collections against the real Nix.
 *
 * Collections run in a private Nix store (NIX_STORE_DIR / NIX_STATE_DIR
 * under a temporary directory, same Nix binary and code paths), never in
 * /nix/store: every path in the shared store is unrooted (nix-build
 * --no-out-link and the runner root nothing once their process exits), so
 * a collection there, even one capped with --max-freed, deletes paths in
 * readdir order that other test files running in parallel (vitest runs two
 * files at once) may have just built and are about to read. The tests that
 * touch /nix/store only create and remove roots and `nix-store --delete`
 * paths with a salt of their own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_GCROOTS_PARENT,
  GcRoots,
  NixGcError,
  collectIfLow,
  collectionBusy,
  shieldFromCollection,
  sourceStorePath,
} from '../../src/gc/nix-store.js';
import type { NixSource } from '../../src/nix/runner.js';
import { DEMO_PKGS, buildDemo, demoRepo, freshSalt, makeRunner } from '../helpers/nix.js';
import { until } from '../helpers/wait.js';

const SYSTEM = 'x86_64-linux';
const ALWAYS = { percent: 100 } as const;

/** A private store: its own store directory, database, GC lock, roots and fetcher cache. */
interface PrivateStore {
  base: string;
  storeDir: string;
  stateDir: string;
  env: Record<string, string>;
  nix(cmd: string, args: string[]): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }>;
  valid(p: string): Promise<boolean>;
}

async function privateStore(): Promise<PrivateStore> {
  const base = await mkdtemp(path.join(tmpdir(), 'nixery-gc-'));
  await chmod(base, 0o755);
  const env = {
    NIX_STORE_DIR: `${base}/store`,
    NIX_STATE_DIR: `${base}/var`,
    NIX_LOG_DIR: `${base}/log`,
    XDG_CACHE_HOME: `${base}/cache`,
    // No build users: this store's Nix keeps its own pool of them (under its
    // state dir), so it would hand out nixbld1 while the shared store's Nix
    // uses it too, and when either ends a build it kills every process of
    // that user: the other's builder died with signal 9 when test files ran
    // side by side.
    NIX_CONFIG: 'substituters =\nbuild-users-group =',
  };
  const nix = async (cmd: string, args: string[]) => {
    const r = await execa(cmd, args, { env, reject: false });
    return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
  return {
    base,
    storeDir: env.NIX_STORE_DIR,
    stateDir: env.NIX_STATE_DIR,
    env,
    nix,
    valid: async (p) => (await nix('nix-store', ['--check-validity', p])).exitCode === 0,
  };
}

/** A tarball of a directory with content of its own. */
async function tarball(base: string, name: string): Promise<NixSource> {
  const dir = path.join(base, name);
  await mkdir(dir);
  await writeFile(path.join(dir, 'default.nix'), `{ ... }: { marker = "${freshSalt()}"; }\n`);
  await execa('tar', ['-C', base, '-czf', `${dir}.tar.gz`, name]);
  return { srcType: 'tarball', url: `file://${dir}.tar.gz` };
}

/** nix-store --gc processes of this private store (by their NIX_STATE_DIR). */
async function gcProcesses(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = (await readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0');
      if (!cmd.some((a) => a.endsWith('nix-store')) || !cmd.includes('--gc')) continue;
      const environ = (await readFile(`/proc/${name}/environ`, 'utf8')).split('\0');
      if (environ.includes(`NIX_STATE_DIR=${stateDir}`)) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


describe('collections in a private store', () => {
  let s: PrivateStore;
  let roots: GcRoots;

  beforeAll(async () => {
    s = await privateStore();
    roots = await GcRoots.open({ parentDir: `${s.stateDir}/gcroots/nixery-ts`, storeDir: s.storeDir, env: s.env });
  });
  afterAll(async () => {
    await roots?.close();
    if (s) await rm(s.base, { recursive: true, force: true });
  });

  it('a collection in the middle of a held build keeps the build, its source and held sources, and deletes the rest', async () => {
    const source = await demoRepo(path.join(s.base, 'repo'));
    // slowSeconds: unique among the test files, whose `ps` checks look for `-lt <slowSeconds>`.
    const runner = makeRunner({ importArgs: { salt: freshSalt(), slowSeconds: 7 }, env: s.env });

    // Unrooted garbage built before the collection: a package (its whole closure) and a fetched tarball.
    const [garbage] = await buildDemoIn(s, ['hello'], freshSalt());
    const unheldTarball = await sourceStorePath(await tarball(s.base, 'unheld'), { env: s.env, storeDir: s.storeDir });
    // Held sources of each kind that lives in the store.
    const heldTarball = await roots.holdSource(await tarball(s.base, 'held'), {});
    const addedDir = path.join(s.base, 'path-source');
    await mkdir(addedDir);
    await writeFile(path.join(addedDir, 'default.nix'), `{ ... }: { marker = "${freshSalt()}"; }\n`);
    const inStore = (await s.nix('nix-store', ['--add', addedDir])).stdout.trim();
    const heldPath = await roots.holdSource({ srcType: 'path', path: inStore }, {});
    const outside = await roots.holdSource({ srcType: 'path', path: DEMO_PKGS }, {});
    expect(outside.path).toBeUndefined();

    // resolve -> hold, shielded: nothing the evaluation wrote can be collected before it is held.
    const { pkg, releaseBuild } = await shieldFromCollection(async () => {
      const [p] = await runner.resolve(source, ['slow-chatty-build'], SYSTEM);
      return { pkg: p!, releaseBuild: await roots.hold([p!.drv, p!.out], 'build slow-chatty-build') };
    });
    const heldSource = await roots.holdSource(source, {});
    expect(heldSource.path).toMatch(new RegExp(`^${s.storeDir}/[a-z0-9]{32}-source$`));
    for (const p of [garbage!, unheldTarball!, heldTarball.path!, heldPath.path!, heldSource.path!, pkg.drv]) {
      expect(await s.valid(p), p).toBe(true);
    }
    expect(heldPath.path).toBe(inStore);
    expect(await s.valid(pkg.out)).toBe(false);

    let ticks = 0;
    const built = runner.realise([pkg.drv], {
      onEvent: (e) => {
        if (e.kind === 'log' && e.line.startsWith('tick')) ticks++;
      },
    });
    await until('the build to run', () => ticks >= 2, 20_000);

    const during = await collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env });
    expect(ticks).toBeLessThan(7); // it ran in the middle of the build
    expect(during.ran).toBe(true);
    expect(during.pathsDeleted).toBeGreaterThanOrEqual(3);
    expect(during.requestedBytes).toBe(during.thresholdBytes - during.before.freeBytes);
    expect(during.thresholdBytes).toBe(during.before.totalBytes);
    expect(await s.valid(garbage!)).toBe(false);
    expect(await s.valid(unheldTarball!)).toBe(false);
    for (const p of [heldTarball.path!, heldPath.path!, heldSource.path!, pkg.drv]) expect(await s.valid(p), p).toBe(true);

    // Nix's own words when it fails, not just its exit code.
    await built.catch((e: { message: string; stderr?: string }) => {
      throw new Error(`${e.message}\n${e.stderr ?? ''}`);
    });
    expect(await s.valid(pkg.out)).toBe(true);

    // Once nix-store --realise has exited, only the hold keeps the output.
    const after = await collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env });
    expect(after.ran).toBe(true);
    for (const p of [pkg.out, pkg.drv, heldSource.path!]) expect(await s.valid(p), p).toBe(true);

    await releaseBuild();
    await heldSource.release();
    await heldTarball.release();
    await heldPath.release();
    const released = await collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env });
    expect(released.pathsDeleted).toBeGreaterThanOrEqual(5);
    for (const p of [pkg.out, pkg.drv, heldSource.path!, heldTarball.path!, heldPath.path!]) expect(await s.valid(p), p).toBe(false);
    expect(await roots.rooted()).toEqual([]);
  });

  it('frees at most --max-freed and nothing when there is enough space', async () => {
    for (const i of [1, 2, 3]) {
      const f = path.join(s.base, `garbage-${i}`);
      await writeFile(f, `garbage ${i} ${freshSalt()}\n`);
      expect((await s.nix('nix-store', ['--add', f])).exitCode).toBe(0);
    }
    const capped = await collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env, maxFreedBytes: 1 });
    expect(capped).toMatchObject({ ran: true, pathsDeleted: 1, requestedBytes: 1 });
    const none = await collectIfLow({ minFree: { bytes: 0 }, storeDir: s.storeDir, env: s.env });
    expect(none).toMatchObject({ ran: false, freedBytes: 0, pathsDeleted: 0, requestedBytes: 0 });
    expect(none.after).toEqual(none.before);
    const rest = await collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env });
    expect(rest.pathsDeleted).toBe(2);
  });

  it('runs one collection at a time, waits for shields, and stops Nix on abort', async () => {
    // Hold Nix's big GC lock (Nix uses flock) so that nix-store --gc waits where we can see it.
    // flock and its sleep form a process group of their own: stopping the group releases the lock.
    const locker: ChildProcess = spawn('flock', ['-x', `${s.stateDir}/gc.lock`, 'sleep', '60'], { stdio: 'ignore', detached: true });
    const stopLocker = (sig: NodeJS.Signals) => {
      try {
        process.kill(-locker.pid!, sig);
      } catch {
        // already gone
      }
    };
    try {
      await until('flock to hold the lock', async () => (await execa('flock', ['-xn', `${s.stateDir}/gc.lock`, 'true'], { reject: false })).exitCode !== 0);

      // A shield delays the start of a collection.
      let releaseShield!: () => void;
      const shield = shieldFromCollection(() => new Promise<void>((r) => (releaseShield = r)));
      const ac = new AbortController();
      const first = collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env, signal: ac.signal });
      const firstOutcome = first.catch((e: unknown) => e);
      await sleep(300);
      expect(collectionBusy()).toBe(true);
      expect(await gcProcesses(s.stateDir)).toEqual([]);
      releaseShield();
      await shield;
      await until('nix-store --gc to start', async () => (await gcProcesses(s.stateDir)).length === 1);
      const [firstPid] = await gcProcesses(s.stateDir);

      // A second collection waits for the first; a new shield waits until Nix has read the roots.
      const second = collectIfLow({ minFree: ALWAYS, storeDir: s.storeDir, env: s.env });
      let shield1Ran = false;
      const shield1 = shieldFromCollection(async () => {
        shield1Ran = true;
      });
      await sleep(500);
      expect(await gcProcesses(s.stateDir)).toEqual([firstPid]);
      expect(shield1Ran).toBe(false);

      // Abort: the process group is stopped (Nix blocked in flock ignores SIGTERM: SIGKILL after the grace).
      ac.abort();
      const err = await firstOutcome;
      expect(err).toBeInstanceOf(NixGcError);
      expect((err as NixGcError).aborted).toBe(true);
      await shield1; // may run between the two collections
      await until('the second nix-store --gc to start', async () => {
        const pids = await gcProcesses(s.stateDir);
        return pids.length === 1 && pids[0] !== firstPid;
      });
      let shield2Ran = false;
      const shield2 = shieldFromCollection(async () => {
        shield2Ran = true;
      });
      await sleep(300);
      expect(shield2Ran).toBe(false);
      stopLocker('SIGTERM');
      const r = await second;
      expect(r.ran).toBe(true);
      await shield2;
      expect(shield2Ran).toBe(true);
      expect(await gcProcesses(s.stateDir)).toEqual([]);
    } finally {
      stopLocker('SIGKILL');
    }
  });
});

/** nix-build in the private store, unrooted once it exits. */
async function buildDemoIn(s: PrivateStore, attrs: string[], salt: string): Promise<string[]> {
  const r = await execa('nix-build', [DEMO_PKGS, '--no-out-link', '--argstr', 'salt', salt, ...attrs.flatMap((a) => ['-A', a])], { env: s.env });
  return String(r.stdout).trim().split('\n');
}

describe('roots in /nix/store (no collection)', () => {
  it('roots in the default directory keep a path alive until released', async () => {
    const roots = await GcRoots.open();
    try {
      expect(path.dirname(roots.dir)).toBe(DEFAULT_GCROOTS_PARENT);
      const [motd] = await buildDemo(['motd'], { salt: freshSalt() });
      const release = await roots.hold([motd!], 'motd');
      const listed = await execa('nix-store', ['--gc', '--print-roots']);
      expect(String(listed.stdout)).toContain(`${roots.dir}/1-motd/${path.basename(motd!)} -> ${motd}`);
      // `--delete` removes only the paths named, and only if they are dead.
      const refused = await execa('nix-store', ['--delete', motd!], { reject: false });
      expect(refused.exitCode).not.toBe(0);
      expect(String(refused.stderr)).toMatch(/still alive/);
      await release();
      expect((await execa('nix-store', ['--delete', motd!], { reject: false })).exitCode).toBe(0);
      expect((await execa('nix-store', ['--check-validity', motd!], { reject: false })).exitCode).not.toBe(0);
    } finally {
      await roots.close();
    }
  });
});
