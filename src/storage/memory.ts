/**
 * Storage in the process's memory: the backend of in-process tests (the
 * service and the HTTP app without a disk or a bucket). It keeps the
 * contract of backend.ts, including "nothing visible before it is complete":
 * a blob is hashed while it is written and appears only once whole.
 */
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HashingStream, sha256Digest, type Digest } from '../digest.js';
import {
  assertRecordKey,
  type BlobInfo,
  type ByteRange,
  type PersistResult,
  type ServedBlob,
  type StorageBackend,
} from './backend.js';

interface StoredBlob {
  readonly bytes: Buffer;
  readonly mediaType: string;
}

export class MemoryStorage implements StorageBackend {
  readonly name = 'memory';
  readonly blobs = new Map<Digest, StoredBlob>();
  private readonly records = new Map<string, Buffer>();

  async persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>): Promise<PersistResult<T>> {
    const hasher = new HashingStream();
    const chunks: Buffer[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        chunks.push(Buffer.from(chunk));
        cb();
      },
    });
    const done = pipeline(hasher, sink);
    try {
      const [value] = await Promise.all([write(hasher), done]);
      const { digest, size } = hasher.result();
      this.blobs.set(digest, { bytes: Buffer.concat(chunks), mediaType });
      return { digest, size, value };
    } catch (e) {
      hasher.destroy();
      await done.catch(() => undefined);
      throw e;
    }
  }

  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    const digest = sha256Digest(bytes);
    this.blobs.set(digest, { bytes: Buffer.from(bytes), mediaType });
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

  async putRecord(kind: 'manifests' | 'layers', key: string, bytes: Buffer): Promise<void> {
    assertRecordKey(key);
    this.records.set(`${kind}/${key}`, Buffer.from(bytes));
  }

  async getRecord(kind: 'manifests' | 'layers', key: string): Promise<Buffer | undefined> {
    assertRecordKey(key);
    return this.records.get(`${kind}/${key}`);
  }

  async check(): Promise<void> {}
}
