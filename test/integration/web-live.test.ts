/**
 * The live pages in a real browser (Debian's headless Chromium driven by
 * playwright-core) against a real server, real Nix and the real /api/:
 * the package search composes a pullable name; a cold image's page builds
 * it from the Build button, shows its progress phase by phase and then the
 * layers exactly as its manifest lists them (also without JavaScript); the
 * start page follows a slow build's progress and log without a reload.
 * The pages fit a phone's width and have a dark scheme. Under an
 * authentication policy they show what the API lets the viewer see, and the
 * Build button asks the browser for a login when building needs one. Each test saves
 * screenshots into the scratch directory printed at the end (kept).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/browser.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshSalt } from '../helpers/nix.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';
/** The order of a build's phases (progress.phase). */
const PHASES = ['queued', 'resolve', 'realise', 'closure', 'group', 'pack', 'manifest', 'done'];

let browser: Browser;
let shots: string;
const saved: string[] = [];

beforeAll(async () => {
  shots = (await scratchDir('nixery-web-live-')).path;
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  // Kept for people to look at: the screenshots' directory is not removed.
  console.log(`web-live screenshots:\n${saved.map((s) => `  ${s}`).join('\n')}`);
});

async function screenshot(page: Page, name: string): Promise<void> {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  saved.push(file);
}

/** No horizontal scrolling at a phone's width, and a dark background in dark mode. */
async function checkPhoneAndDark(page: Page, name: string): Promise<void> {
  await page.setViewportSize({ width: 375, height: 740 });
  expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(375);
  await screenshot(page, `${name}-phone`);
  await page.emulateMedia({ colorScheme: 'dark' });
  const rgb = await page.evaluate<string>('getComputedStyle(document.body).backgroundColor');
  const [r, g, b] = (rgb.match(/\d+/g) ?? []).map(Number);
  expect(r! + g! + b!).toBeLessThan(3 * 64);
  await screenshot(page, `${name}-phone-dark`);
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 800 });
}

/**
 * Records, in the page, every distinct value of the expression `read` as the
 * DOM changes (a MutationObserver). The expression is spliced into the
 * evaluated source: the page's CSP forbids eval inside it, not evaluation
 * by the browser's debugger protocol.
 */
async function record(page: Page, key: string, read: string): Promise<void> {
  await page.evaluate(`(() => {
    const values = (window[${JSON.stringify(key)}] = []);
    const take = () => {
      const v = JSON.stringify(${read});
      if (v !== undefined && v !== 'null' && values[values.length - 1] !== v) values.push(v);
    };
    take();
    new MutationObserver(take).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
  })()`);
}

