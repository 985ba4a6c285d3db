/**
 * Package sources resolved to revisions: a git repository (tag = ref), a
 * channel served over loopback HTTP, and a local path; each caches its builds
 * until the revision changes. Real git, real Nix, real pulls.
 */
import { execFileSync } from 'node:child_process';
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { stdSerializers } from 'pino';
import { simpleGit } from 'simple-git';
import { afterAll, describe, expect, it } from 'vitest';
import { SourceUnavailableError } from '../../src/errors.js';
import { ChannelSource, GitSource, PathSource } from '../../src/nix/sources.js';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
import { DEMO_PKGS } from '../helpers/nix.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function scratch(prefix: string): Promise<string> {
  const d = await scratchDir(prefix);
  cleanups.push(d.remove);
  return d.path;
}

async function serve(env: Record<string, string>): Promise<RunningServer> {
  // Nix's fetch caches (fetchGit, fetchTarball) are kept per test run.
  const s = await startServer({ env: { XDG_CACHE_HOME: await scratch('nixery-xdg-'), ...env } });
  cleanups.push(() => s.stop());
  return s;
}

function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.org', '-c', 'init.defaultBranch=main', ...args], { cwd }).toString().trim();
}

/** A copy of the demo package set whose `hello` prints `greeting`. */
async function demoCopy(dir: string, greeting: string): Promise<string> {
  await cp(DEMO_PKGS, dir, { recursive: true });
  await writeFile(path.join(dir, 'greeting.txt'), `${greeting}\n`);
  return dir;
}

async function digestOf(s: RunningServer, image: string, tag = 'latest'): Promise<{ status: number; digest: string | null; body: string }> {
  const r = await fetch(`${s.url}/v2/${image}/manifests/${tag}`, { headers: { Accept: OCI } });
  return { status: r.status, digest: r.headers.get('docker-content-digest'), body: await r.text() };
}

