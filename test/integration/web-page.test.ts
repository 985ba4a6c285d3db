/**
 * The start page in a real browser (Debian's headless Chromium driven by
 * playwright-core): the pull examples carry the host the user reached the
 * server on, and a failed build shows up with Nix's own words. WEB_DIR's
 * other files arrive over a real socket byte for byte, with their own types.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_PKGS, freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';

let server: RunningServer;
let browser: Browser;
let profile: string;
beforeAll(async () => {
  server = await startServer();
  profile = await mkdtemp(path.join(tmpdir(), 'nixery-chromium-'));
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    // The flags the machine needs: no sandbox as root, and no background
    // connections to Google's hosts, which the closed network refuses.
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
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

  it('shows Nix output as text: markup in a build log is never run', async () => {
    // A package set whose only extra package fails with HTML on stderr.
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-evil-pkgs-'));
    await writeFile(path.join(dir, 'default.nix'), `args: (import ${DEMO_PKGS} args) // {
  evil = derivation {
    name = "evil-1"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo '<script>alert(1)</script><img src=x onerror=alert(2)>' >&2; exit 1" ];
  };
}\n`);
    const evil = await startServer({ env: { NIXERY_PKGS_PATH: dir } });
    try {
      expect((await fetch(`${evil.url}/v2/evil/manifests/latest`)).status).toBe(500);
      const page = await browser.newPage();
      let alerted = false;
      page.on('dialog', (d) => {
        alerted = true;
        void d.dismiss();
      });
      await page.goto(`${evil.url}/`);
      expect(await page.locator('ul.errors li pre').first().innerText()).toContain('<script>alert(1)</script><img src=x onerror=alert(2)>');
      expect(await page.locator('img').count()).toBe(0);
      expect(await page.locator('body script').count()).toBe(0);
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
