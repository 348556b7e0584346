/**
 * web/blob-reads.ts: BYOB reads of a Blob that stall are started again from where they stood.
 *
 * The fault is faked here, and only here: Chromium's stalled Blob reads come by chance (about one
 * SD-sized load in three in test/bench/browser-large.ts) and cannot be caused on purpose. The fake
 * is a Blob whose byte stream never answers a read once it reaches a planned offset; everything
 * else is the platform's streams. The real Blobs and ORT's reads through StallSafeBlob are
 * exercised in Chromium by test/browser/load-paths.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { BlobCursor, readBlobInto, StallSafeBlob } from '../../web/blob-reads.ts';

const STALL_MS = 30;

/** `bytes` as a Blob whose streams stall (never answer) when a read reaches an offset in `plan.stallAt`, once per offset. */
class StallingBlob extends Blob {
  constructor(
    readonly data: Uint8Array,
    readonly plan: { stallAt: number[]; streams: number },
    readonly start = 0,
  ) {
    super();
  }

  override get size(): number {
    return this.data.byteLength;
  }

  override slice(start = 0, end = this.size): Blob {
    return new StallingBlob(this.data.subarray(start, end), this.plan, this.start + start);
  }

  override stream(): ReadableStream<Uint8Array<ArrayBuffer>> {
    const { data, plan, start } = this;
    plan.streams++;
    let at = 0;
    return new ReadableStream({
      type: 'bytes',
      pull(controller) {
        const here = start + at;
        if (plan.stallAt[0] !== undefined && here >= plan.stallAt[0]) {
          plan.stallAt.shift();
          return new Promise<void>(() => {}); // no data, no error: what Chromium does now and then
        }
        const view = controller.byobRequest!.view!;
        const next = plan.stallAt[0] ?? Number.POSITIVE_INFINITY;
        const n = Math.min(view.byteLength, 1000, data.byteLength - at, next > here ? next - here : 1000);
        new Uint8Array(view.buffer, view.byteOffset, n).set(data.subarray(at, at + n));
        at += n;
        controller.byobRequest!.respond(n);
        if (at >= data.byteLength) controller.close();
      },
    }) as ReadableStream<Uint8Array<ArrayBuffer>>;
  }
}

const bytes = Uint8Array.from({ length: 20_000 }, (_, i) => (i * 7 + 3) & 0xff);

describe('readBlobInto', () => {
  it('reads a Blob whole into the buffer it is given, over the same memory', async () => {
    const plan = { stallAt: [], streams: 0 };
    const buffer = new Uint8Array(bytes.byteLength + 10);
    const got = await readBlobInto(new StallingBlob(bytes, plan), buffer, { stallMs: STALL_MS });
    expect(got).toEqual(bytes);
    expect(got.byteLength).toBe(bytes.byteLength);
    expect(plan.streams).toBe(1);
  });

  it('starts a stalled read again: at the first byte, and in the middle (from the start, into a new buffer)', async () => {
    const stalls: number[] = [];
    const plan = { stallAt: [0, 5000], streams: 0 };
    const got = await readBlobInto(new StallingBlob(bytes, plan), new Uint8Array(bytes.byteLength), { stallMs: STALL_MS, onStall: (at) => stalls.push(at) });
    expect(got).toEqual(bytes);
    expect(stalls).toEqual([0, 5000]);
    expect(plan.streams).toBe(4); // the first, after the stall at 0, after the one at 5000, from the start again
  });

  it('gives up with one line after five stalls in a row', async () => {
    const plan = { stallAt: [0, 0, 0, 0, 0, 0, 0], streams: 0 };
    await expect(readBlobInto(new StallingBlob(bytes, plan), new Uint8Array(bytes.byteLength), { stallMs: STALL_MS })).rejects.toThrow(
      `reading a Blob of 20000 bytes: no data for ${STALL_MS} ms at byte 0, 5 times`,
    );
  });
});

describe('BlobCursor', () => {
  it('goes on from the offset it reached after a stall, with a new reader', async () => {
    const plan = { stallAt: [3000], streams: 0 };
    const cursor = new BlobCursor(new StallingBlob(bytes, plan), 0, { stallMs: STALL_MS });
    const out: number[] = [];
    while (!cursor.done) out.push(...(await cursor.read(new Uint8Array(4096))));
    expect(Uint8Array.from(out)).toEqual(bytes);
    expect(plan.streams).toBe(2);
  });
});

describe('StallSafeBlob', () => {
  it('is a Blob of the inner size whose slices stream the inner bytes to a BYOB reader, through a stall', async () => {
    const plan = { stallAt: [12_000], streams: 0 };
    const blob = new StallSafeBlob(new StallingBlob(bytes, plan), { stallMs: STALL_MS });
    expect(blob).toBeInstanceOf(Blob);
    expect(blob.size).toBe(bytes.byteLength);
    // As onnxruntime-web reads external data: a slice per tensor, BYOB into one reused buffer.
    const slice = blob.slice(10_000, 15_000);
    expect(slice).toBeInstanceOf(StallSafeBlob);
    expect(slice.size).toBe(5000);
    const reader = slice.stream().getReader({ mode: 'byob' });
    let buffer = new ArrayBuffer(1024);
    const out: number[] = [];
    for (;;) {
      const { done, value } = await reader.read(new Uint8Array(buffer));
      if (value) {
        out.push(...value);
        buffer = value.buffer;
      }
      if (done) break;
    }
    expect(Uint8Array.from(out)).toEqual(bytes.subarray(10_000, 15_000));
    expect(plan.stallAt).toEqual([]); // the stall happened, and was read through
  });

  it('streams to a default reader and reads whole with arrayBuffer()', async () => {
    const blob = new StallSafeBlob(new StallingBlob(bytes, { stallAt: [700], streams: 0 }), { stallMs: STALL_MS });
    const out: number[] = [];
    const reader = blob.stream().getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      out.push(...value);
    }
    expect(Uint8Array.from(out)).toEqual(bytes);
    const whole = new StallSafeBlob(new StallingBlob(bytes, { stallAt: [9000], streams: 0 }), { stallMs: STALL_MS });
    expect(new Uint8Array(await whole.arrayBuffer())).toEqual(bytes);
  });
});
