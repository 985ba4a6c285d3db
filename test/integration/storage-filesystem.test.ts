import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { StorageError } from '../../src/errors.js';
import { FilesystemStorage } from '../../src/storage/filesystem.js';
import { probeStorageDirectory } from '../../src/storage/xattr-probe.js';
import { storageContract } from '../helpers/storage-contract.js';

const dirs: string[] = [];
async function scratch(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'nixery-fs-'));
  dirs.push(d);
  return d;
}
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

storageContract('filesystem', async () => FilesystemStorage.open(await scratch()));

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
    await FilesystemStorage.open(root, now);
    expect(await readdir(path.join(root, 'staging'))).toEqual(['fresh']);
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

  it('accepts a directory with user xattrs', async () => {
    expect(await probeStorageDirectory(await scratch())).toBeUndefined();
  });
});
