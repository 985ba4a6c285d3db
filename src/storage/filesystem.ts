/**
 * Filesystem storage: the layout of backend.ts under STORAGE_PATH. Each
 * write goes to staging/ and is renamed into place once complete and hashed,
 * so a crash mid-write leaves at most an orphan in staging/, never a partial
 * blob under its digest. The media type lives in the `user.mime_type`
 * extended attribute, as in Nixery (so existing storage directories keep
 * working); start-up refuses a directory without user xattrs.
 */
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { getAttribute, setAttribute } from '@napi-rs/xattr';
import { HashingStream, digestHex, sha256Digest, type Digest } from '../digest.js';
import { StorageError } from '../errors.js';
import {
  assertRecordKey,
  type BlobInfo,
  type ByteRange,
  type PersistResult,
  type ServedBlob,
  type StorageBackend,
} from './backend.js';
import { probeStorageDirectory } from './xattr-probe.js';

const MIME_XATTR = 'user.mime_type';
/** Staging files older than this at start-up belong to a process that died. */
const STALE_STAGING_MS = 60 * 60 * 1000;

export class FilesystemStorage implements StorageBackend {
  readonly name = 'filesystem';

  private constructor(private readonly root: string) {}

  /** Creates the layout and removes stale staging files left by a crash. */
  static async open(root: string, now = Date.now()): Promise<FilesystemStorage> {
    const fs = new FilesystemStorage(root);
    for (const d of ['blobs/sha256', 'records/manifests', 'records/layers', 'staging']) {
      await mkdir(path.join(root, d), { recursive: true });
    }
    for (const f of await readdir(path.join(root, 'staging'))) {
      const p = path.join(root, 'staging', f);
      const s = await stat(p).catch(() => undefined);
      if (s && now - s.mtimeMs > STALE_STAGING_MS) await rm(p, { force: true });
    }
    return fs;
  }

  private blobPath(digest: Digest): string {
    return path.join(this.root, 'blobs', 'sha256', digestHex(digest));
  }

  private stagingPath(): string {
    return path.join(this.root, 'staging', randomUUID());
  }

  async persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>): Promise<PersistResult<T>> {
    const staging = this.stagingPath();
    const hasher = new HashingStream({ highWaterMark: 1 << 20 });
    const done = pipeline(hasher, createWriteStream(staging, { flags: 'wx', highWaterMark: 1 << 20 }));
    try {
      const [value] = await Promise.all([write(hasher), done]);
      const { digest, size } = hasher.result();
      await setAttribute(staging, MIME_XATTR, mediaType);
      await rename(staging, this.blobPath(digest));
      return { digest, size, value };
    } catch (e) {
      hasher.destroy();
      await done.catch(() => undefined);
      await rm(staging, { force: true });
      // The writer's own failure (a build error, an abort) passes through unchanged.
      throw isErrno(e) ? wrap('writing a blob', e) : e;
    }
  }

  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    const digest = sha256Digest(bytes);
    if ((await this.statBlob(digest))?.mediaType === mediaType) return digest;
    const staging = this.stagingPath();
    try {
      await writeFile(staging, bytes, { flag: 'wx' });
      await setAttribute(staging, MIME_XATTR, mediaType);
      await rename(staging, this.blobPath(digest));
    } catch (e) {
      await rm(staging, { force: true });
      throw wrap(`writing blob ${digest}`, e);
    }
    return digest;
  }

  async statBlob(digest: Digest): Promise<BlobInfo | undefined> {
    const p = this.blobPath(digest);
    try {
      const s = await stat(p);
      const mime = await getAttribute(p, MIME_XATTR);
      return { size: s.size, mediaType: mime?.toString() ?? 'application/octet-stream' };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw wrap(`reading blob ${digest}`, e);
    }
  }

  async readBlob(digest: Digest): Promise<Buffer | undefined> {
    try {
      return await readFile(this.blobPath(digest));
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw wrap(`reading blob ${digest}`, e);
    }
  }

  async serveBlob(digest: Digest, range?: ByteRange, known?: BlobInfo): Promise<ServedBlob | undefined> {
    const info = known ?? (await this.statBlob(digest));
    if (info === undefined) return undefined;
    const stream = blobFileStream(this.blobPath(digest), range?.start ?? 0, range ? range.end + 1 : info.size);
    return { kind: 'stream', info, range, stream };
  }

  private recordPath(kind: 'manifests' | 'layers', key: string): string {
    assertRecordKey(key);
    return path.join(this.root, 'records', kind, key);
  }

  async putRecord(kind: 'manifests' | 'layers', key: string, bytes: Buffer): Promise<void> {
    const target = this.recordPath(kind, key);
    const staging = this.stagingPath();
    try {
      await writeFile(staging, bytes, { flag: 'wx' });
      await rename(staging, target);
    } catch (e) {
      await rm(staging, { force: true });
      throw wrap(`writing record ${kind}/${key}`, e);
    }
  }

  async getRecord(kind: 'manifests' | 'layers', key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.recordPath(kind, key));
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw wrap(`reading record ${kind}/${key}`, e);
    }
  }

  async check(): Promise<void> {
    const problem = await probeStorageDirectory(path.join(this.root, 'staging'));
    if (problem !== undefined) throw new StorageError(problem);
  }
}

/** Read size when serving blobs: few syscalls per blob, little memory per download. */
const SERVE_CHUNK = 1 << 20;

/**
 * Bytes [start, end) of a blob file as a web stream, read in 1 MiB chunks
 * into fresh buffers (the HTTP layer hands them to the socket without
 * copying); two chunks are read ahead so the socket never waits for the disk.
 */
function blobFileStream(file: string, start: number, end: number): ReadableStream<Uint8Array> {
  let fh: FileHandle | undefined;
  let pos = start;
  const close = async () => {
    const h = fh;
    fh = undefined;
    await h?.close().catch(() => undefined);
  };
  return new ReadableStream<Uint8Array>(
    {
      async start() {
        fh = await open(file, 'r');
      },
      async pull(controller) {
        const n = Math.min(SERVE_CHUNK, end - pos);
        const buf = Buffer.allocUnsafeSlow(Math.max(n, 0));
        const bytesRead = n > 0 && fh ? (await fh.read(buf, 0, n, pos)).bytesRead : 0;
        if (bytesRead === 0) {
          // The end, or a file shorter than its stat said: end early, as createReadStream does.
          await close();
          controller.close();
          return;
        }
        pos += bytesRead;
        controller.enqueue(bytesRead < n ? buf.subarray(0, bytesRead) : buf);
      },
      cancel: close,
    },
    { highWaterMark: 2 },
  );
}

function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException)?.code === 'ENOENT';
}

function isErrno(e: unknown): boolean {
  return typeof (e as NodeJS.ErrnoException)?.syscall === 'string';
}

function wrap(what: string, e: unknown): StorageError {
  return new StorageError(`filesystem storage: ${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}
