/** One image from a pipeline: the sample's feeds for (seed, size) → run → PNG bytes. */
import { encode } from 'fast-png';
import { FuseloadError } from '../../common/errors.ts';
import type { Pipeline } from '../../common/pipeline.ts';
import { imageToRgba, sampleFeeds } from '../../common/sample-input.ts';

export interface RenderRequest {
  seed: number;
  width: number;
  height: number;
}

export async function renderPng(pipeline: Pipeline, request: RenderRequest): Promise<Uint8Array> {
  const outputs = await pipeline.run(sampleFeeds(request));
  const image = outputs.image;
  if (!image) {
    throw new FuseloadError('shape-mismatch', `model ${pipeline.info.manifest.name} has no "image" output (it has ${Object.keys(outputs).join(', ')})`);
  }
  const rgba = imageToRgba(image);
  return encode({ width: rgba.width, height: rgba.height, data: rgba.data, channels: 4, depth: 8 });
}

/** A text-to-image pipeline's RGBA picture → PNG bytes. */
export function rgbaToPng(image: { width: number; height: number; data: Uint8ClampedArray }): Uint8Array {
  return encode({ width: image.width, height: image.height, data: image.data, channels: 4, depth: 8 });
}
