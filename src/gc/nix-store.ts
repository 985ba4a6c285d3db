/**
 * The Nix-store half of garbage collection: GC roots for what the server is
 * using right now, the free space of the store's filesystem, and a
 * collection that frees just enough to get back above a threshold.
 *
 * How Nix 2.8 decides what to delete (libstore/gc.cc):
 *
 * - Roots are the symlinks below `<state>/gcroots` that point into the store
 *   (found recursively, so a directory of ours there is enough: no
 *   `gcroots/auto` entry needed), plus the temporary roots of live Nix
 *   processes. A symlink to a path that is not valid (yet) is skipped ("skipping
 *   invalid root") and counts as soon as the path is valid.
 * - `nix-build --no-out-link` and `nix-store --realise` protect what they
 *   build only while they run (temporary roots, and nix-build's indirect
 *   roots under /tmp/nix-build-<pid>-0 that it removes on exit). Between one
 *   Nix process exiting and the server rooting its results, nothing protects
 *   them: hence `shieldFromCollection()` below.
 * - While a collection runs, every Nix process that adds a temporary root
 *   tells the collector over its socket and the collector keeps that path
 *   for the rest of the run; a collection only ever deletes paths that were
 *   unrooted when it read the roots and untouched since.
 * - `--max-freed N` stops once more than N bytes (Nix's count of file sizes)
 *   are gone. Paths are visited in the store directory's readdir order (no
 *   ordering by age or size in 2.8).
 *
 * Roots are plain symlinks in a directory the server owns
 * (`/nix/var/nix/gcroots/nixery-ts/<pid>-<random>`), one subdirectory per
 * hold. The package set's fetched source is rooted with
 * `nix-store --realise <path> --add-root <link>`, which registers the path
 * with a running collector before making the link (race-free, and it fails
 * when the path is gone). `.drv` files cannot be rooted that way
 * (`--realise` would build them), and outputs are rooted before they exist,
 * so builds use plain symlinks.
 *
 * Nix reports what a collection freed only as a human line on stdout
 * ("N store paths deleted, X MiB freed", 0.01 MiB resolution in 2.8); there
 * is no machine-readable form (`nix store gc` has no --json), so that line
 * is parsed, and the filesystem's free space before and after is reported
 * alongside.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rm, statfs, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { LineSplitter } from '../nix/nix-log.js';
import { watchGroup } from '../nix/process-group.js';
import type { NixSource } from '../nix/runner.js';

export const DEFAULT_STORE_DIR = '/nix/store';
/** Parent of every server's roots directory (one per process). */
export const DEFAULT_GCROOTS_PARENT = '/nix/var/nix/gcroots/nixery-ts';

// ------------------------------------------------------------- min free

/** NIXERY_NIX_GC_MIN_FREE: bytes, or a percentage of the store filesystem's size. */
export type MinFree = { readonly bytes: number } | { readonly percent: number };

const UNITS: Readonly<Record<string, number>> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * Parses a free-space threshold: `10%` (of the store filesystem's total
 * size, 0-100), or bytes with an optional unit in powers of 1024: `1073741824`,
 * `4096B`, `512k`, `300M`, `1.5G`, `2T` (case-insensitive), also written
 * `300MiB`. `300MB` is refused rather than guessed (1000- or 1024-based?).
 * Throws an Error with a one-line reason.
 */
export function parseMinFree(value: string): MinFree {
  const v = value.trim();
  const shown = JSON.stringify(value);
  if (v === '') throw new Error('empty value: expected bytes (e.g. 10G) or a percentage (e.g. 10%)');
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(v);
  if (pct) {
    const percent = Number(pct[1]);
    if (percent > 100) throw new Error(`${shown}: a percentage must be between 0 and 100`);
    return { percent };
  }
  if (/^\d+(?:\.\d+)?\s*[kKmMgGtT]B$/.test(v)) {
    throw new Error(`${shown}: write ${v.replace(/B$/, '')} or ${v.replace(/B$/, 'iB')} (units are powers of 1024)`);
  }
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kKmMgGtT])(?:iB)?|B)?$/.exec(v);
  if (!m) {
    throw new Error(`${shown} is not a size: expected bytes with an optional k/M/G/T unit (powers of 1024, e.g. 10G) or a percentage (e.g. 10%)`);
  }
  const bytes = Math.floor(Number(m[1]) * UNITS[(m[2] ?? '').toLowerCase()]!);
  if (!Number.isSafeInteger(bytes)) throw new Error(`${shown} is too large`);
  return { bytes };
}

