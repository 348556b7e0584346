import { createRequire } from 'node:module';

const pkg = createRequire(import.meta.url)('../package.json') as { version: string };

/** Written into every manifest's `build.version`: a new tool version is a new fingerprint. */
export const TOOL_VERSION: string = pkg.version;
