/**
 * What a tag serves with more than one platform: an OCI image index (or a
 * Docker manifest list) over every platform that builds. Each platform's
 * image goes through the image service's own path (caches, single flight,
 * admission), in parallel; the index over those that built is recorded like
 * an image (records/manifests/<key>, its own key), so it is served without
 * a build and byte-stable. A platform that fails is left out and said so;
 * an index missing a platform is assembled again on each request (cheap:
 * the failure is remembered by admission), so it fills in once the
 * platform builds.
 *
 * The index blobs and record are written under the same lease protocol as
 * a build (gc/leases.ts): named before they become visible, and the record
 * written only over blobs protected and marked.
 */
import { LRUCache } from 'lru-cache';
import type { Digest } from '../digest.js';
import { BlobsCollectedError, ManifestNotFoundError } from '../errors.js';
import { BuildLease } from '../gc/leases.js';
import { platformName, type Architecture, type ImageSpec } from '../image/name.js';
import type { Logger } from '../log.js';
import { INDEX_ENTRY_TYPE, INDEX_TYPES, buildIndex, type IndexMediaType } from '../manifest/build.js';
import type { PackageSourceResolver, ResolvedSource } from '../nix/sources.js';
import type { StorageBackend } from '../storage/backend.js';
import type { RequestOptions, ServedManifest, ServiceEvent } from './image-service.js';
import { hashKey } from './platform-build.js';
import { decodeIndexRecord, encodeRecord, imageBlobs, type BlobRef, type BuiltImage, type BuiltIndex, type IndexedPlatform, type StoredRecord } from './records.js';
import { SingleFlight } from './single-flight.js';

const INDEX_KEY_VERSION = 'index-v2';

/** What the index side needs of the image service. */
export interface IndexHost {
  readonly storage: StorageBackend;
  readonly source: PackageSourceResolver;
  readonly log: Logger;
  readonly now: () => number;
  /** Part of every key, as of image keys. */
  readonly layeringIdentity: string;
  /** Manifest and index bytes by digest, shared with the service (content-addressed). */
  readonly manifestBytes: LRUCache<Digest, Buffer>;
  /** Attempts before giving up on blobs a garbage-collection pass keeps deleting. */
  readonly maxCollectedRetries: number;
  readonly cacheSize: number;
  /** A platform's image: from a cache, or by starting or joining its build. */
  image(spec: ImageSpec, opts: RequestOptions): Promise<BuiltImage>;
  /** Forgets the images held in memory: a platform's blobs were collected. */
  forgetImages(): void;
  /** A record from storage, trusted only if what it serves is still there. */
  loadRecord<T extends StoredRecord>(key: string, decode: (raw: Buffer) => T | undefined): Promise<T | undefined>;
  emit(event: ServiceEvent): void;
}

export class ImageIndexes {
  private readonly cache: LRUCache<string, BuiltIndex>;
  private readonly flights = new SingleFlight<string, BuiltIndex>();

  constructor(private readonly host: IndexHost) {
    this.cache = new LRUCache({ max: host.cacheSize });
  }

  /** The cache key of an index over `platforms` at a resolved revision. */
  key(spec: ImageSpec, platforms: readonly Architecture[], resolved: ResolvedSource): string {
    return hashKey(INDEX_KEY_VERSION, this.host.layeringIdentity, resolved.revision, platforms.map((p) => p.nixSystem).join(','), spec.canonicalName, ...spec.packages);
  }

  /** Forgets every index held in memory (garbage collection). */
  forget(): void {
    this.cache.clear();
  }

  /**
   * The index in `mediaType`. Throws the default platform's error
   * (`spec.arch`) only when no platform builds.
   */
  async serve(spec: ImageSpec, platforms: readonly Architecture[], mediaType: IndexMediaType, opts: RequestOptions): Promise<ServedManifest> {
    const { host } = this;
    const resolved = await host.source.resolve(spec.tag);
    const key = this.key(spec, platforms, resolved);
    for (let attempt = 1; ; attempt++) {
      let record = await this.cached(key);
      if (record !== undefined && record.missing.length === 0) {
        host.emit({ type: 'lookup', hit: true });
        host.emit({ type: 'pulled', key });
      } else {
        const previous = record;
        record = await this.flights.run(key, () => this.assemble(spec, platforms, key, resolved, opts, previous));
      }
      const ref = record.indexes[mediaType];
      const bytes = host.manifestBytes.get(ref.digest) ?? (await host.storage.readBlob(ref.digest));
      if (bytes !== undefined) {
        host.manifestBytes.set(ref.digest, bytes);
        return { bytes, digest: ref.digest, mediaType, missing: record.missing.map((m) => m.platform) };
      }
      // Storage lost the index: assemble it again, once, in this request.
      this.cache.delete(key);
      if (attempt === 2) throw new ManifestNotFoundError(spec.name, `index ${ref.digest} vanished from storage right after it was written`);
    }
  }

