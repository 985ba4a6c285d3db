/**
 * Package sources, each resolved per request to a concrete revision, so the
 * manifest cache is keyed on what is actually built and only misses when the
 * source changes (Nixery caches only sources pinned to a full commit; every
 * pull from a channel, a branch or a path re-runs Nix there).
 *
 *   git      tag = ref: `latest` is the remote's default branch, 40 hex is a
 *            commit, anything else a tag or branch name; resolved with
 *            `git ls-remote` (no clone), cached for NIXERY_REVISION_TTL.
 *   channel  the channel's current commit from NIXERY_CHANNEL_REVISION_URL
 *            (cached for the TTL), fetched as the archive of that commit.
 *   path     a content identity of the directory: for a git work tree the
 *            tree hash of the directory at HEAD plus a hash of uncommitted
 *            changes, otherwise a hash over file names, sizes and mtimes.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { simpleGit, type SimpleGit } from 'simple-git';
import { ManifestNotFoundError, StorageError } from '../errors.js';
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

/** The failure of a source lookup that is not the client's fault (network, git). */
export class SourceUnavailableError extends StorageError {}

/** A value recomputed once it is older than `ttlMs()`, or cleared; concurrent callers share a computation. */
class Memo<T> {
  private value: { at: number; v: T } | undefined;
  private pending: Promise<T> | undefined;
  private generation = 0;
  constructor(
    private readonly ttlMs: () => number,
    private readonly compute: () => Promise<T>,
    private readonly now = Date.now,
  ) {}

  get(): Promise<T> {
    if (this.value && this.now() - this.value.at < this.ttlMs()) return Promise.resolve(this.value.v);
    if (this.pending) return this.pending;
    const gen = this.generation;
    const p = this.compute()
      .then((v) => {
        // A change that arrived while computing makes this result stale at once.
        if (gen === this.generation) this.value = { at: this.now(), v };
        return v;
      })
      .finally(() => {
        if (this.pending === p) this.pending = undefined;
      });
    this.pending = p;
    return p;
  }

  clear(): void {
    this.generation++;
    this.value = undefined;
    this.pending = undefined;
  }
}

const COMMIT = /^[0-9a-f]{40}$/;

// ------------------------------------------------------------------- git

interface RemoteRefs {
  /** The ref HEAD points at, e.g. refs/heads/main. */
  readonly head: string | undefined;
  /** Full ref name -> commit (annotated tags peeled). */
  readonly refs: ReadonlyMap<string, string>;
}

/** Parses `git ls-remote --symref <url>` output. */
export function parseLsRemote(output: string): RemoteRefs {
  let head: string | undefined;
  const refs = new Map<string, string>();
  for (const line of output.split('\n')) {
    const symref = /^ref: (\S+)\tHEAD$/.exec(line);
    if (symref) {
      head = symref[1];
      continue;
    }
    const m = /^([0-9a-f]{40})\t(\S+)$/.exec(line);
    if (!m) continue;
    const [, sha, ref] = m as unknown as [string, string, string];
    if (ref.endsWith('^{}')) refs.set(ref.slice(0, -3), sha); // the commit an annotated tag points at
    else if (!refs.has(ref)) refs.set(ref, sha);
  }
  return { head, refs };
}

export class GitSource implements PackageSourceResolver {
  private readonly git: SimpleGit;
  private readonly remote: Memo<RemoteRefs>;

  constructor(private readonly url: string, ttlSeconds: number, now = Date.now) {
    this.git = simpleGit({ timeout: { block: 60_000 } });
    this.remote = new Memo(() => ttlSeconds * 1000, () => this.lsRemote(), now);
  }

  get description(): string {
    return `git repository ${this.url}`;
  }

  private async lsRemote(): Promise<RemoteRefs> {
    try {
      return parseLsRemote(await this.git.listRemote(['--symref', this.url]));
    } catch (e) {
      throw new SourceUnavailableError(`git ls-remote ${this.url} failed: ${String((e as Error).message).trim().split('\n')[0]}`, { cause: e });
    }
  }

  async resolve(tag: string): Promise<ResolvedSource> {
    const { head, refs } = await this.remote.get();
    let ref: string | undefined;
    let rev: string | undefined;
    if (tag === 'latest') {
      ref = head;
      rev = head === undefined ? undefined : refs.get(head);
      if (rev === undefined) throw new ManifestNotFoundError('latest', `the repository ${this.url} has no default branch`);
    } else if (COMMIT.test(tag)) {
      // Nix 2.8 cannot fetch a bare commit without a ref that contains it.
      return { revision: `git:${tag}`, nix: { srcType: 'git', url: this.url, rev: tag, allRefs: true } };
    } else {
      // As git rev-parse does: a tag wins over a branch of the same name.
      for (const candidate of [`refs/tags/${tag}`, `refs/heads/${tag}`]) {
        if (refs.has(candidate)) {
          ref = candidate;
          rev = refs.get(candidate);
          break;
        }
      }
      if (rev === undefined) throw new ManifestNotFoundError(tag, `no branch or tag named ${JSON.stringify(tag)} in the package repository`);
    }
    return { revision: `git:${rev}`, nix: { srcType: 'git', url: this.url, rev: rev!, ref: ref! } };
  }

