import { createRequire } from 'node:module';

/** package.json: beside tools/ in a checkout, two levels up from the compiled dist/tools/. */
function readPackage(): { name: string; version: string } {
  const require = createRequire(import.meta.url);
  for (const path of ['../package.json', '../../package.json']) {
    try {
      const pkg = require(path) as { name?: string; version?: string };
      if (pkg.name === 'fuseload' && typeof pkg.version === 'string') return pkg as { name: string; version: string };
    } catch {
      // not at this level
    }
  }
  throw new Error('fuseload: package.json not found beside tools/ or dist/');
}

/** Written into every manifest's `build.version`: a new tool version is a new fingerprint. */
export const TOOL_VERSION: string = readPackage().version;
