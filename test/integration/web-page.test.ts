/**
 * The start page in a real browser (Debian's headless Chromium driven by
 * playwright-core): the pull examples carry the host the user reached the
 * server on, and a failed build shows up with Nix's own words, as text on
 * every page (start page, image page, package search). WEB_DIR's other
 * files arrive over a real socket byte for byte, with their own types.
 * The live parts (search, progress, the image page) are in web-live.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { launchChromium } from '../helpers/browser.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_PKGS, freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';

let server: RunningServer;
let browser: Browser;
let profile: string;
beforeAll(async () => {
  server = await startServer();
  profile = await mkdtemp(path.join(tmpdir(), 'nixery-chromium-'));
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await rm(profile, { recursive: true, force: true });
});

describe('start page', () => {
  it('shows pull examples for the real host, the package source, and recent build failures', async () => {
    // Fail a build first, so the page has something to report.
    expect((await fetch(`${server.url}/v2/broken-build/manifests/latest`)).status).toBe(500);
    const page = await browser.newPage();
    const res = await page.goto(`${server.url}/`);
    expect(res?.status()).toBe(200);
    expect(await page.title()).toBe('nixery-ts');
    const examples = await page.locator('pre').first().innerText();
    expect(examples).toContain(`docker pull ${server.host}/shell/git/htop`);
    expect(await page.locator('body').innerText()).toContain('nix/demo-pkgs');
    const failures = page.locator('ul.errors li');
    expect(await failures.count()).toBe(1);
    expect(await failures.first().innerText()).toContain('broken-build:latest');
    expect(await failures.first().locator('pre').innerText()).toContain('broken-build: this package fails on purpose');
    await page.screenshot({ path: path.join(profile, 'start-page.png'), fullPage: true });
  });

  it('shows Nix output and package metadata as text on every page: markup in a build log, a description or a name is never run', async () => {
    // A package set whose extra packages fail with HTML on stderr, and carry HTML in their version and description.
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-evil-pkgs-'));
    await writeFile(path.join(dir, 'default.nix'), `args: (import ${DEMO_PKGS} args) // {
  evil = derivation {
    name = "evil-1"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo '<script>alert(1)</script><img src=x onerror=alert(2)>' >&2; exit 1" ];
  };
  evil-meta = derivation {
    name = "evil-meta-1"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out" ];
  } // { version = "<b>1</b>"; meta.description = "<img src=x onerror=alert(3)>"; };
}\n`);
    const evil = await startServer({ env: { NIXERY_PKGS_PATH: dir } });
    const LOGGED = '<script>alert(1)</script><img src=x onerror=alert(2)>';
    try {
      let alerted = false;
      const open = async () => {
        const p = await browser.newPage();
        p.on('dialog', (d) => {
          alerted = true;
          void d.dismiss();
        });
        return p;
      };
      const noMarkup = async (p: Page) => {
        expect(await p.locator('img').count()).toBe(0);
        expect(await p.locator('body script').count()).toBe(0);
        expect(await p.locator('main b, #compose b').count()).toBe(0);
      };
      // The start page is open while the image page builds the package and it fails.
      const start = await open();
      await start.goto(`${evil.url}/`);
      const page = await open();
      await page.goto(`${evil.url}/image/evil`);
      await page.locator('form.build-form button').click();
      // The failure as the image page's script shows it, from the build's events.
      const live = page.locator('main#image .build-state > ul.running li.build[data-state="failed"]');
      await live.waitFor({ timeout: 30_000 });
      expect(await live.locator('.log').innerText()).toContain(LOGGED);
      expect(await live.locator('.phase').innerText()).toBe('failed');
      await noMarkup(page);
      // Built again at once, the failure is remembered: the server's refusal shows beside the button.
      await page.locator('form.build-form button').click();
      await expect.poll(() => page.locator('form.build-form .form-status').innerText()).toContain('remembered');
      // The start page's script added it to the recent builds.
      const failed = start.locator('#recent li[data-state="failed"]');
      await failed.first().waitFor({ timeout: 10_000 });
      expect(await failed.first().locator('.log').innerText()).toContain(LOGGED);
      await noMarkup(start);
      // A pull fails the same way; rendered by the server: the failures with Nix's stderr, the recent builds.
      expect((await fetch(`${evil.url}/v2/evil/manifests/latest`)).status).toBe(500);
      await start.goto(`${evil.url}/`);
      expect(await start.locator('ul.errors li pre').first().innerText()).toContain(LOGGED);
      expect(await failed.first().locator('.log').innerText()).toContain(LOGGED);
      await noMarkup(start);
      // The image page as the server renders it: the last failure.
      await page.goto(`${evil.url}/image/evil`);
      expect(await page.locator('.last-failure .log').innerText()).toContain(LOGGED);
      await noMarkup(page);
      // The package search: version and description from Nix as text.
      await page.goto(`${evil.url}/`);
      await page.locator('#q').pressSequentially('evil-m', { delay: 50 });
      const option = page.locator('#suggestions li[role="option"][data-attr="evil-meta"]');
      await option.waitFor({ timeout: 60_000 });
      expect(await option.locator('.version').innerText()).toBe('<b>1</b>');
      expect(await option.locator('.description').innerText()).toBe('<img src=x onerror=alert(3)>');
      await noMarkup(page);
      // A name that is not a name: the API's refusal, quoting it, as text.
      const res = await page.goto(`${evil.url}/image/%3Cimg%20src=x%20onerror=alert(4)%3E`);
      expect(res?.status()).toBe(400);
      expect(await page.locator('main').innerText()).toContain('<img src=x onerror=alert(4)>');
      await noMarkup(page);
      expect(alerted).toBe(false);
    } finally {
      await evil.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });


  it('lists the builds running now, so a user whose pull waits can see why', async () => {
    const s = await startServer({ env: { NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds: 4 }) } });
    try {
      const pull = fetch(`${s.url}/v2/slow-chatty-build/manifests/latest`);
      const page = await browser.newPage();
      const running = page.locator('ul.running li');
      for (let i = 0; i < 50 && (await running.count()) === 0; i++) {
        await page.goto(`${s.url}/`);
        if ((await running.count()) === 0) await new Promise((r) => setTimeout(r, 100));
      }
      expect(await running.first().locator('.what').innerText()).toMatch(/^slow-chatty-build:latest \(cacert, iana-etc, slow-chatty-build\), for \d+ s$/);
      expect(await running.first().locator('progress').count()).toBe(1);
      expect((await pull).status).toBe(200);
      await page.goto(`${s.url}/`);
      expect(await running.count()).toBe(0);
      expect(await page.locator('body').innerText()).toContain('Nothing is being built right now.');
    } finally {
      await s.stop();
    }
  });

  it('serves the other files of WEB_DIR byte for byte with their own Content-Type', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-web-dir-'));
    // The PNG signature, every byte value and random bytes: a UTF-8 round trip would change them.
    const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(64 * 1024)]);
    const css = 'body { background: #fafafa; }\n';
    await copyFile(path.join(import.meta.dirname, '../../web/index.html'), path.join(dir, 'index.html'));
    await writeFile(path.join(dir, 'logo.png'), png);
    await writeFile(path.join(dir, 'site.css'), css);
    const s = await startServer({ env: { WEB_DIR: dir } });
    try {
      const image = await fetch(`${s.url}/logo.png`);
      expect(image.status).toBe(200);
      expect(image.headers.get('content-type')).toBe('image/png');
      expect(image.headers.get('content-length')).toBe(String(png.length));
      expect(Buffer.from(await image.arrayBuffer()).equals(png)).toBe(true);
      const style = await fetch(`${s.url}/site.css`);
      expect(style.status).toBe(200);
      expect(style.headers.get('content-type')).toMatch(/^text\/css\b/);
      expect(await style.text()).toBe(css);
      const start = await fetch(`${s.url}/`);
      expect(start.headers.get('content-type')).toMatch(/^text\/html\b/);
      expect(await start.text()).toContain(`docker pull ${s.host}/shell/git/htop`);
      const missing = await fetch(`${s.url}/nope.png`);
      expect(missing.status).toBe(404);
      expect(((await missing.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('NOT_FOUND');
    } finally {
      await s.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
