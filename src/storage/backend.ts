/**
 * The storage contract every backend implements (filesystem, gcs). The
 * service sees only this interface; main picks the implementation.
 *
 * Object layout, the same in every backend:
 *
 *   blobs/sha256/<hex>        layers, image configs and manifests, by digest;
 *                             the media type is kept with the object
 *                             (user.mime_type xattr, GCS contentType)
 *   records/<kind>/<key>      small JSON records: the manifest built for an
 *                             image cache key, the layer built for a layer
 *                             content key (so a restart or another replica
 *                             finds them)
 *   staging/<random>          writes in progress
 *
 * Nothing is ever visible under blobs/ or records/ before it is complete:
 * every write goes to staging first and is then moved (renamed) into place.
 * A blob is verified against its digest while it is written.
 */
import type { Writable } from 'node:stream';
import type { Digest } from '../digest.js';

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

export interface PersistResult<T> {
  readonly digest: Digest;
  readonly size: number;
  /** Whatever the write function returned (e.g. the diff_id of a layer). */
  readonly value: T;
}

export interface StorageBackend {
  readonly name: string;

  /**
   * Streams a new blob: `write` writes the bytes into `out` and resolves when
   * it has finished writing (it must not end `out` itself unless it says so by
   * resolving after `out` finished). The backend hashes the bytes on the way,
   * stores them under blobs/sha256/<hex> with the media type, and returns the
   * digest. A failed or aborted write leaves nothing under blobs/.
   */
  persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>): Promise<PersistResult<T>>;

  /** Stores a small blob whose bytes are already in memory (configs, manifests). */
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

  /** Atomically replaces a small record. */
  putRecord(kind: 'manifests' | 'layers', key: string, bytes: Buffer): Promise<void>;
  getRecord(kind: 'manifests' | 'layers', key: string): Promise<Buffer | undefined>;

  /** Throws a StorageError saying what is wrong when the storage cannot be used (readiness). */
  check(): Promise<void>;
}

/** Record keys are hex hashes; anything else is a programming error, not user input. */
export function assertRecordKey(key: string): void {
  if (!/^[0-9a-f]{16,128}$/.test(key)) throw new Error(`invalid record key ${JSON.stringify(key)}`);
}
