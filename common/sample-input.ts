/**
 * Inputs and outputs of the graph sample (tools/sample/graph-sample.ts, the procedural model the
 * `graph` path's tests and benches run), runtime-neutral so the Node runtime, the browser
 * runtime and the server feed and draw it the same way. The trained text-to-image sample that
 * `fuseload sample` writes takes a prompt instead (`p.generate`).
 */
import type { TensorLike } from './pipeline.ts';

/** mulberry32: a tiny seeded PRNG, identical everywhere. Returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const SAMPLE_LATENT_CHANNELS = 8;

export interface SampleFeedsOptions {
  seed: number;
  /** Multiples of 4 (the model pools by 4 for attention). */
  width: number;
  height: number;
}

/**
 * `latent`: float32 [1, 8, H, W]: channels 0–3 are coordinates (x, y, radius, a ring),
 * channels 4–7 seeded noise in [-1, 1]. The same seed gives the same feeds everywhere.
 */
export function sampleFeeds({ seed, width, height }: SampleFeedsOptions): Record<string, TensorLike> {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 4 || height < 4 || width % 4 || height % 4) {
    throw new RangeError(`sampleFeeds: width and height must be multiples of 4, got ${width}×${height}`);
  }
  const plane = width * height;
  const data = new Float32Array(SAMPLE_LATENT_CHANNELS * plane);
  const rand = mulberry32(seed);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      const u = (2 * x) / (width - 1) - 1;
      const v = (2 * y) / (height - 1) - 1;
      const r = Math.sqrt(u * u + v * v);
      data[i] = u;
      data[plane + i] = v;
      data[2 * plane + i] = r;
      data[3 * plane + i] = Math.sin(6 * r);
    }
  }
  for (let i = 4 * plane; i < data.length; i++) data[i] = 2 * rand() - 1;
  return { latent: { type: 'float32', dims: [1, SAMPLE_LATENT_CHANNELS, height, width], data } };
}

/** `image` float32 [1, 3, H, W] in [0, 1] → RGBA bytes for a canvas or a PNG encoder. */
export function imageToRgba(image: TensorLike): { width: number; height: number; data: Uint8ClampedArray } {
  const [n, c, height, width] = image.dims;
  if (image.dims.length !== 4 || n !== 1 || c !== 3 || !(image.data instanceof Float32Array)) {
    throw new RangeError(`imageToRgba: want float32 [1, 3, H, W], got ${image.type} [${image.dims.join(', ')}]`);
  }
  const plane = width * height;
  const src = image.data;
  const out = new Uint8ClampedArray(plane * 4);
  for (let i = 0; i < plane; i++) {
    out[i * 4] = Math.round(src[i] * 255);
    out[i * 4 + 1] = Math.round(src[plane + i] * 255);
    out[i * 4 + 2] = Math.round(src[2 * plane + i] * 255);
    out[i * 4 + 3] = 255;
  }
  return { width, height, data: out };
}