async function recorded<T>(page: Page, key: string): Promise<T[]> {
  return (await page.evaluate<string[]>(`window[${JSON.stringify(key)}]`)).map((v) => JSON.parse(v) as T);
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

describe('live pages', () => {
  let server: RunningServer;
  beforeAll(async () => {
    // A fresh salt: every image here is really cold.
    server = await startServer({ env: { NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) } });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('searches packages as one types, and composes a name to pull from what one picks', async () => {
    const context = await browser.newContext();
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
    const page = await context.newPage();
    await page.goto(`${server.url}/`);
    await page.locator('#q').pressSequentially('ht', { delay: 50 });
    // The index of the package set may still be computing: the page asks again until it is ready.
    const first = page.locator('#suggestions li[role="option"]').first();
    await first.waitFor({ timeout: 60_000 });
    expect(await first.locator('.attr').innerText()).toBe('htop');
    expect(await first.locator('.version').innerText()).toBe('3.2.2');
    expect(await first.locator('.description').innerText()).not.toBe('');
    await screenshot(page, 'start-page-search');
    await first.click();
    await page.locator('.toggles input[value="shell"]').check();
    const lines = await page.locator('#compose .result pre.pull').innerText();
    expect(lines).toBe(`docker pull ${server.host}/shell/htop\ndocker run --rm -it ${server.host}/shell/htop`);
    expect(await page.locator('#compose .picked li code').allInnerTexts()).toEqual(['htop']);
    expect(await page.locator('#compose .image-link').getAttribute('href')).toBe('/image/shell/htop');
    await page.locator('#compose .copy').click();
    await expect.poll(() => page.evaluate<string>('navigator.clipboard.readText()')).toBe(lines);
    // Keyboard: a second package by arrow keys and Enter.
    await page.locator('#q').pressSequentially('jq', { delay: 50 });
    await page.locator('#suggestions li[role="option"][aria-selected="true"]').waitFor();
    expect(await page.locator('#suggestions li[aria-selected="true"] .attr').innerText()).toBe('jq');
    await page.locator('#q').press('Enter');
    expect(await page.locator('#compose .result pre.pull').innerText()).toContain(`docker pull ${server.host}/shell/htop/jq`);
    await screenshot(page, 'start-page-composed');
    await checkPhoneAndDark(page, 'start-page');
    await context.close();
  });

  it('builds a cold image from its page, shows the phases as they pass, then the layers as the manifest lists them', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const res = await page.goto(`${server.url}/image/htop`);
    expect(res?.status()).toBe(200);
    expect(await page.locator('main#image h2').first().innerText()).toBe('Not built yet');
    await record(page, 'phases', `document.querySelector('main#image .build .phase')?.getAttribute('data-phase')`);
    await record(page, 'fractions', `Number(document.querySelector('main#image .build progress')?.getAttribute('value') ?? NaN)`);
    await record(page, 'loads', `performance.getEntriesByType('navigation').length`);
    await page.locator('form.build-form button').click();
    await page.locator('main#image li.build').waitFor();
    await screenshot(page, 'image-page-building');
    await page.locator('table.layers').waitFor({ timeout: 90_000 });
    await screenshot(page, 'image-page-built');

    const phases = await recorded<string>(page, 'phases');
    // Several phases seen, in the build's order, ending in done, without a reload.
    expect(phases.length).toBeGreaterThanOrEqual(3);
    expect(phases.at(-1)).toBe('done');
    const order = phases.map((p) => PHASES.indexOf(p));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    const fractions = (await recorded<number>(page, 'fractions')).filter((f) => !Number.isNaN(f));
    expect(fractions).toEqual([...fractions].sort((a, b) => a - b));
    expect(fractions.at(-1)).toBe(1);
    expect(await recorded<number>(page, 'loads')).toEqual([1]);
    expect(errors).toEqual([]);

    // The table against the manifest the registry serves.
    const platform = page.locator('section.platform[data-platform="linux/amd64"]');
    const ociDigest = await platform.locator('a.manifest.oci code').innerText();
    const manifestRes = await fetch(`${server.url}/v2/htop/manifests/latest`, { headers: { Accept: OCI } });
    const manifestBytes = Buffer.from(await manifestRes.arrayBuffer());
    expect(manifestRes.headers.get('docker-content-digest')).toBe(ociDigest);
    expect(sha256(manifestBytes)).toBe(ociDigest);
    const manifest = JSON.parse(manifestBytes.toString()) as { config: { digest: string }; layers: { digest: string; size: number }[] };
    const rows = platform.locator('table.layers tbody tr.layer');
    const table = await rows.evaluateAll((trs) =>
      trs.map((tr) => {
        const size = tr.querySelector('data.size')!;
        return {
          digest: tr.querySelector('code.digest')!.textContent,
          size: Number(size.getAttribute('value')),
          shown: size.textContent,
          paths: Array.from(tr.querySelectorAll('ul.paths code') as Iterable<{ textContent: string | null }>, (c) => c.textContent),
        };
      }),
    );
    expect(table.map(({ digest, size }) => ({ digest, size }))).toEqual(manifest.layers.map(({ digest, size }) => ({ digest, size })));
    for (const row of table) expect(row.shown).toMatch(/^\d+(\.\d)? (B|kB|MB)$/);
    expect(table.some((r) => r.paths.includes('htop-3.2.2'))).toBe(true);
    const total = manifest.layers.reduce((n, l) => n + l.size, 0);
    expect(Number(await platform.locator('data.total').getAttribute('value'))).toBe(total);
    expect(await platform.locator('a.config code').innerText()).toBe(manifest.config.digest);
    // The Docker flavour's digest, and the links: raw manifest, SBOM.
    const dockerRes = await fetch(`${server.url}/v2/htop/manifests/latest`, { headers: { Accept: DOCKER } });
    expect(await platform.locator('a.manifest.docker code').innerText()).toBe(dockerRes.headers.get('docker-content-digest'));
    const raw = await fetch(new URL((await platform.locator('a.manifest.oci').getAttribute('href'))!, server.url));
    expect(Buffer.from(await raw.arrayBuffer()).equals(manifestBytes)).toBe(true);
    const sbom = await fetch(new URL((await platform.locator('a.sbom').getAttribute('href'))!, server.url));
    expect(sbom.status).toBe(200);
    expect(((await sbom.json()) as { spdxVersion: string }).spdxVersion).toBe('SPDX-2.3');
    expect(await platform.locator('dl.labels').innerText()).toContain('org.opencontainers.image.title');
    await checkPhoneAndDark(page, 'image-page');
    await page.close();
  });

  it('builds from the image page without JavaScript too: the form, then the page reloads itself until the layers are there', async () => {
    const context = await browser.newContext({ javaScriptEnabled: false });
    const page = await context.newPage();
    await page.goto(`${server.url}/image/jq`);
    await page.locator('form.build-form button').click();
    await page.waitForURL(`${server.url}/image/jq`);
    await page.locator('table.layers').waitFor({ timeout: 90_000 });
    const manifest = (await (await fetch(`${server.url}/v2/jq/manifests/latest`, { headers: { Accept: OCI } })).json()) as { layers: { digest: string }[] };
    expect(await page.locator('table.layers code.digest').allInnerTexts()).toEqual(manifest.layers.map((l) => l.digest));
    await context.close();
  });
});

describe('start page, live', () => {
  it('follows a slow build: its progress and log lines change at least three times before it ends, without a reload', async () => {
    const s = await startServer({ env: { NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds: 6 }) } });
    try {
      const page = await browser.newPage();
      await page.goto(`${s.url}/`);
      expect(await page.locator('#building ul.running li').count()).toBe(0);
      const item = `document.querySelector('#building ul.running li.build')`;
      await record(page, 'logs', `${item}?.querySelector('.log')?.textContent`);
      await record(page, 'bars', `${item}?.querySelector('progress')?.getAttribute('value')`);
      await record(page, 'items', `${item} && [${item}.querySelector('.phase').textContent, ${item}.querySelector('progress').getAttribute('value'), ${item}.querySelector('.counts').textContent, ${item}.querySelector('.log').textContent]`);
      await record(page, 'loads', `performance.getEntriesByType('navigation').length`);
      let done = false;
      const pull = fetch(`${s.url}/v2/slow-chatty-build/manifests/latest`).finally(() => (done = true));
      await page.locator('#building ul.running li.build .log:not([hidden])').waitFor({ timeout: 30_000 });
      await screenshot(page, 'start-page-building');
      expect((await pull).status).toBe(200);
      expect(done).toBe(true);
      const logs = await recorded<string>(page, 'logs');
      const items = await recorded<unknown[]>(page, 'items');
      const bars = (await recorded<string>(page, 'bars')).map(Number);
      // Seen while the build ran: the log lines as they came, and the bar moving.
      expect(logs.filter((l) => /tick \d/.test(l)).length).toBeGreaterThanOrEqual(3);
      expect(logs.filter((l) => /tick \d/.test(l)).every((l, i, all) => i === 0 || l !== all[i - 1])).toBe(true);
      expect(items.length).toBeGreaterThanOrEqual(3);
      expect(new Set(bars).size).toBeGreaterThanOrEqual(3);
      expect(bars).toEqual([...bars].sort((a, b) => a - b));
      expect(await recorded<number>(page, 'loads')).toEqual([1]);
      // Then it moves to the recent builds, still without a reload.
      const recent = page.locator('#recent ul.recent li[data-state="succeeded"]');
      await recent.first().waitFor({ timeout: 10_000 });
      expect(await recent.first().locator('.what').innerText()).toMatch(/^slow-chatty-build:latest succeeded in \d+ s, \d+ layers, [\d.]+ (kB|MB) \d\d:\d\d:\d\d UTC$/);
      await expect.poll(() => page.locator('#building ul.running li').count()).toBe(0);
      expect(await page.locator('#building').innerText()).toContain('Nothing is being built right now.');
      console.log(`slow build seen: ${logs.length} log states, ${bars.length} bar values (${bars.join(', ')}), ${items.length} item states`);
      await page.close();
    } finally {
      await s.stop();
    }
  });
});

