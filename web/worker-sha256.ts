/**
 * The hashing Web Worker (worker-hasher.ts starts it). WebCrypto's SHA-256 runs start to end on
 * the thread that calls it — 100 ms and more for a 64 MiB shard on the bench machine — so the
 * loader's checks run in this thread instead, and never by copying the bytes over:
 *
 * - `blob`: a Blob handle (a stored record, immutable): read here and hashed.
 * - `start` / `chunks` / `end`: a download as it streams, its chunks moved here (transferred, not
 *   copied) and gathered into one buffer, hashed when the last is in; every batch is acknowledged,
 *   for backpressure.
 *
 * Blobs and finished downloads are hashed one at a time: each is a whole shard in memory here.
 */
import type { FromHasher, ToHasher } from './worker-hasher.ts';

const scope = self as unknown as {
  postMessage(message: FromHasher): void;
  addEventListener(type: 'message', listener: (event: MessageEvent<ToHasher>) => void): void;
};

/** Downloads being gathered: their buffer (allocated on the first chunk) and how much of it is filled. */
const streams = new Map<number, { size: number; buffer: Uint8Array<ArrayBuffer> | null; filled: number }>();
let queue: Promise<unknown> = Promise.resolve();

function hex(buffer: ArrayBuffer): string {
  const b = new Uint8Array(buffer);
  let out = '';
  for (let i = 0; i < b.length; i++) out += b[i].toString(16).padStart(2, '0');
  return out;
}

/** Hashes what `bytes` gives, after the hashes before it, and answers `id`. */
function hashInTurn(id: number, bytes: () => Promise<ArrayBuffer | Uint8Array<ArrayBuffer>>): void {
  queue = queue.then(() =>
    bytes()
      .then((b) => crypto.subtle.digest('SHA-256', b))
      .then(
        (d) => scope.postMessage({ id, hex: hex(d) }),
        (e: unknown) => scope.postMessage({ id, error: e instanceof Error ? e.message : String(e) }),
      ),
  );
}

scope.addEventListener('message', (event) => {
  const m = event.data;
  switch (m.op) {
    case 'blob':
      return hashInTurn(m.id, () => m.blob.arrayBuffer());
    case 'start':
      streams.set(m.id, { size: m.size, buffer: null, filled: 0 });
      return;
    case 'chunks': {
      const s = streams.get(m.id);
      if (!s) return;
      let bytes = 0;
      for (const c of m.chunks) {
        if (s.filled + c.byteLength > s.size) return void scope.postMessage({ id: m.id, error: `more than the ${s.size} bytes announced` });
        s.buffer ??= new Uint8Array(s.size);
        s.buffer.set(c, s.filled);
        s.filled += c.byteLength;
        bytes += c.byteLength;
      }
      scope.postMessage({ id: m.id, acked: bytes });
      return;
    }
    case 'end': {
      const s = streams.get(m.id);
      streams.delete(m.id);
      if (!s) return;
      return hashInTurn(m.id, async () => (s.buffer ?? new Uint8Array(0)).subarray(0, s.filled));
    }
    case 'drop':
      streams.delete(m.id);
      return;
  }
});
