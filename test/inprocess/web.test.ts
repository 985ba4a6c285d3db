/**
 * The start page and the web directory in-process: index.html rendered with
 * escaped values, every other file served byte for byte with its own
 * Content-Type, and anything else left to the app's notFound handler.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerStartPage, type RunningBuild } from '../../src/http/web.js';
import type { RecentError } from '../../src/service/recent-errors.js';

const WEB = path.resolve(import.meta.dirname, '../../web');
const EVIL = '<script>alert(1)</script>';

/** PNG signature, then every byte value and random bytes: not valid UTF-8. */
const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(4096)]);
const css = 'body { color: #123456; }\n';

let base: string;
/** The web directory, inside `base`, beside a file it must never serve. */
let dir: string;
let running: RunningBuild[] = [];
let recentErrors: RecentError[] = [];

function makeApp(webDir: string): Hono {
  const app = new Hono();
  registerStartPage(app, { webDir, source: 'nix/demo-pkgs <&>', live: async () => ({ running, recentErrors }) });
  app.notFound((c) => c.json({ errors: [{ code: 'NOT_FOUND' }] }, 404));
  return app;
}

beforeAll(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nixery-web-'));
  dir = path.join(base, 'web');
  await mkdir(dir);
  await writeFile(path.join(base, 'outside.txt'), 'outside the web directory');
  await copyFile(path.join(WEB, 'index.html'), path.join(dir, 'index.html'));
  await writeFile(path.join(dir, 'logo.png'), png);
  await mkdir(path.join(dir, 'css'));
  await writeFile(path.join(dir, 'css', 'site.css'), css);
  await writeFile(path.join(dir, '.secret'), 'hidden');
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

async function expectNotFound(res: Response): Promise<void> {
  expect(res.status).toBe(404);
  expect(await res.json()).toEqual({ errors: [{ code: 'NOT_FOUND' }] });
}

describe('registerStartPage', () => {
  it('serves a binary file byte for byte as image/png', async () => {
    const res = await makeApp(dir).request('/logo.png');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    expect(Buffer.from(await res.arrayBuffer()).equals(png)).toBe(true);
  });

  it('serves CSS as text/css', async () => {
    const res = await makeApp(dir).request('/css/site.css');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/css\b/);
    expect(await res.text()).toBe(css);
  });

  it('renders / and /index.html with the Host header in the pull examples and the source', async () => {
    running = [{ image: 'htop:latest', packages: ['cacert', 'htop'], seconds: 3.4 }];
    recentErrors = [];
    for (const p of ['/', '/index.html']) {
      const res = await makeApp(dir).request(p, { headers: { host: 'registry.example:8443' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/html\b/);
      const body = await res.text();
      expect(body).toContain('<title>nixery-ts</title>');
      expect(body).toContain('docker pull registry.example:8443/shell/git/htop');
      expect(body).toContain('<strong>nix/demo-pkgs &lt;&amp;&gt;</strong>');
      expect(body).toContain('<ul class="running"><li><code>htop:latest</code> (cacert, htop), for 3 s</li></ul>');
      expect(body).toContain('No failed builds since the server started.');
      expect(body).not.toContain('{{');
    }
  });

  it('escapes markup in the Host header, build messages and Nix stderr', async () => {
    running = [];
    recentErrors = [{ time: '2024-01-01T00:00:00Z', image: `evil:${EVIL}`, message: `failed ${EVIL}`, stderr: `${EVIL}<img src=x onerror=alert(2)>` }];
    const res = await makeApp(dir).request('/', { headers: { host: `"><b>h</b>` } });
    const body = await res.text();
    expect(body).not.toContain(EVIL);
    expect(body).not.toContain('<img');
    expect(body).not.toContain('<b>h</b>');
    expect(body).toContain('docker pull &quot;&gt;&lt;b&gt;h&lt;/b&gt;/shell/git/htop');
    expect(body).toContain('<code>evil:&lt;script&gt;alert(1)&lt;/script&gt;</code>: failed &lt;script&gt;alert(1)&lt;/script&gt;');
    expect(body).toContain('<pre>&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;</pre>');
    expect(body).toContain('Nothing is being built right now.');
  });

  it('answers HEAD of / with the headers and no body', async () => {
    const res = await makeApp(dir).request('/', { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html\b/);
    expect(res.body).toBeNull();
    expect(await res.text()).toBe('');
  });

  it('leaves paths that are not files of the directory to notFound', async () => {
    const app = makeApp(dir);
    for (const p of [
      '/nope.png',
      '/../package.json',
      '/%2e%2e/package.json',
      '/..%2fpackage.json',
      '/css/..%2f..%2fpackage.json',
      '/%2e%2e%2f%2e%2e%2fetc%2fpasswd',
      '/..\\package.json',
      '/../outside.txt',
      '/%2e%2e/outside.txt',
      '/..%2foutside.txt',
      '/%2e%2e%2foutside.txt',
      '/..%5coutside.txt',
      '/css/%2e%2e/%2e%2e/outside.txt',
      '//etc/passwd',
      '/css',
      '/css/',
      '/.secret',
      '/logo.png/',
    ]) {
      await expectNotFound(await app.request(p));
    }
    // The URL parser resolves dot segments; the raw path never reaches a file outside.
    await expectNotFound(await app.request(new Request('http://localhost/css/../../outside.txt')));
  });

  it('falls through for other methods', async () => {
    await expectNotFound(await makeApp(dir).request('/logo.png', { method: 'POST' }));
  });

  it('falls through for / when the directory has no index.html', async () => {
    const empty = await mkdtemp(path.join(tmpdir(), 'nixery-web-empty-'));
    try {
      await expectNotFound(await makeApp(empty).request('/'));
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});
