/**
 * One platform's image from package names: Nix (resolve, realise, closure)
 * -> layer groups -> layers packed into storage (or found there by content
 * key) -> image config. Manifest assembly is not here (manifest/build.ts,
 * pure), so an index over several platforms reuses this unchanged.
 *
 * Layers are cached by content key (their sorted store paths) in
 * records/layers/<key>; a record is trusted only when its blob exists and is
 * written only after the blob is in place, so no record points at a missing
 * object.
 */
import { createHash } from 'node:crypto';
import type { Writable } from 'node:stream';
import pLimit from 'p-limit';
import { sha256Digest, type Digest } from '../digest.js';
import { essentialEntries, NONROOT_HOME, NONROOT_UID } from '../image/essentials.js';
import { imageLabels, mainProgram } from '../image/labels.js';
import { ALWAYS_INCLUDED, type ImageSpec } from '../image/name.js';
import { compareBytes } from '../layers/forest.js';
import { storePathName } from '../layers/graph.js';
import { groupLayers } from '../layers/group.js';
import type { TarEntry } from '../layers/pack.js';
import type { LayerSegment } from '../layers/parallel-pack.js';
import type { Popularity } from '../layers/popularity.js';
import type { Logger } from '../log.js';
import { MediaType, buildImageConfig, type LayerInfo } from '../manifest/build.js';
import type { NixRunner, NixSource, ResolvedPackage } from '../nix/runner.js';
import { publicSourceUrl, type ResolvedSource } from '../nix/sources.js';
import { buildSpdx, SPDX_MEDIA_TYPE } from '../sbom/spdx.js';
import type { StorageBackend } from '../storage/backend.js';
import type { Build } from './build.js';
import { BlobsCollectedError } from '../errors.js';
import type { PlatformImage, StoredLayer } from './records.js';
import { SingleFlight } from './single-flight.js';

/** How store paths are read as tar entries; implemented by layers/walk.ts. */
export interface LayerReader {
  /** A layer of store paths as segments: the store directories, then one per path. */
  storePathSegments(paths: readonly string[]): LayerSegment[];
  symlinkLayerEntries(roots: readonly string[]): Promise<{ entries: TarEntry[]; conflicts: readonly unknown[] }>;
  /** Names in a store path's bin/ (for the default command); none when absent. */
  binPrograms?(storePath: string): Promise<string[]>;
}

/** Packs segments into `out` (which it ends); implemented by layers/parallel-pack.ts. */
export type LayerPacker = (
  segments: readonly LayerSegment[],
  out: Writable,
  opts?: { signal?: AbortSignal },
) => Promise<{ diffId: Digest; digest: Digest; size: number; cachedBytes: number }>;

/** Compresses store paths into the piece cache ahead of packing; implemented by ParallelPacker.warm. */
export type LayerWarmer = (segments: readonly LayerSegment[], signal?: AbortSignal) => Promise<number>;

/** Keeps store paths from the Nix garbage collector until the returned release; implemented by gc/nix-store.ts. */
export interface StoreRoots {
  /** Roots the paths (derivations and outputs, valid or not yet); release after packing. */
  hold(paths: readonly string[], label: string): Promise<() => Promise<void>>;
  /** Runs `fn` (resolve, then hold) so that no collection of this process starts in between. */
  shield<T>(fn: () => Promise<T>): Promise<T>;
  /** Roots the package set's own source (fetched tarball, git checkout) if it is in the store. */
  holdSource(source: NixSource): Promise<void>;
}

/**
 * A build's claim on the blobs it references (implemented by gc/leases.ts
 * BuildLease): what keeps a garbage-collection pass from deleting them
 * before the image's record names them.
 */
export interface BlobClaim {
  /** Names blobs in the build's lease; resolves once the lease naming them is written. */
  add(digests: readonly Digest[]): Promise<void>;
  /** Names a small blob, then stores it (or marks it when stored already). */
  putBlob(mediaType: string, bytes: Buffer): Promise<Digest>;
  /**
   * Names a blob found in storage and then marks it used: true when it is
   * safe from every pass from here on, false when a pass deleted it.
   */
  secure(digest: Digest): Promise<boolean>;
}

