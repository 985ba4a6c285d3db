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
 *
 * Resolved revisions are kept in `CachedValue` (lru-cache with a TTL and
 * `fetch()`). What a source shows (description, SourceUnavailableError's
 * source and reason, error causes) never carries the credentials of a
 * `https://user:token@host/...` URL; Nix still gets the URL as configured.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { LRUCache } from 'lru-cache';
import { simpleGit } from 'simple-git';
import { ManifestNotFoundError, SourceUnavailableError } from '../errors.js';
import type { NixSource } from './runner.js';

export interface ResolvedSource {
  /** Identity of the package set's content; part of every cache key. */
  readonly revision: string;
  readonly nix: NixSource;
}

export interface PackageSourceResolver {
  /** Human-readable description for the start page and logs (no credentials). */
  readonly description: string;
  resolve(tag: string): Promise<ResolvedSource>;
  /** The tags this source can serve (tags/list). */
  tags(): Promise<string[]>;
  /** Releases what the source holds (the path source's watcher) and forgets cached revisions. Idempotent. */
  close(): void;
}

/**
 * One value computed on demand and kept for a TTL: lru-cache's `fetch()`
 * with a single key, which gives
 *
 * - sharing: concurrent callers get the one computation in flight;
 * - no cached failures: a rejected computation leaves nothing behind;
 * - invalidation: `clear()` during a computation makes its result stale at
 *   once. lru-cache aborts an in-flight fetch that is deleted; with
 *   `ignoreFetchAbort` the computation runs on and callers already waiting
 *   still get its result, but it is not written back (the entry it belonged to
 *   is gone), and the next `get()` computes afresh.
 *
 * `ttlMs()` is read at each `get()` and applies to the value that call
 * stores: `Infinity` keeps it until `clear()`, `0` never reuses a finished
 * computation (lru-cache reads a TTL of 0 as "never expires", hence
 * `forceRefresh`). A value is fresh while `now() - storedAt <= ttl`.
 * The clock is read on every check (`ttlResolution: 0`, no timers); it must
 * be positive (epoch milliseconds are), as lru-cache treats a start of 0 as
 * "no TTL".
 */
export class CachedValue<T extends {}> {
  private readonly cache: LRUCache<'value', T>;

  constructor(
    private readonly ttlMs: () => number,
    compute: () => Promise<T>,
    now: () => number = Date.now,
  ) {
    this.cache = new LRUCache<'value', T>({
      max: 1,
      fetchMethod: () => compute(),
      ignoreFetchAbort: true,
      ttlResolution: 0,
      perf: { now: () => now() },
    });
  }

  async get(): Promise<T> {
    const ttl = this.ttlMs();
    const v = await this.cache.fetch('value', ttl <= 0 ? { forceRefresh: true } : { ttl: Number.isFinite(ttl) ? ttl : 0 });
    // Only an abort that is not ignored resolves to undefined.
    if (v === undefined) throw new Error('revision computation was aborted');
    return v;
  }

  clear(): void {
    this.cache.clear();
  }
}

// ----------------------------------------------------------- credentials

