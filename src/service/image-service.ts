/**
 * From an image spec to a served manifest. Caches, in lookup order:
 *   1. an LRU of built images in memory,
 *   2. their records in storage (records/manifests/<key>), so a restart or
 *      another replica finds them,
 *   3. a Build, run once per key however many clients ask at the same time.
 * Before a build starts, admission (admission.ts) may refuse it: too many
 * packages, a failure remembered from a moment ago, or no build slot and no
 * room in the queue. A build waiting for a slot already exists, so requests
 * for the same image join it; joining and warm pulls are never refused.
 * The key is (layering settings, source revision, system, packages). One
 * build stores both manifest flavours, so a docker pull after a skopeo pull
 * of the same image costs no build.
 *
 * With more than one platform a tag serves an index (`index`,
 * image-indexes.ts): each platform's image goes through this same path.
 *
 * Observers (running builds, recent errors, counters, metrics) subscribe to
 * the service's events and to each build's events; the service keeps no
 * statistics of its own.
 */
import { LRUCache } from 'lru-cache';
import type { AdmissionConfig } from '../config.js';
import type { Digest } from '../digest.js';
import { BlobsCollectedError, ManifestNotFoundError, PackagesNotFoundError, UnauthorizedError } from '../errors.js';
import type { Architecture, ImageSpec } from '../image/name.js';
import type { Popularity } from '../layers/popularity.js';
import {
  EMPTY_CONFIG,
  MANIFEST_TYPES,
  MediaType,
  assembleManifests,
  buildArtifactManifest,
  type IndexMediaType,
  type ManifestMediaType,
  type ServedMediaType,
} from '../manifest/build.js';
import type { PackageSourceResolver, ResolvedSource } from '../nix/sources.js';
import { Admission, DEFAULT_ADMISSION, type AdmissionStats } from './admission.js';
import { Build, buildTimings } from './build.js';
import { PlatformBuilder, hashKey, type PlatformBuilderDeps } from './platform-build.js';
import { SPDX_MEDIA_TYPE } from '../sbom/spdx.js';
import { ImageIndexes } from './image-indexes.js';
import { Referrers } from './referrers.js';
import { decodeRecord, encodeRecord, imageBlobs, servedRefs, type StoredRecord, type BlobRef, type BuiltImage, type PlatformImage } from './records.js';
import { BuildLease } from '../gc/leases.js';

export interface ImageServiceDeps extends Omit<PlatformBuilderDeps, 'packConcurrency'> {
  readonly source: PackageSourceResolver;
  /** Aborted on shutdown: stops running builds and their Nix processes. */
  readonly shutdown?: AbortSignal;
  /** Build slots, queue, package limit, failure memory; the configuration defaults when absent. */
  readonly admission?: AdmissionConfig;
}

/** Why admission refused to start a build. */
export type RejectionReason = 'queue_full' | 'too_many_packages';

export interface ServedManifest {
  readonly bytes: Buffer;
  readonly digest: Digest;
  readonly mediaType: string;
  /** An index: the platforms it leaves out because they did not build (`linux/arm64`). */
  readonly missing?: readonly string[];
}

export interface RequestOptions {
  /** False for a client that may pull what is built but not make the server build (NIXERY_ANONYMOUS=pull). */
  readonly mayBuild?: boolean;
  /** How a build started by this request is named (logs, start page); default `name:tag`. */
  readonly label?: string;
}

export type ServiceEvent =
  /** A manifest request by tag was answered from a cache (hit) or needed a build (miss). */
  | { readonly type: 'lookup'; readonly hit: boolean }
  /** A build started; subscribe to it for its progress. */
  | { readonly type: 'build'; readonly build: Build }
  /** A request joined a build that was already running (or queued) for the same image. */
  | { readonly type: 'join'; readonly build: Build }
  /** Admission refused to start a build. */
  | { readonly type: 'rejected'; readonly reason: RejectionReason }
  /** A request was answered with a failure remembered from an earlier build, without building. */
  | { readonly type: 'remembered'; readonly image: string }
  /** An image was pulled (by tag: its key; by digest: the manifest digest). Usage tracking listens. */
  | { readonly type: 'pulled'; readonly key?: string; readonly digest?: Digest }
  /** An index was assembled without a platform that failed (once per change of what is missing). */
  | { readonly type: 'platform-missing'; readonly image: string; readonly platform: string; readonly error: Error };

