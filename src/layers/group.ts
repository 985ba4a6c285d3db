/**
 * Splits an image's runtime closure into layers, so that images sharing
 * dependencies share layer blobs. A port of Nixery's `layers/layers.go`
 * (design: tazj.in/blog/nixery-layers). Pure and deterministic: the same
 * graph gives the same layers whatever the order of its maps and lists.
 *
 * # Inputs
 *
 *   - the runtime closure graph (./graph.ts): every store path with its NAR
 *     size and references, and the top-level paths that were requested;
 *   - popularity counts per package name (./popularity.ts);
 *   - the layer budget: the most layers the image may use.
 *
 * # Algorithm
 *
 *  1. Build a graph with a synthetic root `img` and an edge from it to every
 *     requested path. A path also gets an edge from `img` if it is popular
 *     (count >= 100, or named nss-cacert* / iana-etc*, which every image
 *     holds) or if its closure (itself and everything it refers to,
 *     transitively) is larger than 100 MB.
 *  2. Compute the dominator tree from `img` (Cooper, Harvey, Kennedy: "A
 *     Simple, Fast Dominance Algorithm"). A path dominated only by `img` is
 *     reached from several places, or was flagged in step 1; a path dominated
 *     by X is only ever needed through X, so it can travel with X.
 *  3. Each child of `img` in the dominator tree becomes one layer, holding
 *     every path it dominates. Merge rating = popularity of that child x the
 *     layer's size.
 *  4. While there are more layers than the budget, the lowest-rated layers
 *     are merged into one: Nixery sorts once and folds the lowest layer into
 *     the next, so exactly the `n - budget + 1` lowest end up together and
 *     the highly rated (shared, popular) layers stay intact. The merged
 *     layer's rating is the sum of its parts.
 *  5. Layers are returned highest rating first (Nixery's manifest order:
 *     Docker reuses a common prefix of layers, moby/moby#38446); ties go to
 *     the smaller sorted path list, so the output is fully determined.
 *
 * # Example
 *
 * The graph of layers.go's package comment, with sizes. G is 500 MB, so G,
 * D and C have big closures; E has a popularity count of 150; the other
 * paths are not in the popularity data (count 1).
 *
 *   img
 *   │
 *   ├───> A (1 MB) ─────┐
 *   │                   v
 *   ├───> B (2 MB) ───> E (2 MB, popular)
 *   │                   ^
 *   ├───> C (4 MB) ─────┘
 *   │     │
 *   │     v
 *   └───> D (5 MB) ───> F (6 MB)
 *         │
 *         └───────────> G (500 MB)
 *
 * Dominator tree: E and G are reached through several parents or flagged,
 * F only through D:
 *
 *   img ──> A, B, C, E, G, D ──> F
 *
 * Layers and merge ratings (in MB x popularity): G 500, E 300, {D, F} 11,
 * C 4, B 2, A 1. For each budget:
 *
 *   budget >= 6: {G}, {E}, {D, F}, {C}, {B}, {A}
 *   budget 5:    {G}, {E}, {D, F}, {C}, {A, B}
 *   budget 4:    {G}, {E}, {D, F}, {A, B, C}
 *   budget 3:    {G}, {E}, {A, B, C, D, F}
 *   budget 2:    {G}, {A, B, C, D, E, F}
 *   budget 1:    {A, B, C, D, E, F, G}
 *
 * # Differences from Nixery
 *
 *   - Size in the merge rating is the layer's own NAR size. Nixery sums the
 *     members' *closure* sizes (exportReferencesGraph's `closureSize`), which
 *     counts shared dependencies many times over and rates a small layer high
 *     because of what it refers to in other layers.
 *   - Paths not reachable from the requested ones (absent from a real
 *     closure) get an edge from `img` instead of being dropped, so every path
 *     lands in exactly one layer.
 *   - Equal ratings are ordered by path; Go's sort.Slice leaves their order
 *     unspecified.
 */
