/**
 * Reading Blobs with BYOB readers that cannot hang. In Chromium a BYOB read of `Blob.stream()` now
 * and then never settles — no data, no error, the thread idle: test/bench/browser-large.ts hung
 * so in about one run in three, on onnxruntime-web's first or fiftieth 1 MiB read of a 16–32 MiB
 * slice of a stored shard. A default reader did not hang there (14 loads), but it hands out a
 * fresh buffer per chunk, and a worker busy in WASM collects them late: the SD-sized WASM load's
 * renderer grew from 1.25× to 1.45× the artifact.
 *
 * So reads stay BYOB, into buffers that are reused, with a watchdog: a read that brings nothing for
 * `stallMs` is cancelled and the Blob is read on from the same offset by a new reader.
 */

/** How long one read may bring nothing before it is given up and started again (default). */
export const STALL_MS = 3000;
/** Reads started again for one Blob before the read fails. */
const RESTARTS = 5;

export interface BlobReadOptions {
  stallMs?: number;
  /** Called on each stalled read that is started again (a warning, a test's count). */
  onStall?: (offset: number) => void;
}

const stalled = Symbol('stalled');

/**
 * The bytes of `blob` from `offset`, BYOB, with reads that stall started again. `read(into)` fills
 * (part of) `into` and returns the filled view — of a new ArrayBuffer over the same memory, or of a
 * fresh one after a stall (the stalled read keeps the buffer it was given): the caller keeps using
 * what it returns.
 */
export class BlobCursor {
  #reader: ReadableStreamBYOBReader | null = null;
  #restarts = 0;

  constructor(
    readonly blob: Blob,
    public offset = 0,
    readonly options: BlobReadOptions = {},
  ) {}

  get done(): boolean {
    return this.offset >= this.blob.size;
  }

  async read(into: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
    const stallMs = this.options.stallMs ?? STALL_MS;
    for (;;) {
      if (this.done) return into.subarray(0, 0);
      this.#reader ??= this.blob.slice(this.offset).stream().getReader({ mode: 'byob' });
      const reader = this.#reader;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stall = new Promise<typeof stalled>((resolve) => (timer = setTimeout(() => resolve(stalled), stallMs)));
      const size = into.byteLength;
      const result = await Promise.race([reader.read(into), stall]).finally(() => clearTimeout(timer));
      if (result !== stalled) {
        const { done, value } = result;
        if (value && value.byteLength > 0) {
          this.offset += value.byteLength;
          return value as Uint8Array<ArrayBuffer>;
        }
        if (done) {
          this.#reader = null;
          if (!this.done) throw new Error(`the Blob ended at byte ${this.offset} of ${this.blob.size}`);
          return (value as Uint8Array<ArrayBuffer> | undefined) ?? new Uint8Array(0);
        }
        into = value as Uint8Array<ArrayBuffer>;
        continue;
      }
      // Stalled: the read keeps `into`'s buffer; a new reader goes on from here into a new one.
      if (++this.#restarts > RESTARTS) throw new Error(`reading a Blob of ${this.blob.size} bytes: no data for ${stallMs} ms at byte ${this.offset}, ${RESTARTS} times`);
      this.options.onStall?.(this.offset);
      reader.cancel().catch(() => {});
      this.#reader = null;
      into = new Uint8Array(size);
    }
  }

  /** Lets the reader go (an abandoned read). */
  close(): void {
    this.#reader?.cancel().catch(() => {});
    this.#reader = null;
  }
}

/**
 * `blob`'s bytes into `buffer` (at least `blob.size` long), BYOB: `buffer`'s ArrayBuffer is detached,
 * and the returned view holds the bytes — over the same memory, or after a stall in the middle a
 * new buffer (the stalled read kept the old one), read again from the start.
 */
export async function readBlobInto(blob: Blob, buffer: Uint8Array<ArrayBuffer>, options: BlobReadOptions = {}): Promise<Uint8Array<ArrayBuffer>> {
  if (buffer.byteLength < blob.size) throw new RangeError(`a buffer of ${buffer.byteLength} bytes for a Blob of ${blob.size}`);
  const cursor = new BlobCursor(blob, 0, options);
  const base = buffer.byteOffset;
  let whole = buffer.buffer;
  try {
    while (!cursor.done) {
      const at = cursor.offset;
      const got = await cursor.read(new Uint8Array(whole, base + at, blob.size - at));
      if (got.byteOffset === base + at) {
        whole = got.buffer;
        continue;
      }
      // Stalled after `at` > 0 bytes: those went with the stalled read's buffer. Start again.
      whole = new ArrayBuffer(base + blob.size);
      cursor.close();
      cursor.offset = 0;
    }
  } finally {
    cursor.close();
  }
  return new Uint8Array(whole, base, blob.size);
}

/**
 * `inner` for onnxruntime-web's external data: `instanceof Blob`, its size and type, and slices of
 * the same kind, whose `stream()` is a byte stream that reads `inner` through a BlobCursor (into one
 * reused staging buffer, copied into the reader's view). The platform sees an empty Blob here: hand
 * it to ORT's `externalData` only, never to postMessage, IndexedDB or fetch.
 */
export class StallSafeBlob extends Blob {
  readonly #inner: Blob;
  readonly #options: BlobReadOptions;

  constructor(inner: Blob, options: BlobReadOptions = {}) {
    super();
    this.#inner = inner;
    this.#options = options;
  }

  override get size(): number {
    return this.#inner.size;
  }

  override get type(): string {
    return this.#inner.type;
  }

  override slice(start?: number, end?: number, contentType?: string): Blob {
    return new StallSafeBlob(this.#inner.slice(start, end, contentType), this.#options);
  }

  override stream(): ReadableStream<Uint8Array<ArrayBuffer>> {
    const cursor = new BlobCursor(this.#inner, 0, this.#options);
    let staging: Uint8Array<ArrayBuffer> | null = null;
    return new ReadableStream({
      type: 'bytes',
      async pull(controller) {
        if (cursor.done) {
          controller.close();
          controller.byobRequest?.respond(0);
          return;
        }
        const request = controller.byobRequest;
        const want = request?.view ? request.view.byteLength : 1 << 20;
        if (!staging || staging.byteLength < want) staging = new Uint8Array(Math.max(want, 64 << 10));
        const got = await cursor.read(staging.subarray(0, want));
        staging = new Uint8Array(got.buffer);
        if (request?.view) {
          new Uint8Array(request.view.buffer, request.view.byteOffset, got.byteLength).set(got);
          request.respond(got.byteLength);
        } else {
          controller.enqueue(got.slice());
        }
        if (cursor.done) controller.close();
      },
      cancel() {
        cursor.close();
      },
    });
  }

  override async arrayBuffer(): Promise<ArrayBuffer> {
    const bytes = await readBlobInto(this.#inner, new Uint8Array(this.#inner.size), this.#options);
    return bytes.buffer;
  }

  override async bytes(): Promise<Uint8Array<ArrayBuffer>> {
    return new Uint8Array(await this.arrayBuffer());
  }

  override text(): Promise<string> {
    return this.#inner.text();
  }
}
