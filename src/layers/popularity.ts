/**
 * Package popularity, as published at NIX_POPULARITY_URL and used by the
 * layering (./group.ts). Pure.
 *
 * The format is Nixery's popcount output: a JSON object from package name to
 * the number of store paths in nixpkgs that refer to it,
 *
 *   { "glibc-2.37-8": 301234, "zlib-1.3": 20567, "openssl-3.0.12": 9876, ... }
 *
 * Keys are store path names with only the hash stripped, so they keep the
 * version: `/nix/store/<hash>-glibc-2.37-8` is looked up as `glibc-2.37-8`
 * (Nixery's `PackageFromPath`, and popcount's `sed 's|/nix/store/[a-z0-9]+-||'`).
 * A popularity file therefore only helps images built from a nixpkgs close to
 * the one it was counted from; a path it does not name counts 1, as in Nixery.
 *
 * Nixery's Go type comment calls the value a "percentile from 1-100", but
 * popcount writes raw reference counts and layers.go tests `>= 100` against
 * them; we follow the code: "popular" means referenced by at least 100 paths.
 */
import { storePathName } from './graph.js';

/** Package name (store path name without the hash) -> reference count. */
export type Popularity = ReadonlyMap<string, number>;

/** A path with at least this count is split into its own layer (layers.go `bigOrPopular`). */
export const POPULAR_THRESHOLD = 100;

/**
 * Nixery adds `cacert` and `iana-etc` to every image, so they are rated above
 * everything else (glibc has ~300k references; these get more).
 */
const ALWAYS_INCLUDED = ['nss-cacert', 'iana-etc'] as const;
const ALWAYS_INCLUDED_POPULARITY = 500_000;

/** Count for a missing name: neutral in the `popularity * size` merge rating. */
const DEFAULT_POPULARITY = 1;

/** Validates a parsed NIX_POPULARITY_URL document. */
export function parsePopularity(json: unknown): Popularity {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new Error(`popularity data: expected a JSON object of package name -> count, got ${describe(json)}`);
  }
  const result = new Map<string, number>();
  for (const [name, count] of Object.entries(json)) {
    if (name === '') throw new Error('popularity data: empty package name');
    if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0) {
      throw new Error(
        `popularity data: count for ${JSON.stringify(name)} must be a non-negative integer, got ${describe(count)}`,
      );
    }
    result.set(name, count);
  }
  return result;
}

/** The popularity Nixery assigns to a store path. */
export function popularityOf(popularity: Popularity, path: string): number {
  const name = storePathName(path);
  if (ALWAYS_INCLUDED.some((prefix) => name.startsWith(prefix))) return ALWAYS_INCLUDED_POPULARITY;
  return popularity.get(name) ?? DEFAULT_POPULARITY;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`;
  return String(value);
}
