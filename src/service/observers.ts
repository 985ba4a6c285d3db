/**
 * Subscribers of the image service's events: the counters behind
 * /debug/stats and /metrics, the recent failures the start page shows, and
 * a hook for build outcomes. Each attaches itself and returns what it
 * collects; none is known to the service.
 */
import { NixBuildError, PackagesNotFoundError } from '../errors.js';
import type { Build } from './build.js';
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
  /** Requests that joined a build already running for the same image. */
  singleFlightWaiters: number;
}

/** Calls `each` for every build the service starts from now on. */
function onEachBuild(service: ImageService, each: (build: Build) => void): () => void {
  return service.subscribe((e) => {
    if (e.type === 'build') each(e.build);
  });
}

export function collectStats(service: ImageService): ImageServiceStats {
  const stats: ImageServiceStats = {
    builds: 0, buildFailures: 0, manifestCacheHits: 0, manifestCacheMisses: 0, layersReused: 0, layersPacked: 0, singleFlightWaiters: 0,
  };
  service.subscribe((e) => {
    if (e.type === 'lookup') {
      if (e.hit) stats.manifestCacheHits++;
      else stats.manifestCacheMisses++;
    } else if (e.type === 'join') {
      stats.singleFlightWaiters++;
    } else {
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

/** Build failures worth showing: a missing name is the client's typo, not news. */
export function recordFailures(service: ImageService, errors: RecentErrors, now: () => number): void {
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
