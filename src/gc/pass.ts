/**
 * One garbage-collection pass over storage, safe to run while servers
 * (this one and replicas sharing the bucket) build and serve:
 *
 *   1. read every image record with its last pull (usage.ts) and every
 *      blob's size, and choose the images to drop (policy.ts);
 *   2. delete the dropped images' records (manifest record, usage), forget
 *      this server's memory caches, rewrite the GC generation so replicas
 *      forget theirs, and wait two of their poll intervals (generation.ts);
 *   3. list blobs with their versions, then read leases, then records
 *      (that order is what makes it safe against builds: leases.ts), and
 *      choose the blobs no record or lease names that are older than the
 *      grace period;
 *   4. delete the layer records that point at those blobs and the referrers
 *      records of those manifests, so that no cache entry ever points at a
 *      missing blob, then each blob with the version listed in 3 (a blob
 *      marked used since then stays). A rebuild may write the same
 *      referrers record meanwhile and lose it here while its blobs stay
 *      (marked): the service writes it again when it next loads the image
 *      from storage (image-service.ts cachedImage);
 *   5. remove leases of builds that died and staging leftovers of killed
 *      writes.
 *
 * A dry run does 1 and 3 as if 2 had happened and deletes nothing; on
 * unchanged storage and clock its report is what a real pass deletes.
 * Records are deleted before the blobs they point at, everywhere.
 */
import { decodeStoredRecord, imageBlobs, isIndex, servedRefs, type StoredRecord } from '../service/records.js';
import type { StorageBackend, StoredBlob } from '../storage/backend.js';
import { bumpGeneration } from './generation.js';
import { readLeases } from './leases.js';
import { chooseDrops, type ImageUse } from './policy.js';
import { readUsage } from './usage.js';

export interface GcSettings {
  /** NIXERY_GC_KEEP_DAYS in ms. */
  readonly keepMs?: number | undefined;
  /** NIXERY_GC_MAX_BYTES. */
  readonly maxBytes?: number | undefined;
  /** NIXERY_GC_GRACE: no blob used more recently than this is deleted. */
  readonly graceMs: number;
  /** Images pulled this recently are never dropped (two usage flush intervals). */
  readonly protectMs: number;
  /** Wait between rewriting the generation and deleting blobs (two generation polls). */
  readonly propagationMs: number;
  /** Staging objects older than this are leftovers of killed writes. */
  readonly stagingMaxAgeMs: number;
}

export interface PassDeps {
  readonly storage: StorageBackend;
  readonly now: () => number;
  readonly settings: GcSettings;
  /** Forgets this server's cached images and manifests. */
  readonly forgetCaches?: () => void;
  readonly sleep?: (ms: number) => Promise<void>;
}

export interface DroppedImage {
  readonly key: string;
  readonly packages: readonly string[];
  readonly revision: string;
  readonly lastPulledAt: number;
}

export interface PassReport {
  readonly dryRun: boolean;
  readonly startedAt: number;
  readonly finishedAt: number;
  readonly images: readonly DroppedImage[];
  readonly imagesKept: number;
  /** Blobs deleted (or, in a dry run, that would be). */
  readonly blobs: { readonly count: number; readonly bytes: number; readonly digests: readonly string[] };
  /** Layer and referrers records deleted with the blobs they point at. */
  readonly layerRecords: number;
  readonly staleLeases: number;
  readonly staging: number;
  /** Blob bytes in storage before and after the pass. */
  readonly bytesBefore: number;
  readonly bytesAfter: number;
  /**
   * By how much what the kept images hold exceeds NIXERY_GC_MAX_BYTES
   * (0 within it or without a limit): images pulled too recently to drop.
   */
  readonly overLimitBytes: number;
}

interface LoadedImage {
  readonly key: string;
  readonly image: StoredRecord | undefined;
  readonly use: ImageUse;
  /** Usage ids: the key, and the manifests' digest hex (pulls by digest). */
  readonly usageIds: readonly string[];
}