export type ServiceListener = (event: ServiceEvent) => void;

// v2: images carry users and groups, labels, a default command; the canonical name is part of the key (indexes: image-indexes.ts).
const MANIFEST_KEY_VERSION = 'image-v2';
/** Attempts of a build whose blobs a garbage-collection pass keeps deleting. */
const MAX_COLLECTED_RETRIES = 3;
/**
 * Layers packed at once. Their pieces share the packer's compression
 * threads, so this only lets one layer's file reads overlap another's
 * compression; more would add memory (a window of pieces each), not speed.
 */
const PACK_CONCURRENCY = 2;
/** Built images kept in memory (a record is a few hundred bytes). */
const IMAGE_CACHE_SIZE = 1000;

export class ImageService {
  private readonly builder: PlatformBuilder;
  private readonly builds = new Map<string, Build>();
  private readonly listeners = new Set<ServiceListener>();
  private readonly cache: LRUCache<string, BuiltImage>;
  /** Manifest bytes by digest: content-addressed, so never stale. */
  private readonly manifestBytes: LRUCache<Digest, Buffer>;
  /** Images whose packages are not all in the source at that revision. */
  private readonly notFound = new LRUCache<string, PackagesNotFoundError>({ max: 10_000 });
  private readonly keys = new LRUCache<string, string>({ max: IMAGE_CACHE_SIZE });
  /** Part of every key: a changed budget or popularity list regroups instead of serving old records. */
  private readonly layeringIdentity: string;
  private readonly limits: Admission;
  /** Which artifacts (SBOMs) are attached to which manifests. */
  private readonly attached: Referrers;
  private readonly indexed: ImageIndexes;

  constructor(private readonly deps: ImageServiceDeps) {
    this.limits = new Admission(deps.admission ?? DEFAULT_ADMISSION, deps.now);
    this.builder = new PlatformBuilder({ ...deps, packConcurrency: PACK_CONCURRENCY });
    this.layeringIdentity = layeringIdentity(deps.layerBudget, deps.popularity);
    this.attached = new Referrers(deps.storage, 2 * IMAGE_CACHE_SIZE);
    this.cache = new LRUCache({ max: IMAGE_CACHE_SIZE });
    // Two flavours (OCI, Docker) per image; a manifest is a few KB.
    this.manifestBytes = new LRUCache({ max: 2 * IMAGE_CACHE_SIZE });
    this.indexed = new ImageIndexes({
      storage: deps.storage,
      source: deps.source,
      log: deps.log,
      now: deps.now,
      layeringIdentity: this.layeringIdentity,
      manifestBytes: this.manifestBytes,
      maxCollectedRetries: MAX_COLLECTED_RETRIES,
      cacheSize: IMAGE_CACHE_SIZE,
      image: (spec, opts) => this.image(spec, opts),
      forgetImages: () => this.cache.clear(),
      loadRecord: (key, decode) => this.loadRecord(key, decode),
      emit: (e) => this.emit(e),
    });
  }

