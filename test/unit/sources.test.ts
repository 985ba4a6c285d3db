import { stdSerializers } from 'pino';
import { describe, expect, it } from 'vitest';
import { SourceUnavailableError } from '../../src/errors.js';
import { CachedValue, credentialRedactor, GitSource, parseLsRemote, publicSourceUrl, redactUrl } from '../../src/nix/sources.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);

describe('parseLsRemote', () => {
  it('reads the default branch, branches and peeled annotated tags', () => {
    const out = [
      `ref: refs/heads/main\tHEAD`,
      `${A}\tHEAD`,
      `${A}\trefs/heads/main`,
      `${B}\trefs/heads/feature/x`,
      `${C}\trefs/tags/v1`, // the tag object...
      `${B}\trefs/tags/v1^{}`, // ...and the commit it points at
      `${A}\trefs/tags/light`,
      '',
    ].join('\n');
    const r = parseLsRemote(out);
    expect(r.head).toBe('refs/heads/main');
    expect(Object.fromEntries(r.refs)).toEqual({
      HEAD: A,
      'refs/heads/main': A,
      'refs/heads/feature/x': B,
      'refs/tags/v1': B,
      'refs/tags/light': A,
    });
  });

  it('copes with a repository without a symbolic HEAD', () => {
    expect(parseLsRemote(`${A}\trefs/heads/master\n`).head).toBeUndefined();
  });
});

/** A promise settled from outside, to hold a computation open while the test acts. */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A clock that only moves when told to, starting at the real time so no date is baked in. */
function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = Date.now();
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('CachedValue', () => {
  it('keeps the value for the TTL of the injected clock, then computes it again', async () => {
    const clock = manualClock();
    let n = 0;
    const v = new CachedValue(() => 1000, async () => `v${++n}`, clock.now);
    expect(await v.get()).toBe('v1');
    clock.advance(1000);
    expect(await v.get()).toBe('v1');
    clock.advance(1);
    expect(await v.get()).toBe('v2');
    expect(n).toBe(2);
  });

  it('gives concurrent callers one computation', async () => {
    const d = deferred<string>();
    let n = 0;
    const v = new CachedValue(() => 1000, () => (n++, d.promise), manualClock().now);
    const waiting = [v.get(), v.get(), v.get()];
    d.resolve('x');
    expect(await Promise.all(waiting)).toEqual(['x', 'x', 'x']);
    expect(await v.get()).toBe('x');
    expect(n).toBe(1);
  });

  it('treats a result as stale at once when cleared while it was computing', async () => {
    const first = deferred<string>();
    const results = [first.promise, Promise.resolve('after the change')];
    let n = 0;
    const v = new CachedValue(() => Number.POSITIVE_INFINITY, () => results[n++]!, manualClock().now);
    const waiting = v.get();
    v.clear(); // a change arrives while computing
    first.resolve('before the change');
    expect(await waiting).toBe('before the change'); // those already waiting still get an answer
    expect(await v.get()).toBe('after the change'); // but it was not kept
    expect(await v.get()).toBe('after the change');
    expect(n).toBe(2);
  });

  it('starts a new computation for callers that come after a clear, while the old one still runs', async () => {
    const first = deferred<string>();
    const second = deferred<string>();
    const results = [first.promise, second.promise];
    let n = 0;
    const v = new CachedValue(() => 1000, () => results[n++]!, manualClock().now);
    const old = v.get();
    v.clear();
    const fresh = [v.get(), v.get()];
    second.resolve('new');
    first.resolve('old');
    expect(await old).toBe('old');
    expect(await Promise.all(fresh)).toEqual(['new', 'new']);
    expect(await v.get()).toBe('new'); // the late old result did not overwrite the new one
    expect(n).toBe(2);
  });

  it('does not keep failures', async () => {
    let n = 0;
    const v = new CachedValue(() => 1000, async () => {
      if (++n === 1) throw new Error('unreachable');
      return 'ok';
    }, manualClock().now);
    await expect(v.get()).rejects.toThrow('unreachable');
    expect(await v.get()).toBe('ok');
    expect(n).toBe(2);
  });

  it('with a TTL of 0 never reuses a finished result, but still shares a running one', async () => {
    const d = deferred<string>();
    let n = 0;
    const v = new CachedValue(() => 0, () => (++n === 1 ? d.promise : Promise.resolve(`v${n}`)), manualClock().now);
    const both = [v.get(), v.get()];
    d.resolve('v1');
    expect(await Promise.all(both)).toEqual(['v1', 'v1']);
    expect(await v.get()).toBe('v2');
    expect(n).toBe(2);
  });
});

describe('credentials in source URLs', () => {
  it('removes userinfo from URLs and keeps scp-like addresses', () => {
    expect(redactUrl('https://user:token@host/repo.git')).toBe('https://host/repo.git');
    expect(redactUrl('https://ghp_abcdef@github.com/org/repo.git')).toBe('https://github.com/org/repo.git');
    expect(redactUrl('http://user:p@ss@127.0.0.1:1/repo.git')).toBe('http://127.0.0.1:1/repo.git');
    expect(redactUrl('ssh://git@host/repo.git')).toBe('ssh://host/repo.git');
    expect(redactUrl('git@github.com:org/repo.git')).toBe('git@github.com:org/repo.git');
    expect(redactUrl('https://host/org/repo@v1.git')).toBe('https://host/org/repo@v1.git');
    expect(redactUrl('/srv/git/pkgs.git')).toBe('/srv/git/pkgs.git');
  });

  it('removes the secret from any text, in URLs and on its own, encoded or not', () => {
    const redact = credentialRedactor('https://ci:s%40cret@host/repo.git');
    expect(redact("fatal: unable to access 'https://ci:s%40cret@host/repo.git/': 403")).toBe("fatal: unable to access 'https://host/repo.git/': 403");
    expect(redact('password s@cret rejected, s%40cret too')).toBe('password *** rejected, *** too');
    // A user name alone is a secret over https (tokens are passed that way), not over ssh.
    expect(credentialRedactor('https://ghp_abcdef@github.com/o/r')('token ghp_abcdef expired')).toBe('token *** expired');
    expect(credentialRedactor('ssh://git@host/r')('not a git repository')).toBe('not a git repository');
  });
});