/** Times a found layer is looked for again after a pass deleted it before it was secured. */
const LAYER_ATTEMPTS = 3;

export interface PlatformBuilderDeps {
  readonly nix: NixRunner;
  /** When the server collects its Nix store: a build's paths are rooted from resolve until packed. */
  readonly roots?: StoreRoots;
  /** When present, paths Nix realises during a build are compressed while it builds the rest. */
  readonly warm?: LayerWarmer;
  readonly storage: StorageBackend;
  readonly reader: LayerReader;
  readonly pack: LayerPacker;
  readonly log: Logger;
  readonly popularity: Popularity;
  /** Most layers per image, the symlink layer included. */
  readonly layerBudget: number;
  /** Layers packed at once (their pieces share the packer's threads). */
  readonly packConcurrency: number;
  readonly now: () => number;
}

// v2: layers are concatenated gzip members (parallel-pack.ts); records of
// single-stream v1 layers are not reused, so a store path's layer has the
// same bytes on every server running this code.
const LAYER_KEY_VERSION = 'layer-v2';
/** The image's own files in the symlink layer (image/essentials.ts); a change regroups no store path. */
const ESSENTIALS_VERSION = 'essentials-v1';

export function hashKey(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\0')).digest('hex');
}

export class PlatformBuilder {
  /** One lookup or pack per layer key at a time; `claim` is the build that did it, which has secured the blob. */
  private readonly layerFlights = new SingleFlight<string, { layer: StoredLayer; reused: boolean; cachedBytes: number; claim: BlobClaim }>();
  private readonly packLimit: ReturnType<typeof pLimit>;

  constructor(private readonly deps: PlatformBuilderDeps) {
    this.packLimit = pLimit(deps.packConcurrency);
  }

  async build(
    build: Build,
    spec: ImageSpec,
    resolved: ResolvedSource,
    signal: AbortSignal | undefined,
    /**
     * The build's GC lease (gc/leases.ts): names each blob it writes before
     * the blob becomes visible, and secures each one it finds before using it.
     */
    claim: BlobClaim,
  ): Promise<PlatformImage> {
    const { nix, now } = this.deps;
    const arch = spec.arch;
    build.emit({ type: 'phase', at: now(), phase: 'resolve', platform: arch.ociArch });
    const roots = this.deps.roots;
    let release: (() => Promise<void>) | undefined;
    const pkgs = await (roots ? roots.shield.bind(roots) : <T>(fn: () => Promise<T>) => fn())(async () => {
      const found = await nix.resolve(resolved.nix, spec.packages, arch.nixSystem, { signal });
      // Fetched by that evaluation; kept so a collection does not force a refetch.
      await roots?.holdSource(resolved.nix).catch(() => undefined);
      // The .drv files exist from here on and the outputs once built: a
      // Nix store collection running meanwhile must not take either.
      release = await roots?.hold([...found.map((p) => p.drv), ...found.map((p) => p.out)], build.image);
      return found;
    });
    try {
      return await this.afterResolve(build, pkgs, spec, resolved, signal, claim);
    } finally {
      await release?.().catch(() => undefined);
    }
  }