/** The userinfo of every `scheme://userinfo@` in a text (up to the last `@` before the path). */
const URL_USERINFO = /\b([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^\s/?#'"`]*@/g;

/**
 * `https://user:token@host/repo.git` -> `https://host/repo.git`. scp-like
 * `git@host:repo` and URLs without userinfo are returned as they are (a bare
 * ssh user name is not a secret).
 */
export function redactUrl(url: string): string {
  return url.replace(URL_USERINFO, '$1');
}

/**
 * A function that removes the credentials of `url` from any text: userinfo
 * in every URL, and the secret itself wherever else it appears (e.g. git
 * quoting a URL it rewrote, or a percent-decoded password).
 */
/**
 * Where the package set comes from, as an image may say it publicly
 * (org.opencontainers.image.source): a git repository's URL or a channel's
 * archive URL without credentials or query; undefined for a local path,
 * which is the server's business.
 */
export function publicSourceUrl(nix: NixSource): string | undefined {
  if (nix.srcType === 'path') return undefined;
  const shown = credentialRedactor(nix.url)(nix.url);
  try {
    const u = new URL(shown);
    u.username = '';
    u.password = '';
    u.search = '';
    u.hash = '';
    return u.toString();
  } catch {
    // scp-like git addresses (git@host:org/repo): no password to hide.
    return shown;
  }
}

export function credentialRedactor(url: string): (text: string) => string {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^\s/?#'"`]*)@/.exec(url);
  const secrets = new Set<string>();
  if (m) {
    const [, scheme, userinfo] = m as unknown as [string, string, string];
    const colon = userinfo.indexOf(':');
    // With a password, the password is the secret; without one, an https user name may be a token.
    const secret = colon >= 0 ? userinfo.slice(colon + 1) : /^https?$/i.test(scheme) ? userinfo : '';
    if (secret !== '') {
      secrets.add(userinfo);
      secrets.add(secret);
      try {
        secrets.add(decodeURIComponent(secret));
      } catch {
        // not percent-encoded
      }
    }
  }
  const ordered = [...secrets].filter(Boolean).sort((a, b) => b.length - a.length);
  return (text) => {
    let out = text.replace(URL_USERINFO, '$1');
    for (const s of ordered) out = out.replaceAll(s, '***');
    return out;
  };
}

/** A stand-in for a failure whose own fields may hold a secret (simple-git keeps the command line). */
function redactedCause(e: unknown, redact: (text: string) => string): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  const cause = new Error(redact(err.message));
  cause.name = err.name;
  return cause;
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

export interface GitSourceOptions {
  /** The clock for the TTL; tests pass their own. */
  readonly now?: () => number;
  /** Runs `git ls-remote <args>` and returns its output; defaults to simple-git. */
  readonly listRemote?: (args: string[]) => Promise<string>;
}

export class GitSource implements PackageSourceResolver {
  private readonly remote: CachedValue<RemoteRefs>;
  private readonly listRemote: (args: string[]) => Promise<string>;
  private readonly redact: (text: string) => string;
  /** The URL as it may be shown: without userinfo. */
  private readonly shownUrl: string;

  constructor(private readonly url: string, ttlSeconds: number, opts: GitSourceOptions = {}) {
    const git = simpleGit({ timeout: { block: 60_000 } });
    this.listRemote = opts.listRemote ?? ((args) => git.listRemote(args));
    this.redact = credentialRedactor(url);
    this.shownUrl = this.redact(url);
    this.remote = new CachedValue(() => ttlSeconds * 1000, () => this.lsRemote(), opts.now);
  }

  get description(): string {
    return `git repository ${this.shownUrl}`;
  }

  private async lsRemote(): Promise<RemoteRefs> {
    try {
      return parseLsRemote(await this.listRemote(['--symref', this.url]));
    } catch (e) {
      const firstLine = String((e as Error)?.message ?? e).trim().split('\n')[0];
      throw new SourceUnavailableError(this.shownUrl, `git ls-remote failed: ${this.redact(firstLine ?? '')}`, {
        cause: redactedCause(e, this.redact),
      });
    }
  }

  async resolve(tag: string): Promise<ResolvedSource> {
    const { head, refs } = await this.remote.get();
    let ref: string | undefined;
    let rev: string | undefined;
    if (tag === 'latest') {
      ref = head;
      rev = head === undefined ? undefined : refs.get(head);
      if (rev === undefined) throw new ManifestNotFoundError('latest', `the repository ${this.shownUrl} has no default branch`);
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

  close(): void {
    this.remote.clear();
  }
}

// --------------------------------------------------------------- channel

export interface ChannelSourceOptions {
  /** The clock for the TTL; tests pass their own. */
  readonly now?: () => number;
}

export class ChannelSource implements PackageSourceResolver {
  private readonly current: CachedValue<string>;

  constructor(
    private readonly channel: string,
    private readonly urlTemplate: string,
    private readonly revisionUrlTemplate: string,
    ttlSeconds: number,
    opts: ChannelSourceOptions = {},
  ) {
    this.current = new CachedValue(() => ttlSeconds * 1000, () => this.fetchRevision(), opts.now);
  }

  get description(): string {
    return `nixpkgs channel ${this.channel}`;
  }

  private async fetchRevision(): Promise<string> {
    const url = this.revisionUrlTemplate.replaceAll('{channel}', this.channel);
    const redact = credentialRedactor(url);
    let text: string;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      text = (await res.text()).trim();
    } catch (e) {
      throw new SourceUnavailableError(`channel ${this.channel}`, redact(`cannot resolve it at ${url}: ${(e as Error).message}`), {
        cause: redactedCause(e, redact),
      });
    }
    if (!COMMIT.test(text)) {
      throw new SourceUnavailableError(`channel ${this.channel}`, redact(`the revision at ${url} is not a commit: ${JSON.stringify(text.slice(0, 60))}`));
    }
    return text;
  }

  async resolve(): Promise<ResolvedSource> {
    const rev = COMMIT.test(this.channel) ? this.channel : await this.current.get();
    return { revision: `channel:${rev}`, nix: { srcType: 'tarball', url: this.urlTemplate.replaceAll('{rev}', rev) } };
  }

  async tags(): Promise<string[]> {
    return ['latest'];
  }

  close(): void {
    this.current.clear();
  }
}

// ------------------------------------------------------------------ path

export interface PathSourceOptions {
  /** Seconds the identity is kept where the directory cannot be watched (default 2). */
  readonly fallbackTtlSeconds?: number;
  /** The clock for the fallback TTL; tests pass their own. */
  readonly now?: () => number;
  /** Runs `git <args>` in the directory; defaults to simple-git. */
  readonly git?: (args: string[]) => Promise<string>;
}

/**
 * A local directory; the tag is ignored, as in Nixery. The identity is
 * computed once and kept until a file below the directory changes (a
 * recursive watcher clears it), so a warm pull costs no git process or
 * directory walk. Where watching is impossible (too many directories for
 * inotify, network filesystems), it is recomputed at most every
 * `fallbackTtlSeconds`.
 */
export class PathSource implements PackageSourceResolver {
  private readonly git: (args: string[]) => Promise<string>;
  private readonly identityCache: CachedValue<string>;
  private watcher: FSWatcher | undefined;
  /** While the watcher runs, the identity is kept until a change clears it. */
  private watching = false;

  constructor(private readonly dir: string, opts: PathSourceOptions = {}) {
    const fallbackTtlSeconds = opts.fallbackTtlSeconds ?? 2;
    const git = simpleGit({ baseDir: dir, timeout: { block: 30_000 } });
    this.git = opts.git ?? ((args) => git.raw(args));
    this.identityCache = new CachedValue(
      () => (this.watching ? Number.POSITIVE_INFINITY : fallbackTtlSeconds * 1000),
      () => this.identity(),
      opts.now,
    );
    try {
      this.watcher = watch(dir, { recursive: true, persistent: false }, (_event, file) => {
        // git itself writes .git/index while we compute the identity.
        if (typeof file === 'string' && (file === '.git' || file.startsWith('.git/'))) return;
        this.identityCache.clear();
      });
      this.watcher.on('error', () => this.stopWatching());
      this.watching = true;
    } catch {
      // No watcher: fall back to the TTL.
    }
  }

  get description(): string {
    return `local path ${this.dir}`;
  }

  async resolve(): Promise<ResolvedSource> {
    return { revision: `path:${await this.identityCache.get()}`, nix: { srcType: 'path', path: this.dir } };
  }

  /** Stops the watcher; from then on the identity is recomputed after the fallback TTL. */
  close(): void {
    this.stopWatching();
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watching = false;
    // Kept while watching means kept forever: without the watcher it must be recomputed.
    this.identityCache.clear();
  }

  async tags(): Promise<string[]> {
    return ['latest'];
  }

  private async identity(): Promise<string> {
    const inGit = await this.git(['rev-parse', '--is-inside-work-tree']).then((o) => o.trim() === 'true', () => false);
    return inGit ? this.gitIdentity() : statIdentity(this.dir);
  }

  /**
   * The committed tree of this directory (not the whole repository's HEAD,
   * so commits elsewhere in the repository do not invalidate the cache) plus
   * every uncommitted change below it, untracked files included.
   */
  private async gitIdentity(): Promise<string> {
    const prefix = (await this.git(['rev-parse', '--show-prefix'])).trim();
    const tree = await this.git(['rev-parse', `HEAD:${prefix}`]).then((o) => o.trim(), () => 'no-commit');
    const diff = await this.git(['diff', 'HEAD', '--binary', '--', '.']).catch(() => '');
    const untracked = (await this.git(['ls-files', '--others', '--exclude-standard', '-z', '--', '.'])).split('\0').filter(Boolean).sort();
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
