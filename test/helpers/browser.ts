/**
 * Debian's headless Chromium, driven by playwright-core, for the page tests.
 */
import { chromium, type Browser } from 'playwright-core';

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    // The flags the machine needs: no sandbox as root, and no background
    // connections to Google's hosts, which the closed network refuses.
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
}
