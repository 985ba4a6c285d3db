/**
 * Subscribers of the image service's events: the counters behind
 * /debug/stats and /metrics, the recent failures the start page shows, and
 * a hook for build outcomes. Each attaches itself and returns what it
 * collects; none is known to the service.
 */
import { NixBuildError, PackagesNotFoundError } from '../errors.js';
import { buildTimings, type Build, type BuildTimings } from './build.js';
import type { ImageService } from './image-service.js';
import type { RecentErrors } from './recent-errors.js';

export interface ImageServiceStats {
  /** Builds started (cache misses that ran Nix). */
  builds: number;
  buildFailures: number;
  manifestCacheHits: number;
  manifestCacheMisses: number;
  layersReused: number;
  layersPacked: number;
  /** Requests that joined a build already running (or queued) for the same image. */
  singleFlightWaiters: number;
  /** Builds refused because every build slot and the queue were full (429). */
  rejectedQueueFull: number;
  /** Builds refused because the image has more packages than NIXERY_MAX_PACKAGES. */
  rejectedTooManyPackages: number;
  /** Requests answered with a remembered build failure, without building. */
  rememberedFailures: number;
  /** Live: builds doing their work now (at most NIXERY_MAX_BUILDS). */
  readonly buildsRunning: number;
  /** Live: builds waiting for a slot now (at most NIXERY_MAX_QUEUED_BUILDS). */
  readonly buildsQueued: number;
}

/** Calls `each` for every build the service starts from now on. */
function onEachBuild(service: ImageService, each: (build: Build) => void): () => void {
  return service.subscribe((e) => {
    if (e.type === 'build') each(e.build);
  });
}

/**
 * Counters since start, and two live values read from the service when the
 * object is read (enumerable getters: a spread or JSON.stringify of it,
 * as /debug/stats does, copies their values at that moment).
 */
export function collectStats(service: ImageService): ImageServiceStats {
  const stats: ImageServiceStats = {
    builds: 0, buildFailures: 0, manifestCacheHits: 0, manifestCacheMisses: 0, layersReused: 0, layersPacked: 0, singleFlightWaiters: 0,
    rejectedQueueFull: 0, rejectedTooManyPackages: 0, rememberedFailures: 0,
    get buildsRunning() {
      return service.admission.stats().running;
    },
    get buildsQueued() {
      return service.admission.stats().queued;
    },
  };
  service.subscribe((e) => {
    if (e.type === 'lookup') {
      if (e.hit) stats.manifestCacheHits++;
      else stats.manifestCacheMisses++;
    } else if (e.type === 'join') {
      stats.singleFlightWaiters++;
    } else if (e.type === 'rejected') {
      if (e.reason === 'queue_full') stats.rejectedQueueFull++;
      else stats.rejectedTooManyPackages++;
    } else if (e.type === 'remembered') {
      stats.rememberedFailures++;
    } else if (e.type === 'build') {
      stats.builds++;
      e.build.subscribe((b) => {
        if (b.type === 'layer') {
          if (b.reused) stats.layersReused++;
          else stats.layersPacked++;
        } else if (b.type === 'failed') {
          stats.buildFailures++;
        }
      });
    }
  });
  return stats;
}

/**
 * Build failures worth showing: a missing name is the client's typo, not news.
 * Only builds that ran are recorded: an answer from a remembered failure is
 * a `remembered` service event, not a build, so a broken image pulled many
 * times within NIXERY_FAILED_BUILD_TTL is listed once.
 */
export function recordFailures(service: ImageService, errors: RecentErrors, now: () => number): void {
  // A platform left out of an index because a package does not exist for
  // it (a failed build is listed by its build, below, already).
  service.subscribe((e) => {
    if (e.type !== 'platform-missing' || !(e.error instanceof PackagesNotFoundError)) return;
    errors.add({ time: new Date(now()).toISOString(), image: `${e.image} (index without ${e.platform})`, message: e.error.message, stderr: undefined });
  });
  onEachBuild(service, (build) =>
    build.subscribe((e) => {
      if (e.type !== 'failed' || e.error instanceof PackagesNotFoundError) return;
      errors.add({
        time: new Date(now()).toISOString(),
        image: build.image,
        message: e.error.message,
        stderr: e.error instanceof NixBuildError ? e.error.stderr : undefined,
      });
    }),
  );
}

export type BuildOutcome = 'succeeded' | 'failed' | 'timed_out';

/** Calls `observe` with each build's outcome and duration in seconds. */
export function onBuildOutcome(service: ImageService, observe: (outcome: BuildOutcome, seconds: number) => void): void {
  onEachBuild(service, (build) =>
    build.subscribe((e) => {
      if (e.type === 'finished') observe('succeeded', (e.at - build.startedAt) / 1000);
      else if (e.type === 'failed') {
        observe(e.error instanceof NixBuildError && e.error.timedOut ? 'timed_out' : 'failed', (e.at - build.startedAt) / 1000);
      }
    }),
  );
}

/** Calls `observe` with the phase timings and byte counts of each build that succeeded. */
export function onBuildTimings(service: ImageService, observe: (timings: BuildTimings) => void): void {
  onEachBuild(service, (build) =>
    build.subscribe((e) => {
      if (e.type === 'finished') observe(buildTimings(build.events()));
    }),
  );
}
