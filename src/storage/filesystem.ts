/**
 * Filesystem storage: the layout of backend.ts under STORAGE_PATH. Each
 * write goes to staging/ and is renamed into place once complete and hashed,
 * so a crash mid-write leaves at most an orphan in staging/, never a partial
 * blob under its digest. The media type lives in the `user.mime_type`
 * extended attribute, as in Nixery (so existing storage directories keep
 * working); start-up refuses a directory without user xattrs.
 *
 * Garbage-collection primitives. usedAt is the file's mtime, which every
 * write and markBlobUsed set to the backend's clock. The version is the
 * `user.nixery.used` xattr, a random token that every write and mark sets
 * anew; a blob without one (written by Nixery or an older nixery-ts) has the
 * version `<inode>:<mtime ns>`, which a mark (new mtime) or a write (a new
 * file renamed over it: new inode) changes too.
 *
 * markBlobUsed sets the mtime, then a fresh token, then reads the token back
 * by name: only if the file under the blob's name carries its token does it
 * answer true. Absent from the start: false. Otherwise (it vanished meanwhile,
 * or another mark or a write came in between) it tries again a few times
 * before answering false. mtime before token because a listing reads the
 * token before the mtime: whoever sees the new version sees the new time.
 *
 * deleteBlobIfUnchanged compares the version by name (cheap, and a changed
 * blob is not touched), then renames the blob to staging/gc-<hex>-<clock>-
 * <random> (atomic: from then on no mark can reach it by name) and reads the
 * moved file's version again. Equal: unlinked, true. Different (a mark
 * landed in between): put back with link(2), which never replaces a file, so
 * a fresh copy written meanwhile wins (same bytes), and false. Why this is
 * atomic: a mark answers true only after reading its token under the blob's
 * name; if the delete's rename came first the mark finds nothing (false), and
 * if it came after, the moved file carries the mark's token, the versions
 * differ and the blob is put back. Readers may miss the blob for the moment
 * it is moved away, which happens only when its version matched a moment
 * before. A collector killed between rename and unlink leaves its gc- file;
 * cleanStaging puts such a file back under blobs/ (keeping a blob that was
 * to be deleted is harmless; losing one that was marked is not).
 */
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, open, opendir, readFile, rename, rm, stat, unlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { getAttribute, setAttribute } from '@napi-rs/xattr';
import { makeDirectory } from './directories.js';
import { HashingStream, digestHex, sha256Digest, type Digest } from '../digest.js';
import { StorageError } from '../errors.js';
import {
  RECORD_KINDS,
  assertRecordKey,
  isRecordKey,
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
import { probeStorageDirectory } from './xattr-probe.js';

const MIME_XATTR = 'user.mime_type';
/** The blob's version token (see the module comment). */
const USED_XATTR = 'user.nixery.used';
/** Staging files older than this at start-up belong to a process that died. */
const STALE_STAGING_MS = 60 * 60 * 1000;
/**
 * How often markBlobUsed tries when the blob vanishes under it (a collector
 * checking its version) or its token is overwritten at once by another mark
 * or write; it waits 2, 4, 8 and 16 ms in between.
 */
const MARK_ATTEMPTS = 5;
const BLOB_NAME = /^[0-9a-f]{64}$/;
/** staging/gc-<hex>-<clock ms>-<random>: a blob being deleted, moved there at that time. */
const GC_NAME = /^gc-([0-9a-f]{64})-(\d+)-/;

export class FilesystemStorage implements StorageBackend {
  readonly name = 'filesystem';

  private constructor(
    private readonly root: string,
    private readonly now: () => number,
  ) {}

  /**
   * Creates the layout and cleans staging files left by a crash. `now`: the
   * clock of usedAt, updatedAt and staging ages (tests pass their own).
   */
  static async open(root: string, now: () => number = Date.now): Promise<FilesystemStorage> {
    const fs = new FilesystemStorage(root, now);
    for (const d of ['blobs/sha256', ...RECORD_KINDS.map((k) => `records/${k}`), 'staging']) {
      await makeDirectory(path.join(root, d));
    }
    await fs.cleanStaging(STALE_STAGING_MS);
    return fs;
  }

  private blobPath(digest: Digest): string {
    return path.join(this.root, 'blobs', 'sha256', digestHex(digest));
  }

  private stagingPath(): string {
    return path.join(this.root, 'staging', randomUUID());
  }

  /** Media type, a fresh version token and usedAt = now, on a staging file about to be renamed into place. */
  private async finishBlob(staging: string, mediaType: string): Promise<void> {
    await setAttribute(staging, MIME_XATTR, mediaType);
    await setAttribute(staging, USED_XATTR, randomUUID());
    const t = new Date(this.now());
    await utimes(staging, t, t);
  }

  async persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>, opts: PersistOptions = {}): Promise<PersistResult<T>> {
    const staging = this.stagingPath();
    const hasher = new HashingStream({ highWaterMark: 1 << 20 });
    const done = pipeline(hasher, createWriteStream(staging, { flags: 'wx', highWaterMark: 1 << 20 }));
    try {
      const [value] = await Promise.all([write(hasher), done]);
      const { digest, size } = hasher.result();
      await opts.beforeVisible?.(digest);
      await this.finishBlob(staging, mediaType);
      await rename(staging, this.blobPath(digest));
      return { digest, size, value };
    } catch (e) {
      hasher.destroy();
      await done.catch(() => undefined);
      await rm(staging, { force: true });
      // The writer's own failure (a build error, an abort) passes through unchanged.
      throw isErrno(e) || isXattrError(e) ? wrap('writing a blob', e) : e;
    }
  }

  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    const digest = sha256Digest(bytes);
    // Already there: marked rather than rewritten (see backend.ts); if a
    // collector deleted it in between, the mark says so and it is written.
    if ((await this.statBlob(digest))?.mediaType === mediaType && (await this.markBlobUsed(digest))) return digest;
    const staging = this.stagingPath();
    try {
      await writeFile(staging, bytes, { flag: 'wx' });
      await this.finishBlob(staging, mediaType);
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
      // Also when a collector deletes it between the stat and the xattr read.
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
    // Opened here, not when the stream starts: a blob a collector deleted
    // since the stat is a miss (BLOB_UNKNOWN), not a response that breaks
    // after its headers; once open, a deletion no longer matters.
    let fh: FileHandle;
    try {
      fh = await open(this.blobPath(digest), 'r');
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw wrap(`reading blob ${digest}`, e);
    }
    const stream = blobFileStream(fh, range?.start ?? 0, range ? range.end + 1 : info.size);
    return { kind: 'stream', info, range, stream };
  }

  /** The version of the file at `p` (see the module comment); throws when it is absent. */
  private async versionOf(p: string): Promise<string> {
    const token = await getAttribute(p, USED_XATTR);
    if (token !== null && token.length > 0) return token.toString();
    const s = await stat(p, { bigint: true });
    return `${s.ino}:${s.mtimeNs}`;
  }

  async *listBlobs(): AsyncIterable<StoredBlob> {
    const dir = path.join(this.root, 'blobs', 'sha256');
    for await (const ent of await opendir(dir, { bufferSize: 256 }).catch((e: unknown) => {
      throw wrap('listing blobs', e);
    })) {
      if (!BLOB_NAME.test(ent.name)) continue;
      const p = path.join(dir, ent.name);
      let blob: StoredBlob;
      try {
        // The version first, then the time: see the module comment.
        const version = await this.versionOf(p);
        const s = await stat(p);
        blob = { digest: `sha256:${ent.name}`, size: s.size, usedAt: Math.round(s.mtimeMs), version };
      } catch (e) {
        if (isNotFound(e)) continue; // deleted since the directory was read
        throw wrap(`listing blob ${ent.name}`, e);
      }
      yield blob;
    }
  }

  async markBlobUsed(digest: Digest): Promise<boolean> {
    const p = this.blobPath(digest);
    let seen = false;
    for (let attempt = 0; attempt < MARK_ATTEMPTS; attempt++) {
      if (attempt > 0) await sleep(2 ** attempt);
      const token = randomUUID();
      const t = new Date(this.now());
      try {
        await utimes(p, t, t);
        seen = true;
        await setAttribute(p, USED_XATTR, token);
        if ((await getAttribute(p, USED_XATTR))?.toString() === token) return true;
      } catch (e) {
        if (!isNotFound(e)) throw wrap(`marking blob ${digest} used`, e);
        // Absent from the start: gone. Gone after it was there: most likely
        // a collector moved it away to check its version, and puts it back
        // on finding our token; look again in a moment.
        if (!seen) return false;
      }
    }
    // Still absent or overwritten every time: say "gone", so that the caller
    // writes it again (always safe).
    return false;
  }

  async deleteBlobIfUnchanged(digest: Digest, version: string): Promise<boolean> {
    const p = this.blobPath(digest);
    try {
      if ((await this.versionOf(p)) !== version) return false;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw wrap(`deleting blob ${digest}`, e);
    }
    const moved = path.join(this.root, 'staging', `gc-${digestHex(digest)}-${Math.max(0, Math.round(this.now()))}-${randomUUID()}`);
    try {
      await rename(p, moved);
    } catch (e) {
      if (isNotFound(e)) return false;
      throw wrap(`deleting blob ${digest}`, e);
    }
    let current: string;
    try {
      current = await this.versionOf(moved);
    } catch (e) {
      // Gone from staging: a cleanStaging put it back already.
      if (isNotFound(e)) return false;
      await restoreBlob(moved, p);
      throw wrap(`deleting blob ${digest}`, e);
    }
    if (current !== version) {
      await restoreBlob(moved, p).catch((e: unknown) => {
        throw wrap(`putting back blob ${digest}`, e);
      });
      return false;
    }
    try {
      await unlink(moved);
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw wrap(`deleting blob ${digest}`, e);
    }
  }

  private recordPath(kind: RecordKind, key: string): string {
    assertRecordKey(key);
    return path.join(this.root, 'records', kind, key);
  }

  async putRecord(kind: RecordKind, key: string, bytes: Buffer): Promise<void> {
    const target = this.recordPath(kind, key);
    const staging = this.stagingPath();
    try {
      await writeFile(staging, bytes, { flag: 'wx' });
      const t = new Date(this.now());
      await utimes(staging, t, t);
      await rename(staging, target);
    } catch (e) {
      await rm(staging, { force: true });
      throw wrap(`writing record ${kind}/${key}`, e);
    }
  }

  async getRecord(kind: RecordKind, key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.recordPath(kind, key));
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw wrap(`reading record ${kind}/${key}`, e);
    }
  }

  async *listRecords(kind: RecordKind): AsyncIterable<RecordEntry> {
    const dir = path.join(this.root, 'records', kind);
    let handle;
    try {
      handle = await opendir(dir, { bufferSize: 256 });
    } catch (e) {
      if (isNotFound(e)) return;
      throw wrap(`listing records ${kind}`, e);
    }
    for await (const ent of handle) {
      if (!isRecordKey(ent.name)) continue;
      let updatedAt: number;
      try {
        updatedAt = Math.round((await stat(path.join(dir, ent.name))).mtimeMs);
      } catch (e) {
        if (isNotFound(e)) continue;
        throw wrap(`listing record ${kind}/${ent.name}`, e);
      }
      yield { key: ent.name, updatedAt };
    }
  }

  async deleteRecord(kind: RecordKind, key: string): Promise<void> {
    try {
      await unlink(this.recordPath(kind, key));
    } catch (e) {
      if (!isNotFound(e)) throw wrap(`deleting record ${kind}/${key}`, e);
    }
  }

  /**
   * Removes staging files whose mtime is older than the limit; a gc- file
   * (a killed collector's, dated by its name) is put back under blobs/
   * instead, and counts as well.
   */
  async cleanStaging(olderThanMs: number): Promise<number> {
    const dir = path.join(this.root, 'staging');
    const now = this.now();
    let cleaned = 0;
    try {
      for await (const ent of await opendir(dir, { bufferSize: 256 })) {
        const p = path.join(dir, ent.name);
        const gc = GC_NAME.exec(ent.name);
        if (gc) {
          if (now - Number(gc[2]) > olderThanMs) {
            await restoreBlob(p, this.blobPath(`sha256:${gc[1]!}`));
            cleaned++;
          }
          continue;
        }
        const s = await stat(p).catch(() => undefined);
        if (s && now - s.mtimeMs > olderThanMs) {
          await rm(p, { force: true, recursive: true });
          cleaned++;
        }
      }
    } catch (e) {
      throw wrap('cleaning staging', e);
    }
    return cleaned;
  }

  async check(): Promise<void> {
    const problem = await probeStorageDirectory(path.join(this.root, 'staging'));
    if (problem !== undefined) throw new StorageError(problem);
  }
}

