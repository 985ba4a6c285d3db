/**
 * Retention policy: which images a garbage-collection pass drops. Pure.
 *
 * An image (a manifest record) is dropped when
 * - it was not pulled for `keepMs` (NIXERY_GC_KEEP_DAYS), or
 * - blob storage would still exceed `maxBytes` (NIXERY_GC_MAX_BYTES): the
 *   least recently pulled images go first, each freeing the blobs no
 *   remaining image shares, until what remains fits;
 * but never when it was pulled within `protectMs`: a replica may still be
 * serving it from memory, and its clients fetching its blobs, while its last
 * pull has not reached storage yet (usage is flushed in batches).
 *
 * `maxBytes` limits what images hold. `fixedBytes` (blobs no image
 * references that are too young to delete, or held by builds in progress)
 * is reported in the projection but never makes the policy drop an image:
 * dropping images cannot free it this pass, and counting it made every pass
 * under churn drop every unprotected image while freeing nothing (the blobs
 * of images dropped within the grace period are young, so they counted
 * again in the next pass; measured by bench/gc-soak.mjs). It goes by itself
 * once older than the grace period.
 *
 * Protection wins over the limit: when the images that may be dropped
 * cannot bring storage under `maxBytes`, all of them are dropped and the
 * projection says by how much it still exceeds (the pass logs that).
 */

export interface ImageUse {
  readonly key: string;
  /** Last pull (tag or digest) known to storage, else when the image was built. */
  readonly lastPulledAt: number;
  /** Digests of every blob the image references. */
  readonly blobs: readonly string[];
}

export interface RetentionPolicy {
  /** Drop images not pulled for this long; undefined keeps them. */
  readonly keepMs?: number | undefined;
  /** Drop least recently pulled images while blob bytes exceed this; undefined: no limit. */
  readonly maxBytes?: number | undefined;
  /** Images pulled within this are never dropped. */
  readonly protectMs: number;
}

export interface Retention {
  /** Oldest pull first. */
  readonly drop: readonly ImageUse[];
  readonly keep: readonly ImageUse[];
  /** Blob bytes left after the pass: what the kept images reference, plus `fixedBytes`. */
  readonly projectedBytes: number;
  /** What the kept images reference: the bytes `maxBytes` limits. */
  readonly imageBytes: number;
}

export function chooseDrops(
  images: readonly ImageUse[],
  blobSize: (digest: string) => number,
  fixedBytes: number,
  now: number,
  policy: RetentionPolicy,
): Retention {
  const byAge = [...images].sort((a, b) => a.lastPulledAt - b.lastPulledAt || (a.key < b.key ? -1 : 1));
  const protectedNow = (i: ImageUse) => now - i.lastPulledAt < policy.protectMs;
  const dropped = new Set<string>();
  if (policy.keepMs !== undefined) {
    for (const i of byAge) if (now - i.lastPulledAt > policy.keepMs && !protectedNow(i)) dropped.add(i.key);
  }

  // Reference counts over the images still kept, so dropping one frees
  // exactly the blobs it alone holds.
  const refs = new Map<string, number>();
  for (const i of byAge) {
    if (dropped.has(i.key)) continue;
    for (const d of new Set(i.blobs)) refs.set(d, (refs.get(d) ?? 0) + 1);
  }
  let bytes = 0;
  for (const d of refs.keys()) bytes += blobSize(d);

  if (policy.maxBytes !== undefined) {
    for (const i of byAge) {
      if (bytes <= policy.maxBytes) break;
      if (dropped.has(i.key) || protectedNow(i)) continue;
      dropped.add(i.key);
      for (const d of new Set(i.blobs)) {
        const n = (refs.get(d) ?? 0) - 1;
        if (n > 0) refs.set(d, n);
        else {
          refs.delete(d);
          bytes -= blobSize(d);
        }
      }
    }
  }
  return {
    drop: byAge.filter((i) => dropped.has(i.key)),
    keep: byAge.filter((i) => !dropped.has(i.key)),
    projectedBytes: bytes + fixedBytes,
    imageBytes: bytes,
  };
}
