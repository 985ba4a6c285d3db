/**
 * Access control in-process: the htpasswd file (bcrypt only, reloaded on
 * change) and the matrix of routes x credentials x NIXERY_ANONYMOUS
 * policies. A refused request never runs Nix and never returns a blob byte.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Htpasswd, parseHtpasswd } from '../../src/auth/htpasswd.js';
import { parseBasic } from '../../src/http/auth.js';
import { inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

const PASSWORD = 'correct horse battery staple';
let dir: string;
let file: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nixery-auth-'));
  file = path.join(dir, 'htpasswd');
  execFileSync('htpasswd', ['-B', '-b', '-c', file, 'alice', PASSWORD], { stdio: 'ignore' });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('the htpasswd file', () => {
  it('takes bcrypt entries and refuses other hash kinds, naming the line', () => {
    const bcryptLine = execFileSync('htpasswd', ['-B', '-b', '-n', 'bob', 'pw']).toString().trim();
    expect(parseHtpasswd(`# users\n${bcryptLine}\n\n`, 'f').has('bob')).toBe(true);
    const md5 = execFileSync('htpasswd', ['-m', '-b', '-n', 'carol', 'pw']).toString().trim();
    expect(() => parseHtpasswd(`${bcryptLine}\n${md5}\n`, '/etc/h')).toThrow('/etc/h line 2 (user "carol") is not a bcrypt hash; write it with htpasswd -B');
    expect(() => parseHtpasswd('{SHA}abc\n', '/etc/h')).toThrow(/line 1 is not user:hash/);
    expect(() => parseHtpasswd(`${bcryptLine}\n${bcryptLine}\n`, 'f')).toThrow(/appears twice/);
  });

  it('verifies passwords, and picks up added and removed users without a restart', async () => {
    const own = path.join(dir, 'reload');
    execFileSync('htpasswd', ['-B', '-b', '-c', own, 'alice', 'a'], { stdio: 'ignore' });
    const reloads: number[] = [];
    const errors: string[] = [];
    const users = await Htpasswd.open(own, { pollMs: 60_000, onReload: (n) => reloads.push(n), onReloadError: (m) => errors.push(m) });
    try {
      expect(await users.verify('alice', 'a')).toBe(true);
      expect(await users.verify('alice', 'b')).toBe(false);
      expect(await users.verify('nobody', 'a')).toBe(false);
      execFileSync('htpasswd', ['-B', '-b', own, 'bob', 'b'], { stdio: 'ignore' });
      execFileSync('htpasswd', ['-D', own, 'alice'], { stdio: 'ignore' });
      const before = users.generation;
      await users.poll();
      expect(users.generation).toBe(before + 1);
      expect(await users.verify('bob', 'b')).toBe(true);
      expect(await users.verify('alice', 'a')).toBe(false);
      // A broken file is reported once and the last good one stays in force.
      await writeFile(own, 'dave:$apr1$xyz$abc\n');
      await users.poll();
      await users.poll();
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatch(/line 1 \(user "dave"\) is not a bcrypt hash/);
      expect(await users.verify('bob', 'b')).toBe(true);
      expect(reloads).toEqual([1]);
    } finally {
      users.close();
    }
  });

  it('parses Basic headers and nothing else', () => {
    expect(parseBasic(basic('alice', 'p:w'))).toEqual({ user: 'alice', password: 'p:w' });
    for (const bad of ['Bearer x', 'Basic', 'Basic !!!', `Basic ${Buffer.from('nocolon').toString('base64')}`, `Basic ${Buffer.from(':pw').toString('base64')}`]) {
      expect(parseBasic(bad)).toBeUndefined();
    }
  });
});

type Creds = 'none' | 'wrong password' | 'unknown user' | 'malformed' | 'valid';
const CREDS: Creds[] = ['none', 'wrong password', 'unknown user', 'malformed', 'valid'];
const header = (c: Creds): Record<string, string> =>
  c === 'none' ? {} : { Authorization: c === 'valid' ? basic('alice', PASSWORD) : c === 'wrong password' ? basic('alice', 'nope') : c === 'unknown user' ? basic('mallory', PASSWORD) : 'Basic ###' };

describe.each(['none', 'pull', 'build'] as const)('NIXERY_ANONYMOUS=%s', (policy) => {
  let r: InProcessRegistry;
  let built: { manifest: string; blob: string };

  beforeAll(async () => {
    r = await inProcessRegistry({ htpasswd: file, env: { NIXERY_ANONYMOUS: policy } });
    const m = await r.app.request('/v2/hello/manifests/latest', { headers: { Authorization: basic('alice', PASSWORD), Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(m.status).toBe(200);
    const json = (await m.json()) as { layers: { digest: string }[] };
    built = { manifest: m.headers.get('docker-content-digest')!, blob: json.layers[0]!.digest };
  });
  afterAll(async () => {
    await r?.close();
  });

  /** What an anonymous request gets under this policy: status, or 'ok' for the normal answer. */
  function anonymous(route: string): number | 'ok' {
    if (policy === 'none') return 401;
    if (policy === 'pull' && route === 'unbuilt manifest') return 401;
    return 'ok';
  }

  const routes: [string, string, string][] = [
    ['GET', '/v2/', 'base'],
    ['HEAD', '/v2/', 'base'],
    ['GET', '/v2/hello/manifests/latest', 'built manifest'],
    ['HEAD', '/v2/hello/manifests/latest', 'built manifest'],
    ['GET', 'manifest-by-digest', 'built manifest'],
    ['GET', 'blob', 'blob'],
    ['HEAD', 'blob', 'blob'],
    ['GET', '/v2/hello/tags/list', 'tags'],
    ['GET', '/v2/htop/manifests/latest', 'unbuilt manifest'],
    ['POST', '/v2/hello/blobs/uploads/', 'push'],
  ];

  it.each(CREDS)('with %s credentials every route gives the documented status, and refusals cost no Nix and no blob bytes', async (creds) => {
    for (const [method, route, kind] of routes) {
      const url = route === 'blob' ? `/v2/hello/blobs/${built.blob}` : route === 'manifest-by-digest' ? `/v2/hello/manifests/${built.manifest}` : route;
      const before = { ...r.nix.stats };
      const res = await r.app.request(url, { method, headers: header(creds) });
      const body = Buffer.from(await res.arrayBuffer());
      const what = `${method} ${url} (${creds})`;
      const refused = creds !== 'none' && creds !== 'valid' ? 401 : creds === 'none' ? anonymous(kind) : 'ok';
      if (refused === 401) {
        expect(res.status, what).toBe(401);
        expect(res.headers.get('www-authenticate'), what).toBe('Basic realm="nixery-ts", charset="UTF-8"');
        expect(res.headers.get('content-type'), what).toBe('application/json');
        if (method !== 'HEAD') {
          const e = JSON.parse(body.toString()).errors[0];
          expect(e.code, what).toBe('UNAUTHORIZED');
          if (kind === 'unbuilt manifest' && creds === 'none' && policy === 'pull') expect(e.message, what).toMatch(/building .* needs a login/);
        }
        expect(r.nix.stats, what).toEqual(before);
        expect(res.headers.get('docker-content-digest'), what).toBeNull();
      } else {
        const expected = kind === 'push' ? 405 : 200;
        expect(res.status, what).toBe(expected);
      }
      // Nothing the client sent comes back.
      expect(body.toString()).not.toContain(PASSWORD);
      const sent = header(creds)['Authorization'];
      if (sent !== undefined) expect(body.toString()).not.toContain(sent);
    }
  });

  it('refuses every malformed Authorization header with 401 and no Nix call', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ maxLength: 80 }).map((s) => s.replace(/[^\x20-\x7e]/g, '')), async (value) => {
        const before = r.nix.stats.evaluations;
        const res = await r.app.request('/v2/jq/manifests/latest', { headers: { Authorization: `Basic ${value}` } });
        expect(res.status).toBe(401);
        expect(r.nix.stats.evaluations).toBe(before);
      }),
      { numRuns: 200 },
    );
  });

  it('the start page hides builds from anonymous viewers only under none', async () => {
    const anon = await (await r.app.request('/')).text();
    const logged = await (await r.app.request('/', { headers: { Authorization: basic('alice', PASSWORD) } })).text();
    expect(logged).not.toContain('Log in to see builds');
    if (policy === 'none') expect(anon).toContain('Log in to see builds');
    else expect(anon).not.toContain('Log in to see builds');
  });
});
