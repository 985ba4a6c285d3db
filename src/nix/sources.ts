/**
 * Package sources, each resolved per request to a concrete revision, so the
 * manifest cache can be keyed on what is actually built and only misses
 * when the source changes (Nixery cannot cache channel, branch or path
 * builds at all).
 */
import { createHash } from 'node:crypto';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { NixSource } from './runner.js';

export interface ResolvedSource {
  /** Identity of the package set's content; part of every cache key. */
  readonly revision: string;
  readonly nix: NixSource;
}

export interface PackageSourceResolver {
  /** Human-readable description for the start page and logs. */
  readonly description: string;
  resolve(tag: string): Promise<ResolvedSource>;
  /** The tags this source can serve (tags/list). */
  tags(): Promise<string[]>;
}

/**
 * A local directory. Its revision is a hash over every file's path, size
 * and modification time (the tag is ignored, as in Nixery): cheap enough to
 * recompute on each request for a package set of a few thousand files, and
 * any edit changes it. Concurrent requests share one computation.
 */
export class PathSource implements PackageSourceResolver {
  private pending: Promise<string> | undefined;

  constructor(private readonly dir: string) {}

  get description(): string {
    return `local path ${this.dir}`;
  }

  async resolve(): Promise<ResolvedSource> {
    this.pending ??= contentIdentity(this.dir).finally(() => (this.pending = undefined));
    return { revision: `path:${await this.pending}`, nix: { srcType: 'path', path: this.dir } };
  }

  async tags(): Promise<string[]> {
    return ['latest'];
  }
}

async function contentIdentity(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const entries = (await readdir(path.join(dir, rel))).sort();
    for (const name of entries) {
      if (rel === '' && name === '.git') continue;
      const p = path.join(rel, name);
      const s = await lstat(path.join(dir, p));
      hash.update(`${p}\0${s.mode}\0${s.size}\0${s.mtimeMs}\n`);
      if (s.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return hash.digest('hex').slice(0, 32);
}