/** The threshold in bytes for a filesystem of `totalBytes`. */
export function minFreeBytes(minFree: MinFree, totalBytes: number): number {
  return 'bytes' in minFree ? minFree.bytes : Math.ceil((totalBytes * minFree.percent) / 100);
}

// ----------------------------------------------------------- free space

export interface SpaceInfo {
  /** Bytes available to unprivileged users (`df`'s "Avail"). */
  readonly freeBytes: number;
  readonly totalBytes: number;
}

/** Free and total bytes of the filesystem holding `dir`. */
export async function freeSpace(dir: string): Promise<SpaceInfo> {
  const s = await statfs(dir);
  return { freeBytes: s.bavail * s.bsize, totalBytes: s.blocks * s.bsize };
}

// ---------------------------------------------------------- store paths

/** The top-level store path holding `p` (`/nix/store/<hash>-name`), or undefined if `p` is not in the store. */
export function toStorePath(p: string, storeDir = DEFAULT_STORE_DIR): string | undefined {
  const abs = path.resolve(p);
  if (!abs.startsWith(`${storeDir}/`)) return undefined;
  const name = abs.slice(storeDir.length + 1).split('/')[0]!;
  return /^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$/.test(name) ? `${storeDir}/${name}` : undefined;
}

// ------------------------------------------------------ running Nix

export class NixGcError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly aborted = false,
  ) {
    super(message);
    this.name = 'NixGcError';
  }
}

interface RunOptions {
  readonly env?: Readonly<Record<string, string>>;
  readonly signal?: AbortSignal;
  readonly timeoutSeconds: number;
  readonly onStderrLine?: (line: string) => void;
}

/** One Nix process in its own process group, stopped as a group on abort or timeout (as runner.ts does). */
async function runNix(command: string, args: readonly string[], opts: RunOptions): Promise<{ stdout: string; stderr: string }> {
  const what = `${command} ${args.slice(0, 2).join(' ')}`;
  if (opts.signal?.aborted) throw new NixGcError(`${what}: aborted`, undefined, '', true);
  const child = execa(command, args, {
    detached: true,
    reject: false,
    env: { ...opts.env },
    stdin: 'ignore',
    maxBuffer: 64 * 1024 * 1024,
    cleanup: true,
  });
  const onLine = opts.onStderrLine;
  if (onLine) {
    const lines = new LineSplitter();
    child.stderr?.on('data', (d: Buffer) => lines.push(d.toString('utf8')).forEach(onLine));
    child.stderr?.on('end', () => lines.end().forEach(onLine));
  }
  const group = watchGroup(child.pid, opts.timeoutSeconds, opts.signal);
  try {
    const r = await child;
    group.done();
    const stoppedFor = group.stoppedFor;
    const stdout = typeof r.stdout === 'string' ? r.stdout : '';
    const stderr = typeof r.stderr === 'string' ? r.stderr.trim() : '';
    if (stoppedFor === 'abort') throw new NixGcError(`${what}: aborted`, r.exitCode, stderr, true);
    if (stoppedFor === 'timeout') throw new NixGcError(`${what}: stopped after ${opts.timeoutSeconds}s`, r.exitCode, stderr);
    if (r.exitCode !== 0) {
      const last = stderr.split('\n').filter(Boolean).pop() ?? '';
      throw new NixGcError(`${what} failed (exit ${r.exitCode ?? r.signal}): ${last}`, r.exitCode, stderr);
    }
    return { stdout, stderr };
  } finally {
    group.done();
  }
}

