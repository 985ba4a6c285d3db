/**
 * The fs half of packing: reads store paths from disk as tar entries for
 * pack.ts, and as DirTree listings for forest.ts.
 *
 * Entry order is byte order of the full names, so the same store paths give
 * the same tarball on every server. File contents are opened only when
 * pack.ts reaches the entry, so at most one file is open per layer.
 *
 * Hard links are written as regular files by default. The NAR format has
 * no hard links, so a path substituted from a cache has none, while the same
 * path built locally or deduplicated by `nix-store --optimise` may have
 * some: writing them as links would make a layer's bytes depend on the host
 * store's history, and replicas sharing a bucket would produce different
 * digests for the same layer. `hardLinks: 'preserve'` writes a file whose
 * inode was already written in this layer as a link to the first name
 * (smaller layers, host-dependent digests).
 */
import { createReadStream, readFileSync } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import path from 'node:path';
import { isStorePath } from './graph.js';
import { compareBytes, planSymlinkLayer, type DirNode, type DirTree, type ForestConflict, type ForestEntry } from './forest.js';
import type { TarEntry } from './pack.js';
import type { LayerSegment } from './parallel-pack.js';

export interface WalkOptions {
  /**
   * Directory that stands in for `/` when reading, so tests can lay out a
   * fake `<root>/nix/store`. Entry names and symlink targets stay as in the
   * real store. Default: `/`.
   */
  root?: string;
  /** 'copy' (default): every file is a regular entry. 'preserve': repeated inodes become hardlink entries. */
  hardLinks?: 'copy' | 'preserve';
}

const STORE_DIR = '/nix/store';
// `nix` and `nix/store` are written with the mode of a store path rather than
// the host's (0755 and 1775 on a multi-user install, other values elsewhere):
// host-dependent modes would give every server its own digests.
const STORE_DIR_MODE = 0o555;
// 16 times fewer reads and stream chunks per large file than the 64 KiB
// default; see the note on chunk sizes in pack.ts.
const READ_CHUNK = 1024 * 1024;
/**
 * Files up to this size are read synchronously, in one call. A stream costs
 * three thread-pool round trips (open, read, close) of ~0.1 ms each, so a
 * 25 MB Python tree of 600 files took 0.27 s to read as streams and 0.02 s
 * with readFileSync here. The store paths being packed were just built or
 * read by Nix, so they sit in the page cache and a read blocks the event
 * loop for microseconds; a larger file still streams.
 */
const SYNC_READ_MAX = 256 * 1024;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Tar entries for a layer holding `paths` (store paths such as
 * `/nix/store/<hash>-htop-3.2.2`): `nix`, `nix/store`, then each store path
 * and everything below it, sorted by full name.
 */
export async function* storePathEntries(paths: readonly string[], opts: WalkOptions = {}): AsyncGenerator<TarEntry> {
  const sorted = sortedStorePaths(paths);
  yield* storeDirEntries();
  const inodes = opts.hardLinks === 'preserve' ? new Map<string, string>() : undefined;
  for (const p of sorted) yield* storePathWalk(p, opts.root ?? '/', inodes);
}

/**
 * The same entries as `storePathEntries`, as segments for the parallel
 * packer: the store directories, then one segment per store path, keyed by
 * the path so its compressed pieces are reused by any layer holding it.
 * With preserved hard links an entry may point into another store path, so
 * the layer is one segment and nothing is cached.
 */
export function storePathSegments(paths: readonly string[], opts: WalkOptions = {}): LayerSegment[] {
  const sorted = sortedStorePaths(paths);
  if (opts.hardLinks === 'preserve') return [{ entries: () => storePathEntries(sorted, opts) }];
  const root = opts.root ?? '/';
  return [{ entries: storeDirEntries }, ...sorted.map((p) => ({ cacheKey: p, entries: () => storePathWalk(p, root, undefined) }))];
}

function sortedStorePaths(paths: readonly string[]): string[] {
  for (const p of paths) {
    if (!isStorePath(p)) throw new TypeError(`not a store path: ${JSON.stringify(p)}`);
  }
  // Store path names share no prefix up to their 32-character hash, so
  // sorting the paths and walking each in order keeps the global order.
  return [...new Set(paths)].sort(compareBytes);
}

