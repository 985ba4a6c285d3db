import { describe, it, expect } from 'vitest';
import { makeClosureGraph, storePathName, type ClosureGraph, type StorePathNode } from '../../../src/layers/graph.js';
import { groupLayers, SIZE_THRESHOLD, type LayerGroup } from '../../../src/layers/group.js';
import { parsePopularity, popularityOf, type Popularity } from '../../../src/layers/popularity.js';

const MB = 1_000_000;
const NO_POPULARITY: Popularity = new Map();

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';

/** `/nix/store/<32 nix-base32 chars>-<name>`, the hash derived from the name. */
function sp(name: string): string {
  let h = 2166136261;
  let hash = '';
  for (let i = 0; i < 32; i++) {
    for (const c of `${i}${name}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
    hash += NIX32[h % 32];
  }
  return `/nix/store/${hash}-${name}`;
}

type Spec = Record<string, { size: number; refs?: string[] }>;

function graphOf(roots: string[], spec: Spec): ClosureGraph {
  return makeClosureGraph(
    roots.map(sp),
    Object.entries(spec).map(([name, { size, refs = [] }]) => ({
      path: sp(name),
      narSize: size,
      references: refs.map(sp),
    })),
  );
}

/** Layers as name lists, in output order (names sorted inside a layer, for reading). */
function names(layers: readonly LayerGroup[]): string[][] {
  return layers.map((l) => l.paths.map(storePathName).sort());
}

/** Seeded PRNG (mulberry32), so "random" graphs are the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffled<T>(xs: readonly T[], rand: () => number): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

// The graph of Nixery's layers.go package comment (and of group.ts's), with
// sizes chosen so that the ratings order G > E > {D,F} > C > B > A:
//
//   img ─> A ─> E        G: 500 MB, so G, D and C have closures > 100 MB
//   img ─> B ─> E        E: popularity 150
//   img ─> C ─> E, D     ratings (MB x popularity): G 500, E 300,
//   img ─> D ─> F, G       {D,F} 11, C 4, B 2, A 1
const EXAMPLE_SPEC: Spec = {
  A: { size: 1 * MB, refs: ['E'] },
  B: { size: 2 * MB, refs: ['E'] },
  C: { size: 4 * MB, refs: ['E', 'D'] },
  D: { size: 5 * MB, refs: ['F', 'G'] },
  E: { size: 2 * MB },
  F: { size: 6 * MB },
  G: { size: 500 * MB },
};
const EXAMPLE = graphOf(['A', 'B', 'C', 'D'], EXAMPLE_SPEC);
const EXAMPLE_POPULARITY: Popularity = new Map([['E', 150]]);

describe('groupLayers: the layers.go example', () => {
  it.each([
    // Nixery: "Layers: { A, B, C, D, E, F, G }"
    [1, [['A', 'B', 'C', 'D', 'E', 'F', 'G']]],
    // Nixery: "{ G }, { A, B, C, D, E, F }"; the 5 lowest (all but G) are merged.
    [2, [['G'], ['A', 'B', 'C', 'D', 'E', 'F']]],
    // Nixery: "{ G }, { E }, { A, B, C, D, F }"; the 4 lowest ({D,F}, C, B, A) are merged.
    [3, [['G'], ['E'], ['A', 'B', 'C', 'D', 'F']]],
    // Nixery: "{ G }, { E }, { D, F }, { A, B, C }"; C, B, A merged (rating 7 < 11 of {D,F}).
    [4, [['G'], ['E'], ['D', 'F'], ['A', 'B', 'C']]],
    // Not in Nixery's comment: B and A merged (rating 3), which sorts below C (4).
    [5, [['G'], ['E'], ['D', 'F'], ['C'], ['A', 'B']]],
    // Six top-level subtrees fit: nothing is merged.
    [6, [['G'], ['E'], ['D', 'F'], ['C'], ['B'], ['A']]],
    // Nixery: "{ E }, { D, F }, { A }, { B }, { C }"; its comment leaves out G,
    // which is a child of img in its own dominator tree; same as budget 6 here.
    [10, [['G'], ['E'], ['D', 'F'], ['C'], ['B'], ['A']]],
  ])('budget %i', (budget, expected) => {
    expect(names(groupLayers(EXAMPLE, EXAMPLE_POPULARITY, budget))).toEqual(expected);
  });

  it('rates a layer by popularity x NAR size, and a merged layer by the sum', () => {
    const layers = groupLayers(EXAMPLE, EXAMPLE_POPULARITY, 4);
    expect(layers.map((l) => [l.mergeRating, l.narSize])).toEqual([
      [500 * MB, 500 * MB], // G: 1 x 500 MB
      [300 * MB, 2 * MB], // E: 150 x 2 MB
      [11 * MB, 11 * MB], // D + F
      [7 * MB, 7 * MB], // A + B + C
    ]);
  });

  it('sorts the paths of each layer', () => {
    for (const layer of groupLayers(EXAMPLE, EXAMPLE_POPULARITY, 3)) {
      expect(layer.paths).toEqual([...layer.paths].sort());
    }
  });

  it('ignores self references', () => {
    const withSelf = makeClosureGraph(
      ['A', 'B', 'C', 'D'].map(sp),
      Object.entries(EXAMPLE_SPEC).map(([name, { size, refs = [] }]) => ({
        path: sp(name),
        narSize: size,
        references: [sp(name), ...refs.map(sp)],
      })),
    );
    for (const budget of [1, 2, 3, 4, 10]) {
      expect(groupLayers(withSelf, EXAMPLE_POPULARITY, budget)).toEqual(
        groupLayers(EXAMPLE, EXAMPLE_POPULARITY, budget),
      );
    }
    const lone = graphOf(['x'], { x: { size: 1, refs: ['x'] } });
    expect(names(groupLayers(lone, NO_POPULARITY, 1))).toEqual([['x']]);
  });
});

describe('groupLayers: what splits a path out', () => {
  // app ─> libfoo ─> libbar
  //   └──> libbaz
  const APP = graphOf(['app-1.0'], {
    'app-1.0': { size: 1 * MB, refs: ['libfoo-2.1', 'libbaz-1.1'] },
    'libfoo-2.1': { size: 2 * MB, refs: ['libbar-0.3'] },
    'libbar-0.3': { size: 3 * MB },
    'libbaz-1.1': { size: 4 * MB },
  });

  it('keeps everything dominated by one top-level path together', () => {
    expect(names(groupLayers(APP, NO_POPULARITY, 10))).toEqual([['app-1.0', 'libbar-0.3', 'libbaz-1.1', 'libfoo-2.1']]);
  });

  it('gives a popular path (count >= 100) its own layer, with what only it uses', () => {
    const pop = new Map([['libfoo-2.1', 100]]);
    expect(names(groupLayers(APP, pop, 10))).toEqual([
      ['libbar-0.3', 'libfoo-2.1'], // 100 x 5 MB
      ['app-1.0', 'libbaz-1.1'], // 1 x 5 MB
    ]);
  });

  it('does not split a path below the popularity threshold', () => {
    const pop = new Map([['libfoo-2.1', 99]]);
    expect(groupLayers(APP, pop, 10)).toHaveLength(1);
  });

  it('looks popularity up by name with version (only the hash is stripped)', () => {
    const pop = new Map([['libfoo', 1000]]);
    expect(groupLayers(APP, pop, 10)).toHaveLength(1);
  });

  it('gives a path whose closure exceeds 100 MB its own layer', () => {
    // top ─> lib
    //  └───> big (150 MB) ─> bigdep
    const graph = graphOf(['top'], {
      top: { size: 1 * MB, refs: ['lib', 'big'] },
      lib: { size: 1 * MB },
      big: { size: 150 * MB, refs: ['bigdep'] },
      bigdep: { size: 1 * MB },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([
      ['big', 'bigdep'],
      ['lib', 'top'],
    ]);
  });

  it('does not split a closure of exactly the threshold', () => {
    const graph = graphOf(['top'], {
      top: { size: 1 * MB, refs: ['big'] },
      big: { size: SIZE_THRESHOLD - 1 * MB, refs: ['bigdep'] },
      bigdep: { size: 1 * MB },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([['big', 'bigdep', 'top']]);
  });

  it('splits every path above a big one too, as Nixery does (closure size, not own size)', () => {
    // top ─> mid ─> big (150 MB): mid's closure is 152 MB, so mid is "big" as well.
    const graph = graphOf(['top'], {
      top: { size: 1 * MB, refs: ['mid'] },
      mid: { size: 2 * MB, refs: ['big'] },
      big: { size: 150 * MB },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([['big'], ['mid'], ['top']]);
  });

  it('splits out nss-cacert and iana-etc even when only referenced by another path', () => {
    const graph = graphOf(['curl-8.4.0'], {
      'curl-8.4.0': { size: 1 * MB, refs: ['nss-cacert-3.95', 'iana-etc-20231227', 'zlib-1.3'] },
      'nss-cacert-3.95': { size: 500_000 },
      'iana-etc-20231227': { size: 20_000 },
      'zlib-1.3': { size: 100_000 },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([
      ['nss-cacert-3.95'], // 500000 x 500 kB
      ['iana-etc-20231227'], // 500000 x 20 kB
      ['curl-8.4.0', 'zlib-1.3'],
    ]);
  });

  it('keeps nss-cacert and iana-etc apart longest when merging', () => {
    const graph = graphOf(['huge', 'small', 'nss-cacert-3.95', 'iana-etc-20231227'], {
      huge: { size: 2000 * MB }, // 1 x 2 GB still rates below iana-etc's 500000 x 20 kB
      small: { size: 1 * MB },
      'nss-cacert-3.95': { size: 500_000 },
      'iana-etc-20231227': { size: 20_000 },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 3))).toEqual([
      ['nss-cacert-3.95'],
      ['iana-etc-20231227'],
      ['huge', 'small'],
    ]);
    expect(names(groupLayers(graph, NO_POPULARITY, 2))).toEqual([
      ['nss-cacert-3.95'],
      ['huge', 'iana-etc-20231227', 'small'],
    ]);
  });

  it('gives a path unreachable from the roots its own layer, with what only it uses', () => {
    // Not in a real closure, but every path must land in a layer. The
    // dependency sorts first, so picking "the first path not yet reached"
    // would wrongly split lonely-lib from lonely.
    expect(sp('lonely-lib') < sp('lonely')).toBe(true);
    const graph = graphOf(['app'], {
      app: { size: 2, refs: ['lib'] },
      lib: { size: 1 },
      lonely: { size: 5, refs: ['lib', 'lonely-lib'] },
      'lonely-lib': { size: 5 },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([['lonely', 'lonely-lib'], ['app'], ['lib']]);
  });

  it('keeps reference cycles (which Nix forbids) instead of dropping them', () => {
    // app ─> x <─> y, and p <─> q referenced by nothing else
    const graph = graphOf(['app'], {
      app: { size: 10, refs: ['x'] },
      x: { size: 1, refs: ['y'] },
      y: { size: 1, refs: ['x'] },
      p: { size: 1, refs: ['q'] },
      q: { size: 1, refs: ['p'] },
    });
    expect(names(groupLayers(graph, NO_POPULARITY, 10))).toEqual([
      ['app', 'x', 'y'],
      ['p', 'q'],
    ]);
  });
});

describe('groupLayers: arguments', () => {
  it.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])('rejects budget %s', (budget) => {
    expect(() => groupLayers(EXAMPLE, NO_POPULARITY, budget)).toThrow(RangeError);
  });

  it('returns no layers for an empty graph', () => {
    expect(groupLayers(makeClosureGraph([], []), NO_POPULARITY, 1)).toEqual([]);
  });
});

describe('groupLayers: a 300-path random DAG', () => {
  const rand = prng(0x5eed);
  const N = 300;
  const name = (i: number) => `pkg${String(i).padStart(3, '0')}-1.${i % 7}`;
  const entries = Array.from({ length: N }, (_, i) => {
    // References only point to higher indices, so the graph is acyclic.
    const refs = new Set<string>();
    const count = i < N - 1 ? Math.floor(rand() * 5) : 0;
    for (let k = 0; k < count; k++) refs.add(sp(name(i + 1 + Math.floor(rand() * (N - 1 - i)))));
    const narSize = rand() < 0.02 ? 150 * MB : Math.floor(rand() * 5 * MB);
    return { path: sp(name(i)), narSize, references: [...refs] };
  });
  const roots = [0, 1, 2, 3, 4, 40, 90].map((i) => sp(name(i)));
  const popularity: Popularity = new Map(
    Array.from({ length: N }, (_, i) => i)
      .filter((i) => i % 17 === 0)
      .map((i) => [name(i), Math.floor(rand() * 1000)]),
  );
  const graph = makeClosureGraph(roots, entries);
  const allPaths = entries.map((e) => e.path).sort();
  const unlimited = groupLayers(graph, popularity, 10_000);

  it('has enough top-level subtrees to make the budgets bite', () => {
    expect(unlimited.length).toBeGreaterThan(20);
  });

  it('stays within every budget from 1 to 120 and covers every path exactly once', () => {
    for (let budget = 1; budget <= 120; budget++) {
      const layers = groupLayers(graph, popularity, budget);
      expect(layers).toHaveLength(Math.min(budget, unlimited.length));
      expect(layers.flatMap((l) => l.paths).sort()).toEqual(allPaths);
      for (const l of layers) {
        expect(l.paths).toEqual([...l.paths].sort());
        expect(l.narSize).toBe(l.paths.reduce((s, p) => s + graph.nodes.get(p)!.narSize, 0));
      }
      const ratings = layers.map((l) => l.mergeRating);
      expect(ratings).toEqual([...ratings].sort((a, b) => b - a));
    }
  });

  it('merges exactly the lowest-rated layers and keeps the others intact', () => {
    for (const budget of [1, 2, 10, 20]) {
      const kept = unlimited.slice(0, budget - 1);
      const merged = unlimited.slice(budget - 1).flatMap((l) => l.paths).sort();
      const layers = groupLayers(graph, popularity, budget);
      expect(layers.map((l) => l.paths).sort()).toEqual([...kept.map((l) => l.paths), merged].sort());
    }
  });

  it('gives identical output whatever the node and reference order', () => {
    const shuffle = prng(42);
    const reordered = makeClosureGraph(
      shuffled(roots, shuffle),
      shuffled(entries, shuffle).map((e) => ({ ...e, references: shuffled(e.references, shuffle) })),
    );
    // Bypass makeClosureGraph's sorting too: unsorted roots and references.
    const raw: ClosureGraph = {
      roots: shuffled(roots, shuffle),
      nodes: new Map(
        shuffled(entries, shuffle).map((e): [string, StorePathNode] => [
          e.path,
          { ...e, references: shuffled(e.references, shuffle) },
        ]),
      ),
    };
    for (const budget of [1, 3, 20, 120]) {
      const expected = groupLayers(graph, popularity, budget);
      expect(groupLayers(reordered, popularity, budget)).toEqual(expected);
      expect(groupLayers(raw, popularity, budget)).toEqual(expected);
    }
  });
});

describe('parsePopularity', () => {
  it('reads name -> count', () => {
    const pop = parsePopularity({ 'glibc-2.37-8': 301234, 'zlib-1.3': 2, 'never-0': 0 });
    expect([...pop]).toEqual([
      ['glibc-2.37-8', 301234],
      ['zlib-1.3', 2],
      ['never-0', 0],
    ]);
    expect(parsePopularity({}).size).toBe(0);
  });

  it.each([['5'], [-1], [1.5], [null], [true], [{}]])('rejects the count %j, naming the key', (count) => {
    expect(() => parsePopularity({ 'glibc-2.37-8': 3, 'zlib-1.3': count })).toThrow(/"zlib-1\.3"/);
  });

  it.each([[null], [[]], [[['zlib-1.3', 2]]], ['{}'], [42]])('rejects the non-object %j', (json) => {
    expect(() => parsePopularity(json)).toThrow(/expected a JSON object/);
  });

  it('rejects an empty package name', () => {
    expect(() => parsePopularity({ '': 5 })).toThrow(/empty package name/);
  });
});

describe('popularityOf', () => {
  const pop = parsePopularity({ 'glibc-2.37-8': 301234, 'nss-cacert-3.95': 3 });

  it('looks a path up by its name without the hash', () => {
    expect(popularityOf(pop, sp('glibc-2.37-8'))).toBe(301234);
  });

  it('counts a path missing from the data as 1', () => {
    expect(popularityOf(pop, sp('glibc-2.38'))).toBe(1);
  });

  it('rates nss-cacert and iana-etc above everything, whatever the data says', () => {
    expect(popularityOf(pop, sp('nss-cacert-3.95'))).toBe(500_000);
    expect(popularityOf(NO_POPULARITY, sp('iana-etc-20231227'))).toBe(500_000);
  });
});