let pulls = 0;
async function runHello(s: RunningServer, tag = 'latest'): Promise<string> {
  const dir = await scratch('nixery-src-pull-');
  const layout = `${dir}/img${pulls++}`;
  await skopeoPull(`${s.host}/hello:${tag}`, layout);
  return inChroot(await unpack(layout, `${dir}/bundle`), ['hello']);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('git repository source', () => {
  it('builds refs, caches by commit, follows a moving branch after the TTL, and lists tags', async () => {
    const work = await demoCopy(await scratch('nixery-gitwork-'), 'Hello from v1');
    const bare = path.join(await scratch('nixery-gitbare-'), 'pkgs.git');
    git(work, 'init', '-q');
    git(work, 'add', '.');
    git(work, 'commit', '-qm', 'v1');
    git(work, 'tag', 'v1');
    await writeFile(path.join(work, 'greeting.txt'), 'Hello from v2\n');
    git(work, 'commit', '-qam', 'v2');
    git(work, 'tag', '-a', 'v2', '-m', 'annotated v2');
    execFileSync('git', ['clone', '-q', '--bare', work, bare]);

    const ttl = 2;
    const s = await serve({ NIXERY_PKGS_PATH: '', NIXERY_PKGS_REPO: bare, NIXERY_REVISION_TTL: String(ttl) });

    expect(await runHello(s, 'v1')).toBe('Hello from v1\n');
    expect(await runHello(s, 'v2')).toBe('Hello from v2\n');
    const v1 = await digestOf(s, 'hello', 'v1');
    const v2 = await digestOf(s, 'hello', 'v2');
    expect(v1.digest).not.toBe(v2.digest);

    const before = await s.stats();
    expect((await digestOf(s, 'hello', 'v1')).digest).toBe(v1.digest);
    // main points at the same commit as v2: same revision, same cache entry.
    expect((await digestOf(s, 'hello', 'main')).digest).toBe(v2.digest);
    expect((await s.stats()).nix).toEqual({ ...before.nix, running: 0 });

    // Move main.
    await writeFile(path.join(work, 'greeting.txt'), 'Hello from v3\n');
    git(work, 'commit', '-qam', 'v3');
    git(work, 'push', '-q', bare, 'main');
    await sleep(ttl * 1000 + 200);
    expect(await runHello(s, 'main')).toBe('Hello from v3\n');
    const buildsAfterMove = (await s.stats()).builds;
    const main = await digestOf(s, 'hello', 'main');
    expect(main.digest).not.toBe(v2.digest);
    expect((await digestOf(s, 'hello', 'latest')).digest).toBe(main.digest);
    expect((await s.stats()).builds).toBe(buildsAfterMove);

    const missing = await digestOf(s, 'hello', 'nosuchref');
    expect(missing.status).toBe(404);
    const err = JSON.parse(missing.body).errors[0];
    expect(err.code).toBe('MANIFEST_UNKNOWN');
    expect(err.message).toContain('nosuchref');

    const tags = await (await fetch(`${s.url}/v2/hello/tags/list`)).json();
    expect(tags).toEqual({ name: 'hello', tags: ['latest', 'main', 'v1', 'v2'] });
  });
});

describe('channel source', () => {
  it('builds the channel revision, caches it, and builds the new content when the channel moves', async () => {
    const www = await scratch('nixery-www-');
    let revision = '1'.repeat(40);
    const publish = async (rev: string, greeting: string) => {
      const src = await demoCopy(path.join(www, `nixpkgs-${rev}`), greeting);
      execFileSync('tar', ['-czf', path.join(www, `${rev}.tar.gz`), '-C', www, `nixpkgs-${rev}`]);
      await rm(src, { recursive: true });
    };
    await publish(revision, 'Hello from channel r1');
    const httpServer = http.createServer((req, res) => {
      const file = req.url === '/demo-channel/git-revision' ? null : req.url?.match(/^\/archive\/([0-9a-f]{40})\.tar\.gz$/)?.[1];
      if (req.url === '/demo-channel/git-revision') return res.end(`${revision}\n`);
      if (file) {
        execFileSync('test', ['-f', path.join(www, `${file}.tar.gz`)]);
        res.setHeader('Content-Type', 'application/gzip');
        return res.end(execFileSync('cat', [path.join(www, `${file}.tar.gz`)]));
      }
      res.statusCode = 404;
      res.end();
    });
    await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => httpServer.close(r)));
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;

    const ttl = 1;
    const s = await serve({
      NIXERY_PKGS_PATH: '',
      NIXERY_CHANNEL: 'demo-channel',
      NIXERY_CHANNEL_URL: `${base}/archive/{rev}.tar.gz`,
      NIXERY_CHANNEL_REVISION_URL: `${base}/{channel}/git-revision`,
      NIXERY_REVISION_TTL: String(ttl),
    });
    expect(await runHello(s)).toBe('Hello from channel r1\n');
    const first = await s.stats();
    expect(first.builds).toBe(1);
    await sleep(ttl * 1000 + 200);
    await digestOf(s, 'hello');
    expect((await s.stats()).builds).toBe(1); // same revision after the TTL: cached

    revision = '2'.repeat(40);
    await publish(revision, 'Hello from channel r2');
    await sleep(ttl * 1000 + 200);
    expect(await runHello(s)).toBe('Hello from channel r2\n');
    expect((await s.stats()).builds).toBe(2);
  });
});

describe('path source', () => {
  it('serves an untouched directory from cache and rebuilds after an edit', async () => {
    const dir = await demoCopy(await scratch('nixery-path-'), 'Hello from the path');
    const s = await serve({ NIXERY_PKGS_PATH: dir });
    expect(await runHello(s)).toBe('Hello from the path\n');
    const a = await digestOf(s, 'hello');
    const stats = await s.stats();
    expect((await digestOf(s, 'hello')).digest).toBe(a.digest);
    expect((await s.stats()).nix).toEqual({ ...stats.nix, running: 0 });

    await writeFile(path.join(dir, 'greeting.txt'), 'Hello after an edit\n');
    await sleep(200);
    expect(await runHello(s)).toBe('Hello after an edit\n');
    expect((await digestOf(s, 'hello')).digest).not.toBe(a.digest);
  });

  it('in a git work tree, keys on the committed tree plus uncommitted changes', async () => {
    const dir = await demoCopy(await scratch('nixery-pathgit-'), 'Hello committed');
    git(dir, 'init', '-q');
    git(dir, 'add', '.');
    git(dir, 'commit', '-qm', 'c1');
    const s = await serve({ NIXERY_PKGS_PATH: dir });
    expect(await runHello(s)).toBe('Hello committed\n');
    const builds = (await s.stats()).builds;
    await digestOf(s, 'hello');
    expect((await s.stats()).builds).toBe(builds);
    await writeFile(path.join(dir, 'greeting.txt'), 'Hello uncommitted\n');
    await sleep(200);
    expect(await runHello(s)).toBe('Hello uncommitted\n');
    await mkdir(path.join(dir, 'extra'));
    await writeFile(path.join(dir, 'extra/untracked.nix'), '{}\n');
    await sleep(200);
    await digestOf(s, 'hello');
    expect((await s.stats()).builds).toBe(builds + 2); // an untracked file is a change too
  });
});