// -------------------------------------------------------------- sources

/**
 * The fetchers of prepare-image/load-pkgs.nix with the same arguments (keep
 * in step with it), answering the store path of the fetched tree. Nix caches
 * fetches (git: ~/.cache/nix/gitv3 plus the fetcher cache; tarball: by URL
 * for tarball-ttl), so after a resolve this is a lookup, and it fetches again
 * only when the tree is no longer in the store.
 */
const SOURCE_PATH_EXPR = `{ srcType, srcArgs }:
let
  args = builtins.fromJSON srcArgs;
  pick = keys: builtins.intersectAttrs (builtins.listToAttrs (map (k: { name = k; value = null; }) keys)) args;
in
if srcType == "git" then (builtins.fetchGit ({ url = args.url; } // pick [ "ref" "rev" "allRefs" "submodules" "name" ])).outPath
else if srcType == "tarball" then builtins.fetchTarball ({ url = args.url; } // pick [ "sha256" "name" ])
else throw "unknown srcType \${srcType}"`;

export interface NixCallOptions {
  /** Environment for Nix (NIX_CONFIG, XDG_CACHE_HOME, NIX_STORE_DIR ...); added to the server's own. */
  readonly env?: Readonly<Record<string, string>>;
  readonly signal?: AbortSignal;
  /** Seconds the Nix process may run (default 600: a first fetch of a large tarball). */
  readonly timeoutSeconds?: number;
}

/**
 * Where a package source lives in the store, if it does:
 *
 *   path     the directory is read in place by `import`; only when it is
 *            itself inside the store (a package set deployed as a store
 *            path) is that store path returned. Files it references
 *            (./builder.sh ...) are copied to the store as inputs of the
 *            derivations, and a held .drv keeps them.
 *   git      builtins.fetchGit's checkout (`<hash>-source`).
 *   tarball  builtins.fetchTarball's unpacked tree (channels are tarballs).
 */
export async function sourceStorePath(source: NixSource, opts: NixCallOptions & { storeDir?: string } = {}): Promise<string | undefined> {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  if (source.srcType === 'path') return toStorePath(source.path, storeDir);
  const { srcType, ...srcArgs } = source;
  const { stdout } = await runNix(
    'nix-instantiate',
    ['--eval', '--json', '--read-write-mode', '--expr', SOURCE_PATH_EXPR, '--argstr', 'srcType', srcType, '--argstr', 'srcArgs', JSON.stringify(srcArgs)],
    { ...opts, timeoutSeconds: opts.timeoutSeconds ?? 600 },
  );
  const p = JSON.parse(stdout) as unknown;
  if (typeof p !== 'string' || toStorePath(p, storeDir) !== p) throw new Error(`the ${srcType} source evaluated to ${JSON.stringify(p)}, not a store path`);
  return p;
}

// -------------------------------------------------------------- GC roots

/** Removes a hold's roots. Idempotent. */
export type Release = () => Promise<void>;

export interface GcRootsOptions {
  /** Parent of the per-process directories (default /nix/var/nix/gcroots/nixery-ts; must be below Nix's gcroots). */
  readonly parentDir?: string;
  readonly storeDir?: string;
  /** Environment for the Nix processes of holdSource (as NixCallOptions.env). */
  readonly env?: Readonly<Record<string, string>>;
}

interface Owner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): tells a reused PID apart. */
  start?: string;
}

