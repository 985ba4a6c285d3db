/**
 * From an image spec to a stored manifest: cache -> Nix -> layers ->
 * pack+persist -> manifest. This module owns the order of all I/O; Nix,
 * storage and the store reader come in as interfaces.
 *
 * Caches, in lookup order:
 *   1. an LRU of manifest records in memory,
 *   2. the same records in storage (records/manifests/<key>), so a restart
 *      or another replica finds them,
 *   3. a build, run once per key however many clients ask at the same time.
 * The cache key is (source revision, packages, architecture). One build
 * stores both manifest flavours (OCI and Docker schema 2), so a docker pull
 * after a skopeo pull of the same image costs no build.
 *
 * Layers are cached by content key (their sorted store paths) in
 * records/layers/<key>; a record is only trusted when its blob exists, and
 * is written only after the blob is in place, so no cache entry ever points
 * at a missing object.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import pLimit from 'p-limit';
import type { Writable } from 'node:stream';
import type { Digest } from '../digest.js';
import { ManifestNotFoundError, NixBuildError, PackagesNotFoundError } from '../errors.js';
import type { ImageSpec } from '../image/name.js';
import { groupLayers } from '../layers/group.js';
import { storePathName } from '../layers/graph.js';
import type { TarEntry } from '../layers/pack.js';
import type { Popularity } from '../layers/popularity.js';
import type { Logger } from '../log.js';
import {
  MediaType,
  buildImageConfig,
  buildManifest,
  type LayerInfo,
  type ManifestMediaType,
} from '../manifest/build.js';
import type { NixRunner } from '../nix/runner.js';
import type { PackageSourceResolver, ResolvedSource } from '../nix/sources.js';
import type { StorageBackend } from '../storage/backend.js';
import { RecentErrors } from './recent-errors.js';
import { SingleFlight } from './single-flight.js';

/** How the service reads store paths; implemented by layers/walk.ts. */
export interface LayerReader {
  storePathEntries(paths: readonly string[]): AsyncIterable<TarEntry>;
  symlinkLayerEntries(roots: readonly string[]): Promise<{ entries: TarEntry[]; conflicts: readonly unknown[] }>;
}

/** Packs entries into `out` (which it ends); implemented by layers/pack.ts. */
export type LayerPacker = (
  entries: AsyncIterable<TarEntry> | Iterable<TarEntry>,
  out: Writable,
  opts?: { signal?: AbortSignal },
) => Promise<{ diffId: Digest; digest: Digest; size: number }>;

export interface ImageServiceDeps {
  readonly nix: NixRunner;
  readonly storage: StorageBackend;
  readonly source: PackageSourceResolver;
  readonly reader: LayerReader;
  readonly pack: LayerPacker;
  readonly log: Logger;
  readonly popularity: Popularity;
  /** Most layers per image, the symlink layer included. */
  readonly layerBudget: number;
  /** Layers packed at once (one gzip stream per core). */
  readonly packConcurrency?: number;
  readonly manifestCacheSize?: number;
  /** Aborted on shutdown: stops running builds and their Nix processes. */
  readonly shutdown?: AbortSignal;
  /** Told about every finished build (for metrics). */
  readonly onBuildFinished?: (outcome: 'succeeded' | 'failed' | 'timed_out', seconds: number) => void;
}

interface StoredLayer {
  readonly digest: Digest;
  readonly size: number;
  readonly diffId: Digest;
}

interface ManifestRecord {
  readonly version: 1;
  readonly revision: string;
  readonly packages: readonly string[];
  readonly arch: string;
  readonly manifests: Readonly<Record<ManifestMediaType, { digest: Digest; size: number }>>;
}

export interface ServedManifest {
  readonly bytes: Buffer;
  readonly digest: Digest;
  readonly mediaType: string;
}

export interface ImageServiceStats {
  /** Builds started (cache misses that ran Nix). */
  builds: number;
  buildFailures: number;
  manifestCacheHits: number;
  manifestCacheMisses: number;
  layersReused: number;
  layersPacked: number;
}

const LAYER_KEY_VERSION = 'layer-v1';
const MANIFEST_KEY_VERSION = 'image-v1';

function hashKey(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\0')).digest('hex');
}

export class ImageService {
  readonly stats: ImageServiceStats = {
    builds: 0, buildFailures: 0, manifestCacheHits: 0, manifestCacheMisses: 0, layersReused: 0, layersPacked: 0,
  };
  readonly recentErrors = new RecentErrors();
  /** Builds running now, by cache key: shown on the start page while a pull waits. */
  readonly running = new Map<string, { readonly image: string; readonly packages: readonly string[]; readonly startedAt: number }>();
  readonly flights = new SingleFlight<string, ManifestRecord>();
  private readonly layerFlights = new SingleFlight<string, StoredLayer>();
  private readonly cache: LRUCache<string, ManifestRecord>;
  /** Manifest bytes by digest, for warm pulls by tag (content-addressed, so never stale). */
  private readonly manifestBytes: LRUCache<Digest, Buffer>;
  private readonly packLimit: ReturnType<typeof pLimit>;
  /** Images whose packages are not all in the source at that revision (keyed like records). */
  private readonly notFound = new LRUCache<string, PackagesNotFoundError>({ max: 10_000 });

