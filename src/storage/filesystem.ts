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
import { Readable, type Writable } from 'node:stream';
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
    const stream = new BlobFileStream(this.blobPath(digest), range?.start ?? 0, range ? range.end + 1 : info.size);
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
 * Bytes [start, end) of a blob file, read in 1 MiB chunks into fresh
 * buffers (the HTTP layer hands them to the socket without copying).
 */
class BlobFileStream extends Readable {
  private readonly opened: Promise<FileHandle>;
  private fh: FileHandle | undefined;
  private pos: number;

  constructor(file: string, private readonly start: number, private readonly end: number) {
    super({ highWaterMark: SERVE_CHUNK });
    this.pos = start;
    this.opened = open(file, 'r');
    // Failures surface through _construct, as a stream error.
    this.opened.catch(() => undefined);
  }

  override _construct(callback: (err?: Error | null) => void): void {
    this.opened.then((fh) => {
      this.fh = fh;
      callback();
    }, callback);
  }

  override _read(): void {
    const n = Math.min(SERVE_CHUNK, this.end - this.pos);
    if (n <= 0) {
      this.push(null);
      return;
    }
    const buf = Buffer.allocUnsafeSlow(n);
    this.fh!.read(buf, 0, n, this.pos).then(({ bytesRead }) => {
      this.pos += bytesRead;
      // A file shorter than its stat said ends the stream early, as createReadStream does.
      this.push(bytesRead === 0 ? null : bytesRead < n ? buf.subarray(0, bytesRead) : buf);
    }, (e: Error) => this.destroy(e));
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const fh = this.fh;
    this.fh = undefined;
    if (fh === undefined) callback(err);
    else fh.close().then(() => callback(err), () => callback(err));
  }
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