describe('GitSource', () => {
  const LS_REMOTE = [`ref: refs/heads/main\tHEAD`, `${A}\tHEAD`, `${A}\trefs/heads/main`, `${B}\trefs/tags/v1`, ''].join('\n');

  function counted(outputs: (() => Promise<string>)[]): { listRemote: (args: string[]) => Promise<string>; calls: string[][] } {
    const calls: string[][] = [];
    return {
      calls,
      listRemote: (args) => {
        calls.push(args);
        return (outputs[calls.length - 1] ?? outputs[outputs.length - 1]!)();
      },
    };
  }

  it('asks the remote once per TTL of the injected clock, however many callers', async () => {
    const clock = manualClock();
    const gate = deferred<string>();
    const git = counted([() => gate.promise, async () => LS_REMOTE.replaceAll(A, C)]);
    const s = new GitSource('https://host/pkgs.git', 30, { now: clock.now, listRemote: git.listRemote });
    const concurrent = [s.resolve('latest'), s.resolve('main'), s.resolve('v1'), s.tags()];
    gate.resolve(LS_REMOTE);
    const [latest, main, v1, tags] = await Promise.all(concurrent);
    expect(git.calls).toEqual([['--symref', 'https://host/pkgs.git']]);
    expect(latest).toEqual({ revision: `git:${A}`, nix: { srcType: 'git', url: 'https://host/pkgs.git', rev: A, ref: 'refs/heads/main' } });
    expect(main).toEqual(latest);
    expect(v1).toMatchObject({ revision: `git:${B}` });
    expect(tags).toEqual(['latest', 'main', 'v1']);

    clock.advance(30_000);
    expect((await s.resolve('main')).revision).toBe(`git:${A}`);
    expect(git.calls).toHaveLength(1);
    clock.advance(1);
    expect((await s.resolve('main')).revision).toBe(`git:${C}`);
    expect(git.calls).toHaveLength(2);
  });

  it('names the source without its credentials when the remote fails, and asks again next time', async () => {
    const url = 'http://user:secret@127.0.0.1:1/repo.git';
    const failure = Object.assign(new Error(`fatal: unable to access '${url}/': Failed to connect\nmore`), {
      task: { commands: ['ls-remote', '--symref', url] },
    });
    const git = counted([() => Promise.reject(failure), async () => LS_REMOTE]);
    const s = new GitSource(url, 30, { now: manualClock().now, listRemote: git.listRemote });
    expect(s.description).toBe('git repository http://127.0.0.1:1/repo.git');

    const err = await s.resolve('latest').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SourceUnavailableError);
    const e = err as SourceUnavailableError;
    expect(e.code).toBe('SOURCE_UNAVAILABLE');
    expect(e.source).toBe('http://127.0.0.1:1/repo.git');
    expect(e.message).toBe(
      "package source http://127.0.0.1:1/repo.git is unavailable: git ls-remote failed: fatal: unable to access 'http://127.0.0.1:1/repo.git/': Failed to connect",
    );
    // Nothing a logger would write about the error, causes included, holds the token.
    expect(JSON.stringify(stdSerializers.err(e))).not.toContain('secret');
    expect(String((e.cause as Error).message)).toContain('Failed to connect');

    expect((await s.resolve('latest')).revision).toBe(`git:${A}`); // the failure was not cached
    expect(git.calls).toHaveLength(2);
  });

  it('forgets the cached refs on close()', async () => {
    const git = counted([async () => LS_REMOTE]);
    const s = new GitSource('https://host/pkgs.git', 30, { now: manualClock().now, listRemote: git.listRemote });
    await s.resolve('latest');
    s.close();
    s.close();
    await s.resolve('latest');
    expect(git.calls).toHaveLength(2);
  });
});

describe('publicSourceUrl', () => {
  it('shows a repository or archive URL without credentials or query, and nothing for a local path', () => {
    expect(publicSourceUrl({ srcType: 'git', url: 'https://user:s3cret@git.example.org/pkgs.git', rev: 'a'.repeat(40) })).toBe('https://git.example.org/pkgs.git');
    expect(publicSourceUrl({ srcType: 'git', url: 'https://ghp_token@github.com/o/r?x=1', rev: 'a'.repeat(40) })).toBe('https://github.com/o/r');
    expect(publicSourceUrl({ srcType: 'git', url: 'git@github.com:o/r.git', rev: 'a'.repeat(40) })).toBe('git@github.com:o/r.git');
    expect(publicSourceUrl({ srcType: 'tarball', url: 'https://github.com/NixOS/nixpkgs/archive/abc.tar.gz' })).toBe('https://github.com/NixOS/nixpkgs/archive/abc.tar.gz');
    expect(publicSourceUrl({ srcType: 'path', path: '/srv/pkgs' })).toBeUndefined();
  });
});
