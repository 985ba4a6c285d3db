/**
 * The service with its adapters, built from a Config: what the server and
 * the command line share. Never exits the process; a problem found while
 * building it (an unreachable bucket, unreadable popularity data) is a
 * ConfigError naming the variable. `close()` releases everything it made.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from './config.js';
import { ConfigError, StorageError } from './errors.js';
import { availableParallelism } from 'node:os';
import { ParallelPacker } from './layers/parallel-pack.js';
import { parsePopularity, type Popularity } from './layers/popularity.js';
import { binPrograms, storePathSegments, symlinkLayerEntries } from './layers/walk.js';
import type { Logger } from './log.js';
import { ExecaNixRunner, type NixRunner, type NixRunnerStats } from './nix/runner.js';
import { ChannelSource, GitSource, PathSource, type PackageSourceResolver } from './nix/sources.js';
import { GarbageCollector, type NixStoreCollector } from './gc/collector.js';
import { BuildRegistry } from './service/build-registry.js';
import { PackageIndexes } from './packages/indexes.js';
import { collectIfLow, DEFAULT_GCROOTS_PARENT, DEFAULT_STORE_DIR, freeSpace, GcRoots, minFreeBytes, shieldFromCollection, type MinFree } from './gc/nix-store.js';
import { ImageService } from './service/image-service.js';
import { collectStats, recordFailures, type ImageServiceStats } from './service/observers.js';
import type { LayerReader, StoreRoots } from './service/platform-build.js';
import { RecentErrors } from './service/recent-errors.js';
import type { StorageBackend } from './storage/backend.js';
import { FilesystemStorage } from './storage/filesystem.js';
import { GcsStorage } from './storage/gcs.js';

/** The repository root: bundled prepare-image/ and web/ live there. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** A Nix runner the runtime can stop. */
export type ManagedNixRunner = NixRunner & { readonly stats: NixRunnerStats; close(): Promise<void>; killAll(): void };

/** Adapters a caller supplies instead of the ones the configuration names (tests, other front ends). */
export interface RuntimeAdapters {
  readonly nix?: ManagedNixRunner;
  readonly storage?: StorageBackend;
  readonly source?: PackageSourceResolver;
  readonly reader?: LayerReader;
  readonly popularity?: Popularity;
  readonly now?: () => number;
}

export interface Runtime {
  readonly config: Config;
  readonly service: ImageService;
  readonly storage: StorageBackend;
  readonly nix: ManagedNixRunner;
  readonly source: PackageSourceResolver;
  /** Counters collected from the service's events since start. */
  readonly stats: ImageServiceStats;
  readonly recentErrors: RecentErrors;
  /** Builds running now and those that ended recently, for the API and pages. */
  readonly builds: BuildRegistry;
  /** The package index per revision (for the search box), computed in the background. */
  readonly packages: PackageIndexes;
  /** Packs layers; its piece cache's figures are in `packer.stats()`. */
  readonly packer: ParallelPacker;
  /** Pull times, the GC generation, and passes when NIXERY_GC_INTERVAL is set (started by `startGc`). */
  readonly gc: GarbageCollector;
  readonly now: () => number;
  /** Aborts running builds (their Nix processes are stopped); new builds fail at once. */
  abortBuilds(reason: string): void;
  /** Aborts builds, stops every Nix process and releases watchers and timers. */
  close(): Promise<void>;
}

/** Compressions at once: NIXERY_PACK_THREADS, else one per core. */
export function packThreads(config: Config): number {
  return config.pack.threads ?? availableParallelism();
}

