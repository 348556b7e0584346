/**
 * The hashing Web Worker (worker-hasher.ts starts it). WebCrypto's SHA-256 runs start to end on
 * the thread that calls it — 100 ms and more for a 64 MiB shard on the bench machine — so the
 * loader's checks run in this thread instead, and never by copying the bytes over:
 *
 * - `blob`: a Blob handle (a stored record or a download gathered into one; immutable): read here,
 *   into one reused buffer, and hashed.
 * - `take`: bytes the loader read itself, moved here once the engine is done with them, hashed and
 *   moved back with the digest.
 * - `start` / `chunks` / `end`: a download as it streams, its chunks moved here (transferred, not
 *   copied) and gathered into one buffer, hashed when the last is in; every batch is acknowledged,
 *   for backpressure.
 *
 * Blobs and finished downloads are hashed one at a time: each is a whole shard in memory here.
 */
import { readBlobInto } from './blob-reads.ts';
import type { FromHasher, ToHasher } from './worker-hasher.ts';

const scope = self as unknown as {
  postMessage(message: FromHasher, transfer?: Transferable[]): void;
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

/** Hashes what `bytes` gives, after the hashes before it, and answers `id` (with the bytes themselves, moved, when `give`). */
function hashInTurn(id: number, bytes: () => Promise<Uint8Array<ArrayBuffer>>, give = false): void {
  queue = queue.then(async () => {
    try {
      const b = await bytes();
      const d = await crypto.subtle.digest('SHA-256', b);
      if (give) scope.postMessage({ id, hex: hex(d), bytes: b }, [b.buffer]);
      else scope.postMessage({ id, hex: hex(d) });
    } catch (e) {
      scope.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
    }
  });
}

/**
 * One buffer for the Blobs this worker hashes, grown to the largest and let go once the worker has
 * been idle a while: `blob.arrayBuffer()` would leave a dead shard-sized buffer per blob until this
 * worker's next garbage collection, and an idle worker runs none for long: a 2 GiB pipeline left
 * hundreds of MiB of them behind (test/bench/browser-large.ts).
 */
let reused: ArrayBuffer | null = null;
let idle: ReturnType<typeof setTimeout> | undefined;
const IDLE_MS = 2000;

async function readInto(blob: Blob): Promise<Uint8Array<ArrayBuffer>> {
  clearTimeout(idle);
  if (!reused || reused.byteLength < blob.size) {
    reused = null;
    reused = new ArrayBuffer(blob.size);
  }
  const buffer = reused;
  reused = null; // a BYOB read detaches the buffer it is given: the one it hands back is kept below
  try {
    // Through a BlobCursor: a BYOB read of a Blob can hang in Chromium (blob-reads.ts).
    const bytes = await readBlobInto(blob, new Uint8Array(buffer, 0, blob.size));
    reused = bytes.buffer;
    return bytes;
  } finally {
    idle = setTimeout(() => (reused = null), IDLE_MS);
  }
}

scope.addEventListener('message', (event) => {
  const m = event.data;
  switch (m.op) {
    case 'blob':
      return hashInTurn(m.id, () => readInto(m.blob));
    case 'take':
      return hashInTurn(m.id, async () => m.bytes, true);
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
