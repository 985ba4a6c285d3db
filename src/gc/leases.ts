/**
 * How a build keeps a collector from deleting what it is about to reference.
 *
 * A blob the build writes (a new layer, the config, a manifest) is named in
 * the build's lease (records/leases/<id>), and that lease write has
 * finished, before the blob becomes visible under blobs/ (persistBlob's
 * `beforeVisible`, or before putBlob). A pass lists blobs before it reads
 * leases, so a pass that lists the new blob reads the lease naming it.
 * Without this, a pass with a short grace period listed a fresh layer,
 * read leases before the build got to name it and deleted it; with passes
 * every few hundred ms on GCS, builds lost blobs three times running and
 * failed (test/integration/gc-gcs.test.ts).
 *
 * A build that has every blob of its image (reused layers, new layers, the
 * config, both manifests) then writes the complete lease naming them, then
 * marks each blob used
 * (`markBlobUsed`, atomic against `deleteBlobIfUnchanged`), and only then
 * writes the manifest record; the lease is removed after the record is
 * written. A blob whose mark fails was deleted by a pass meanwhile: the
 * build starts again (the pass removed the layer records of what it
 * deleted, so the layers are packed anew).
 *
 * A pass lists blobs (with their versions), then reads leases, then reads
 * manifest records, and deletes a blob only if no lease and no record names
 * it, with the version it listed. Why no interleaving loses a blob:
 *
 * - Lease written before the pass read leases: the pass skips the blob.
 * - New blob, pass listed blobs before it appeared: the pass does not know
 *   it. Appeared before the listing: its lease was written earlier still,
 *   so before the pass read leases: skipped (the case above).
 * - New blob written over an older copy of the same digest the pass listed
 *   (persistBlob always writes a new version): the delete names the old
 *   version and fails; or it lands first and the write creates it anew.
 * - Reused layer (a layer record's blob, or one another build of this
 *   server found or packed): named in the lease (awaited), then marked,
 *   before the build uses it (`secure`). A config, SBOM or manifest already
 *   stored is named, then put: putBlob marks a blob that exists. Both are
 *   the case below, done as the blob is found rather than at the end, so a
 *   deleted layer is packed again on the spot instead of failing the whole
 *   attempt (with passes every 300 ms and no grace, three attempts of a
 *   build in a row lost a reused layer: test/integration/gc-gcs.test.ts).
 * - Lease written after the pass read leases: the build's mark comes later
 *   still, so after the pass listed the blob's version. If the mark lands
 *   before the delete, the version changed and the delete fails; if the
 *   delete lands first, the mark fails and the build writes the blob again.
 *   Either way the record is written only over blobs that exist.
 * - Record written and lease removed: a pass that missed the lease (read
 *   leases after it was removed) reads records later still, so it sees the
 *   record (leases are read before records for exactly this reason).
 *
 * A lease left by a crashed build is ignored (and removed) after a day.
 */
import { randomBytes } from 'node:crypto';
import pLimit from 'p-limit';
import { sha256Digest, type Digest } from '../digest.js';
import type { StorageBackend } from '../storage/backend.js';

const MARKS_AT_ONCE = 8;

/** A lease older than this belongs to a build that died: no build runs for a day. */
export const LEASE_MAX_MS = 24 * 3600 * 1000;

interface LeaseRecord {
  readonly at: number;
  readonly digests: readonly string[];
}

/** Digests held by live leases; leases older than LEASE_MAX_MS are listed as stale. */
export async function readLeases(storage: StorageBackend, now: number): Promise<{ held: Set<string>; stale: string[] }> {
  const held = new Set<string>();
  const stale: string[] = [];
  for await (const { key } of storage.listRecords('leases')) {
    const raw = await storage.getRecord('leases', key);
    if (raw === undefined) continue;
    let lease: LeaseRecord;
    try {
      lease = JSON.parse(raw.toString()) as LeaseRecord;
    } catch {
      stale.push(key);
      continue;
    }
    if (now - lease.at > LEASE_MAX_MS) stale.push(key);
    else for (const d of lease.digests) held.add(d);
  }
  return { held, stale };
}

/**
 * A build's lease, kept up to date while the build stores blobs: a new blob
 * is added before it becomes visible (`add`), a found one is added and
 * marked before it is used (`secure`), so a pass skips it from then on, not
 * only from the end of the build. `protect` then writes the complete lease
 * and marks every blob not secured yet, as the protocol above requires.
 */
export class BuildLease {
  readonly id = randomBytes(16).toString('hex');
  private readonly digests = new Set<Digest>();
  /** Marked after a lease naming them was written: safe until the lease goes. */
  private readonly secured = new Set<Digest>();
  private writing: Promise<void> = Promise.resolve();
  private pending: Promise<void> | undefined;

  constructor(
    private readonly storage: StorageBackend,
    private readonly now: () => number,
  ) {}

  /**
   * Adds blobs; the record is rewritten (one write at a time, coalesced).
   * Resolves once a write naming them has finished, and rejects if it
   * failed: await it before a new blob becomes visible.
   */
  add(digests: readonly Digest[]): Promise<void> {
    for (const d of digests) this.digests.add(d);
    if (this.pending) return this.pending;
    const write = this.writing.then(async () => {
      // From here on an add needs the next write: this one has its list.
      this.pending = undefined;
      await this.storage.putRecord('leases', this.id, Buffer.from(JSON.stringify({ at: this.now(), digests: [...this.digests] } satisfies LeaseRecord)));
    });
    this.pending = write;
    this.writing = write.catch(() => undefined);
    return write;
  }

  /**
   * Names a small blob, then puts it: putBlob marks a blob that is already
   * stored, after the lease names it, so the blob is secured either way.
   */
  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    await this.add([sha256Digest(bytes)]);
    return this.storage.putBlob(mediaType, bytes);
  }

  /** Names a found blob (the write awaited), then marks it; false when a pass deleted it. */
  async secure(digest: Digest): Promise<boolean> {
    await this.add([digest]);
    if (!(await this.storage.markBlobUsed(digest))) return false;
    this.secured.add(digest);
    return true;
  }

  /** The complete lease, then marks (but of blobs already secured); returns the digests that no longer exist. */
  async protect(digests: readonly Digest[]): Promise<Digest[]> {
    // A write that has not started yet: it names every blob and refreshes the lease time.
    await this.add(digests);
    const limit = pLimit(MARKS_AT_ONCE);
    const unmarked = [...this.digests].filter((d) => !this.secured.has(d));
    const marked = await Promise.all(unmarked.map((d) => limit(() => this.storage.markBlobUsed(d))));
    return unmarked.filter((_, i) => !marked[i]);
  }

  async release(): Promise<void> {
    await this.writing;
    await this.storage.deleteRecord('leases', this.id);
  }
}