  private async afterResolve(
    build: Build,
    pkgs: readonly ResolvedPackage[],
    spec: ImageSpec,
    resolved: ResolvedSource,
    signal: AbortSignal | undefined,
    claim: BlobClaim,
  ): Promise<PlatformImage> {
    const { nix, now } = this.deps;
    const { arch, packages } = spec;
    const platform = arch.ociArch;
    const phase = (p: 'resolve' | 'realise' | 'closure' | 'group' | 'pack' | 'manifest') => build.emit({ type: 'phase', at: now(), phase: p, platform });
    phase('realise');
    await this.realise(build, platform, [...new Set(pkgs.map((p) => p.drv))].sort(), signal);
    phase('closure');
    const graph = await nix.closure([...new Set(pkgs.map((p) => p.out))], { signal });
    phase('group');
    const groups = groupLayers(graph, this.deps.popularity, this.deps.layerBudget - 1);

    phase('pack');
    // The symlink layer comes on top of the store path groups.
    build.emit({ type: 'pack-plan', at: now(), platform, layers: groups.length + 1 });
    const storeLayers = groups.map((g) =>
      this.layer(build, platform, g.paths.map(storePathName).join(', '), g.paths, () => this.deps.reader.storePathSegments(g.paths), signal, claim),
    );
    // Package order decides symlink conflicts: the image's sorted package order.
    const forestRoots = pkgs.map((p) => p.out);
    const essentials = { nonroot: spec.nonroot };
    const symlinkKey = ['symlinks', ESSENTIALS_VERSION, spec.nonroot ? 'nonroot' : 'root', ...forestRoots];
    const symlinkLayer = this.layer(build, platform, 'symlink layer', symlinkKey, async () => {
      const plan = await this.deps.reader.symlinkLayerEntries(forestRoots);
      if (plan.conflicts.length > 0) this.deps.log.info({ image: build.image, conflicts: plan.conflicts }, 'symlink layer conflicts');
      return [{ entries: () => withEssentials(plan.entries, essentials) }];
    }, signal, claim);
    const layers: LayerInfo[] = await Promise.all([...storeLayers, symlinkLayer]);

    phase('manifest');
    const sourceUrl = publicSourceUrl(resolved.nix);
    const labels = imageLabels({ title: spec.canonicalName, revision: resolved.revision, sourceUrl, packages: pkgs });
    // The SBOM: every store path of the closure; attached to the manifests by the service.
    const sbomBytes = buildSpdx({
      imageName: spec.canonicalName,
      architecture: arch.ociArch,
      revision: resolved.revision,
      source: sourceUrl ?? 'local package set',
      graph,
      packages: pkgs,
    });
    const sbom = { digest: sha256Digest(sbomBytes), size: sbomBytes.length };
    await claim.putBlob(SPDX_MEDIA_TYPE, sbomBytes);
    const config = buildImageConfig({
      arch,
      layers,
      hasShell: packages.includes('bashInteractive'),
      cmd: await this.defaultCommand(spec, pkgs),
      user: spec.nonroot ? { id: `${NONROOT_UID}:${NONROOT_UID}`, home: NONROOT_HOME } : undefined,
      labels,
    });
    await claim.putBlob(MediaType.ociConfig, config.bytes);
    return {
      platform: { os: 'linux', architecture: arch.ociArch },
      config: { digest: config.digest as Digest, size: config.size },
      layers: layers.map((l) => ({ digest: l.digest as Digest, size: l.size, diffId: l.diffId as Digest })),
      annotations: labels,
      sbom,
    };
  }

  /** An image of one package (besides cacert and iana-etc) without `shell` runs its main program. */
  private async defaultCommand(spec: ImageSpec, pkgs: readonly ResolvedPackage[]): Promise<string[] | undefined> {
    if (spec.shell) return undefined;
    const own = pkgs.filter((p) => !(ALWAYS_INCLUDED as readonly string[]).includes(p.name));
    if (own.length !== 1) return undefined;
    const pkg = own[0]!;
    const bins = pkg.meta?.mainProgram ? [] : ((await this.deps.reader.binPrograms?.(pkg.out)) ?? []);
    const program = mainProgram(pkg.meta?.mainProgram, bins);
    return program === undefined ? undefined : [`/bin/${program}`];
  }

  /**
   * Realises the derivations, passing Nix's build log on as build events and
   * compressing each output as soon as Nix has built or substituted it, while
   * it works on the rest (one path at a time; what is still waiting when Nix
   * is done is left to the pack phase, which packs on every core). Every
   * output realised by this build is in the derivation closure of the image
   * but not necessarily in its runtime closure: a build-only dependency is
   * compressed for nothing, which costs CPU, never correctness.
   */
  private async realise(build: Build, platform: string, drvs: readonly string[], signal: AbortSignal | undefined): Promise<void> {
    const { nix, now, warm, reader } = this.deps;
    // Derivations counted as Nix reports them (its builds activity); the one being built named.
    let counts = { done: 0, expected: 0 };
    let building: string | undefined;
    const progress = () => build.emit({ type: 'realise', at: now(), platform, ...counts, ...(building ? { building } : {}) });
    const early = pLimit(1);
    const prepack = (paths: () => Promise<readonly string[]>) => {
      if (!warm) return;
      void early(async () => {
        const segments = reader.storePathSegments(await paths()).filter((s) => s.cacheKey !== undefined);
        await warm(segments, signal);
      }).catch(() => undefined);
    };
    try {
      await nix.realise(drvs, {
        ...(signal ? { signal } : {}),
        onEvent: (e) => {
          if (e.kind === 'log') build.emit({ type: 'log', at: now(), line: e.line });
          else if (e.kind === 'building') {
            building = storePathName(e.drv).replace(/\.drv$/, '');
            progress();
          } else if (e.kind === 'progress') {
            counts = { done: e.done, expected: e.expected };
            progress();
          } else if (e.kind === 'built') prepack(() => nix.outputs(e.drv, signal ? { signal } : {}));
          else prepack(async () => [e.path]);
        },
      });
    } finally {
      early.clearQueue();
    }
  }

