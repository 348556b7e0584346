/**
 * `fetch` that also reads `file:` URLs, so `--lora ./style.safetensors` goes through the
 * loader's one download path (streamed, size-checked, hashed) like any URL.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

export function fetchWithFiles(base: typeof fetch = globalThis.fetch): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!url.startsWith('file:')) return base(input, init);
    const path = fileURLToPath(url);
    const s = await stat(path).catch(() => null);
    if (!s?.isFile()) return new Response(null, { status: 404 });
    const body = Readable.toWeb(createReadStream(path)) as ReadableStream<Uint8Array>;
    return new Response(body, { status: 200, headers: { 'Content-Length': String(s.size) } });
  }) as typeof fetch;
}
