// Starts Debian's headless Chromium for the browser tests, with the flags this machine needs:
// without the background-networking ones, Chromium's own connections are refused by the closed
// network many at a time. Playwright gives every launch a fresh, temporary --user-data-dir.
import { chromium } from 'playwright-core';

export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    timeout: 30_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