  /**
   * A layer by content key: reused when stored, else packed once and stored;
   * either way secured in this build's claim before it is returned. A layer
   * found through a record is named and marked before it is trusted, so a
   * pass running meanwhile either keeps it or is seen to have deleted it, in
   * which case it is packed again here (not the whole build). A build that
   * joined another build's lookup secures the layer in its own claim too:
   * the other build's lease may be gone by then.
   */
  private async layer(
    build: Build,
    platform: string,
    description: string,
    keyParts: readonly string[],
    segments: () => readonly LayerSegment[] | Promise<readonly LayerSegment[]>,
    signal: AbortSignal | undefined,
    claim: BlobClaim,
  ): Promise<LayerInfo> {
    const key = hashKey(LAYER_KEY_VERSION, ...keyParts);
    const { storage, now } = this.deps;
    for (let attempt = 1; ; attempt++) {
      // After a failed attempt the record is not trusted: the blob it names was deleted.
      const trustRecord = attempt === 1;
      const found = await this.layerFlights.run(key, async () => {
        if (trustRecord) {
          const raw = await storage.getRecord('layers', key);
          if (raw !== undefined) {
            const known = JSON.parse(raw.toString()) as StoredLayer;
            if (await claim.secure(known.digest)) return { layer: known, reused: true, cachedBytes: 0, claim };
          }
        }
        const packed = await this.packLimit(async () => {
          const source = await segments();
          // Named before it becomes visible: a pass that lists it also reads the lease naming it.
          const r = await storage.persistBlob(MediaType.ociLayer, (out) => this.deps.pack(source, out, { signal }), {
            beforeVisible: (d) => claim.add([d]),
          });
          if (r.digest !== r.value.digest) throw new Error(`layer digest mismatch: packed ${r.value.digest}, stored ${r.digest}`);
          return { stored: { digest: r.digest, size: r.size, diffId: r.value.diffId }, cachedBytes: r.value.cachedBytes };
        });
        await storage.putRecord('layers', key, Buffer.from(JSON.stringify(packed.stored)));
        return { layer: packed.stored, reused: false, cachedBytes: packed.cachedBytes, claim };
      });
      if (found.claim === claim || (await claim.secure(found.layer.digest))) {
        const l = found.layer;
        build.emit({ type: 'layer', at: now(), platform, digest: l.digest, size: l.size, reused: found.reused, cachedBytes: found.cachedBytes, description });
        return { ...l, description };
      }
      if (attempt === LAYER_ATTEMPTS) throw new BlobsCollectedError(build.image, `layer ${found.layer.digest} was deleted by garbage collection ${attempt} times while this build used it`);
    }
  }
}

/**
 * The symlink layer's entries with the image's own files (users and groups,
 * homes) added where the packages have nothing at that name, or above it.
 */
function withEssentials(entries: readonly TarEntry[], opts: { nonroot: boolean }): TarEntry[] {
  const byName = new Map(entries.map((e) => [e.name, e]));
  const taken = (name: string): boolean => {
    if (byName.has(name)) return true;
    // Below a package's file or symlink (`etc -> ...`) there is no room.
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const above = byName.get(parts.slice(0, i).join('/'));
      if (above !== undefined && above.type !== 'directory') return true;
    }
    return false;
  };
  return [...entries, ...essentialEntries(opts, taken)].sort((a, b) => compareBytes(a.name, b.name));
}
