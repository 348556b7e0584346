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
 * (the start of) `into` and returns the filled view — of a new ArrayBuffer over the same memory, or
 * after a stall of a fresh one of the same length, at the same offset (the stalled read keeps the
 * buffer it was given, and what was in it): the caller keeps using what it returns.
 */
export class BlobCursor {
  #reader: ReadableStreamBYOBReader | null = null;
  #restarts = 0;
  /** Reads that stalled and were started again. */
  get stalls(): number {
    return this.#restarts;
  }
  /** One watchdog per cursor, not a timer per read (a shard is thousands of reads): when the read in flight began, and how to end it. */
  #readSince = 0;
  #giveUp: (() => void) | null = null;
  #watchdog: ReturnType<typeof setTimeout> | null = null;

  constructor(
    readonly blob: Blob,
    public offset = 0,
    readonly options: BlobReadOptions = {},
  ) {}

  get done(): boolean {
    return this.offset >= this.blob.size;
  }

  #watch(stallMs: number): void {
    if (this.#watchdog) return;
    this.#watchdog = setTimeout(() => {
      this.#watchdog = null;
      if (!this.#giveUp) return;
      const quiet = performance.now() - this.#readSince;
      if (quiet >= stallMs) this.#giveUp();
      else this.#watch(stallMs - quiet);
    }, stallMs);
  }

  async read(into: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
    const stallMs = this.options.stallMs ?? STALL_MS;
    try {
      for (;;) {
        if (this.done) return into.subarray(0, 0);
        this.#reader ??= this.blob.slice(this.offset).stream().getReader({ mode: 'byob' });
        const reader = this.#reader;
        const stall = new Promise<typeof stalled>((resolve) => (this.#giveUp = () => resolve(stalled)));
        this.#readSince = performance.now();
        this.#watch(stallMs);
        // The shape of `into` (its buffer's length, where it starts, how long), for a new buffer after a stall.
        const [bufferLength, byteOffset, byteLength] = [into.buffer.byteLength, into.byteOffset, into.byteLength];
        const result = await Promise.race([reader.read(into), stall]);
        this.#giveUp = null;
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
        // Stalled: the read keeps `into`'s buffer; a new reader goes on from here into a new one of its shape.
        if (++this.#restarts > RESTARTS) throw new Error(`reading a Blob of ${this.blob.size} bytes: no data for ${stallMs} ms at byte ${this.offset}, ${RESTARTS} times`);
        this.options.onStall?.(this.offset);
        reader.cancel().catch(() => {});
        this.#reader = null;
        into = new Uint8Array(new ArrayBuffer(bufferLength), byteOffset, byteLength);
      }
    } finally {
      if (this.done) this.#stopWatching();
    }
  }

  #stopWatching(): void {
    if (this.#watchdog) clearTimeout(this.#watchdog);
    this.#watchdog = null;
    this.#giveUp = null;
  }

  /** Lets the reader go (an abandoned read). */
  close(): void {
    this.#stopWatching();
    this.#reader?.cancel().catch(() => {});
    this.#reader = null;
  }
}

/**
 * `blob`'s bytes into `buffer` (at least `blob.size` long), BYOB: `buffer`'s ArrayBuffer is detached,
 * and the returned view holds the bytes — over the same memory, or after a stall in the middle a new
 * buffer (the stalled read kept the old one and the bytes in it), read again from the start.
 */
export async function readBlobInto(blob: Blob, buffer: Uint8Array<ArrayBuffer>, options: BlobReadOptions = {}): Promise<Uint8Array<ArrayBuffer>> {
  if (buffer.byteLength < blob.size) throw new RangeError(`a buffer of ${buffer.byteLength} bytes for a Blob of ${blob.size}`);
  const cursor = new BlobCursor(blob, 0, options);
  const base = buffer.byteOffset;
  let whole = buffer.buffer;
  try {
    while (!cursor.done) {
      const [at, stalls] = [cursor.offset, cursor.stalls];
      whole = (await cursor.read(new Uint8Array(whole, base + at, blob.size - at))).buffer;
      if (cursor.stalls > stalls && at > 0) {
        cursor.close();
        cursor.offset = 0;
      }
    }
  } finally {
    cursor.close();
  }
  return new Uint8Array(whole, base, blob.size);
}

/**
 * `inner` for onnxruntime-web's external data: `instanceof Blob`, its size and type, and slices of
 * the same kind, whose `stream()` is a byte stream that reads `inner` through a BlobCursor, straight
 * into the buffer of a BYOB reader (ORT's one reused 1 MiB buffer). The platform sees an empty Blob here: hand
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
    return new ReadableStream({
      type: 'bytes',
      async pull(controller) {
        const request = controller.byobRequest;
        if (cursor.done) {
          controller.close();
          request?.respond(0);
          return;
        }
        if (request?.view) {
          // Straight into the reader's own buffer, which goes through the cursor's read and back.
          const view = request.view;
          request.respondWithNewView(await cursor.read(new Uint8Array(view.buffer as ArrayBuffer, view.byteOffset, view.byteLength)));
        } else {
          controller.enqueue(await cursor.read(new Uint8Array(1 << 20)));
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
