/**
 * Prometheus metrics (prom-client). Request metrics are observed by the HTTP
 * layer; build and cache counters are read from the service's own counters
 * at scrape time, so the service stays free of any metrics library.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { PieceCacheStats } from './layers/parallel-pack.js';
import type { GcStats } from './gc/collector.js';
import type { BuildTimings } from './service/build.js';
import type { ImageServiceStats } from './service/observers.js';

export interface MetricSources {
  service: () => ImageServiceStats;
  nixRunning: () => number;
  /** The packer's piece cache, when there is one. */
  pieceCache?: () => PieceCacheStats;
  /** Garbage collection's totals. */
  gc?: () => GcStats;
}

export interface Metrics {
  readonly registry: Registry;
  observeRequest(route: string, method: string, status: number, seconds: number): void;
  observeBuild(outcome: 'succeeded' | 'failed' | 'timed_out', seconds: number): void;
  addBytesServed(bytes: number): void;
  /** A successful build's phases and layer bytes. */
  observeBuildTimings(timings: BuildTimings): void;
}

/** A counter whose value is read from elsewhere when Prometheus scrapes. */
function mirroredCounter(registry: Registry, name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

export function createMetrics(src: MetricSources): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'nixery_' });

  const requests = new Counter({
    name: 'nixery_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [registry],
  });
  const requestDuration = new Histogram({
    name: 'nixery_http_request_duration_seconds',
    help: 'HTTP request duration by route (for blobs: until the response started)',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [registry],
  });
  const builds = new Counter({
    name: 'nixery_builds_finished_total',
    help: 'Image builds finished, by outcome (succeeded, failed, timed_out)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const buildDuration = new Histogram({
    name: 'nixery_build_duration_seconds',
    help: 'Image build duration (Nix evaluation, realisation, packing, upload)',
    buckets: [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600],
    registers: [registry],
  });
  const phaseDuration = new Histogram({
    name: 'nixery_build_phase_duration_seconds',
    help: 'Time successful image builds spent per phase (resolve, realise, closure, group, pack, manifest)',
    labelNames: ['phase'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
    registers: [registry],
  });
  const layerBytes = new Counter({
    name: 'nixery_build_layer_bytes_total',
    help: 'Compressed layer bytes of successful builds by how they were made: compressed (now), piece_cache (members copied from the piece cache), reused (whole layers found in storage)',
    labelNames: ['source'] as const,
    registers: [registry],
  });
  if (src.pieceCache) {
    const pieces = src.pieceCache;
    new Gauge({
      name: 'nixery_pack_cache_bytes',
      help: 'Compressed store-path pieces held by the piece cache (NIXERY_PACK_CACHE_BYTES)',
      registers: [registry],
      collect() {
        this.set(pieces().bytes);
      },
    });
    mirroredCounter(registry, 'nixery_pack_cache_hits_total', 'Store paths copied from the piece cache into a layer', () => pieces().hits);
    mirroredCounter(registry, 'nixery_pack_cache_misses_total', 'Store paths compressed because the piece cache did not hold them', () => pieces().misses);
  }
  if (src.gc) {
    const gc = src.gc;
    mirroredCounter(registry, 'nixery_gc_passes_total', 'Garbage-collection passes completed', () => gc().passes);
    mirroredCounter(registry, 'nixery_gc_failures_total', 'Garbage-collection passes that failed', () => gc().failures);
    mirroredCounter(registry, 'nixery_gc_images_dropped_total', 'Images (manifest records) dropped by retention', () => gc().imagesDropped);
    mirroredCounter(registry, 'nixery_gc_blobs_deleted_total', 'Blobs deleted by garbage collection', () => gc().blobsDeleted);
    mirroredCounter(registry, 'nixery_gc_blob_bytes_deleted_total', 'Blob bytes deleted by garbage collection', () => gc().bytesDeleted);
    mirroredCounter(registry, 'nixery_gc_nix_store_bytes_freed_total', 'Bytes freed in the Nix store by its garbage collector', () => gc().nixBytesFreed);
    new Gauge({
      name: 'nixery_storage_blob_bytes',
      help: 'Blob bytes in storage, as the last garbage-collection pass left them (absent before the first pass)',
      registers: [registry],
      collect() {
        const b = gc().storageBytes;
        if (b !== undefined) this.set(b);
      },
    });
  }
  const bytesServed = new Counter({
    name: 'nixery_blob_bytes_served_total',
    help: 'Blob bytes sent by this server (redirected downloads are not counted)',
    registers: [registry],
  });
  mirroredCounter(registry, 'nixery_builds_started_total', 'Image builds started (manifest cache misses that ran Nix)', () => src.service().builds);
  mirroredCounter(registry, 'nixery_manifest_cache_hits_total', 'Manifest requests answered from cache', () => src.service().manifestCacheHits);
  mirroredCounter(registry, 'nixery_manifest_cache_misses_total', 'Manifest requests that needed a build', () => src.service().manifestCacheMisses);
  mirroredCounter(registry, 'nixery_layer_cache_hits_total', 'Layers reused from storage by content key', () => src.service().layersReused);
  mirroredCounter(registry, 'nixery_layer_cache_misses_total', 'Layers packed and uploaded', () => src.service().layersPacked);
  mirroredCounter(registry, 'nixery_single_flight_waiters_total', 'Requests that waited on a build already running for the same image', () => src.service().singleFlightWaiters);
  new Counter({
    name: 'nixery_admission_rejections_total',
    help: 'Builds refused before they started, by reason (queue_full: 429, every build slot and the queue taken; too_many_packages: more than NIXERY_MAX_PACKAGES)',
    labelNames: ['reason'] as const,
    registers: [registry],
    collect() {
      this.reset();
      const s = src.service();
      this.inc({ reason: 'queue_full' }, s.rejectedQueueFull);
      this.inc({ reason: 'too_many_packages' }, s.rejectedTooManyPackages);
    },
  });
  mirroredCounter(
    registry,
    'nixery_remembered_failures_total',
    'Manifest requests answered with a build failure remembered for NIXERY_FAILED_BUILD_TTL, without building',
    () => src.service().rememberedFailures,
  );
  new Gauge({
    name: 'nixery_builds_running',
    help: 'Image builds doing their work now (at most NIXERY_MAX_BUILDS)',
    registers: [registry],
    collect() {
      this.set(src.service().buildsRunning);
    },
  });
  new Gauge({
    name: 'nixery_builds_queued',
    help: 'Image builds waiting for a build slot now (at most NIXERY_MAX_QUEUED_BUILDS)',
    registers: [registry],
    collect() {
      this.set(src.service().buildsQueued);
    },
  });
  new Gauge({
    name: 'nixery_nix_processes_running',
    help: 'Nix processes running now',
    registers: [registry],
    collect() {
      this.set(src.nixRunning());
    },
  });

  return {
    registry,
    observeRequest(route, method, status, seconds) {
      requests.inc({ route, method, status: String(status) });
      requestDuration.observe({ route }, seconds);
    },
    observeBuild(outcome, seconds) {
      builds.inc({ outcome });
      buildDuration.observe(seconds);
    },
    addBytesServed(bytes) {
      bytesServed.inc(bytes);
    },
    observeBuildTimings(t) {
      for (const [phase, ms] of Object.entries(t.phases)) phaseDuration.observe({ phase }, ms / 1000);
      layerBytes.inc({ source: 'compressed' }, t.packedBytes);
      layerBytes.inc({ source: 'piece_cache' }, t.cachedBytes);
      layerBytes.inc({ source: 'reused' }, t.reusedBytes);
    },
  };
}
