/**
 * The storage contract every backend implements (filesystem, gcs, and memory
 * for in-process tests). The service sees only this interface; main picks
 * the implementation.
 *
 * Object layout, the same in every backend:
 *
 *   blobs/sha256/<hex>        layers, image configs and manifests, by digest;
 *                             the media type is kept with the object
 *                             (user.mime_type xattr, GCS contentType), and so
 *                             are when it was written or last marked used and
 *                             a version that changes with every mark or write
 *                             (filesystem: mtime + user.nixery.used xattr;
 *                             GCS: nixery-used-at metadata + generation and
 *                             metageneration), for the garbage collector
 *   records/<kind>/<key>      small JSON records (RecordKind): the manifest
 *                             built for an image cache key, the layer built
 *                             for a layer content key (so a restart or another
 *                             replica finds them), and the collector's usage,
 *                             lease and state records
 *   staging/<random>          writes in progress; on the filesystem also
 *                             staging/gc-<hex>-<random>, a blob a collector is
 *                             deleting (moved there to check its version)
 *
 * Nothing is ever visible under blobs/ or records/ before it is complete:
 * every write goes to staging first and is then moved (renamed) into place.
 * A blob is verified against its digest while it is written.
 *
 * Garbage collection runs online, while replicas write and serve: a replica
 * that relies on a blob (serves a manifest naming it, or reuses a layer)
 * calls markBlobUsed, and a collector deletes only with
 * deleteBlobIfUnchanged and a version it read, so the two cannot cross: a
 * blob marked after the collector read its version survives, and a mark that
 * comes too late answers false, telling the replica to write the blob again.
 */
import type { Writable } from 'node:stream';
import type { Digest } from '../digest.js';

/**
 * The kinds of records/<kind>/<key>: manifests and layers (the service's
 * build caches), referrers (the artifacts attached to a manifest, by its
 * digest: the referrers API), packages (the package index of a revision),
 * usage, leases and gc (the garbage collector's bookkeeping).
 */
export type RecordKind = 'manifests' | 'layers' | 'referrers' | 'packages' | 'usage' | 'leases' | 'gc';
export const RECORD_KINDS: readonly RecordKind[] = ['manifests', 'layers', 'referrers', 'packages', 'usage', 'leases', 'gc'];

export interface BlobInfo {
  readonly size: number;
  readonly mediaType: string;
}

export interface ByteRange {
  /** First byte, inclusive. */
  readonly start: number;
  /** Last byte, inclusive. */
  readonly end: number;
}

export type ServedBlob =
  | {
      readonly kind: 'stream';
      readonly info: BlobInfo;
      /** The requested range, already clamped to the blob; undefined for the whole blob. */
      readonly range: ByteRange | undefined;
      /** A web stream: the HTTP layer answers with it as it is. */
      readonly stream: ReadableStream<Uint8Array>;
    }
  | { readonly kind: 'redirect'; readonly info: BlobInfo; readonly url: string };

export interface PersistOptions {
  readonly beforeVisible?: (digest: Digest) => Promise<void>;
}

export interface PersistResult<T> {
  readonly digest: Digest;
  readonly size: number;
  /** Whatever the write function returned (e.g. the diff_id of a layer). */
  readonly value: T;
}

/** One blob as listBlobs sees it: what a collector needs to judge and delete it. */
export interface StoredBlob {
  readonly digest: Digest;
  readonly size: number;
  /** When the blob was written or last marked used (ms since the epoch, by the backend's clock). */
  readonly usedAt: number;
  /** Opaque; changes whenever the blob is marked used or written again. */
  readonly version: string;
}

/** One record as listRecords sees it. */
export interface RecordEntry {
  readonly key: string;
  /** When the record was last written (ms since the epoch, by the backend's clock). */
  readonly updatedAt: number;
}

export interface StorageBackend {
  readonly name: string;

