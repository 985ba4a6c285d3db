/**
 * The pages and the web directory in-process: index.html rendered with
 * escaped values and the builds the API reports, the image page from the
 * API's image view, the Build form's route, every other file served byte
 * for byte with its own Content-Type (missing ones from the bundled web/),
 * and anything else left to the app's notFound handler. The API is a stub
 * here answering with the documented shapes (its real answers are checked
 * in test/integration/web-live.test.ts).
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildView, ImageView } from '../../src/http/pages/api-types.js';
import { composeName, registerStartPage, type RunningBuild } from '../../src/http/web.js';
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

/** What the stubbed API answers: builds, image views by name, and the status it answers with. */
let api: {
  status: number;
  builds: { running: BuildView[]; recent: BuildView[] };
  images: Record<string, ImageView>;
  started: string[];
} = { status: 200, builds: { running: [], recent: [] }, images: {}, started: [] };
const UNAUTHORIZED = { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] };

function makeApp(webDir: string, opts: { withApi?: boolean } = {}): Hono {
  const app = new Hono();
  if (opts.withApi !== false) {
    app.use('/api/*', async (c, next) => {
      if (api.status === 401) return c.json(UNAUTHORIZED, 401, { 'WWW-Authenticate': 'Basic realm="nixery-ts"' });
      await next();
    });
    app.get('/api/builds', (c) => c.json(api.builds));
    app.get('/api/images/:name{.+}', (c) => {
      const name = c.req.param('name');
      const v = api.images[`${name}:${c.req.query('tag') ?? 'latest'}`];
      if (!/^[a-z0-9/._-]+$/.test(name)) return c.json({ errors: [{ code: 'NAME_INVALID', message: `invalid repository name ${JSON.stringify(name)}` }] }, 400);
      return v ? c.json(v) : c.json({ name, canonicalName: name, tag: c.req.query('tag') ?? 'latest', built: false, platforms: [] });
    });
    app.post('/api/images/:name{.+}/build', (c) => {
      api.started.push(`${c.req.param('name')}:${c.req.query('tag')}`);
      return c.json({ id: 'b-1' }, 202);
    });
  }
  registerStartPage(app, { webDir, source: 'nix/demo-pkgs <&>', live: async () => ({ running, recentErrors }) });
  app.notFound((c) => c.json({ errors: [{ code: 'NOT_FOUND' }] }, 404));
  return app;
}

function build(over: Partial<Omit<BuildView, 'progress'>> & { progress?: Partial<BuildView['progress']> } = {}): BuildView {
  const { progress, ...rest } = over;
  return {
    id: 'b-1',
    image: 'htop:latest',
    packages: ['cacert', 'htop'],
    state: 'running',
    startedAt: '2024-01-01T10:20:30.000Z',
    seconds: 3.4,
    ...rest,
    progress: { phase: 'realise', bytes: 0, log: [], fraction: 0.3, ...progress },
  };
}

