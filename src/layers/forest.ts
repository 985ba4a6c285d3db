/**
 * Plans the symlink layer: the image root that makes the requested packages
 * usable (`/bin/htop`, `/lib/...`, `/share/...`), as nixpkgs' `symlinkJoin`
 * builds it for Nixery. Pure: the package contents come in as `DirTree`
 * listings (walk.ts reads them from disk) and the plan comes out as tar
 * entries for pack.ts.
 *
 * Rules, in the order they apply:
 *
 * - The image's own essentials go first and so win every conflict: `tmp`
 *   (mode 1777: Nixery's was 0555, so non-root processes could not use it)
 *   and, only when a `coreutils-*` store path with a `bin/env` is among the
 *   packages, `usr/bin/env` pointing at it (Nixery linked it unconditionally
 *   and left it dangling otherwise).
 * - Then every package in the given order (the image's sorted package
 *   order) is merged like `lndir` does for `symlinkJoin`: directories become
 *   real directories (mode 0755) and merge; every file or symlink becomes an
 *   ABSOLUTE symlink to its place in the store, e.g.
 *   `bin/htop -> /nix/store/<hash>-htop-3.2.2/bin/htop`.
 * - On a clash the earlier one stays (lndir, like `cp -rsn`, never
 *   overwrites): two packages with the same file, or a file where another
 *   package has a directory (or the reverse; then the whole dropped subtree
 *   is reported once, at its top). Every clash is reported in `conflicts`.
 * - A store path that is a single file (a `writeText` output) or a symlink
 *   has nothing to merge and is skipped, as `symlinkJoin` cannot merge it either.
 * - Symlinks to directories inside a package are followed by the reader
 *   (walk.ts `readDirTree`), because lndir follows them: `lndir` stats
 *   the source, sees a directory and recurses, so a package's `lib64 -> lib`
 *   becomes a real `lib64/` whose entries point through the link
 *   (`/nix/store/<hash>-x/lib64/libfoo.so`) and can merge with another
 *   package's `lib64/`. Not following would make such a directory a single
 *   symlink that silently hides every other package's files below it. So a
 *   DirTree never needs to say "this directory was a symlink".
 *
 * Output entries are sorted by name in byte order (parents before children).
 */
import { storePathName } from './graph.js';

/** A listing of one store path's contents, without file data. */
export type DirTree = DirNode | FileNode | SymlinkNode;

export interface DirNode {
  readonly type: 'directory';
  readonly children: ReadonlyMap<string, DirTree>;
}

export interface FileNode {
  readonly type: 'file';
}

export interface SymlinkNode {
  readonly type: 'symlink';
  /** Where the link points; informational, since the forest links to the symlink itself. */
  readonly target: string;
}

export interface PackageTree {
  /** e.g. `/nix/store/<hash>-htop-3.2.2` */
  readonly storePath: string;
  readonly tree: DirTree;
}

/** What pack.ts writes for the symlink layer: directories and symlinks only. */
export interface ForestEntry {
  name: string;
  type: 'directory' | 'symlink';
  mode: number;
  linkname?: string;
}

export type ConflictKind =
  /** Both have a non-directory at this name. */
  | 'file'
  /** The kept one has a non-directory, the dropped one a directory. */
  | 'file-over-directory'
  /** The kept one has a directory, the dropped one a non-directory. */
  | 'directory-over-file';

export interface ForestConflict {
  /** Path in the image, without leading slash, e.g. `bin/ls`. */
  readonly path: string;
  readonly kind: ConflictKind;
  /** Store path whose entry stays, or `image` for the image's own `tmp` and `usr/bin/env`. */
  readonly kept: string;
  /** Store path whose entry (or subtree) is left out. */
  readonly dropped: string;
}

export interface ForestPlan {
  readonly entries: ForestEntry[];
  readonly conflicts: ForestConflict[];
}

const DIR_MODE = 0o755;
const TMP_MODE = 0o1777;
// Linux ignores symlink permissions; 0777 is what lstat reports and GNU tar writes.
const LINK_MODE = 0o777;
const IMAGE_OWNER = 'image';