  /**
   * Streams a new blob: `write` writes the bytes into `out` and resolves when
   * it has finished writing (it must not end `out` itself unless it says so by
   * resolving after `out` finished). The backend hashes the bytes on the way,
   * stores them under blobs/sha256/<hex> with the media type, and returns the
   * digest. A failed or aborted write leaves nothing under blobs/. It always
   * writes, even over the same blob: usedAt = now and a new version.
   * `beforeVisible` is awaited with the digest once the bytes are hashed and
   * before the blob appears under blobs/ (a build names it in its GC lease
   * there: gc/leases.ts); if it throws, nothing appears.
   */
  persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>, opts?: PersistOptions): Promise<PersistResult<T>>;

  /**
   * Stores a small blob whose bytes are already in memory (configs,
   * manifests). When the blob is already stored with this media type it is
   * not written again but marked used (as markBlobUsed), so that a collector
   * holding an older version cannot delete it under the caller.
   */
  putBlob(mediaType: string, bytes: Buffer): Promise<Digest>;

  /** Size and media type, or undefined when no such blob is stored. */
  statBlob(digest: Digest): Promise<BlobInfo | undefined>;

  /** Reads a small blob whole (manifests); undefined when absent. */
  readBlob(digest: Digest): Promise<Buffer | undefined>;

  /**
   * How to answer a blob GET/HEAD: a stream (optionally a byte range), or a
   * redirect to where the client can fetch it. Undefined when absent: the
   * registry answers BLOB_UNKNOWN itself, never redirects to a miss.
   * `known`: what statBlob just answered, so the backend need not ask again
   * (on GCS that is a metadata request per blob GET).
   */
  serveBlob(digest: Digest, range?: ByteRange, known?: BlobInfo): Promise<ServedBlob | undefined>;

  /**
   * Every blob, in no particular order. Streamed: a bucket may hold millions.
   * A blob written or deleted while the listing runs may or may not appear.
   * The version is read before usedAt, so a listed version is never newer
   * than the usedAt listed with it (a collector never sees a fresh mark's
   * version together with the time before it).
   */
  listBlobs(): AsyncIterable<StoredBlob>;

  /**
   * Marks the blob used now (usedAt = the backend's clock, new version).
   * False when it does not exist (a collector deleted it): the caller must
   * write it again before relying on it. Atomic against
   * deleteBlobIfUnchanged: a blob marked after a collector read its version
   * is never deleted with that version, so true means the blob stays until a
   * collector reads its version anew. Each mark is a write: on GCS a metadata
   * PATCH, and GCS takes about one change per second per object (more are
   * answered 429 and retried with backoff), so callers should not mark the
   * same blob again and again within seconds.
   */
  markBlobUsed(digest: Digest): Promise<boolean>;

  /**
   * Deletes the blob only if it is unchanged since `version` was read (not
   * marked used, not written again). True when it deleted it; false when it
   * changed or was already gone. The collector's only way to delete a blob:
   * an unconditional delete could remove a blob a replica has just marked.
   */
  deleteBlobIfUnchanged(digest: Digest, version: string): Promise<boolean>;

  /** Atomically replaces a small record (updatedAt = the backend's clock). */
  putRecord(kind: RecordKind, key: string, bytes: Buffer): Promise<void>;
  getRecord(kind: RecordKind, key: string): Promise<Buffer | undefined>;

  /** Keys of a record kind with when each was last written, in no particular order (streamed). */
  listRecords(kind: RecordKind): AsyncIterable<RecordEntry>;

  /** Deletes a record; no error when it is absent (deleting is idempotent, as a collector retries). */
  deleteRecord(kind: RecordKind, key: string): Promise<void>;

  /**
   * Removes staging objects (writes in progress) older than `olderThanMs` by
   * the backend's clock, i.e. left behind by a killed process; returns how
   * many. A live write whose staging object is removed fails, so pass an age
   * far above the longest write (an hour). Never removes a blob or a record
   * (on the filesystem a blob a killed collector left mid-delete in staging/
   * is put back under blobs/ and counted: see filesystem.ts).
   */
  cleanStaging(olderThanMs: number): Promise<number>;

  /** Throws a StorageError saying what is wrong when the storage cannot be used (readiness). */
  check(): Promise<void>;
}

const RECORD_KEY = /^[0-9a-f]{16,128}$/;

/**
 * Record keys are hex hashes (16 to 128 hex digits; the collector's 'gc'
 * records use fixed hex keys of its own choosing); anything else is a
 * programming error, not user input.
 */
export function assertRecordKey(key: string): void {
  if (!RECORD_KEY.test(key)) throw new Error(`invalid record key ${JSON.stringify(key)}`);
}

/** Whether a name is a valid record key (listRecords skips anything else it finds). */
export function isRecordKey(key: string): boolean {
  return RECORD_KEY.test(key);
}
