/**
 * Garbage collection as the server runs it: pull times recorded (usage.ts),
 * the GC generation watched (generation.ts), and, when NIXERY_GC_INTERVAL
 * is set, a pass (pass.ts) every interval, followed by a Nix store
 * collection when the store's filesystem runs low (NIXERY_NIX_GC_MIN_FREE).
 * One pass at a time per process; passes on replicas sharing a bucket are
 * safe together (pass.ts, leases.ts). The `gc` command uses the same class.
 */
import type { GcConfig } from '../config.js';
import type { Logger } from '../log.js';
import type { StorageBackend } from '../storage/backend.js';
import { GenerationWatcher } from './generation.js';
import { runPass, type GcSettings, type PassReport } from './pass.js';
import { UsageTracker } from './usage.js';

/** Staging objects younger than this may be writes in progress (a big layer upload). */
const STAGING_MIN_AGE_MS = 3600 * 1000;

/** The Nix store's filesystem and NIXERY_NIX_GC_MIN_FREE in bytes. */
export interface NixStoreSpace {
  readonly freeBytes: number;
  readonly totalBytes: number;
  readonly thresholdBytes: number;
}

/** Nix store collection, supplied by the runtime when NIXERY_NIX_GC_MIN_FREE is set. */
export interface NixStoreCollector {
  /** Collects when the store runs low; the space after. */
  collect(): Promise<{ ran: boolean; freedBytes: number; after: NixStoreSpace }>;
  /** The space now (for a dry run). */
  space(): Promise<NixStoreSpace>;
}

/** The Nix store in a pass report: space after the pass and, when it is low, what a collection asks for. */
export interface NixStoreReport extends NixStoreSpace {
  /** Bytes below the threshold: what a collection frees (a dry run: would free) at most. */
  readonly shortfallBytes: number;
}

export type GcReport = PassReport & { readonly nixBytesFreed: number; readonly nixStore?: NixStoreReport };

const nixReport = (s: NixStoreSpace): NixStoreReport => ({ ...s, shortfallBytes: Math.max(0, s.thresholdBytes - s.freeBytes) });

export interface GcStats {
  passes: number;
  imagesDropped: number;
  blobsDeleted: number;
  bytesDeleted: number;
  nixBytesFreed: number;
  failures: number;
  /** Blob bytes in storage after the last pass. */
  storageBytes: number | undefined;
  lastPass: GcReport | undefined;
}

export function gcSettings(config: GcConfig): GcSettings {
  return {
    keepMs: config.keepDays === undefined ? undefined : config.keepDays * 86_400_000,
    maxBytes: config.maxBytes,
    graceMs: config.graceSeconds * 1000,
    // A pull reaches storage up to one flush interval late; two leave room for the pull itself.
    protectMs: 2 * config.usageFlushSeconds * 1000,
    // Every replica polls the generation once per interval; two make sure all have.
    propagationMs: 2 * config.pollSeconds * 1000,
    stagingMaxAgeMs: Math.max(config.graceSeconds * 1000, STAGING_MIN_AGE_MS),
  };
}

export class GarbageCollector {
  readonly usage: UsageTracker;
  readonly stats: GcStats = {
    passes: 0,
    imagesDropped: 0,
    blobsDeleted: 0,
    bytesDeleted: 0,
    nixBytesFreed: 0,
    failures: 0,
    storageBytes: undefined,
    lastPass: undefined,
  };
  private readonly watcher: GenerationWatcher;
  private readonly settings: GcSettings;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<GcReport> | undefined;

  constructor(
    private readonly deps: {
      readonly storage: StorageBackend;
      readonly now: () => number;
      readonly config: GcConfig;
      readonly log: Logger;
      /** Forgets the image service's memory caches. */
      readonly forgetCaches: () => void;
      readonly nixStore?: NixStoreCollector;
    },
  ) {
    this.settings = gcSettings(deps.config);
    this.usage = new UsageTracker(deps.storage, deps.now, (e) => deps.log.warn({ err: (e as Error).message }, 'pull times not written; retried at the next flush'));
    this.watcher = new GenerationWatcher(deps.storage, deps.forgetCaches, (e) =>
      deps.log.warn({ err: (e as Error).message }, 'GC generation not read; retried at the next poll'),
    );
  }

