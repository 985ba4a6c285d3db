/**
 * Start-up check for the filesystem backend: the media type of every blob is
 * kept in the `user.mime_type` extended attribute (as in Nixery), so the
 * storage directory must support user xattrs. Returns a one-line problem or
 * undefined.
 */
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { getAttribute, setAttribute } from '@napi-rs/xattr';
import { makeDirectory } from './directories.js';

export async function probeStorageDirectory(dir: string): Promise<string | undefined> {
  try {
    await makeDirectory(dir);
  } catch (e) {
    return `cannot create directory ${dir}: ${(e as Error).message}`;
  }
  const probe = path.join(dir, `.xattr-probe-${process.pid}`);
  try {
    await (await open(probe, 'w')).close();
  } catch (e) {
    return `directory ${dir} is not writable: ${(e as Error).message}`;
  }
  try {
    await setAttribute(probe, 'user.nixery_probe', 'ok');
    const back = await getAttribute(probe, 'user.nixery_probe');
    if (back?.toString() !== 'ok') return `the filesystem of ${dir} does not keep user extended attributes`;
    return undefined;
  } catch (e) {
    return `the filesystem of ${dir} does not support user extended attributes (${(e as Error).message}); use ext4, xfs, btrfs or tmpfs`;
  } finally {
    await rm(probe, { force: true });
  }
}
