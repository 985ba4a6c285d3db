/**
 * From an image spec to a served manifest. Caches, in lookup order:
 *   1. an LRU of built images in memory,
 *   2. their records in storage (records/manifests/<key>), so a restart or
 *      another replica finds them,
 *   3. a Build, run once per key however many clients ask at the same time.
 * The key is (layering settings, source revision, system, packages). One
 * build stores both manifest flavours, so a docker pull after a skopeo pull
 * of the same image costs no build.
 *
 * Observers (running builds, recent errors, counters, metrics) subscribe to
 * the service's events and to each build's events; the service keeps no
 * statistics of its own.
 */
import { LRUCache } from 'lru-cache';
import type { Digest } from '../digest.js';
import { ManifestNotFoundError, PackagesNotFoundError, UnauthorizedError } from '../errors.js';
import type { ImageSpec } from '../image/name.js';
import type { Popularity } from '../layers/popularity.js';
import type { Logger } from '../log.js';
import { MANIFEST_TYPES, MediaType, assembleManifests, type ManifestMediaType } from '../manifest/build.js';
import type { PackageSourceResolver, ResolvedSource } from '../nix/sources.js';
import type { StorageBackend } from '../storage/backend.js';
import { Build } from './build.js';
import { PlatformBuilder, hashKey, type PlatformBuilderDeps } from './platform-build.js';
import { decodeRecord, encodeRecord, type BlobRef, type BuiltImage } from './records.js';

export interface ImageServiceDeps extends Omit<PlatformBuilderDeps, 'packConcurrency'> {
  readonly source: PackageSourceResolver;
  /** Aborted on shutdown: stops running builds and their Nix processes. */
  readonly shutdown?: AbortSignal;
}

export interface ServedManifest {
  readonly bytes: Buffer;
  readonly digest: Digest;
  readonly mediaType: string;
}

export interface RequestOptions {
  /** False for a client that may pull what is built but not make the server build (NIXERY_ANONYMOUS=pull). */
  readonly mayBuild?: boolean;
}

export type ServiceEvent =
  /** A manifest request by tag was answered from a cache (hit) or needed a build (miss). */
  | { readonly type: 'lookup'; readonly hit: boolean }
  /** A build started; subscribe to it for its progress. */
  | { readonly type: 'build'; readonly build: Build }
  /** A request joined a build that was already running for the same image. */
  | { readonly type: 'join'; readonly build: Build };

export type ServiceListener = (event: ServiceEvent) => void;

const MANIFEST_KEY_VERSION = 'image-v1';
/** Layers packed at once: one gzip stream per core of the machines we run on. */
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

  constructor(private readonly deps: ImageServiceDeps) {
    this.builder = new PlatformBuilder({ ...deps, packConcurrency: PACK_CONCURRENCY });
    this.layeringIdentity = layeringIdentity(deps.layerBudget, deps.popularity);
    this.cache = new LRUCache({ max: IMAGE_CACHE_SIZE });
    // Two flavours (OCI, Docker) per image; a manifest is a few KB.
    this.manifestBytes = new LRUCache({ max: 2 * IMAGE_CACHE_SIZE });
  }

  subscribe(listener: ServiceListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Builds running now. */
  running(): Build[] {
    return [...this.builds.values()];
  }

  /** The cache key of an image at a resolved revision. */
  imageKey(spec: ImageSpec, resolved: ResolvedSource): string {
    // Remembered: hashing on every warm pull was about 4% of its CPU time.
    const parts = `${resolved.revision}\0${spec.arch.nixSystem}\0${spec.packages.join('\0')}`;
    let key = this.keys.get(parts);
    if (key === undefined) {
      key = hashKey(MANIFEST_KEY_VERSION, this.layeringIdentity, resolved.revision, spec.arch.nixSystem, ...spec.packages);
      this.keys.set(parts, key);
    }
    return key;
  }

  /** The built image, from a cache or by starting or joining its build. */
  async image(spec: ImageSpec, opts: RequestOptions = {}): Promise<BuiltImage> {
    const resolved = await this.deps.source.resolve(spec.tag);
    const key = this.imageKey(spec, resolved);
    const missing = this.notFound.get(key);
    if (missing) throw missing;
    const cached = await this.cachedImage(key);
    this.emit({ type: 'lookup', hit: cached !== undefined });
    if (cached) return cached;
    // Joining a build someone else started is a pull; starting one is not.
    if (opts.mayBuild === false && !this.builds.has(key)) {
      throw new UnauthorizedError(`${spec.name}:${spec.tag} is not built yet, and building an image needs a login`);
    }
    return this.startOrJoin(spec, key, resolved).result;
  }

  /** Starts the build of an image, or joins the one running for the same key. */
  startOrJoin(spec: ImageSpec, key: string, resolved: ResolvedSource): Build {
    const running = this.builds.get(key);
    if (running) {
      this.emit({ type: 'join', build: running });
      return running;
    }
    const { now } = this.deps;
    const build = new Build(key, `${spec.name}:${spec.tag}`, spec.packages, now(), (b) => this.run(b, spec, key, resolved), now);
    this.builds.set(key, build);
    const forget = () => this.builds.delete(key);
    build.result.then(forget, (e: unknown) => {
      forget();
      // A name is missing from a revision for good: no evaluation per pull until it changes.
      if (e instanceof PackagesNotFoundError) this.notFound.set(key, e);
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
    return { bytes, digest, mediaType: info.mediaType };
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
    const raw = await this.deps.storage.getRecord('manifests', key);
    const image = raw === undefined ? undefined : decodeRecord(raw);
    if (image === undefined) return undefined;
    // Trust the record only if what it points at is still there.
    for (const m of Object.values(image.manifests)) {
      if ((await this.deps.storage.statBlob(m.digest)) === undefined) return undefined;
    }
    this.cache.set(key, image);
    return image;
  }

  private async run(build: Build, spec: ImageSpec, key: string, resolved: ResolvedSource): Promise<BuiltImage> {
    const { storage, log, now } = this.deps;
    try {
      const platform = await this.builder.build(build, spec.packages, spec.arch, resolved, this.deps.shutdown);
      const manifests = {} as Record<ManifestMediaType, BlobRef>;
      const assembled = assembleManifests(platform.config, platform.layers);
      for (const type of MANIFEST_TYPES) {
        const m = assembled[type];
        await storage.putBlob(type, m.bytes);
        manifests[type] = { digest: m.digest as Digest, size: m.size };
      }
      const image: BuiltImage = { revision: resolved.revision, packages: spec.packages, system: spec.arch.nixSystem, platforms: [platform], manifests };
      // Persisted before the answer: clients fetch by digest right after.
      await storage.putRecord('manifests', key, encodeRecord(image));
      this.cache.set(key, image);
      log.info(
        { image: build.image, packages: spec.packages, revision: resolved.revision, layers: platform.layers.length, ms: now() - build.startedAt },
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

function isManifestType(t: string): t is ManifestMediaType {
  return t === MediaType.ociManifest || t === MediaType.dockerManifest;
}