const sleepFor = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function runPass(deps: PassDeps, opts: { dryRun?: boolean } = {}): Promise<PassReport> {
  const { storage, now, settings } = deps;
  const dryRun = opts.dryRun ?? false;
  const startedAt = now();

  // 1. What exists and what to drop.
  const images = await loadImages(storage);
  const before = await listAll(storage);
  const size = (d: string) => before.get(d)?.size ?? 0;
  const referenced = new Set(images.flatMap((i) => i.use.blobs));
  let fixed = 0;
  for (const b of before.values()) if (!referenced.has(b.digest) && b.usedAt >= startedAt - settings.graceMs) fixed += b.size;
  const retention = chooseDrops(
    images.map((i) => i.use),
    size,
    fixed,
    startedAt,
    { keepMs: settings.keepMs, maxBytes: settings.maxBytes, protectMs: settings.protectMs },
  );
  const dropKeys = new Set(retention.drop.map((i) => i.key));
  const byKey = new Map(images.map((i) => [i.key, i]));
  // In the policy's order: least recently pulled first.
  const dropped = retention.drop.map((u) => byKey.get(u.key) as LoadedImage);

  // 2. Records first, then every replica's memory, then (3-4) blobs.
  if (!dryRun && dropped.length > 0) {
    for (const i of dropped) {
      await storage.deleteRecord('manifests', i.key);
      for (const id of i.usageIds) await storage.deleteRecord('usage', id);
    }
    deps.forgetCaches?.();
    await bumpGeneration(storage);
    await (deps.sleep ?? sleepFor)(settings.propagationMs);
  }

  // 3. Blobs (with versions), then leases, then records: in this order.
  const sweepAt = dryRun ? startedAt : now();
  const blobs = dryRun ? before : await listAll(storage);
  const leases = await readLeases(storage, sweepAt);
  const live = new Set<string>(leases.held);
  const remaining = dryRun ? images.filter((i) => !dropKeys.has(i.key)) : await loadImages(storage);
  for (const i of remaining) for (const d of i.use.blobs) live.add(d);
  const doomed = [...blobs.values()].filter((b) => !live.has(b.digest) && b.usedAt < sweepAt - settings.graceMs);
  const doomedSet = new Set<string>(doomed.map((b) => b.digest));

  // 4. Layer records pointing at doomed blobs, then the blobs.
  let layerRecords = 0;
  for await (const { key } of storage.listRecords('layers')) {
    const raw = await storage.getRecord('layers', key);
    if (raw === undefined) continue;
    // An unreadable layer record is never trusted anyway: it goes too.
    const digest = layerDigest(raw);
    if (digest !== undefined && !doomedSet.has(digest)) continue;
    layerRecords++;
    if (!dryRun) await storage.deleteRecord('layers', key);
  }
  for await (const { key } of storage.listRecords('referrers')) {
    if (!doomedSet.has(`sha256:${key}`)) continue;
    layerRecords++;
    if (!dryRun) await storage.deleteRecord('referrers', key);
  }
  let count = 0;
  let bytes = 0;
  const digests: string[] = [];
  for (const b of doomed) {
    if (!dryRun && !(await storage.deleteBlobIfUnchanged(b.digest, b.version))) continue;
    count++;
    bytes += b.size;
    digests.push(b.digest);
  }

  // 5. Leftovers.
  let staging = 0;
  if (!dryRun) {
    for (const key of leases.stale) await storage.deleteRecord('leases', key);
    staging = await storage.cleanStaging(settings.stagingMaxAgeMs);
  }
  let bytesBefore = 0;
  for (const b of before.values()) bytesBefore += b.size;
  let bytesAfter = 0;
  for (const b of blobs.values()) bytesAfter += b.size;
  bytesAfter -= bytes;

  return {
    dryRun,
    startedAt,
    finishedAt: now(),
    images: dropped.map((i) => ({ key: i.key, packages: i.image?.packages ?? [], revision: i.image?.revision ?? '', lastPulledAt: i.use.lastPulledAt })),
    imagesKept: retention.keep.length,
    blobs: { count, bytes, digests },
    layerRecords,
    staleLeases: leases.stale.length,
    staging,
    bytesBefore,
    bytesAfter,
    overLimitBytes: settings.maxBytes === undefined ? 0 : Math.max(0, retention.imageBytes - settings.maxBytes),
  };
}

async function listAll(storage: StorageBackend): Promise<Map<string, StoredBlob>> {
  const all = new Map<string, StoredBlob>();
  for await (const b of storage.listBlobs()) all.set(b.digest, b);
  return all;
}

/** Every image record with the blobs it references and its last pull. */
async function loadImages(storage: StorageBackend): Promise<LoadedImage[]> {
  const out: LoadedImage[] = [];
  for await (const { key, updatedAt } of storage.listRecords('manifests')) {
    const raw = await storage.getRecord('manifests', key);
    if (raw === undefined) continue;
    const image = decodeStoredRecord(raw);
    // An unreadable record is never served (the service treats it as a
    // miss): it holds nothing, and the oldest possible time drops it.
    const blobs = image === undefined ? [] : await blobsOf(storage, image);
    const usageIds = [key, ...(image ? servedRefs(image).map((m) => m.digest.slice('sha256:'.length)) : [])];
    // The last pull storage knows of; an image never pulled since it was
    // built (its pulls not flushed yet) counts from when its record was written.
    let pulled: number | undefined;
    for (const id of usageIds) {
      const at = await readUsage(storage, id);
      if (at !== undefined) pulled = Math.max(pulled ?? 0, at);
    }
    const lastPulledAt = image === undefined ? 0 : (pulled ?? updatedAt);
    out.push({ key, image, usageIds, use: { key, lastPulledAt, blobs } });
  }
  return out;
}

/**
 * A record's blobs. Records written before blob lists were kept name only
 * their manifests: the layers and config are read from the manifests.
 */
async function blobsOf(storage: StorageBackend, image: StoredRecord): Promise<string[]> {
  const listed = imageBlobs(image);
  if (isIndex(image) || image.platforms.length > 0) return listed;
  const all = new Set<string>(listed);
  for (const m of Object.values(image.manifests)) {
    const raw = await storage.readBlob(m.digest);
    if (raw === undefined) continue;
    try {
      const manifest = JSON.parse(raw.toString()) as { config?: { digest?: string }; layers?: Array<{ digest?: string }>; mediaType?: string };
      if (manifest.config?.digest) all.add(manifest.config.digest);
      for (const l of manifest.layers ?? []) if (l.digest) all.add(l.digest);
    } catch {
      // Not a manifest we wrote; nothing more to keep for it.
    }
  }
  return [...all];
}

function layerDigest(raw: Buffer): string | undefined {
  try {
    const r = JSON.parse(raw.toString()) as { digest?: unknown };
    return typeof r.digest === 'string' ? r.digest : undefined;
  } catch {
    return undefined;
  }
}
