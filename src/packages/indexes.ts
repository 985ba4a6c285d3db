/**
 * Package indexes per package-set revision, computed in the background.
 *
 * `get()` never waits: the first call for a (revision, system) starts the
 * computation and answers `building`; later calls answer `ready` with the
 * index once it is there, or `failed` with the reason (remembered for a
 * minute, then the next call tries again). A computation reads the index
 * from storage (records/packages/<sha256 of revision and system>) and only
 * when it is not there asks Nix (`listPackages`, one at a time: listing
 * nixpkgs is a whole-set evaluation) and writes the record, so another
 * replica or a restart finds it. The record is the index's JSON, gzipped
 * (100,000 nixpkgs-like entries: 8.9 MB of JSON, 1.9 MB stored). The last
 * few indexes stay in memory (about 12 MB each at that size, measured by
 * bench/package-index.mjs).
 */
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import pLimit from 'p-limit';
import type { Logger } from '../log.js';
import type { NixRunner } from '../nix/runner.js';
import type { ResolvedSource } from '../nix/sources.js';
import type { StorageBackend } from '../storage/backend.js';
import { PackageIndex } from './index.js';

export type PackageIndexState =
  | { readonly state: 'ready'; readonly index: PackageIndex }
  | { readonly state: 'building' }
  | { readonly state: 'failed'; readonly error: string };

export interface PackageIndexesDeps {
  readonly nix: Pick<NixRunner, 'listPackages'>;
  readonly storage: StorageBackend;
  readonly log: Logger;
  /** Epoch milliseconds (injected for tests). */
  readonly now: () => number;
}

export interface PackageIndexesOptions {
  /** Indexes kept in memory (least recently used dropped first). Default 4. */
  readonly maxIndexes?: number;
  /** How long a failure is answered before the next get() tries again. Default 60 s. */
  readonly retryAfterMs?: number;
}

/** The record key of a revision's index for a system: sha256 hex of both. */
export function packageIndexKey(revision: string, system: string): string {
  return createHash('sha256').update(`packages\0${revision}\0${system}`).digest('hex');
}

/** Record bytes: the index's JSON, gzipped. */
export function encodePackageIndex(index: PackageIndex): Buffer {
  return gzipSync(JSON.stringify(index));
}

/** The inverse of encodePackageIndex (plain JSON is read too). Throws on anything else. */
export function decodePackageIndex(bytes: Buffer): PackageIndex {
  const gzipped = bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
  return PackageIndex.fromJSON(JSON.parse((gzipped ? gunzipSync(bytes) : bytes).toString('utf8')));
}

interface Failure {
  readonly error: string;
  readonly at: number;
}

export class PackageIndexes {
  private readonly ready: LRUCache<string, PackageIndex>;
  private readonly building = new Map<string, Promise<PackageIndexState>>();
  /** Bounded like the indexes: a stream of broken revisions must not grow it forever. */
  private readonly failures = new LRUCache<string, Failure>({ max: 64 });
  /** One Nix listing at a time. */
  private readonly nixQueue = pLimit(1);
  private readonly abort = new AbortController();
  private readonly retryAfterMs: number;

  constructor(
    private readonly deps: PackageIndexesDeps,
    opts: PackageIndexesOptions = {},
  ) {
    this.ready = new LRUCache({ max: opts.maxIndexes ?? 4 });
    this.retryAfterMs = opts.retryAfterMs ?? 60_000;
  }

  /** The index of a revision for a system, without waiting (see the header). */
  get(resolved: ResolvedSource, system: string): PackageIndexState {
    const key = packageIndexKey(resolved.revision, system);
    const index = this.ready.get(key);
    if (index) return { state: 'ready', index };
    if (this.building.has(key)) return { state: 'building' };
    const failure = this.failures.get(key);
    if (failure && this.deps.now() - failure.at < this.retryAfterMs) return { state: 'failed', error: failure.error };
    this.start(key, resolved, system);
    return { state: 'building' };
  }

  /**
   * Like get(), but waits while the index is being built: `ready` or
   * `failed` (or `building` after close()).
   */
  async wait(resolved: ResolvedSource, system: string): Promise<PackageIndexState> {
    const now = this.get(resolved, system);
    if (now.state !== 'building') return now;
    return (await this.building.get(packageIndexKey(resolved.revision, system))) ?? now;
  }

  /** Stops the Nix listings in flight (on shutdown); their results are dropped. */
  close(): void {
    this.abort.abort(new Error('package indexes closed'));
  }

  private start(key: string, resolved: ResolvedSource, system: string): void {
    const { log } = this.deps;
    const started = this.deps.now();
    const job = this.compute(key, resolved, system).then(
      ({ index, from }): PackageIndexState => {
        this.building.delete(key);
        this.failures.delete(key);
        if (this.abort.signal.aborted) return { state: 'building' };
        this.ready.set(key, index);
        log.info({ revision: resolved.revision, system, packages: index.size, from, ms: this.deps.now() - started }, 'package index ready');
        return { state: 'ready', index };
      },
      (e: unknown): PackageIndexState => {
        this.building.delete(key);
        const error = e instanceof Error ? e.message : String(e);
        if (this.abort.signal.aborted) return { state: 'building' };
        this.failures.set(key, { error, at: this.deps.now() });
        log.warn({ revision: resolved.revision, system, err: e }, 'package index failed');
        return { state: 'failed', error };
      },
    );
    this.building.set(key, job);
  }

  private async compute(key: string, resolved: ResolvedSource, system: string): Promise<{ index: PackageIndex; from: 'storage' | 'nix' }> {
    const { storage, nix, log } = this.deps;
    const stored = await storage.getRecord('packages', key).catch((e: unknown) => {
      log.warn({ revision: resolved.revision, system, err: e }, 'package index: reading the record failed');
      return undefined;
    });
    if (stored) {
      try {
        return { index: decodePackageIndex(stored), from: 'storage' };
      } catch (e) {
        log.warn({ revision: resolved.revision, system, err: e }, 'package index: unreadable record, listing again');
      }
    }
    const signal = this.abort.signal;
    const entries = await this.nixQueue(() => {
      signal.throwIfAborted();
      return nix.listPackages(resolved.nix, system, { signal });
    });
    const index = new PackageIndex(entries);
    // The index is good without the record: a failed write only costs the next replica a listing.
    await storage.putRecord('packages', key, encodePackageIndex(index)).catch((e: unknown) => {
      log.warn({ revision: resolved.revision, system, err: e }, 'package index: writing the record failed');
    });
    return { index, from: 'nix' };
  }
}
