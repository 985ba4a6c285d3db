/**
 * Storage in the process's memory: the backend of in-process tests (the
 * service and the HTTP app without a disk or a bucket). It keeps the
 * contract of backend.ts, including "nothing visible before it is complete":
 * a blob is hashed while it is written and appears only once whole.
 *
 * Garbage-collection primitives: every blob carries usedAt (the injected
 * clock at its write or last mark) and a version from a counter that every
 * write and mark advances (one counter for all instances). Each method reads and changes the maps in one
 * synchronous step, so mark and conditional delete are atomic against each
 * other as they must be on the real backends. Writes in progress are the
 * "staging objects": cleanStaging drops those older than its limit, and such
 * a write then fails when it finishes, as it would on disk.
 */
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HashingStream, sha256Digest, type Digest } from '../digest.js';
import { StorageError } from '../errors.js';
import {
  assertRecordKey,
  type BlobInfo,
  type ByteRange,
  type PersistOptions,
  type PersistResult,
  type RecordEntry,
  type RecordKind,
  type ServedBlob,
  type StorageBackend,
  type StoredBlob,
} from './backend.js';

export interface MemoryBlob {
  readonly bytes: Buffer;
  readonly mediaType: string;
  /** The clock when it was written or last marked used. */
  readonly usedAt?: number;
  /** Changes with every write and mark (see `nextVersion`). */
  readonly version?: string;
}

interface MemoryRecord {
  readonly bytes: Buffer;
  readonly updatedAt: number;
}

interface Staging {
  readonly startedAt: number;
  removed: boolean;
}

export interface MemoryStorageOptions {
  /** Milliseconds since the epoch: usedAt, updatedAt and staging ages (tests pass their own). */
  readonly now?: () => number;
}

// One counter for every instance: tests copy blob entries between instances,
// and a copied version must never reappear for the same digest.
let versions = 0;
function nextVersion(): string {
  return String(++versions);
}

export class MemoryStorage implements StorageBackend {
  readonly name = 'memory';
  /**
   * By digest. Tests read and change it directly (copying blobs between
   * instances, deleting one); an entry without usedAt or version counts as
   * written at time 0 with version "0".
   */
  readonly blobs = new Map<Digest, MemoryBlob>();
  private readonly records = new Map<string, MemoryRecord>();
  private readonly staging = new Set<Staging>();
  private readonly now: () => number;

  constructor(opts: MemoryStorageOptions = {}) {
    this.now = opts.now ?? Date.now;
  }

  private store(digest: Digest, bytes: Buffer, mediaType: string): void {
    this.blobs.set(digest, { bytes, mediaType, usedAt: this.now(), version: nextVersion() });
  }

  async persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>, opts: PersistOptions = {}): Promise<PersistResult<T>> {
    const hasher = new HashingStream();
    const chunks: Buffer[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        chunks.push(Buffer.from(chunk));
        cb();
      },
    });
    const staging: Staging = { startedAt: this.now(), removed: false };
    this.staging.add(staging);
    const done = pipeline(hasher, sink);
    try {
      const [value] = await Promise.all([write(hasher), done]);
      const { digest, size } = hasher.result();
      if (staging.removed) throw new StorageError('memory storage: writing a blob: its staging object was removed (cleanStaging)');
      await opts.beforeVisible?.(digest);
      this.store(digest, Buffer.concat(chunks), mediaType);
      return { digest, size, value };
    } catch (e) {
      hasher.destroy();
      await done.catch(() => undefined);
      throw e;
    } finally {
      this.staging.delete(staging);
    }
  }

  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    const digest = sha256Digest(bytes);
    this.store(digest, Buffer.from(bytes), mediaType);
    return digest;
  }

  async statBlob(digest: Digest): Promise<BlobInfo | undefined> {
    const b = this.blobs.get(digest);
    return b && { size: b.bytes.length, mediaType: b.mediaType };
  }

  async readBlob(digest: Digest): Promise<Buffer | undefined> {
    return this.blobs.get(digest)?.bytes;
  }

  async serveBlob(digest: Digest, range?: ByteRange): Promise<ServedBlob | undefined> {
    const b = this.blobs.get(digest);
    if (b === undefined) return undefined;
    const bytes = range ? b.bytes.subarray(range.start, range.end + 1) : b.bytes;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new Uint8Array(bytes));
        controller.close();
      },
    });
    return { kind: 'stream', info: { size: b.bytes.length, mediaType: b.mediaType }, range, stream };
  }

  async *listBlobs(): AsyncIterable<StoredBlob> {
    // A snapshot: the map may change while the caller consumes the listing.
    for (const [digest, b] of [...this.blobs]) {
      yield { digest, size: b.bytes.length, usedAt: b.usedAt ?? 0, version: b.version ?? '0' };
    }
  }

  async markBlobUsed(digest: Digest): Promise<boolean> {
    const b = this.blobs.get(digest);
    if (b === undefined) return false;
    this.blobs.set(digest, { ...b, usedAt: this.now(), version: nextVersion() });
    return true;
  }

  async deleteBlobIfUnchanged(digest: Digest, version: string): Promise<boolean> {
    const b = this.blobs.get(digest);
    if (b === undefined || (b.version ?? '0') !== version) return false;
    this.blobs.delete(digest);
    return true;
  }

  async putRecord(kind: RecordKind, key: string, bytes: Buffer): Promise<void> {
    assertRecordKey(key);
    this.records.set(`${kind}/${key}`, { bytes: Buffer.from(bytes), updatedAt: this.now() });
  }

  async getRecord(kind: RecordKind, key: string): Promise<Buffer | undefined> {
    assertRecordKey(key);
    return this.records.get(`${kind}/${key}`)?.bytes;
  }

  async *listRecords(kind: RecordKind): AsyncIterable<RecordEntry> {
    const prefix = `${kind}/`;
    for (const [name, r] of [...this.records]) {
      if (name.startsWith(prefix)) yield { key: name.slice(prefix.length), updatedAt: r.updatedAt };
    }
  }

  async deleteRecord(kind: RecordKind, key: string): Promise<void> {
    assertRecordKey(key);
    this.records.delete(`${kind}/${key}`);
  }

  async cleanStaging(olderThanMs: number): Promise<number> {
    const now = this.now();
    let removed = 0;
    for (const s of this.staging) {
      if (now - s.startedAt > olderThanMs) {
        s.removed = true;
        this.staging.delete(s);
        removed++;
      }
    }
    return removed;
  }

  async check(): Promise<void> {}
}