const D = (c: string) => `sha256:${c.repeat(64)}`;
const BUILT: ImageView = {
  name: 'shell/htop',
  canonicalName: 'shell/htop',
  tag: 'latest',
  built: true,
  platforms: [
    {
      platform: 'linux/amd64',
      manifest: { digest: D('a'), size: 1234 },
      dockerManifest: { digest: D('b'), size: 1200 },
      config: D('c'),
      layers: [
        { digest: D('1'), size: 2_500_000, paths: ['glibc-2.36', 'ncurses-6.4'] },
        { digest: D('2'), size: 700, paths: ['htop-3.2.2'] },
        { digest: D('3'), size: 300, paths: [], description: 'symlink layer' },
      ],
      totalBytes: 2_501_000,
      labels: { 'org.opencontainers.image.title': 'shell/htop', 'org.example.evil': EVIL },
      sbom: { artifact: D('e'), blob: D('f') },
    },
  ],
};

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
    api = { status: 200, builds: { running: [], recent: [] }, images: {}, started: [] };
    recentErrors = [];
    for (const p of ['/', '/index.html']) {
      const res = await makeApp(dir).request(p, { headers: { host: 'registry.example:8443' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/html\b/);
      expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
      const body = await res.text();
      expect(body).toContain('<title>nixery-ts</title>');
      expect(body).toContain('docker pull registry.example:8443/shell/git/htop');
      expect(body).toContain('data-host="registry.example:8443"');
      expect(body).toContain('<strong>nix/demo-pkgs &lt;&amp;&gt;</strong>');
      expect(body).toContain('<p class="none">Nothing is being built right now.</p>');
      expect(body).toContain('<p class="none">No builds ended in the last 30 minutes.</p>');
      expect(body).toContain('No failed builds since the server started.');
      expect(body).toContain('<script src="/app.js" defer></script>');
      expect(body).not.toContain('{{');
    }
  });

  it('renders the running builds with their progress and the recent ones with their outcome, from /api/builds', async () => {
    api = {
      status: 200,
      builds: {
        running: [
          build({
            id: 'r-1',
            seconds: 12.2,
            progress: { phase: 'realise', fraction: 0.42, derivations: { done: 1, expected: 3, building: 'htop-3.2.2' }, log: ['tick 1', 'tick 2'] },
          }),
          build({ id: 'r-2', image: 'jq:v1 linux/arm64', packages: ['jq'], progress: { phase: 'pack', fraction: 0.8, layers: { done: 2, total: 5 }, bytes: 12_345_678 } }),
        ],
        recent: [
          build({ id: 'd-1', image: 'git:latest', state: 'succeeded', seconds: 7.6, layers: 4, bytes: 30_000_000, progress: { phase: 'done', fraction: 1 } }),
          build({ id: 'd-2', image: 'broken-build:latest', state: 'failed', seconds: 1, error: 'Nix failed', progress: { phase: 'failed', fraction: 0.1, log: ['oops'] } }),
        ],
      },
      images: {},
      started: [],
    };
    running = [];
    const body = await (await makeApp(dir).request('/')).text();
    expect(body).toContain('<li class="build" data-build-id="r-1" data-state="running">');
    expect(body).toContain('<p class="what"><a href="/image/htop"><code>htop:latest</code></a> (cacert, htop), for <span class="elapsed">12 s</span></p>');
    expect(body).toContain('<progress max="1" value="0.42">42%</progress>');
    expect(body).toContain('<span class="phase" data-phase="realise">building with Nix</span>');
    expect(body).toContain('<span class="derivations">derivations 1 of 3 built, building htop-3.2.2</span>');
    expect(body).toContain('<pre class="log">tick 1\ntick 2</pre>');
    // The arm64 build: its tag in the link, layers and bytes instead of derivations.
    expect(body).toContain('<a href="/image/jq?tag=v1"><code>jq:v1 linux/arm64</code></a>');
    expect(body).toContain('<span class="derivations" hidden></span> <span class="layers">2 of 5 layers written</span> <span class="bytes">12.3 MB written</span>');
    expect(body).toContain('<p class="none" hidden>Nothing is being built right now.</p>');
    expect(body).toContain('<a href="/image/git"><code>git:latest</code></a> <span class="outcome">succeeded</span> <span class="facts">in 8 s, 4 layers, 30.0 MB</span> <time class="when" datetime="2024-01-01T10:20:30.000Z">10:20:30 UTC</time>');
    expect(body).toContain('<span class="outcome">failed</span> <span class="facts">in 1 s</span>');
    expect(body).toContain('<p class="error">Nix failed</p><pre class="log">oops</pre>');
  });

  it('shows "Log in to see builds" when the API answers 401, and the service\'s running builds when there is no API', async () => {
    api = { status: 401, builds: { running: [build()], recent: [] }, images: {}, started: [] };
    recentErrors = [];
    let body = await (await makeApp(dir).request('/')).text();
    expect(body).toContain('Log in to see builds.');
    expect(body).not.toContain('htop:latest');
    running = [{ image: 'htop:latest', packages: ['cacert', 'htop'], seconds: 3.4 }];
    body = await (await makeApp(dir, { withApi: false }).request('/')).text();
    expect(body).toContain('<ul class="running builds"><li class="build"><p class="what"><code>htop:latest</code> (cacert, htop), for 3 s</p></li></ul>');
  });

  it('escapes markup in the Host header, build messages, Nix stderr and every build field', async () => {
    running = [];
    recentErrors = [{ time: '2024-01-01T00:00:00Z', image: `evil:${EVIL}`, message: `failed ${EVIL}`, stderr: `${EVIL}<img src=x onerror=alert(2)>` }];
    api = {
      status: 200,
      builds: {
        running: [
          build({
            id: `"><b>id</b>`,
            image: `evil:${EVIL}`,
            packages: [EVIL],
            progress: { phase: 'realise', derivations: { done: 0, expected: 1, building: EVIL }, log: ['<img src=x onerror=alert(2)>'] },
          }),
        ],
        recent: [build({ id: 'x', image: `<b>x</b>:latest`, state: 'failed', error: EVIL, progress: { phase: 'failed', log: [EVIL] } })],
      },
      images: {},
      started: [],
    };
    const res = await makeApp(dir).request('/', { headers: { host: `"><b>h</b>` } });
    const body = await res.text();
    expect(body).not.toContain(EVIL);
    expect(body).not.toContain('<img');
    expect(body).not.toContain('<b>');
    expect(body).toContain('docker pull &quot;&gt;&lt;b&gt;h&lt;/b&gt;/shell/git/htop');
    expect(body).toContain('<code>evil:&lt;script&gt;alert(1)&lt;/script&gt;</code>: failed &lt;script&gt;alert(1)&lt;/script&gt;');
    expect(body).toContain('<pre>&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;</pre>');
    expect(body).toContain('data-build-id="&quot;&gt;&lt;b&gt;id&lt;/b&gt;"');
    expect(body).toContain('building &lt;script&gt;alert(1)&lt;/script&gt;');
    expect(body).toContain('<pre class="log">&lt;img src=x onerror=alert(2)&gt;</pre>');
    expect(body).toContain('<p class="error">&lt;script&gt;alert(1)&lt;/script&gt;</p>');
  });

  it('renders the image page of a built image: digests, sizes, store paths, labels, SBOM and manifest links', async () => {
    api = { status: 200, builds: { running: [], recent: [] }, images: { 'shell/htop:latest': BUILT }, started: [] };
    const res = await makeApp(dir).request('/image/shell/htop', { headers: { host: 'reg.example' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const body = await res.text();
    expect(body).toContain('<title>shell/htop:latest · nixery-ts</title>');
    expect(body).toContain('docker pull reg.example/shell/htop\ndocker run --rm -it reg.example/shell/htop');
    expect(body).toContain(`<a class="manifest oci" href="/v2/shell/htop/manifests/sha256%3A${'a'.repeat(64)}"><code class="digest">${D('a')}</code></a> <span class="bytes">1234 bytes</span>`);
    expect(body).toContain(`<a class="manifest docker" href="/v2/shell/htop/manifests/sha256%3A${'b'.repeat(64)}">`);
    expect(body).toContain(`<a class="sbom" href="/v2/shell/htop/blobs/sha256%3A${'f'.repeat(64)}">SPDX 2.3 JSON</a>`);
    expect(body).toContain(`<a class="sbom-artifact" href="/v2/shell/htop/manifests/sha256%3A${'e'.repeat(64)}">`);
    expect(body).toContain('<data class="total" value="2501000">2.5 MB</data> in 3 layers');
    const rows = [...body.matchAll(/<tr class="layer">([\s\S]*?)<\/tr>/g)].map((m) => m[1]!);
    expect(rows).toHaveLength(3);
    expect(rows[0]).toContain(`<code class="digest">${D('1')}</code>`);
    expect(rows[0]).toContain('<data class="size" value="2500000">2.5 MB</data>');
    expect(rows[0]).toContain('<ul class="paths"><li><code title="glibc-2.36">glibc-2.36</code></li><li><code title="ncurses-6.4">ncurses-6.4</code></li></ul>');
    expect(rows[1]).toContain('<data class="size" value="700">700 B</data>');
    expect(rows[2]).toContain('<span class="none">symlink layer</span>');
    expect(body).toContain('<dt><code>org.example.evil</code></dt><dd>&lt;script&gt;alert(1)&lt;/script&gt;</dd>');
    expect(body).not.toContain(EVIL);
    expect(body).not.toContain('<form');
  });

  it('renders an image page that is not built with a Build form, and one being built with its progress', async () => {
    api = {
      status: 200,
      builds: { running: [build({ id: 'b-9', image: 'git:v2' })], recent: [build({ id: 'b-8', image: 'hello:latest', state: 'failed', error: `no ${EVIL}` })] },
      images: {
        'git:v2': { name: 'git', canonicalName: 'git', tag: 'v2', built: false, building: 'b-9', platforms: [] },
      },
      started: [],
    };
    let body = await (await makeApp(dir).request('/image/hello')).text();
    expect(body).toContain('<form class="build-form" method="post" action="/image/hello/build?tag=latest"><button type="submit">Build</button>');
    // The last failure of this image, from the recent builds.
    expect(body).toContain('The last build of this image failed:');
    expect(body).toContain('<p class="error">no &lt;script&gt;alert(1)&lt;/script&gt;</p>');
    body = await (await makeApp(dir).request('/image/git?tag=v2')).text();
    expect(body).toContain('data-build-id="b-9"');
    expect(body).toContain('<li class="build" data-build-id="b-9" data-state="running">');
    expect(body).toContain('<noscript><meta http-equiv="refresh" content="2"></noscript>');
    expect(body).not.toContain('<form');
  });

  it('answers the API\'s errors on the image page, escaped, with its status and its challenge', async () => {
    api = { status: 200, builds: { running: [], recent: [] }, images: {}, started: [] };
    let res = await makeApp(dir).request('/image/%3Cscript%3Ealert(1)%3C%2Fscript%3E');
    expect(res.status).toBe(400);
    let body = await res.text();
    expect(body).toContain('invalid repository name &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot; (NAME_INVALID)');
    expect(body).not.toContain(EVIL);
    api.status = 401;
    res = await makeApp(dir).request('/image/htop');
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Basic realm="nixery-ts"');
    body = await res.text();
    expect(body).toContain('Log in to continue');
  });

  it('starts a build from the form and goes back to the image page; refuses a form from another site', async () => {
    api = { status: 200, builds: { running: [], recent: [] }, images: {}, started: [] };
    const app = makeApp(dir);
    let res = await app.request('/image/shell/htop/build?tag=v1', { method: 'POST', headers: { host: 'reg.example', origin: 'http://reg.example', 'sec-fetch-site': 'same-origin' } });
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe('/image/shell/htop?tag=v1');
    expect(api.started).toEqual(['shell/htop:v1']);
    res = await app.request('/image/htop/build', { method: 'POST', headers: { host: 'reg.example', origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' } });
    expect(res.status).toBe(403);
    res = await app.request('/image/htop/build', { method: 'POST', headers: { host: 'reg.example', origin: 'https://evil.example' } });
    expect(res.status).toBe(403);
    expect(api.started).toEqual(['shell/htop:v1']);
    api.status = 401;
    res = await app.request('/image/htop/build', { method: 'POST', headers: { host: 'reg.example' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Basic realm="nixery-ts"');
  });

  it('sends the search form without JavaScript to the image page of the composed name', async () => {
    const app = makeApp(dir);
    const res = await app.request('/image?name=git+htop&meta=shell&meta=arm64');
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe('/image/arm64/shell/git/htop');
    expect((await app.request('/image?name=')).headers.get('location')).toBe('/');
    expect(composeName('extraPackages.prettyJson _7zip shell', [])).toBe('shell/extrapackages.prettyjson/7zip');
  });

  it('/login answers the API\'s challenge to a viewer it refuses, then goes on to a path of this server only', async () => {
    api = { status: 401, builds: { running: [], recent: [] }, images: {}, started: [] };
    const app = makeApp(dir);
    const refused = await app.request('/login?next=/image/htop');
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toBe('Basic realm="nixery-ts"');
    api.status = 200;
    for (const [next, to] of [
      ['/image/htop?tag=v1', '/image/htop?tag=v1'],
      ['//evil.example/x', '/'],
      ['/\\evil.example', '/'],
      ['https://evil.example/', '/'],
      ['', '/'],
    ] as const) {
      const res = await app.request(`/login?next=${encodeURIComponent(next)}`);
      expect(res.status).toBe(303);
      expect(res.headers.get('location'), next).toBe(to);
    }
  });

  it('serves app.js and style.css from the bundled web/ when WEB_DIR has none', async () => {
    const js = await makeApp(dir).request('/app.js');
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/javascript/);
    expect(await js.text()).toContain('/api/builds');
    const style = await makeApp(dir).request('/style.css');
    expect(style.status).toBe(200);
    expect(await style.text()).toContain('prefers-color-scheme: dark');
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