  /**
   * The layering settings are part of every image key: after a change of
   * NIXERY_LAYER_BUDGET or of the popularity data, images are grouped anew
   * instead of being served from records made under the old settings.
   */
  private readonly layeringIdentity: string;

  constructor(private readonly deps: ImageServiceDeps) {
    this.layeringIdentity = hashKey(
      `budget=${deps.layerBudget}`,
      ...[...deps.popularity].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${k}=${v}`),
    );
    this.cache = new LRUCache({ max: deps.manifestCacheSize ?? 1000 });
    // Two flavours (OCI, Docker) per image; a manifest is a few KB.
    this.manifestBytes = new LRUCache({ max: 2 * (deps.manifestCacheSize ?? 1000) });
    this.packLimit = pLimit(deps.packConcurrency ?? 2);
  }

  /** The manifest for an image by tag, building it if needed. */
  async manifest(spec: ImageSpec, mediaType: ManifestMediaType): Promise<ServedManifest> {
    const resolved = await this.deps.source.resolve(spec.tag);
    const key = hashKey(MANIFEST_KEY_VERSION, this.layeringIdentity, resolved.revision, spec.arch.nixSystem, ...spec.packages);
    const missing = this.notFound.get(key);
    if (missing) throw missing;
    let record = await this.cachedRecord(key);
    if (record) {
      this.stats.manifestCacheHits++;
    } else {
      this.stats.manifestCacheMisses++;
      try {
        record = await this.flights.run(key, () => this.build(spec, key, resolved));
      } catch (e) {
        // A name is missing from a given revision for good: asking Nix again
        // until the revision changes would only cost an evaluation per pull.
        if (e instanceof PackagesNotFoundError) this.notFound.set(key, e);
        throw e;
      }
    }
    const { digest } = record.manifests[mediaType];
    // Reading the blob back from storage on every warm pull (open, fstat,
    // read, close through the thread pool) was about a sixth of the CPU time
    // of a warm manifest GET and added latency. The bytes under a digest
    // never change; what the memory copy no longer notices is an operator
    // deleting the blob while the process runs (as the record cache already
    // does not notice deleted layers): pulls by digest still check storage,
    // and after an eviction or a restart the check below runs again.
    const cached = this.manifestBytes.get(digest);
    if (cached !== undefined) return { bytes: cached, digest, mediaType };
    let bytes = await this.deps.storage.readBlob(digest);
    if (bytes === undefined) {
      // Storage lost the manifest (an operator or a lifecycle rule deleted
      // it): forget the record and build again, once, in this request.
      this.cache.delete(key);
      record = await this.flights.run(key, () => this.build(spec, key, resolved));
      bytes = await this.deps.storage.readBlob(record.manifests[mediaType].digest);
      if (bytes === undefined) throw new ManifestNotFoundError(spec.name, `manifest ${digest} vanished from storage right after it was written`);
    }
    const served = record.manifests[mediaType].digest;
    this.manifestBytes.set(served, bytes);
    return { bytes, digest: served, mediaType };
  }


  /** A manifest by digest, exactly the bytes served earlier under a tag. */
  async manifestByDigest(digest: Digest): Promise<ServedManifest> {
    const info = await this.deps.storage.statBlob(digest);
    if (info === undefined || !isManifestType(info.mediaType)) {
      throw new ManifestNotFoundError(digest, 'no manifest with this digest was built here');
    }
    const bytes = await this.deps.storage.readBlob(digest);
    if (bytes === undefined) throw new ManifestNotFoundError(digest, 'no manifest with this digest was built here');
    return { bytes, digest, mediaType: info.mediaType };
  }

  private async cachedRecord(key: string): Promise<ManifestRecord | undefined> {
    const hit = this.cache.get(key);
    if (hit) return hit;
    const raw = await this.deps.storage.getRecord('manifests', key);
    if (raw === undefined) return undefined;
    const record = JSON.parse(raw.toString()) as ManifestRecord;
    // Trust the record only if what it points at is still there.
    for (const m of Object.values(record.manifests)) {
      if ((await this.deps.storage.statBlob(m.digest)) === undefined) return undefined;
    }
    this.cache.set(key, record);
    return record;
  }

  private async build(spec: ImageSpec, key: string, resolved: ResolvedSource): Promise<ManifestRecord> {
    const { nix, storage, log } = this.deps;
    const started = Date.now();
    const signal = this.deps.shutdown;
    this.stats.builds++;
    const image = `${spec.name}:${spec.tag}`;
    this.running.set(key, { image, packages: spec.packages, startedAt: started });
    try {
      const pkgs = await nix.resolve(resolved.nix, spec.packages, spec.arch.nixSystem, { signal });
      await nix.realise([...new Set(pkgs.map((p) => p.drv))].sort(), { signal });
      const roots = [...new Set(pkgs.map((p) => p.out))];
      const graph = await nix.closure(roots, { signal });
      const groups = groupLayers(graph, this.deps.popularity, this.deps.layerBudget - 1);

      // Store-path layers and the symlink layer are packed in parallel.
      const storeLayers = groups.map((g) =>
        this.layer(g.paths, () => this.deps.reader.storePathEntries(g.paths), signal).then((l) => ({
          ...l,
          description: g.paths.map(storePathName).join(', '),
        })),
      );
      // Package order decides symlink conflicts: the image's sorted package order.
      const forestRoots = pkgs.map((p) => p.out);
      const symlinkLayer = this.layer(['symlinks', ...forestRoots], async () => {
        const plan = await this.deps.reader.symlinkLayerEntries(forestRoots);
        if (plan.conflicts.length > 0) log.info({ image, conflicts: plan.conflicts }, 'symlink layer conflicts');
        return plan.entries;
      }, signal).then((l) => ({ ...l, description: 'symlink layer' }));
      const layers: LayerInfo[] = await Promise.all([...storeLayers, symlinkLayer]);

      const config = buildImageConfig({ arch: spec.arch, layers, hasShell: spec.packages.includes('bashInteractive') });
      await storage.putBlob(MediaType.ociConfig, config.bytes);
      const manifests = {} as Record<ManifestMediaType, { digest: Digest; size: number }>;
      for (const type of [MediaType.ociManifest, MediaType.dockerManifest] as const) {
        const m = buildManifest(type, config, layers);
        await storage.putBlob(type, m.bytes);
        manifests[type] = { digest: m.digest as Digest, size: m.size };
      }
      const record: ManifestRecord = { version: 1, revision: resolved.revision, packages: spec.packages, arch: spec.arch.nixSystem, manifests };
      // Persisted before the answer: clients fetch by digest right after.
      await storage.putRecord('manifests', key, Buffer.from(JSON.stringify(record)));
      this.cache.set(key, record);
      this.deps.onBuildFinished?.('succeeded', (Date.now() - started) / 1000);
      log.info(
        { image, packages: spec.packages, revision: resolved.revision, layers: layers.length, storePaths: graph.nodes.size, ms: Date.now() - started },
        'image built',
      );
      return record;
    } catch (e) {
      this.stats.buildFailures++;
      this.deps.onBuildFinished?.(e instanceof NixBuildError && e.timedOut ? 'timed_out' : 'failed', (Date.now() - started) / 1000);
      if (!(e instanceof PackagesNotFoundError)) {
        this.recentErrors.add({
          time: new Date().toISOString(),
          image,
          message: (e as Error).message,
          stderr: e instanceof NixBuildError ? e.stderr : undefined,
        });
      }
      log.warn({ image, err: (e as Error).message, ms: Date.now() - started }, 'image build failed');
      throw e;
    } finally {
      this.running.delete(key);
    }
  }

  /** A layer by content key: reused when stored, else packed once and stored. */
  private layer(keyParts: readonly string[], entries: () => AsyncIterable<TarEntry> | Promise<Iterable<TarEntry>>, signal?: AbortSignal): Promise<StoredLayer> {
    const key = hashKey(LAYER_KEY_VERSION, ...keyParts);
    return this.layerFlights.run(key, async () => {
      const { storage } = this.deps;
      const raw = await storage.getRecord('layers', key);
      if (raw !== undefined) {
        const known = JSON.parse(raw.toString()) as StoredLayer;
        if ((await storage.statBlob(known.digest)) !== undefined) {
          this.stats.layersReused++;
          return known;
        }
      }
      const stored = await this.packLimit(async () => {
        const source = await entries();
        const r = await storage.persistBlob(MediaType.ociLayer, (out) => this.deps.pack(source, out, { signal }));
        if (r.digest !== r.value.digest) throw new Error(`layer digest mismatch: packed ${r.value.digest}, stored ${r.digest}`);
        return { digest: r.digest, size: r.size, diffId: r.value.diffId };
      });
      this.stats.layersPacked++;
      await storage.putRecord('layers', key, Buffer.from(JSON.stringify(stored)));
      return stored;
    });
  }
}

function isManifestType(t: string): t is ManifestMediaType {
  return t === MediaType.ociManifest || t === MediaType.dockerManifest;
}