async function processStart(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

async function ownerAlive(owner: Owner): Promise<boolean> {
  try {
    process.kill(owner.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (owner.start === undefined) return true;
  const start = await processStart(owner.pid);
  return start === undefined || start === owner.start;
}

/**
 * Removes the directories of servers that are gone (`<pid>-<random>` whose
 * process is not running, or runs with another start time: a reused PID).
 * Returns the directories removed. PIDs are only meaningful in one PID
 * namespace: servers in different containers sharing one /nix need a
 * parentDir each.
 */
export async function reapStaleRootDirs(parentDir = DEFAULT_GCROOTS_PARENT, except?: string): Promise<string[]> {
  const removed: string[] = [];
  const names = await readdir(parentDir).catch(() => [] as string[]);
  for (const name of names) {
    const dir = path.join(parentDir, name);
    if (dir === except) continue;
    const m = /^(\d+)-[0-9a-z]+$/.exec(name);
    if (!m) continue;
    let owner: Owner = { pid: Number(m[1]) };
    try {
      const o = JSON.parse(await readFile(path.join(dir, 'owner.json'), 'utf8')) as Partial<Owner>;
      if (o.pid === owner.pid) owner = { pid: o.pid, ...(typeof o.start === 'string' ? { start: o.start } : {}) };
    } catch {
      // No owner file (crashed while opening): the PID alone decides.
    }
    if (await ownerAlive(owner)) continue;
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

function safeLabel(label: string): string {
  return label.replace(/[^A-Za-z0-9._+-]+/g, '_').slice(0, 80) || 'hold';
}

/**
 * GC roots the server owns: one directory per process, one subdirectory
 * per hold, one symlink per store path. `open()` removes the directories of
 * dead servers; `close()` removes this one.
 */
export class GcRoots {
  private seq = 0;
  private closed = false;
  /** Subdirectories of holds not yet released. */
  private readonly live = new Set<string>();

  private constructor(
    /** This process's roots directory. */
    readonly dir: string,
    readonly storeDir: string,
    private readonly env: Readonly<Record<string, string>> | undefined,
  ) {}

  static async open(opts: GcRootsOptions = {}): Promise<GcRoots> {
    const parentDir = opts.parentDir ?? DEFAULT_GCROOTS_PARENT;
    await mkdir(parentDir, { recursive: true });
    const dir = path.join(parentDir, `${process.pid}-${randomBytes(6).toString('hex')}`);
    await mkdir(dir);
    const start = await processStart(process.pid);
    await writeFile(path.join(dir, 'owner.json'), JSON.stringify({ pid: process.pid, ...(start ? { start } : {}) }));
    await reapStaleRootDirs(parentDir, dir);
    return new GcRoots(dir, opts.storeDir ?? DEFAULT_STORE_DIR, opts.env);
  }

  private newHoldDir(label: string): string {
    if (this.closed) throw new Error('GC roots are closed');
    return path.join(this.dir, `${++this.seq}-${safeLabel(label)}`);
  }

  private releaser(holdDir: string): Release {
    let done: Promise<void> | undefined;
    return () => {
      done ??= rm(holdDir, { recursive: true, force: true }).finally(() => this.live.delete(holdDir));
      return done;
    };
  }

  /**
   * Roots the top-level store paths of `paths` (derivations, outputs,
   * anything in the store), valid or not yet: a root to a path Nix has not
   * built yet takes effect once it is valid. A path created by a Nix
   * process that has exited can be collected before this returns unless
   * the window is inside `shieldFromCollection()`.
   */
  async hold(paths: readonly string[], label: string): Promise<Release> {
    const targets = new Set<string>();
    for (const p of paths) {
      const sp = toStorePath(p, this.storeDir);
      if (sp === undefined) throw new Error(`not in the Nix store ${this.storeDir}: ${p}`);
      targets.add(sp);
    }
    const holdDir = this.newHoldDir(label);
    this.live.add(holdDir);
    const release = this.releaser(holdDir);
    try {
      await mkdir(holdDir);
      await Promise.all([...targets].map((t) => symlink(t, path.join(holdDir, path.basename(t)))));
    } catch (e) {
      await release();
      throw e;
    }
    return release;
  }

  /**
   * Roots the package source's tree when it is in the store (see
   * sourceStorePath), via `nix-store --realise <path> --add-root <link>`:
   * race-free with a running collection, and if the tree was collected
   * between the evaluation and the root, it is fetched again (once).
   * `path` is undefined (and release a no-op) for a source read in place.
   */
  async holdSource(source: NixSource, opts: Omit<NixCallOptions, 'env'> = {}): Promise<{ path: string | undefined; release: Release }> {
    const call = { ...opts, storeDir: this.storeDir, ...(this.env ? { env: this.env } : {}) };
    for (let attempt = 1; ; attempt++) {
      const p = await sourceStorePath(source, call);
      if (p === undefined) return { path: undefined, release: async () => {} };
      const holdDir = this.newHoldDir(`source-${source.srcType}`);
      this.live.add(holdDir);
      const release = this.releaser(holdDir);
      try {
        await mkdir(holdDir);
        await runNix('nix-store', ['--realise', p, '--add-root', path.join(holdDir, path.basename(p))], { ...call, timeoutSeconds: call.timeoutSeconds ?? 60 });
        return { path: p, release };
      } catch (e) {
        await release();
        // A path source in the store cannot be fetched again; a fetched one can.
        const gone = source.srcType !== 'path' && (await lstat(p).then(() => false, () => true));
        if (!gone || attempt >= 2) throw e;
      }
    }
  }

  /** Holds not released yet. */
  get holds(): number {
    return this.live.size;
  }

  /** Removes every root of this process and its directory. Holds released later are no-ops. */
  async close(): Promise<void> {
    this.closed = true;
    await rm(this.dir, { recursive: true, force: true });
    this.live.clear();
  }

  /** close() for a process 'exit' handler, which cannot wait. */
  closeSync(): void {
    this.closed = true;
    rmSync(this.dir, { recursive: true, force: true });
    this.live.clear();
  }

  /** The store paths rooted now (for diagnostics). */
  async rooted(): Promise<string[]> {
    const out = new Set<string>();
    for (const sub of await readdir(this.dir).catch(() => [] as string[])) {
      const holdDir = path.join(this.dir, sub);
      for (const link of await readdir(holdDir).catch(() => [] as string[])) {
        const target = await readlink(path.join(holdDir, link)).catch(() => undefined);
        if (target !== undefined) out.add(target);
      }
    }
    return [...out].sort();
  }
}

// ------------------------------------------------------------ collection

/**
 * One collection at a time in this process, and none starting while a
 * shield is up; shields that begin while a collection is pending wait until
 * it has read the roots (its "finding garbage collector roots..." line: the
 * collector then already listens for new temporary roots) or has ended.
 */
class CollectionGate {
  private shields = 0;
  private drainWaiters: (() => void)[] = [];
  /** Set while a collection waits for shields or has not read its roots yet. */
  private blocked: Promise<void> | undefined;
  private unblock: (() => void) | undefined;
  private tail: Promise<unknown> = Promise.resolve();

  async shield<T>(fn: () => Promise<T>): Promise<T> {
    while (this.blocked) await this.blocked;
    this.shields++;
    try {
      return await fn();
    } finally {
      if (--this.shields === 0) for (const w of this.drainWaiters.splice(0)) w();
    }
  }

  /** Runs `fn` alone; `fn` calls `block()` before starting Nix, and `open()` once Nix has read the roots. */
  exclusive<T>(fn: (gate: { block: () => Promise<void>; open: () => void }) => Promise<T>): Promise<T> {
    const run = this.tail.then(async () => {
      try {
        return await fn({ block: () => this.block(), open: () => this.open() });
      } finally {
        this.open();
      }
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async block(): Promise<void> {
    if (!this.blocked) this.blocked = new Promise<void>((resolve) => (this.unblock = resolve));
    if (this.shields > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  private open(): void {
    const u = this.unblock;
    this.blocked = undefined;
    this.unblock = undefined;
    u?.();
  }

  get busy(): boolean {
    return this.blocked !== undefined;
  }
}

const gate = new CollectionGate();

/**
 * Runs `fn` while no collection of this process can read the roots: wrap
 * the window from a Nix process creating paths to `GcRoots.hold` of them
 * (resolve -> hold of the .drv files and outputs). Keep it short: a pending
 * collection waits for every shield (and never call collectIfLow inside
 * one: it would wait for itself). Collections of other processes (another
 * server, an administrator's nix-collect-garbage) do not see shields.
 */
export function shieldFromCollection<T>(fn: () => Promise<T>): Promise<T> {
  return gate.shield(fn);
}

/** Parses the summary nix-store --gc prints on stdout: "3 store paths deleted, 12.34 MiB freed". */
export function parseGcSummary(stdout: string): { pathsDeleted: number; freedBytes: number } | undefined {
  const m = /(\d+) store paths? deleted, (\d+(?:\.\d+)?) ?(B|bytes|KiB|MiB|GiB|TiB) freed/.exec(stdout);
  if (!m) return undefined;
  const scale: Record<string, number> = { B: 1, bytes: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };
  return { pathsDeleted: Number(m[1]), freedBytes: Math.round(Number(m[2]) * scale[m[3]!]!) };
}

export interface CollectOptions {
  readonly minFree: MinFree;
  readonly storeDir?: string;
  /** Environment for nix-store (the runner's NIX_CONFIG etc.); added to the server's own. */
  readonly env?: Readonly<Record<string, string>>;
  readonly signal?: AbortSignal;
  /** Most bytes one collection may free, whatever the shortfall (a cap on its work). */
  readonly maxFreedBytes?: number;
  /** Seconds the collection may run (default 1800); then its process group is stopped. */
  readonly timeoutSeconds?: number;
  /** Nix's stderr, line by line ("deleting '/nix/store/...'" ...), for the log. */
  readonly onLog?: (line: string) => void;
}

export interface CollectResult {
  /** Whether nix-store --gc ran (false: enough free space). */
  readonly ran: boolean;
  /** Bytes Nix reports freed (its stdout summary, 0.01 MiB resolution in Nix 2.8); 0 if it did not run. */
  readonly freedBytes: number;
  readonly pathsDeleted: number;
  /** The threshold in bytes and what was passed as --max-freed (0 if it did not run). */
  readonly thresholdBytes: number;
  readonly requestedBytes: number;
  /** The filesystem before and after (after = before when it did not run). */
  readonly before: SpaceInfo;
  readonly after: SpaceInfo;
}

/**
 * When the store's filesystem has less than `minFree` available, runs
 * `nix-store --gc --max-freed <shortfall>` (capped by maxFreedBytes) in its
 * own process group, stopped (SIGTERM, then SIGKILL) on abort or timeout,
 * which throws NixGcError. Collections of this process run one at a time: a
 * call made while one runs waits for it and then looks at the free space
 * again.
 */
export function collectIfLow(opts: CollectOptions): Promise<CollectResult> {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  return gate.exclusive(async ({ block, open }) => {
    const before = await freeSpace(storeDir);
    const thresholdBytes = minFreeBytes(opts.minFree, before.totalBytes);
    const shortfall = thresholdBytes - before.freeBytes;
    if (shortfall <= 0) return { ran: false, freedBytes: 0, pathsDeleted: 0, thresholdBytes, requestedBytes: 0, before, after: before };
    const requestedBytes = Math.max(1, Math.ceil(Math.min(shortfall, opts.maxFreedBytes ?? Number.POSITIVE_INFINITY)));
    await block();
    if (opts.signal?.aborted) throw new NixGcError('nix-store --gc: aborted', undefined, '', true);
    const { stdout } = await runNix('nix-store', ['--gc', '--max-freed', String(requestedBytes)], {
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      timeoutSeconds: opts.timeoutSeconds ?? 1800,
      onStderrLine: (line) => {
        if (line.startsWith('finding garbage collector roots')) open();
        opts.onLog?.(line);
      },
    });
    const after = await freeSpace(storeDir);
    const summary = parseGcSummary(stdout);
    return {
      ran: true,
      freedBytes: summary?.freedBytes ?? Math.max(0, after.freeBytes - before.freeBytes),
      pathsDeleted: summary?.pathsDeleted ?? 0,
      thresholdBytes,
      requestedBytes,
      before,
      after,
    };
  });
}

/** Whether a collection of this process is pending or reading roots right now. */
export function collectionBusy(): boolean {
  return gate.busy;
}