  /** Starts recording pulls and watching the generation; passes too when an interval is configured. */
  async start(): Promise<void> {
    const { config } = this.deps;
    this.usage.start(config.usageFlushSeconds * 1000);
    await this.watcher.start(config.pollSeconds * 1000);
    if (config.intervalSeconds !== undefined) {
      // A tick while a pass still runs is skipped, not queued.
      this.timer = setInterval(() => {
        if (!this.running) void this.run().catch(() => undefined);
      }, config.intervalSeconds * 1000);
      this.timer.unref();
    }
  }

  /** Stops passes and polling, writes pending pull times, waits for a running pass. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watcher.stop();
    await this.running?.catch(() => undefined);
    await this.usage.stop().catch(() => undefined);
  }

  /**
   * One pass now; a call while one runs joins it (and is not counted
   * twice). A dry run deletes nothing and counts nothing.
   */
  run(opts: { dryRun?: boolean } = {}): Promise<GcReport> {
    if (opts.dryRun) return this.dryRun();
    this.running ??= this.passAndRecord().finally(() => (this.running = undefined));
    return this.running;
  }

  private async passAndRecord(): Promise<GcReport> {
    let report: PassReport;
    try {
      report = await this.pass(false);
    } catch (e) {
      this.stats.failures++;
      this.deps.log.error({ err: (e as Error).message }, 'garbage collection pass failed');
      throw e;
    }
    let nixBytesFreed = 0;
    let nixStore: NixStoreReport | undefined;
    try {
      const r = await this.deps.nixStore?.collect();
      nixBytesFreed = r?.freedBytes ?? 0;
      nixStore = r && nixReport(r.after);
    } catch (e) {
      this.deps.log.error({ err: (e as Error).message }, 'Nix store garbage collection failed');
    }
    const s = this.stats;
    s.passes++;
    s.imagesDropped += report.images.length;
    s.blobsDeleted += report.blobs.count;
    s.bytesDeleted += report.blobs.bytes;
    s.nixBytesFreed += nixBytesFreed;
    s.storageBytes = report.bytesAfter;
    s.lastPass = { ...report, nixBytesFreed, ...(nixStore ? { nixStore } : {}) };
    if (report.overLimitBytes > 0) {
      this.deps.log.warn(
        { overLimitBytes: report.overLimitBytes, maxBytes: this.settings.maxBytes },
        'blob storage stays over NIXERY_GC_MAX_BYTES: the images over it were pulled too recently to drop',
      );
    }
    this.deps.log.info(
      {
        imagesDropped: report.images.length,
        imagesKept: report.imagesKept,
        blobsDeleted: report.blobs.count,
        bytesDeleted: report.blobs.bytes,
        layerRecords: report.layerRecords,
        staging: report.staging,
        storageBytes: report.bytesAfter,
        nixBytesFreed,
        ms: report.finishedAt - report.startedAt,
      },
      'garbage collection pass',
    );
    return s.lastPass;
  }

  private async dryRun(): Promise<GcReport> {
    const report = await this.pass(true);
    const space = await this.deps.nixStore?.space();
    return { ...report, nixBytesFreed: 0, ...(space ? { nixStore: nixReport(space) } : {}) };
  }

  private async pass(dryRun: boolean): Promise<PassReport> {
    // Pulls noted here so far count in this pass.
    await this.usage.flush().catch(() => undefined);
    return runPass({ storage: this.deps.storage, now: this.deps.now, settings: this.settings, forgetCaches: this.deps.forgetCaches }, { dryRun });
  }
}