  async tags(): Promise<string[]> {
    const { refs } = await this.remote.get();
    const names = [...refs.keys()]
      .filter((r) => r.startsWith('refs/heads/') || r.startsWith('refs/tags/'))
      .map((r) => r.replace(/^refs\/(heads|tags)\//, ''));
    return [...new Set(['latest', ...names])].sort();
  }
}

// --------------------------------------------------------------- channel

export class ChannelSource implements PackageSourceResolver {
  private readonly current: Memo<string>;

  constructor(
    private readonly channel: string,
    private readonly urlTemplate: string,
    private readonly revisionUrlTemplate: string,
    ttlSeconds: number,
    now = Date.now,
  ) {
    this.current = new Memo(() => ttlSeconds * 1000, () => this.fetchRevision(), now);
  }

  get description(): string {
    return `nixpkgs channel ${this.channel}`;
  }

  private async fetchRevision(): Promise<string> {
    const url = this.revisionUrlTemplate.replaceAll('{channel}', this.channel);
    let text: string;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      text = (await res.text()).trim();
    } catch (e) {
      throw new SourceUnavailableError(`cannot resolve channel ${this.channel} at ${url}: ${(e as Error).message}`, { cause: e });
    }
    if (!COMMIT.test(text)) throw new SourceUnavailableError(`channel revision at ${url} is not a commit: ${JSON.stringify(text.slice(0, 60))}`);
    return text;
  }

  async resolve(): Promise<ResolvedSource> {
    const rev = COMMIT.test(this.channel) ? this.channel : await this.current.get();
    return { revision: `channel:${rev}`, nix: { srcType: 'tarball', url: this.urlTemplate.replaceAll('{rev}', rev) } };
  }

  async tags(): Promise<string[]> {
    return ['latest'];
  }
}

// ------------------------------------------------------------------ path

/**
 * A local directory; the tag is ignored, as in Nixery. The identity is
 * computed once and kept until a file below the directory changes (a
 * recursive watcher clears it), so a warm pull costs no git process or
 * directory walk. Where watching is impossible (too many directories for
 * inotify, network filesystems), it is recomputed at most every
 * `fallbackTtlSeconds`.
 */
export class PathSource implements PackageSourceResolver {
  private readonly git: SimpleGit;
  private readonly memo: Memo<string>;
  private watcher: FSWatcher | undefined;
  /** While the watcher runs, the identity is kept until a change clears it. */
  private watching = false;

  constructor(private readonly dir: string, fallbackTtlSeconds = 2) {
    this.git = simpleGit({ baseDir: dir, timeout: { block: 30_000 } });
    this.memo = new Memo(() => (this.watching ? Number.POSITIVE_INFINITY : fallbackTtlSeconds * 1000), () => this.identity());
    try {
      this.watcher = watch(dir, { recursive: true, persistent: false }, (_event, file) => {
        // git itself writes .git/index while we compute the identity.
        if (typeof file === 'string' && (file === '.git' || file.startsWith('.git/'))) return;
        this.memo.clear();
      });
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watching = false;
        this.memo.clear();
      });
      this.watching = true;
    } catch {
      // No watcher: fall back to the TTL.
    }
  }

  get description(): string {
    return `local path ${this.dir}`;
  }

  async resolve(): Promise<ResolvedSource> {
    return { revision: `path:${await this.memo.get()}`, nix: { srcType: 'path', path: this.dir } };
  }

  close(): void {
    this.watcher?.close();
  }

  async tags(): Promise<string[]> {
    return ['latest'];
  }

  private async identity(): Promise<string> {
    const inGit = await this.git.raw(['rev-parse', '--is-inside-work-tree']).then((o) => o.trim() === 'true', () => false);
    return inGit ? this.gitIdentity() : statIdentity(this.dir);
  }

  /**
   * The committed tree of this directory (not the whole repository's HEAD,
   * so commits elsewhere in the repository do not invalidate the cache) plus
   * every uncommitted change below it, untracked files included.
   */
  private async gitIdentity(): Promise<string> {
    const prefix = (await this.git.raw(['rev-parse', '--show-prefix'])).trim();
    const tree = await this.git.raw(['rev-parse', `HEAD:${prefix}`]).then((o) => o.trim(), () => 'no-commit');
    const diff = await this.git.raw(['diff', 'HEAD', '--binary', '--', '.']).catch(() => '');
    const untracked = (await this.git.raw(['ls-files', '--others', '--exclude-standard', '-z', '--', '.'])).split('\0').filter(Boolean).sort();
    const hash = createHash('sha256').update(`${tree}\0${diff}\0`);
    for (const f of untracked) {
      const s = await lstat(path.join(this.dir, f)).catch(() => undefined);
      hash.update(`${f}\0${s?.size}\0${s?.mtimeMs}\n`);
    }
    return `${tree.slice(0, 12)}-${hash.digest('hex').slice(0, 20)}`;
  }
}

async function statIdentity(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const entries = (await readdir(path.join(dir, rel))).sort();
    for (const name of entries) {
      const p = path.join(rel, name);
      const s = await lstat(path.join(dir, p));
      hash.update(`${p}\0${s.mode}\0${s.size}\0${s.mtimeMs}\n`);
      if (s.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return hash.digest('hex').slice(0, 32);
}
