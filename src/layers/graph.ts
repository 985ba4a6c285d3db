/**
 * The runtime closure graph as read from the Nix store: one node per store
 * path with its NAR size and the store paths it references. Self references
 * are dropped here (every package with its own lib/ lists itself), so the
 * layering code can treat the graph as a plain DAG. Pure.
 */

export interface StorePathNode {
  /** Full store path, e.g. /nix/store/<hash>-htop-3.2.2 */
  readonly path: string;
  /** Size of the path's NAR serialisation in bytes (close to its size on disk). */
  readonly narSize: number;
  /** Store paths this path refers to at run time, sorted, without itself. */
  readonly references: readonly string[];
}

export interface ClosureGraph {
  /** Store paths that were requested (the image's top-level packages), sorted. */
  readonly roots: readonly string[];
  /** Every store path of the closure, keyed by path. */
  readonly nodes: ReadonlyMap<string, StorePathNode>;
}

const STORE_PATH = /^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$/;

export function isStorePath(p: string): boolean {
  return STORE_PATH.test(p);
}

/** `/nix/store/<hash>-htop-3.2.2` -> `htop-3.2.2` */
export function storePathName(p: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  return base.slice(33);
}

/**
 * A derivation name split the way Nix's `builtins.parseDrvName` does: the
 * version starts at the first `-` followed by a character that is not a
 * letter (`htop-3.2.2` -> htop 3.2.2, `perl5.36.0-Try-Tiny-0.31` -> perl5.36.0-Try-Tiny 0.31,
 * `iana-etc-20230316` -> iana-etc 20230316, `hello` -> hello "").
 */
export function parseDrvName(name: string): { name: string; version: string } {
  for (let i = 0; i < name.length - 1; i++) {
    if (name[i] === '-' && !/[A-Za-z]/.test(name[i + 1]!)) return { name: name.slice(0, i), version: name.slice(i + 1) };
  }
  return { name, version: '' };
}

/** The store hash of a store path: `/nix/store/<hash>-name` -> `<hash>`. */
export function storePathHash(p: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  return base.slice(0, 32);
}

/**
 * Builds a ClosureGraph from raw (path, narSize, references) entries.
 * Drops self references; throws if a reference points outside the closure,
 * because a layer built from an incomplete closure would not run.
 */
export function makeClosureGraph(
  roots: readonly string[],
  entries: Iterable<{ path: string; narSize: number; references: readonly string[] }>,
): ClosureGraph {
  const nodes = new Map<string, StorePathNode>();
  for (const e of entries) {
    const references = [...new Set(e.references.filter((r) => r !== e.path))].sort();
    nodes.set(e.path, { path: e.path, narSize: e.narSize, references });
  }
  for (const n of nodes.values()) {
    for (const r of n.references) {
      if (!nodes.has(r)) throw new Error(`closure graph: ${n.path} references ${r}, which is not in the closure`);
    }
  }
  const sortedRoots = [...new Set(roots)].sort();
  for (const r of sortedRoots) {
    if (!nodes.has(r)) throw new Error(`closure graph: root ${r} is not in the closure`);
  }
  return { roots: sortedRoots, nodes };
}