describe('pages under an authentication policy', () => {
  // Headless Chromium cannot show its login dialog: a navigation answered
  // 401 with a challenge fails, and a script's request waits for ever. So
  // an anonymous browser here is one without credentials that never meets a
  // challenge (NIXERY_ANONYMOUS=none: the page knows before asking), or one
  // whose credentials are wrong (refused again: the request ends with 401).
  const PASSWORD = 'web-live-secret';
  const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;
  let work: { path: string; remove: () => Promise<void> };
  let users: string;
  beforeAll(async () => {
    work = await scratchDir('nixery-web-auth-');
    users = path.join(work.path, 'users.htpasswd');
    await promisify(execFile)('htpasswd', ['-B', '-b', '-c', users, 'alice', PASSWORD], { timeout: 30_000 });
  });
  afterAll(async () => {
    await work?.remove();
  });

  it('NIXERY_ANONYMOUS=none: anonymous viewers are asked to log in and shown no builds or packages; a logged-in one sees them', async () => {
    const s = await startServer({ env: { NIXERY_AUTH_HTPASSWD: users, NIXERY_ANONYMOUS: 'none', NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) } });
    try {
      // A build for the logged-in viewer to see.
      expect((await fetch(`${s.url}/v2/hello/manifests/latest`, { headers: { Authorization: basic('alice', PASSWORD) } })).status).toBe(200);
      const anon = await browser.newContext();
      const page = await anon.newPage();
      const apiCalls: string[] = [];
      page.on('request', (r) => void (new URL(r.url()).pathname.startsWith('/api/') && apiCalls.push(r.url())));
      await page.goto(`${s.url}/`);
      expect(await page.locator('#building').innerText()).toContain('Log in to see builds.');
      expect(await page.locator('#recent').innerText()).toContain('Log in to see builds.');
      expect(await page.locator('body').innerText()).not.toContain('hello:latest');
      await page.locator('#q').pressSequentially('he', { delay: 50 });
      await expect.poll(() => page.locator('#suggestions li.status').innerText()).toMatch(/^Log in to search packages\.\s+Log in$/);
      expect(await page.locator('#suggestions li.status a').getAttribute('href')).toBe('/login');
      expect(apiCalls).toEqual([]);
      await anon.close();
      // The image page and /login answer the API's challenge, so a browser asks for the login.
      for (const p of ['/image/hello', '/login']) {
        const res = await fetch(`${s.url}${p}`);
        expect(res.status).toBe(401);
        expect(res.headers.get('www-authenticate')).toMatch(/^Basic /);
        const body = await res.text();
        expect(body).toContain('Log in to continue');
        expect(body).not.toContain('table class="layers"');
      }

      const alice = await browser.newContext({ httpCredentials: { username: 'alice', password: PASSWORD } });
      const logged = await alice.newPage();
      // /login makes the browser send its credentials, then goes on to `next`.
      await logged.goto(`${s.url}/login?next=${encodeURIComponent('/image/hello')}`);
      expect(new URL(logged.url()).pathname).toBe('/image/hello');
      expect(await logged.locator('table.layers tbody tr').count()).toBeGreaterThan(0);
      await logged.goto(`${s.url}/`);
      expect(await logged.locator('body').innerText()).not.toContain('Log in to see builds');
      expect(await logged.locator('#recent li[data-state="succeeded"] .what').first().innerText()).toMatch(/^hello:latest succeeded/);
      await logged.locator('#q').pressSequentially('hel', { delay: 50 });
      await logged.locator('#suggestions li[data-attr="hello"]').waitFor({ timeout: 60_000 });
      await alice.close();
    } finally {
      await s.stop();
    }
  });

  it('NIXERY_ANONYMOUS=pull: the image page is open, the Build button needs a login; with one it builds', async () => {
    const s = await startServer({ env: { NIXERY_AUTH_HTPASSWD: users, NIXERY_ANONYMOUS: 'pull', NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) } });
    try {
      const stranger = await browser.newContext({ httpCredentials: { username: 'mallory', password: 'guess' } });
      const page = await stranger.newPage();
      await page.goto(`${s.url}/image/jq`);
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/images/jq/build'),
        page.locator('form.build-form button').click(),
      ]);
      expect(answer.status()).toBe(401);
      await expect.poll(() => page.locator('form.build-form .form-status').innerText()).toBe('Log in to build this image: log in.');
      expect(await page.locator('form.build-form .form-status a').getAttribute('href')).toBe('/login?next=%2Fimage%2Fjq');
      expect((await s.stats()).builds).toBe(0);
      // Without JavaScript the form's own route answers the API's 401 and its challenge.
      const plain = await fetch(`${s.url}/image/jq/build`, { method: 'POST', headers: { 'Sec-Fetch-Site': 'same-origin' } });
      expect(plain.status).toBe(401);
      expect(plain.headers.get('www-authenticate')).toMatch(/^Basic /);
      expect((await s.stats()).builds).toBe(0);
      await stranger.close();

      const alice = await browser.newContext({ httpCredentials: { username: 'alice', password: PASSWORD } });
      const logged = await alice.newPage();
      await logged.goto(`${s.url}/image/jq`);
      await logged.locator('form.build-form button').click();
      await logged.locator('table.layers').waitFor({ timeout: 90_000 });
      expect(await logged.locator('table.layers tbody tr').count()).toBeGreaterThan(0);
      expect((await s.stats()).builds).toBe(1);
      await alice.close();
    } finally {
      await s.stop();
    }
  });
});