import type { ClosureGraph } from './graph.js';
import { POPULAR_THRESHOLD, popularityOf, type Popularity } from './popularity.js';

/** A path whose closure is larger than this gets its own layer (layers.go: 100 MB). */
export const SIZE_THRESHOLD = 100 * 1_000_000;

export interface LayerGroup {
  /** Store paths in this layer, sorted. */
  readonly paths: readonly string[];
  /** popularity x size; for merged layers, the sum of the merged ratings. */
  readonly mergeRating: number;
  /** Sum of the paths' NAR sizes. */
  readonly narSize: number;
}

/** Node 0 is the synthetic root; node i >= 1 is the i-th path in sorted order. */
const ROOT = 0;

export function groupLayers(graph: ClosureGraph, popularity: Popularity, budget: number): LayerGroup[] {
  if (!Number.isInteger(budget) || budget < 1) {
    throw new RangeError(`layer budget must be an integer >= 1, got ${budget}`);
  }
  // Sorting paths and references first makes every later step independent
  // of the input's Map insertion order and reference order.
  const paths = ['', ...[...graph.nodes.keys()].sort()];
  const index = new Map(paths.map((p, i) => [p, i]));
  const nodeOf = (i: number) => graph.nodes.get(paths[i]!)!;
  const idOf = (p: string) => index.get(p)!;
  const size = paths.map((_, i) => (i === ROOT ? 0 : nodeOf(i).narSize));
  const succ: number[][] = paths.map((_, i) =>
    i === ROOT ? [] : nodeOf(i).references.map(idOf).sort((a, b) => a - b),
  );

  const referenced = new Set(succ.flat());
  const big = bigClosures(succ, size);
  const fromRoot = new Set(graph.roots.map(idOf));
  for (let v = 1; v < paths.length; v++) {
    const popular = popularityOf(popularity, paths[v]!) >= POPULAR_THRESHOLD;
    if (popular || big[v] || !referenced.has(v)) fromRoot.add(v);
  }
  succ[ROOT] = [...fromRoot].sort((a, b) => a - b);
  connectCycles(succ);

  // The layer of each path is named by its ancestor just below the root.
  const { idom, rpo } = dominators(succ);
  const top: number[] = [];
  const members = new Map<number, number[]>();
  for (const v of rpo) {
    if (v === ROOT) continue;
    top[v] = idom[v] === ROOT ? v : top[idom[v]!]!;
  }
  for (let v = 1; v < paths.length; v++) {
    const t = top[v]!;
    const list = members.get(t) ?? [];
    list.push(v);
    members.set(t, list);
  }
  const layers = [...members].map(([t, vs]): LayerGroup => {
    const narSize = sum(vs.map((v) => size[v]!));
    return {
      paths: vs.map((v) => paths[v]!), // ascending ids = sorted paths
      mergeRating: popularityOf(popularity, paths[t]!) * narSize,
      narSize,
    };
  });

  layers.sort(byRank);
  if (layers.length > budget) layers.push(merge(layers.splice(budget - 1)));
  return layers.sort(byRank);
}

/** Whether each node's closure (itself plus everything it reaches) exceeds SIZE_THRESHOLD. */
function bigClosures(succ: readonly (readonly number[])[], size: readonly number[]): boolean[] {
  // A DFS per node would be quadratic on large closures. Two shortcuts keep
  // it cheap: a walk stops once past the threshold, and it stops on reaching
  // a node already known to be big (its closure is part of this one), which
  // postorder (references before referrers) makes the common case.
  const big = succ.map(() => false);
  const mark = succ.map(() => -1); // mark[v] === start: v counted for `start`
  const isBig = (start: number): boolean => {
    let total = 0;
    const stack = [start];
    mark[start] = start;
    for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
      total += size[v]!;
      if (total > SIZE_THRESHOLD || big[v]) return true;
      for (const w of succ[v]!) {
        if (mark[w] !== start) {
          mark[w] = start;
          stack.push(w);
        }
      }
    }
    return false;
  };
  for (const v of postorder(succ, succ.keys())) big[v] = isBig(v);
  return big;
}