function storeDirEntries(): TarEntry[] {
  return [
    { name: 'nix', type: 'directory', mode: STORE_DIR_MODE },
    { name: 'nix/store', type: 'directory', mode: STORE_DIR_MODE },
  ];
}

async function* storePathWalk(p: string, root: string, inodes: Map<string, string> | undefined): AsyncGenerator<TarEntry> {
  const name = p.slice(1);
  const physical = path.join(root, p);
  const st = await lstat(physical);
  const entry = toEntry(name, physical, st, inodes, await linkTarget(physical, st));
  if (entry !== undefined) yield entry;
  if (st.isDirectory()) yield* walkDir(name, physical, inodes);
}

/**
 * Children of `dir` in full-name byte order. That order is not "sorted
 * children, each followed by its subtree": `a.txt` sorts before `a/x`
 * because `.` < `/`. So each child directory contributes two items, itself
 * under its name and its subtree under `name/`, and the items are sorted
 * together. Memory stays proportional to depth times directory width.
 */
async function* walkDir(name: string, physical: string, inodes: Map<string, string> | undefined): AsyncGenerator<TarEntry> {
  type Item = { key: string; subtree: boolean; name: string; physical: string; st: Stats };
  const items: Item[] = [];
  for (const child of await readNames(physical)) {
    const childPhysical = path.join(physical, child);
    const childName = `${name}/${child}`;
    const st = await lstat(childPhysical);
    items.push({ key: child, subtree: false, name: childName, physical: childPhysical, st });
    if (st.isDirectory()) items.push({ key: `${child}/`, subtree: true, name: childName, physical: childPhysical, st });
  }
  items.sort((a, b) => compareBytes(a.key, b.key));
  for (const it of items) {
    if (it.subtree) {
      yield* walkDir(it.name, it.physical, inodes);
    } else {
      const entry = toEntry(it.name, it.physical, it.st, inodes, await linkTarget(it.physical, it.st));
      if (entry !== undefined) yield entry;
    }
  }
}

async function linkTarget(physical: string, st: Stats): Promise<string | undefined> {
  return st.isSymbolicLink() ? readlink(physical) : undefined;
}

function toEntry(
  name: string,
  physical: string,
  st: Stats,
  inodes: Map<string, string> | undefined,
  target: string | undefined,
): TarEntry | undefined {
  const mode = st.mode & 0o7777;
  if (st.isDirectory()) return { name, type: 'directory', mode };
  if (st.isSymbolicLink()) return { name, type: 'symlink', mode, linkname: target as string };
  if (st.isFile()) {
    if (inodes !== undefined && st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      const first = inodes.get(key);
      if (first !== undefined) return { name, type: 'hardlink', mode, linkname: first };
      inodes.set(key, name);
    }
    return {
      name,
      type: 'file',
      mode,
      size: st.size,
      open: () => createReadStream(physical, { highWaterMark: READ_CHUNK }),
      ...(st.size <= SYNC_READ_MAX ? { read: () => readFileSync(physical) } : {}),
    };
  }
  // Sockets, FIFOs and device nodes cannot be in a store path (the NAR
  // format has only files, directories and symlinks, so Nix refuses to
  // register them); if one shows up the path was tampered with, and an image
  // must not carry a device node from the build host.
  return undefined;
}

/** Directory entry names; throws on names that are not UTF-8 (tar-stream writes names as UTF-8 strings). */
async function readNames(dir: string): Promise<string[]> {
  const raw = await readdir(dir, { encoding: 'buffer' });
  return raw.map((b) => {
    try {
      return utf8.decode(b);
    } catch {
      throw new Error(`${dir}: entry name ${b.toString('hex')} (hex) is not UTF-8 and cannot be written to a layer`);
    }
  });
}

// ---------------------------------------------------------------------------
// Symlink layer

const MAX_FOLLOW_DEPTH = 64;

/**
 * Lists a store path for forest.ts. Symlinks that resolve to a directory in
 * the store are listed as that directory (lndir follows them; forest.ts says
 * why that matters), unless following would loop. Symlinks elsewhere (for
 * example `/etc/...`) stay symlinks: what they point to on this host says
 * nothing about the image.
 */