  private async cached(key: string): Promise<BuiltIndex | undefined> {
    const hit = this.cache.get(key);
    if (hit) return hit;
    const record = await this.host.loadRecord(key, decodeIndexRecord);
    if (record !== undefined) this.cache.set(key, record);
    return record;
  }

  /** Every platform's image in parallel, then the index over those that built. */
  private async assemble(
    spec: ImageSpec,
    platforms: readonly Architecture[],
    key: string,
    resolved: ResolvedSource,
    opts: RequestOptions,
    previous: BuiltIndex | undefined,
  ): Promise<BuiltIndex> {
    const { storage, now, log } = this.host;
    for (let attempt = 1; ; attempt++) {
      const results = await Promise.allSettled(
        platforms.map((arch) => this.host.image({ ...spec, arch }, { ...opts, label: `${spec.name}:${spec.tag} ${platformName(arch)}` })),
      );
      const built: IndexedPlatform[] = [];
      const missing: { platform: string; reason: string; error: Error }[] = [];
      for (const [i, r] of results.entries()) {
        const arch = platforms[i]!;
        if (r.status === 'fulfilled') built.push(indexedPlatform(r.value));
        else missing.push({ platform: platformName(arch), reason: (r.reason as Error).message, error: r.reason as Error });
      }
      if (built.length === 0) {
        const own = results[platforms.indexOf(spec.arch)] ?? results[0]!;
        throw (own as PromiseRejectedResult).reason;
      }
      const indexes = {} as Record<IndexMediaType, BlobRef>;
      const blobs = INDEX_TYPES.map((t) => {
        const entries = built.map((p) => ({ ...p.manifests[INDEX_ENTRY_TYPE[t]], architecture: p.platform.architecture }));
        const blob = buildIndex(t, entries);
        indexes[t] = { digest: blob.digest as Digest, size: blob.size };
        return blob;
      });
      const record: BuiltIndex = {
        kind: 'index',
        revision: resolved.revision,
        packages: spec.packages,
        platforms: built,
        missing: missing.map(({ platform, reason }) => ({ platform, reason })),
        indexes,
      };
      // The same index as recorded (a platform still failing): nothing to write.
      const prev = previous;
      if (prev !== undefined && INDEX_TYPES.every((t) => prev.indexes[t].digest === indexes[t].digest) && sameMissing(prev, record)) return prev;
      const lease = new BuildLease(storage, now);
      try {
        for (const b of blobs) {
          await lease.putBlob(b.mediaType, b.bytes);
          this.host.manifestBytes.set(b.digest as Digest, b.bytes);
        }
        const lost = await lease.protect(imageBlobs(record));
        if (lost.length === 0) {
          await storage.putRecord('manifests', key, encodeRecord(record));
          this.cache.set(key, record);
          if (previous === undefined || !sameMissing(previous, record)) {
            for (const m of missing) {
              log.warn({ image: `${spec.name}:${spec.tag}`, platform: m.platform, err: m.reason }, 'index served without a platform that failed');
              this.host.emit({ type: 'platform-missing', image: `${spec.name}:${spec.tag}`, platform: m.platform, error: m.error });
            }
          }
          return record;
        }
      } finally {
        await lease.release().catch(() => undefined);
      }
      // A pass collected a platform's blobs meanwhile: its image is rebuilt.
      if (attempt === this.host.maxCollectedRetries) {
        throw new BlobsCollectedError(`${spec.name}:${spec.tag}`, `blobs were garbage-collected while the index was written ${attempt} times`);
      }
      this.host.forgetImages();
      previous = undefined;
    }
  }
}

/** A platform's image as an index lists it. */
function indexedPlatform(image: BuiltImage): IndexedPlatform {
  // Every record under a current key lists its blobs (only version-1
  // records, under keys no longer asked for, do not).
  const own = image.platforms[0];
  if (own === undefined) throw new Error(`image record of ${image.packages.join('/')} lists no platform image`);
  return { ...own, manifests: image.manifests, referrers: image.referrers };
}

function sameMissing(a: BuiltIndex, b: BuiltIndex): boolean {
  return a.missing.map((m) => m.platform).join(',') === b.missing.map((m) => m.platform).join(',');
}