/**
 * Every path without a referrer already has an edge from the root, so only a
 * reference cycle with no way in stays unreachable. Nix rejects such cycles
 * between store paths; should one appear, its first path is attached to the
 * root rather than losing the cycle from the image.
 */
function connectCycles(succ: number[][]): void {
  for (;;) {
    const seen = new Set(postorder(succ));
    const lost = succ.findIndex((_, v) => !seen.has(v));
    if (lost === -1) return;
    succ[ROOT]!.push(lost);
  }
}

/**
 * Nodes reachable from `starts` (default: the root), in DFS postorder.
 * Iterative, because store graphs can be deeper than the call stack.
 */
function postorder(succ: readonly (readonly number[])[], starts: Iterable<number> = [ROOT]): number[] {
  const seen = new Set<number>();
  const order: number[] = [];
  const stack: { v: number; next: number }[] = [];
  for (const start of starts) {
    if (seen.has(start)) continue;
    seen.add(start);
    stack.push({ v: start, next: 0 });
    while (stack.length > 0) {
      const frame = stack[stack.length - 1]!;
      const w = succ[frame.v]![frame.next++];
      if (w === undefined) {
        stack.pop();
        order.push(frame.v);
      } else if (!seen.has(w)) {
        seen.add(w);
        stack.push({ v: w, next: 0 });
      }
    }
  }
  return order;
}

/**
 * Immediate dominators by Cooper, Harvey and Kennedy's iterative algorithm:
 * visit nodes in reverse postorder, set each node's idom to the common
 * dominator (`intersect`) of its already processed predecessors, repeat until
 * nothing changes. Returns idom per node (idom[root] = root) and the reverse
 * postorder, in which every node comes after its dominators.
 */
function dominators(succ: readonly (readonly number[])[]): { idom: number[]; rpo: number[] } {
  const order = postorder(succ);
  const po: number[] = [];
  order.forEach((v, i) => (po[v] = i));
  const preds: number[][] = succ.map(() => []);
  succ.forEach((ws, v) => ws.forEach((w) => preds[w]!.push(v)));

  const idom: (number | undefined)[] = [];
  idom[ROOT] = ROOT;
  // Walk up the dominator tree from both nodes until they meet; a higher
  // postorder number is closer to the root.
  const intersect = (a: number, b: number): number => {
    while (a !== b) {
      while (po[a]! < po[b]!) a = idom[a]!;
      while (po[b]! < po[a]!) b = idom[b]!;
    }
    return a;
  };
  const rpo = order.reverse();
  for (let changed = true; changed; ) {
    changed = false;
    for (const b of rpo) {
      if (b === ROOT) continue;
      let next: number | undefined;
      for (const p of preds[b]!) {
        if (idom[p] === undefined) continue; // not processed yet
        next = next === undefined ? p : intersect(p, next);
      }
      if (next !== idom[b]) {
        idom[b] = next;
        changed = true;
      }
    }
  }
  return { idom: idom.map((d) => d!), rpo };
}

/** Highest rating first; equal ratings by sorted path list. */
function byRank(a: LayerGroup, b: LayerGroup): number {
  if (a.mergeRating !== b.mergeRating) return b.mergeRating - a.mergeRating;
  return comparePaths(a.paths, b.paths);
}

function comparePaths(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  }
  return a.length - b.length;
}

function merge(layers: readonly LayerGroup[]): LayerGroup {
  return {
    paths: layers.flatMap((l) => l.paths).sort(),
    mergeRating: sum(layers.map((l) => l.mergeRating)),
    narSize: sum(layers.map((l) => l.narSize)),
  };
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}