// ------------------------------------------------ the sources on their own
// No server: the source classes with real git, a real fs watcher and loopback
// HTTP, and a clock that moves only when told to (starting at the real time).

function manualClock(): { now: () => number; advance: (ms: number) => void } {
  let t = Date.now();
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('GitSource against a real repository', () => {
  it('shares one git ls-remote between concurrent callers and asks again only after the TTL', async () => {
    const work = await scratch('nixery-gitsrc-');
    await writeFile(path.join(work, 'default.nix'), '{}\n');
    git(work, 'init', '-q');
    git(work, 'add', '.');
    git(work, 'commit', '-qm', 'c1');
    const c1 = git(work, 'rev-parse', 'HEAD');
    const bare = path.join(await scratch('nixery-gitsrc-bare-'), 'pkgs.git');
    execFileSync('git', ['clone', '-q', '--bare', work, bare]);

    const real = simpleGit();
    let lsRemotes = 0;
    const clock = manualClock();
    const source = new GitSource(bare, 10, {
      now: clock.now,
      listRemote: (args) => {
        lsRemotes++;
        return real.listRemote(args);
      },
    });
    const [main, latest, tags] = await Promise.all([source.resolve('main'), source.resolve('latest'), source.tags()]);
    expect(lsRemotes).toBe(1);
    expect(main.revision).toBe(`git:${c1}`);
    expect(latest).toEqual(main);
    expect(tags).toEqual(['latest', 'main']);

    await writeFile(path.join(work, 'default.nix'), '{ x = 1; }\n');
    git(work, 'commit', '-qam', 'c2');
    git(work, 'push', '-q', bare, 'main');
    const c2 = git(work, 'rev-parse', 'HEAD');
    clock.advance(10_000);
    expect((await source.resolve('main')).revision).toBe(`git:${c1}`); // within the TTL
    expect(lsRemotes).toBe(1);
    clock.advance(1);
    expect((await source.resolve('main')).revision).toBe(`git:${c2}`);
    expect(lsRemotes).toBe(2);
    source.close();
  });

  it('reports an unreachable repository as SourceUnavailableError naming the URL without the token', async () => {
    const source = new GitSource('http://user:secret@127.0.0.1:1/repo.git', 10, { now: manualClock().now });
    expect(source.description).toBe('git repository http://127.0.0.1:1/repo.git');
    const err = await source.resolve('latest').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SourceUnavailableError);
    const e = err as SourceUnavailableError;
    expect(e.source).toBe('http://127.0.0.1:1/repo.git');
    expect(e.message).toContain('package source http://127.0.0.1:1/repo.git is unavailable: git ls-remote failed: ');
    expect(e.message).not.toContain('\n');
    // Not in the message, nor anywhere a logger would look (simple-git keeps the command line on its error).
    expect(JSON.stringify(stdSerializers.err(e))).not.toContain('secret');
    source.close();
  });
});