export async function readDirTree(storePath: string, opts: WalkOptions = {}): Promise<DirTree> {
  if (!isStorePath(storePath)) throw new TypeError(`not a store path: ${JSON.stringify(storePath)}`);
  const root = opts.root ?? '/';
  const physical = path.join(root, storePath);
  const st = await lstat(physical);
  if (st.isDirectory()) return readDir(root, storePath, [storePath]);
  if (st.isSymbolicLink()) return { type: 'symlink', target: await readlink(physical) };
  return { type: 'file' };
}

/**
 * `dir` is a real (symlink-free) path as the image sees it, so that relative
 * link targets below it resolve the way the kernel resolves them;
 * `ancestors` are the real paths of the directories we are inside.
 */
async function readDir(root: string, dir: string, ancestors: readonly string[]): Promise<DirNode> {
  const children = new Map<string, DirTree>();
  const physical = path.join(root, dir);
  for (const name of await readNames(physical)) {
    const childPath = `${dir}/${name}`;
    const childPhysical = path.join(physical, name);
    const st = await lstat(childPhysical);
    if (st.isDirectory()) {
      children.set(name, await readDir(root, childPath, [...ancestors, childPath]));
    } else if (st.isSymbolicLink()) {
      const target = await readlink(childPhysical);
      const real = await followableDir(root, childPath, ancestors);
      children.set(name, real === undefined ? { type: 'symlink', target } : await readDir(root, real, [...ancestors, real]));
    } else if (st.isFile()) {
      children.set(name, { type: 'file' });
    }
    // Other file types: see toEntry.
  }
  return { type: 'directory', children };
}

/**
 * The real path (as the image sees it) of the directory a symlink leads to,
 * if we should follow it: it must resolve to a directory inside the store,
 * and not to one we are already inside.
 */
async function followableDir(root: string, linkPath: string, ancestors: readonly string[]): Promise<string | undefined> {
  if (ancestors.length >= MAX_FOLLOW_DEPTH) return undefined;
  const real = await resolveInRoot(root, linkPath);
  // Dangling links (e.g. into a store path outside the closure) and links
  // out of the store stay plain symlinks, as lndir would make them.
  if (real === undefined || !real.startsWith(`${STORE_DIR}/`)) return undefined;
  try {
    if (!(await lstat(path.join(root, real))).isDirectory()) return undefined;
  } catch {
    return undefined;
  }
  // A link to itself or to a directory we are inside would recurse forever.
  return ancestors.includes(real) ? undefined : real;
}

const MAX_HOPS = 40; // Linux's MAXSYMLINKS

/**
 * realpath(3) with `root` as `/`: absolute link targets resolve inside
 * `root`, as they will inside the image. Undefined if a component is
 * missing or the links loop.
 */
async function resolveInRoot(root: string, logical: string): Promise<string | undefined> {
  const pending = logical.split('/').filter((c) => c !== '');
  const done: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const c = pending.shift() as string;
    if (c === '.') continue;
    if (c === '..') {
      done.pop();
      continue;
    }
    const candidate = `/${[...done, c].join('/')}`;
    let st: Stats;
    try {
      st = await lstat(path.join(root, candidate));
    } catch {
      return undefined;
    }
    if (!st.isSymbolicLink()) {
      done.push(c);
      continue;
    }
    if (++hops > MAX_HOPS) return undefined;
    const target = await readlink(path.join(root, candidate));
    if (target.startsWith('/')) done.length = 0;
    pending.unshift(...target.split('/').filter((t) => t !== ''));
  }
  return `/${done.join('/')}`;
}

export interface SymlinkLayer {
  /** Sorted entries for packLayer. */
  readonly entries: ForestEntry[];
  /** For logging: which package lost which path. */
  readonly conflicts: ForestConflict[];
}

/** Reads the top-level store paths (in image package order) and plans the symlink layer. */
export async function symlinkLayerEntries(storePaths: readonly string[], opts: WalkOptions = {}): Promise<SymlinkLayer> {
  const packages = [];
  for (const storePath of storePaths) packages.push({ storePath, tree: await readDirTree(storePath, opts) });
  return planSymlinkLayer(packages);
}

/**
 * The programs a store path offers: names in its `bin/` that are not
 * directories, sorted; empty without a `bin/`. For an image's default command.
 */
export async function binPrograms(storePath: string, opts: WalkOptions = {}): Promise<string[]> {
  const dir = path.join(opts.root ?? '/', storePath, 'bin');
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    return entries.filter((e) => !e.isDirectory()).map((e) => e.name).sort(compareBytes);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
    throw e;
  }
}