  subscribe(listener: ServiceListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Builds doing their work now (not those waiting for a slot). */
  running(): Build[] {
    return [...this.builds.values()].filter((b) => !b.queued);
  }

  /** Builds waiting for a build slot, oldest first. */
  queued(): Build[] {
    return [...this.builds.values()].filter((b) => b.queued);
  }

  /**
   * Forgets every image and manifest held in memory: a garbage-collection
   * pass (here or on a replica) may have deleted what they point at. The
   * next pull reads the records again, or rebuilds.
   */
  forgetCaches(): void {
    this.cache.clear();
    this.indexed.forget();
    this.manifestBytes.clear();
    this.attached.forget();
  }

  /** Admission's limits and its live counts (read-only). */
  get admission(): { readonly config: AdmissionConfig; stats(): AdmissionStats } {
    return this.limits;
  }

  /** The cache key of an image at a resolved revision. */
  imageKey(spec: ImageSpec, resolved: ResolvedSource): string {
    // Remembered: hashing on every warm pull was about 4% of its CPU time.
    const parts = `${resolved.revision}\0${spec.arch.nixSystem}\0${spec.canonicalName}\0${spec.packages.join('\0')}`;
    let key = this.keys.get(parts);
    if (key === undefined) {
      key = hashKey(MANIFEST_KEY_VERSION, this.layeringIdentity, resolved.revision, spec.arch.nixSystem, spec.canonicalName, ...spec.packages);
      this.keys.set(parts, key);
    }
    return key;
  }

  /** The built image, from a cache or by starting or joining its build. */
  async image(spec: ImageSpec, opts: RequestOptions = {}): Promise<BuiltImage> {
    const begun = await this.begin(spec, opts);
    if ('image' in begun) return begun.image;
    const built = await begun.build.result;
    this.emit({ type: 'pulled', key: begun.key });
    return built;
  }

  /**
   * The image if it is built, else its build, started (with every check a
   * pull makes) or joined, without waiting for it: for the web page's
   * Build button and for `image`.
   */
  async begin(spec: ImageSpec, opts: RequestOptions = {}): Promise<{ image: BuiltImage } | { build: Build; key: string }> {
    const resolved = await this.deps.source.resolve(spec.tag);
    const key = this.imageKey(spec, resolved);
    const missing = this.notFound.get(key);
    if (missing) throw missing;
    const failed = this.limits.failures.recall(key);
    if (failed) {
      this.emit({ type: 'remembered', image: `${spec.name}:${spec.tag}` });
      throw failed;
    }
    const cached = await this.cachedImage(key);
    this.emit({ type: 'lookup', hit: cached !== undefined });
    if (cached) {
      this.emit({ type: 'pulled', key });
      return { image: cached };
    }
    if (!this.builds.has(key)) {
      // Joining a build someone else started is a pull; starting one is not.
      if (opts.mayBuild === false) {
        throw new UnauthorizedError(`${spec.name}:${spec.tag} is not built yet, and building an image needs a login`);
      }
      // A limit on what is built, not on what is served: an image built
      // elsewhere (a replica sharing the bucket) or before a lower limit is still pulled.
      this.refuse('too_many_packages', () => this.limits.checkSize(spec));
    }
    return { build: this.startOrJoin(spec, key, resolved, opts.label), key };
  }

  /**
   * What is known of an image without building it or counting a pull: the
   * built image (memory or storage) and the build running for it, if any.
   */
  async peek(spec: ImageSpec): Promise<{ image?: BuiltImage; build?: Build; key: string }> {
    const resolved = await this.deps.source.resolve(spec.tag);
    const key = this.imageKey(spec, resolved);
    const image = await this.cachedImage(key);
    const build = this.builds.get(key);
    return { key, ...(image ? { image } : {}), ...(build ? { build } : {}) };
  }

  /** The cache key of an index over `platforms` at a resolved revision. */
  indexKey(spec: ImageSpec, platforms: readonly Architecture[], resolved: ResolvedSource): string {
    return this.indexed.key(spec, platforms, resolved);
  }

  /**
   * An index (OCI image index or Docker manifest list) over every platform
   * that builds, each through `image` (image-indexes.ts).
   */
  index(spec: ImageSpec, platforms: readonly Architecture[], mediaType: IndexMediaType, opts: RequestOptions = {}): Promise<ServedManifest> {
    return this.indexed.serve(spec, platforms, mediaType, opts);
  }

  /** A record from storage, trusted only if what it serves (manifests or indexes) is still there. */
  private async loadRecord<T extends StoredRecord>(key: string, decode: (raw: Buffer) => T | undefined): Promise<T | undefined> {
    const raw = await this.deps.storage.getRecord('manifests', key);
    const record = raw === undefined ? undefined : decode(raw);
    if (record === undefined) return undefined;
    for (const ref of servedRefs(record)) {
      if ((await this.deps.storage.statBlob(ref.digest)) === undefined) return undefined;
    }
    return record;
  }

  /**
   * Starts the build of an image, or joins the one running or queued for the
   * same key. Starting takes a build slot or a place in the queue; when both
   * are full it throws TooManyBuildsError. Joining is never refused.
   */
  startOrJoin(spec: ImageSpec, key: string, resolved: ResolvedSource, label = `${spec.name}:${spec.tag}`): Build {
    const running = this.builds.get(key);
    if (running) {
      this.emit({ type: 'join', build: running });
      return running;
    }
    const { now, shutdown } = this.deps;
    const slot = this.refuse('queue_full', () => this.limits.slots.reserve(shutdown));
    const work = async (b: Build) => {
      if (slot.queued) {
        await slot.acquired;
        b.emit({ type: 'started', at: now() });
      }
      return this.run(b, spec, key, resolved);
    };
    const build = new Build(key, label, spec.packages, now(), work, now);
    // Before anyone can subscribe, so that every subscriber (late ones by replay) sees it.
    if (slot.queued) build.emit({ type: 'queued', at: now(), position: slot.position });
    this.builds.set(key, build);
    // The slot is given back once the build is over and gone from the
    // running list: the next one starts only then.
    const forget = () => {
      this.builds.delete(key);
      slot.release();
    };
    build.result.then(forget, (e: unknown) => {
      forget();
      // A name is missing from a revision for good: no evaluation per pull until it changes.
      if (e instanceof PackagesNotFoundError) this.notFound.set(key, e);
      // A failed build, for a while: no Nix process per pull of a broken image.
      // Not when the server is stopping: a killed Nix process says nothing about the image.
      // Nor when garbage collection outran it: the next pull builds.
      else if (!shutdown?.aborted && !(e instanceof BlobsCollectedError)) this.limits.failures.remember(key, e);
    });
    this.emit({ type: 'build', build });
    return build;
  }

  /** The manifest for an image by tag, building it if needed. */
  async manifest(spec: ImageSpec, mediaType: ManifestMediaType, opts: RequestOptions = {}): Promise<ServedManifest> {
    let image = await this.image(spec, opts);
    const { digest } = image.manifests[mediaType];
    const cached = this.manifestBytes.get(digest);
    if (cached !== undefined) return { bytes: cached, digest, mediaType };
    let bytes = await this.deps.storage.readBlob(digest);
    if (bytes === undefined) {
      // Storage lost the manifest (an operator or a lifecycle rule deleted
      // it): forget the image and build it again, once, in this request.
      const resolved = await this.deps.source.resolve(spec.tag);
      const key = this.imageKey(spec, resolved);
      this.cache.delete(key);
      image = await this.startOrJoin(spec, key, resolved).result;
      bytes = await this.deps.storage.readBlob(image.manifests[mediaType].digest);
      if (bytes === undefined) throw new ManifestNotFoundError(spec.name, `manifest ${digest} vanished from storage right after it was written`);
    }
    const served = image.manifests[mediaType].digest;
    this.manifestBytes.set(served, bytes);
    return { bytes, digest: served, mediaType };
  }

  /** A manifest by digest, exactly the bytes served earlier under a tag. */
  async manifestByDigest(digest: Digest): Promise<ServedManifest> {
    const info = await this.deps.storage.statBlob(digest);
    const bytes = info !== undefined && isManifestType(info.mediaType) ? await this.deps.storage.readBlob(digest) : undefined;
    if (info === undefined || bytes === undefined) throw new ManifestNotFoundError(digest, 'no manifest with this digest was built here');
    this.emit({ type: 'pulled', digest });
    return { bytes, digest, mediaType: info.mediaType };
  }

  /** Runs an admission check; a refusal is emitted (for counters) and thrown. */
  private refuse<T>(reason: RejectionReason, check: () => T): T {
    try {
      return check();
    } catch (e) {
      this.emit({ type: 'rejected', reason });
      throw e;
    }
  }

  private emit(event: ServiceEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch {
        // A broken observer must not break a pull.
      }
    }
  }