/**
 * Puts a blob a collector moved to staging back under its name, unless a
 * fresh copy is there already (link(2) never replaces a file; the copy has
 * the same bytes and is the one that may have been marked since), and drops
 * the staging name. Nothing to do when the staging file is gone.
 */
async function restoreBlob(moved: string, target: string): Promise<void> {
  try {
    await link(moved, target);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException)?.code;
    if (code === 'ENOENT') return;
    if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
      // A filesystem without hard links: rename, which may replace a fresh copy (same bytes).
      await rename(moved, target).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
      return;
    }
    if (code !== 'EEXIST') throw e;
  }
  await rm(moved, { force: true });
}

/** Read size when serving blobs: few syscalls per blob, little memory per download. */
const SERVE_CHUNK = 1 << 20;

/**
 * Bytes [start, end) of an open blob file as a web stream, read in 1 MiB
 * chunks into fresh buffers (the HTTP layer hands them to the socket without
 * copying); two chunks are read ahead so the socket never waits for the disk.
 * The handle is closed at the end or when the stream is cancelled.
 */
function blobFileStream(handle: FileHandle, start: number, end: number): ReadableStream<Uint8Array> {
  let fh: FileHandle | undefined = handle;
  let pos = start;
  const close = async () => {
    const h = fh;
    fh = undefined;
    await h?.close().catch(() => undefined);
  };
  return new ReadableStream<Uint8Array>(
    {
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

/** ENOENT, from node:fs or from @napi-rs/xattr (which reports "No such file or directory (os error 2)"). */
function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException)?.code === 'ENOENT' || (isXattrError(e) && /\(os error 2\)/.test((e as Error).message));
}

/** An error of @napi-rs/xattr: code GenericFailure, the OS error in the message. */
function isXattrError(e: unknown): boolean {
  return (e as { code?: unknown })?.code === 'GenericFailure';
}

function isErrno(e: unknown): boolean {
  return typeof (e as NodeJS.ErrnoException)?.syscall === 'string';
}

function wrap(what: string, e: unknown): StorageError {
  return new StorageError(`filesystem storage: ${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}
