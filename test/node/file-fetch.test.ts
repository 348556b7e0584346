import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLora } from '../../tools/commands/generate.ts';
import { fetchWithFiles } from '../../tools/runtime/file-fetch.ts';
import { type CountingOrigin, startCountingOrigin } from '../support/node-origin.ts';

let dir: string;
let origin: CountingOrigin;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fuseload-file-fetch-'));
  await writeFile(join(dir, 'style.safetensors'), new Uint8Array([1, 2, 3, 4, 5]));
  origin = await startCountingOrigin(dir);
});
afterAll(async () => {
  await origin.close();
  await rm(dir, { recursive: true, force: true });
});

describe('fetchWithFiles (local --lora files go through the one download path)', () => {
  it('reads file: URLs with a Content-Length, 404s a missing file, and passes http through', async () => {
    const f = fetchWithFiles();
    const res = await f(pathToFileURL(join(dir, 'style.safetensors')).href);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe('5');
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(new Uint8Array([1, 2, 3, 4, 5]));
    expect((await f(pathToFileURL(join(dir, 'nope')).href)).status).toBe(404);
    expect((await f(`${origin.url}/style.safetensors`)).status).toBe(200);
    expect(origin.total()).toBe(1);
  });
});

describe('--lora <url|path|digest>[:scale]', () => {
  it('keeps URL colons, reads a trailing scale, and turns paths into file URLs', () => {
    expect(parseLora('https://h:8443/l.safetensors:0.75')).toEqual([{ url: 'https://h:8443/l.safetensors', scale: 0.75 }]);
    expect(parseLora('https://h/l.safetensors')).toEqual([{ url: 'https://h/l.safetensors', scale: 1 }]);
    expect(parseLora(`sha256:${'a'.repeat(64)}:-0.5`)).toEqual([{ digest: `sha256:${'a'.repeat(64)}`, scale: -0.5 }]);
    expect(parseLora(`sha256:${'b'.repeat(64)}`)).toEqual([{ digest: `sha256:${'b'.repeat(64)}`, scale: 1 }]);
    expect(parseLora(`${join(dir, 'style.safetensors')}:2`)).toEqual([{ url: pathToFileURL(join(dir, 'style.safetensors')).href, scale: 2 }]);
    expect(() => parseLora('missing.safetensors')).toThrow(/is not a URL, a sha256 digest or an existing file/);
  });
});