describe('ChannelSource against loopback HTTP', () => {
  it('shares one revision request between concurrent callers, asks again after the TTL, and hides credentials', async () => {
    let revision = '1'.repeat(40);
    let requests = 0;
    const httpServer = http.createServer((req, res) => {
      if (req.url !== '/demo/git-revision') return res.writeHead(404).end();
      requests++;
      // Answer a little later, so that concurrent callers really overlap.
      setTimeout(() => res.end(`${revision}\n`), 50);
    });
    await new Promise<void>((r) => httpServer.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => httpServer.close(r)));
    const base = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;

    const clock = manualClock();
    const source = new ChannelSource('demo', `${base}/archive/{rev}.tar.gz`, `${base}/{channel}/git-revision`, 5, { now: clock.now });
    const all = await Promise.all([source.resolve(), source.resolve(), source.resolve()]);
    expect(requests).toBe(1);
    expect(all.map((r) => r.revision)).toEqual(Array(3).fill(`channel:${'1'.repeat(40)}`));
    expect(all[0]!.nix).toEqual({ srcType: 'tarball', url: `${base}/archive/${'1'.repeat(40)}.tar.gz` });

    revision = '2'.repeat(40);
    clock.advance(5_000);
    expect((await source.resolve()).revision).toBe(`channel:${'1'.repeat(40)}`);
    clock.advance(1);
    expect((await source.resolve()).revision).toBe(`channel:${'2'.repeat(40)}`);
    expect(requests).toBe(2);
    source.close();

    const locked = new ChannelSource('demo', `${base}/{rev}`, 'http://user:secret@127.0.0.1:1/{channel}/rev', 5, { now: clock.now });
    const err = await locked.resolve().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SourceUnavailableError);
    expect((err as SourceUnavailableError).source).toBe('channel demo');
    expect((err as Error).message).toContain('http://127.0.0.1:1/demo/rev');
    expect(JSON.stringify(stdSerializers.err(err as Error))).not.toContain('secret');
  });
});

describe('PathSource watcher', () => {
  /** Real git for the identity, counting identity computations and able to hold the next one open. */
  function gatedGit(dir: string): { run: (args: string[]) => Promise<string>; computations: () => number; hold: () => () => void } {
    const real = simpleGit({ baseDir: dir });
    let computations = 0;
    let gate: Promise<void> | undefined;
    return {
      computations: () => computations,
      hold: () => {
        let open!: () => void;
        gate = new Promise((r) => (open = r));
        return open;
      },
      run: async (args) => {
        if (args[1] === '--is-inside-work-tree') {
          computations++;
          const g = gate;
          gate = undefined;
          await g;
        }
        return real.raw(args);
      },
    };
  }

  it('keeps the identity until a change, and a change during the computation makes its result stale at once', async () => {
    const dir = await scratch('nixery-pathsrc-');
    await writeFile(path.join(dir, 'default.nix'), '{}\n');
    const g = gatedGit(dir);
    const clock = manualClock();
    const source = new PathSource(dir, { now: clock.now, git: g.run });
    cleanups.push(async () => source.close());

    const open = g.hold();
    const computing = source.resolve();
    await writeFile(path.join(dir, 'extra.nix'), '{}\n'); // arrives while computing
    await sleep(300);
    open();
    await computing;
    expect(g.computations()).toBe(1);

    const after = await source.resolve();
    expect(g.computations()).toBe(2); // the first result was not kept
    clock.advance(24 * 3600 * 1000); // while watching, time alone does not expire it
    expect(await source.resolve()).toEqual(after);
    expect(g.computations()).toBe(2);

    await writeFile(path.join(dir, 'default.nix'), '{ x = 1; }\n');
    await sleep(300);
    expect((await source.resolve()).revision).not.toBe(after.revision);
    expect(g.computations()).toBe(3);
  });

  it('close() stops the watcher: later changes are only seen after the fallback TTL', async () => {
    const dir = await scratch('nixery-pathsrc-close-');
    await writeFile(path.join(dir, 'default.nix'), '{}\n');
    const g = gatedGit(dir);
    const clock = manualClock();
    const source = new PathSource(dir, { now: clock.now, git: g.run, fallbackTtlSeconds: 2 });
    await source.resolve();
    source.close();
    source.close();
    const before = await source.resolve(); // close() forgot the identity kept for the watcher
    expect(g.computations()).toBe(2);

    await writeFile(path.join(dir, 'default.nix'), '{ x = 1; }\n');
    await sleep(300);
    expect(await source.resolve()).toEqual(before); // no watcher cleared it
    expect(g.computations()).toBe(2);
    clock.advance(2_001);
    expect((await source.resolve()).revision).not.toBe(before.revision);
    expect(g.computations()).toBe(3);
  });
});