type Planned =
  | { kind: 'dir'; owner: string; mode: number; children: Map<string, Planned> }
  | { kind: 'link'; owner: string; target: string };

/**
 * Merges `packages` (in the given order; duplicates after the first are
 * ignored) into the symlink layer's entries.
 */
export function planSymlinkLayer(packages: readonly PackageTree[]): ForestPlan {
  const conflicts: ForestConflict[] = [];
  const root = new Map<string, Planned>();

  const seen = new Set<string>();
  const unique = packages.filter((p) => !seen.has(p.storePath) && seen.add(p.storePath));

  root.set('tmp', { kind: 'dir', owner: IMAGE_OWNER, mode: TMP_MODE, children: new Map() });
  const env = findEnv(unique);
  if (env !== undefined) {
    const bin = new Map<string, Planned>([['env', { kind: 'link', owner: IMAGE_OWNER, target: env }]]);
    const usr = new Map<string, Planned>([['bin', { kind: 'dir', owner: IMAGE_OWNER, mode: DIR_MODE, children: bin }]]);
    root.set('usr', { kind: 'dir', owner: IMAGE_OWNER, mode: DIR_MODE, children: usr });
  }

  for (const pkg of unique) {
    if (pkg.tree.type !== 'directory') continue;
    merge(pkg.storePath, pkg.tree, '', root, conflicts);
  }

  const entries: ForestEntry[] = [];
  flatten(root, '', entries);
  entries.sort((a, b) => compareBytes(a.name, b.name));
  return { entries, conflicts };
}

/** `<coreutils>/bin/env` of the first coreutils-* package that has one. */
function findEnv(packages: readonly PackageTree[]): string | undefined {
  for (const p of packages) {
    if (!storePathName(p.storePath).startsWith('coreutils-')) continue;
    if (p.tree.type !== 'directory') continue;
    const bin = p.tree.children.get('bin');
    if (bin?.type !== 'directory') continue;
    const env = bin.children.get('env');
    if (env !== undefined && env.type !== 'directory') return `${p.storePath}/bin/env`;
  }
  return undefined;
}

function merge(
  storePath: string,
  dir: DirNode,
  prefix: string,
  into: Map<string, Planned>,
  conflicts: ForestConflict[],
): void {
  // Sorted so the conflict list comes out in a stable order.
  const names = [...dir.children.keys()].sort(compareBytes);
  for (const name of names) {
    const node = dir.children.get(name) as DirTree;
    const path = prefix + name;
    const existing = into.get(name);
    if (node.type === 'directory') {
      if (existing === undefined) {
        const created: Planned = { kind: 'dir', owner: storePath, mode: DIR_MODE, children: new Map() };
        into.set(name, created);
        merge(storePath, node, `${path}/`, created.children, conflicts);
      } else if (existing.kind === 'dir') {
        merge(storePath, node, `${path}/`, existing.children, conflicts);
      } else {
        conflicts.push({ path, kind: 'file-over-directory', kept: existing.owner, dropped: storePath });
      }
    } else if (existing === undefined) {
      into.set(name, { kind: 'link', owner: storePath, target: `${storePath}/${path}` });
    } else {
      const kind = existing.kind === 'dir' ? 'directory-over-file' : 'file';
      conflicts.push({ path, kind, kept: existing.owner, dropped: storePath });
    }
  }
}

function flatten(dir: Map<string, Planned>, prefix: string, out: ForestEntry[]): void {
  for (const [name, p] of dir) {
    const path = prefix + name;
    if (p.kind === 'dir') {
      out.push({ name: path, type: 'directory', mode: p.mode });
      flatten(p.children, `${path}/`, out);
    } else {
      out.push({ name: path, type: 'symlink', mode: LINK_MODE, linkname: p.target });
    }
  }
}

/**
 * Byte order of the UTF-8 encodings, which is what GNU tar's --sort=name and
 * Go's sort.Strings give. Plain `<` on JS strings compares UTF-16 code units,
 * which differs only where a surrogate pair (code point >= U+10000) meets a
 * code unit in U+E000..U+FFFF; remapping those two ranges fixes that without
 * encoding every name for every comparison.
 */
export function compareBytes(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x < y ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}