  private async cachedImage(key: string): Promise<BuiltImage | undefined> {
    const hit = this.cache.get(key);
    if (hit) return hit;
    const image = await this.loadRecord(key, decodeRecord);
    if (image === undefined) return undefined;
    // A pass may have removed a referrers record while a rebuild wrote the
    // same one (gc/pass.ts): put it back, once per load from storage.
    await this.attached.ensure(image).catch(() => undefined);
    this.cache.set(key, image);
    return image;
  }

  /** The referrers API: the artifacts attached to a manifest (referrers.ts). */
  referrers(digest: Digest, artifactType?: string): Promise<Buffer> {
    return this.attached.index(digest, artifactType);
  }

  /**
   * One attempt: the platform image, manifests, then the record, written
   * only over blobs protected by a lease and marked used (gc/leases.ts).
   * Undefined when a blob was collected meanwhile.
   */
  private async buildOnce(build: Build, spec: ImageSpec, key: string, resolved: ResolvedSource): Promise<BuiltImage | undefined> {
    const { storage, now } = this.deps;
    const lease = new BuildLease(storage, now);
    try {
      const platform = await this.builder.build(build, spec, resolved, this.deps.shutdown, lease);
      const manifests = {} as Record<ManifestMediaType, BlobRef>;
      const assembled = assembleManifests(platform.config, platform.layers, platform.annotations);
      for (const type of MANIFEST_TYPES) {
        const m = assembled[type];
        await lease.putBlob(type, m.bytes);
        manifests[type] = { digest: m.digest as Digest, size: m.size };
      }
      // The SBOM attached to each manifest flavour (the referrers API).
      let referrers: Record<ManifestMediaType, BlobRef> | undefined;
      if (platform.sbom !== undefined) {
        await lease.putBlob(EMPTY_CONFIG.mediaType, EMPTY_CONFIG.bytes);
        referrers = {} as Record<ManifestMediaType, BlobRef>;
        for (const type of MANIFEST_TYPES) {
          const a = buildArtifactManifest(SPDX_MEDIA_TYPE, { mediaType: SPDX_MEDIA_TYPE, ...platform.sbom }, { mediaType: type, ...manifests[type] });
          await lease.putBlob(MediaType.ociManifest, a.bytes);
          referrers[type] = { digest: a.digest as Digest, size: a.size };
        }
      }
      const image: BuiltImage = {
        revision: resolved.revision,
        packages: spec.packages,
        system: spec.arch.nixSystem,
        platforms: [platform],
        manifests,
        ...(referrers ? { referrers } : {}),
      };
      const missing = await lease.protect(imageBlobs(image));
      if (missing.length > 0) return undefined;
      // Persisted before the answer: clients fetch by digest right after.
      await storage.putRecord('manifests', key, encodeRecord(image));
      await this.attached.write(image);
      return image;
    } finally {
      await lease.release().catch(() => undefined);
    }
  }

