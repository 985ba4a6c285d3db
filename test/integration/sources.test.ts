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
import { afterAll, describe, expect, it } from 'vitest';
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
