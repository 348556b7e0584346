/**
 * Headless Chromium for browser tests and benches: the Debian `chromium` package driven by
 * playwright-core, with a real WebGPU adapter (SwiftShader) on pages served from
 * http://localhost. Fails loudly when the browser is missing; never skips.
 */
import { existsSync } from 'node:fs';
import { type Browser, type BrowserContext, chromium, type LaunchOptions } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** `--enable-unsafe-webgpu` alone gives SwiftShader's adapter here; the adapter flag pins it. */
export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--disable-dev-shm-usage',
];

function assertChromium(): void {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`Chromium not found at ${CHROMIUM_PATH}: install the Debian package \`chromium\` (apt-get install chromium) or set CHROMIUM_PATH`);
  }
}

export async function launchChromium(options: LaunchOptions = {}): Promise<Browser> {
  assertChromium();
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, ...options });
}

/** A persistent profile (real on-disk IndexedDB and quota), for benches; `extraArgs` after ours. */
export async function launchPersistentChromium(userDataDir: string, extraArgs: string[] = []): Promise<BrowserContext> {
  assertChromium();
  return chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM_PATH, args: [...CHROMIUM_ARGS, ...extraArgs] });
}