export async function createRuntime(config: Config, log: Logger, adapters: RuntimeAdapters = {}): Promise<Runtime> {
  const now = adapters.now ?? Date.now;
  const popularity = adapters.popularity ?? (await loadPopularity(config.popularityUrl));
  const storage = adapters.storage ?? (await makeStorage(config));
  const source = adapters.source ?? makeSource(config);
  const nix =
    adapters.nix ??
    new ExecaNixRunner({
      prepareImageDir: config.prepareImageDir ?? path.join(ROOT, 'prepare-image'),
      timeoutSeconds: config.nixTimeoutSeconds,
      offline: config.offline,
      importArgs: config.importArgs,
      ...(config.nixConfig !== undefined ? { nixConfig: config.nixConfig } : {}),
    });
  const shutdown = new AbortController();
  // The Nix environment of every Nix process the runtime starts (as the runner builds it).
  const nixEnv: Record<string, string> = {};
  const nixConf = [config.nixConfig, config.offline ? 'substituters =' : ''].filter(Boolean).join('\n');
  if (nixConf) nixEnv.NIX_CONFIG = nixConf;
  const roots = config.gc.nixMinFree === undefined ? undefined : await openRoots(nixEnv);
  const packer = new ParallelPacker({ threads: packThreads(config), cacheBytes: config.pack.cacheBytes });
  const service = new ImageService({
    nix,
    storage,
    source,
    log,
    reader: adapters.reader ?? { storePathSegments: (p) => storePathSegments(p), symlinkLayerEntries: (r) => symlinkLayerEntries(r), binPrograms: (p) => binPrograms(p) },
    pack: (segments, out, opts) => packer.pack(segments, out, opts),
    warm: (segments, signal) => packer.warm(segments, signal),
    popularity,
    layerBudget: config.layerBudget,
    admission: config.admission,
    ...(roots ? { roots: storeRoots(roots) } : {}),
    shutdown: shutdown.signal,
    now,
  });
  const minFree = config.gc.nixMinFree;
  const gc = new GarbageCollector({
    storage,
    now,
    config: config.gc,
    log,
    forgetCaches: () => service.forgetCaches(),
    ...(minFree !== undefined ? { nixStore: nixStoreCollector(minFree, nixEnv, shutdown.signal) } : {}),
  });
  service.subscribe((e) => {
    if (e.type !== 'pulled') return;
    if (e.key !== undefined) gc.usage.note(e.key);
    if (e.digest !== undefined) gc.usage.note(e.digest.slice('sha256:'.length));
  });
  const stats = collectStats(service);
  const builds = new BuildRegistry(service, { now });
  const packages = new PackageIndexes({ nix, storage, log, now });
  const recentErrors = new RecentErrors();
  recordFailures(service, recentErrors, now);
  return {
    config,
    service,
    storage,
    nix,
    source,
    stats,
    recentErrors,
    builds,
    packages,
    packer,
    gc,
    now,
    abortBuilds(reason) {
      shutdown.abort(new Error(reason));
    },
    async close() {
      shutdown.abort(new Error('shutting down'));
      packages.close();
      await gc.stop();
      await roots?.close();
      await nix.close();
      await (source as { close?: () => unknown }).close?.();
    },
  };
}

async function openRoots(env: Record<string, string>): Promise<GcRoots> {
  try {
    return await GcRoots.open({ env });
  } catch (e) {
    throw new ConfigError([`NIXERY_NIX_GC_MIN_FREE: cannot keep GC roots in ${DEFAULT_GCROOTS_PARENT}: ${(e as Error).message}`]);
  }
}

/**
 * A build's paths rooted from resolve until packed, and the package set's
 * own source (a fetched tarball or git checkout) rooted per revision, so a
 * collection never forces a refetch; the two newest revisions stay held.
 */
function storeRoots(roots: GcRoots): StoreRoots {
  const sources = new Map<string, Promise<() => Promise<void>>>();
  return {
    async hold(paths, label) {
      return roots.hold(paths, label);
    },
    shield: (fn) => shieldFromCollection(fn),
    holdSource(source) {
      const id = JSON.stringify(source);
      if (!sources.has(id)) {
        sources.set(id, roots.holdSource(source).then((h) => h.release));
        while (sources.size > 2) {
          const [oldest, release] = sources.entries().next().value as [string, Promise<() => Promise<void>>];
          sources.delete(oldest);
          void release.then((r) => r()).catch(() => undefined);
        }
      }
      return sources.get(id)!.then(() => undefined);
    },
  };
}

async function loadPopularity(url: string | undefined): Promise<Popularity> {
  if (url === undefined) return new Map();
  try {
    const text = url.startsWith('file:')
      ? await readFile(fileURLToPath(url), 'utf8')
      : await (async () => {
          const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
          if (!res.ok) throw new Error(`HTTP ${res.status}`);
          return res.text();
        })();
    return parsePopularity(JSON.parse(text));
  } catch (e) {
    throw new ConfigError([`NIX_POPULARITY_URL: cannot load ${url}: ${(e as Error).message}`]);
  }
}

function makeSource(config: Config): PackageSourceResolver {
  switch (config.pkgs.kind) {
    case 'path':
      return new PathSource(config.pkgs.path);
    case 'git':
      return new GitSource(config.pkgs.repository, config.revisionTtlSeconds);
    case 'channel':
      return new ChannelSource(config.pkgs.channel, config.pkgs.urlTemplate, config.pkgs.revisionUrlTemplate, config.revisionTtlSeconds);
  }
}

async function makeStorage(config: Config): Promise<StorageBackend> {
  if (config.storage.kind === 'filesystem') return FilesystemStorage.open(config.storage.path);
  try {
    return await GcsStorage.open(config.storage);
  } catch (e) {
    if (e instanceof StorageError) throw new ConfigError([`GCS_BUCKET: ${e.message}`]);
    throw e;
  }
}

function nixStoreCollector(minFree: MinFree, env: Readonly<Record<string, string>>, signal: AbortSignal): NixStoreCollector {
  const space = async () => {
    const s = await freeSpace(DEFAULT_STORE_DIR);
    return { ...s, thresholdBytes: minFreeBytes(minFree, s.totalBytes) };
  };
  return {
    collect: async () => {
      const r = await collectIfLow({ minFree, env, signal });
      return { ran: r.ran, freedBytes: r.freedBytes, after: { ...r.after, thresholdBytes: r.thresholdBytes } };
    },
    space,
  };
}