  private async run(build: Build, spec: ImageSpec, key: string, resolved: ResolvedSource): Promise<BuiltImage> {
    const { log, now } = this.deps;
    try {
      let image: BuiltImage | undefined;
      for (let attempt = 1; image === undefined; attempt++) {
        image = await this.buildOnce(build, spec, key, resolved);
        if (image === undefined) {
          // A garbage-collection pass deleted a blob this build was about to
          // reference (and the layer record naming it): build again, which
          // packs it anew. Only with a grace period shorter than a build.
          if (attempt === MAX_COLLECTED_RETRIES) throw new BlobsCollectedError(build.image, `blobs were garbage-collected during the build ${attempt} times`);
          log.warn({ image: build.image, attempt }, 'blobs collected during the build; building again');
        }
      }
      const platform = image.platforms[0] as PlatformImage;
      this.cache.set(key, image);
      const t = buildTimings(build.events(), now());
      log.info(
        {
          image: build.image,
          packages: spec.packages,
          revision: resolved.revision,
          layers: platform.layers.length,
          ms: now() - build.startedAt,
          phasesMs: t.phases,
          packedBytes: t.packedBytes,
          cachedBytes: t.cachedBytes,
          reusedBytes: t.reusedBytes,
        },
        'image built',
      );
      return image;
    } catch (e) {
      log.warn({ image: build.image, err: (e as Error).message, ms: now() - build.startedAt }, 'image build failed');
      throw e;
    }
  }
}

function layeringIdentity(budget: number, popularity: Popularity): string {
  return hashKey(
    `budget=${budget}`,
    ...[...popularity].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${k}=${v}`),
  );
}

function isManifestType(t: string): t is ServedMediaType {
  return t === MediaType.ociManifest || t === MediaType.dockerManifest || t === MediaType.ociIndex || t === MediaType.dockerManifestList;
}
