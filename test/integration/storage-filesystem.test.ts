import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { getAttribute } from '@napi-rs/xattr';
import { StorageError } from '../../src/errors.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { probeStorageDirectory } from '../../src/storage/xattr-probe.js';
import { T0, storageContract } from '../helpers/storage-contract.js';

const dirs: string[] = [];
async function scratch(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'nixery-fs-'));
  dirs.push(d);
  return d;
}
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const roots = new WeakMap<StorageBackend, string>();
storageContract(
  'filesystem',
  async (now) => {
    const root = await scratch();
    const s = await FilesystemStorage.open(root, now);
    roots.set(s, root);
    return s;
  },
  {
    // A half-written file in staging/, dated as a killed writer's would be.
    strandStaging: async (s, at) => {
      const f = path.join(roots.get(s)!, 'staging', randomUUID());
      await writeFile(f, 'half a layer');
      await utimes(f, new Date(at), new Date(at));
    },
  },
);

/** A ramfs mount: a real filesystem without user xattr support. */
async function withRamfs<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await scratch();
  execFileSync('mount', ['-t', 'ramfs', 'ramfs', dir]);
  try {
    return await fn(dir);
  } finally {
    execFileSync('umount', [dir]);
  }
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe('filesystem storage specifics', () => {
  it('keeps the media type in the user.mime_type xattr, as Nixery does', async () => {
    const root = await scratch();
    const s = await FilesystemStorage.open(root);
    const d = await s.putBlob('application/vnd.oci.image.config.v1+json', Buffer.from('{}'));
    const file = path.join(root, 'blobs/sha256', d.slice(7));
    const attr = execFileSync('getfattr', ['--only-values', '-n', 'user.mime_type', file]).toString();
    expect(attr).toBe('application/vnd.oci.image.config.v1+json');
  });

  it('removes staging files a crashed process left behind, but not fresh ones of a live writer', async () => {
    const root = await scratch();
    await FilesystemStorage.open(root);
    const stale = path.join(root, 'staging', 'stale');
    const fresh = path.join(root, 'staging', 'fresh');
    await writeFile(stale, 'half a layer');
    await writeFile(fresh, 'a layer being written');
    // Both ages are set relative to the clock the storage is given, so the
    // test does not depend on the file system's clock agreeing with ours.
    const now = Date.now();
    const twoHoursAgo = new Date(now - 2 * 3600_000);
    const aMinuteAgo = new Date(now - 60_000);
    await utimes(stale, twoHoursAgo, twoHoursAgo);
    await utimes(fresh, aMinuteAgo, aMinuteAgo);
    await FilesystemStorage.open(root, () => now);
    expect(await readdir(path.join(root, 'staging'))).toEqual(['fresh']);
  });

  it('keeps usedAt as the mtime and the version as the user.nixery.used xattr, and falls back to inode and mtime for blobs written without one', async () => {
    const root = await scratch();
    let now = T0;
    const s = await FilesystemStorage.open(root, () => now);
    const d = await s.putBlob('application/octet-stream', Buffer.from('with a token'));
    const file = path.join(root, 'blobs/sha256', d.slice(7));
    const token = (await getAttribute(file, 'user.nixery.used'))?.toString();
    expect(token).toMatch(/^[0-9a-f-]{36}$/);
    expect((await stat(file)).mtimeMs).toBe(T0);
    const [listed] = await all(s.listBlobs());
    expect(listed).toEqual({ digest: d, size: 12, usedAt: T0, version: token });
    now += 5000;
    expect(await s.markBlobUsed(d)).toBe(true);
    expect((await stat(file)).mtimeMs).toBe(T0 + 5000);
    expect((await getAttribute(file, 'user.nixery.used'))?.toString()).not.toBe(token);

    // A blob as Nixery wrote it: the media type xattr and nothing else.
    const legacyBytes = Buffer.from('written by nixery');
    const legacy = await s.putBlob('application/octet-stream', legacyBytes);
    const legacyFile = path.join(root, 'blobs/sha256', legacy.slice(7));
    execFileSync('setfattr', ['-x', 'user.nixery.used', legacyFile]);
    const stale = (await all(s.listBlobs())).find((b) => b.digest === legacy)!.version;
    expect(stale).toMatch(/^\d+:\d+$/);
    // Touched by something else (a new mtime) or replaced (a new inode): a new version.
    await utimes(legacyFile, new Date(T0 + 1), new Date(T0 + 1));
    expect(await s.deleteBlobIfUnchanged(legacy, stale)).toBe(false);
    const copy = path.join(root, 'copy');
    await writeFile(copy, legacyBytes);
    await utimes(copy, new Date(T0 + 1), new Date(T0 + 1));
    const before = (await all(s.listBlobs())).find((b) => b.digest === legacy)!.version;
    await rename(copy, legacyFile);
    expect(await s.deleteBlobIfUnchanged(legacy, before)).toBe(false);
    const current = (await all(s.listBlobs())).find((b) => b.digest === legacy)!.version;
    expect(await s.deleteBlobIfUnchanged(legacy, current)).toBe(true);
    expect(await s.statBlob(legacy)).toBeUndefined();
  });

  it('puts back a blob a killed collector left in staging mid-delete, without replacing a fresh copy', async () => {
    const root = await scratch();
    let now = T0;
    const s = await FilesystemStorage.open(root, () => now);
    const a = await s.putBlob('application/octet-stream', Buffer.from('moved away and lost'));
    const b = await s.putBlob('application/octet-stream', Buffer.from('moved away, then written again'));
    const blobFile = (d: string) => path.join(root, 'blobs/sha256', d.slice(7));
    // What deleteBlobIfUnchanged does first: rename to staging/gc-<hex>-<clock>-<random>.
    const gcName = (d: string) => path.join(root, 'staging', `gc-${d.slice(7)}-${now}-${randomUUID()}`);
    await rename(blobFile(a), gcName(a));
    await rename(blobFile(b), gcName(b));
    await s.putBlob('application/octet-stream', Buffer.from('moved away, then written again'));
    const fresh = (await stat(blobFile(b))).ino;
    // Young: a live collector's; left alone.
    now += 60_000;
    expect(await s.cleanStaging(3_600_000)).toBe(0);
    expect(await s.statBlob(a)).toBeUndefined();
    now += 3_600_000;
    expect(await s.cleanStaging(3_600_000)).toBe(2);
    expect((await s.readBlob(a))?.toString()).toBe('moved away and lost');
    expect((await stat(blobFile(b))).ino).toBe(fresh);
    expect(await readdir(path.join(root, 'staging'))).toEqual([]);
  });

  it('serves a blob deleted between stat and open as a miss, and keeps serving one deleted once open', async () => {
    const root = await scratch();
    const s = await FilesystemStorage.open(root);
    const d = await s.putBlob('application/octet-stream', Buffer.from('short-lived'));
    const info = await s.statBlob(d);
    const served = await s.serveBlob(d, undefined, info);
    expect(await s.deleteBlobIfUnchanged(d, (await all(s.listBlobs()))[0]!.version)).toBe(true);
    expect(await s.serveBlob(d, undefined, info)).toBeUndefined();
    expect(served?.kind).toBe('stream');
    const chunks: Buffer[] = [];
    for await (const c of (served as { stream: ReadableStream<Uint8Array> }).stream as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
    expect(Buffer.concat(chunks).toString()).toBe('short-lived');
  });

  it('refuses a directory on a filesystem without user xattrs, in one line', async () => {
    await withRamfs(async (dir) => {
      const problem = await probeStorageDirectory(dir);
      expect(problem).toMatch(/does not support user extended attributes/);
      expect(problem).not.toContain('\n');
      const s = await FilesystemStorage.open(dir);
      await expect(s.check()).rejects.toBeInstanceOf(StorageError);
    });
  });

  it('accepts a directory with user xattrs, creating missing parents', async () => {
    expect(await probeStorageDirectory(await scratch())).toBeUndefined();
    const deep = path.join(await scratch(), 'a', 'b', 'c');
    expect(await probeStorageDirectory(deep)).toBeUndefined();
    expect((await stat(deep)).isDirectory()).toBe(true);
  });

  it('refuses, in one line, a directory that cannot be made under a parent refusing entries (/proc: Node\'s recursive mkdir spins there)', async () => {
    const problem = await probeStorageDirectory(`/proc/nixery-ts-${process.pid}/storage`);
    expect(problem).toMatch(/^cannot create directory \/proc\/nixery-ts-\d+\/storage: ENOENT/);
    expect(problem).not.toContain('\n');
    await expect(FilesystemStorage.open(`/proc/nixery-ts-${process.pid}`)).rejects.toThrow(/ENOENT/);
  });
});
