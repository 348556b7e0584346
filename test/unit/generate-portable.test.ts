/** common/generate runs in browsers, Node and workers: no Node or DOM imports or globals in it. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../../common/generate/', import.meta.url).pathname;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('common/generate is runtime-neutral', () => {
  const files = sources(ROOT);

  it('has modules to check', () => {
    expect(files.length).toBeGreaterThan(8);
  });

  for (const file of files) {
    it(file.slice(ROOT.length), () => {
      const text = readFileSync(file, 'utf8');
      const imports = [...text.matchAll(/^\s*(?:import|export)[^'"]*from\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]);
      for (const spec of imports) expect(spec.startsWith('.') || spec === '@huggingface/tokenizers', `${spec}`).toBe(true);
      const code = text.replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      for (const global of ['process.', 'Buffer', 'require(', 'document.', 'window.', '__dirname']) {
        expect(code.includes(global), global).toBe(false);
      }
    });
  }
});
