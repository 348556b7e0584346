/**
 * The demo page's DOM-free parts: its choices in the URL (every value checked, one line per
 * value it cannot use), its error words, and the latent preview's colour map.
 */
import { describe, expect, it } from 'vitest';
import { FuseloadError } from '../../common/errors.ts';
import type { DemoCatalog } from '../../web/demo/catalog.ts';
import { defaultChoices, readChoices, writeChoices } from '../../web/demo/choices.ts';
import { explainError } from '../../web/demo/explain.ts';
import { LatentPreview } from '../../web/demo/latent-preview.ts';

const catalog: DemoCatalog = {
  origin: 'http://127.0.0.1:8787',
  model: 'sample',
  tags: [
    { tag: 'latest', fingerprint: `sha256:${'a'.repeat(64)}`, merged: [] },
    { tag: 'pastel', fingerprint: `sha256:${'b'.repeat(64)}`, merged: [{ name: 'pastel', scale: 1 }] },
  ],
  loras: [{ name: 'pastel', digest: `sha256:${'c'.repeat(64)}`, size: 10, format: 'peft', defaultScale: 1, alpha: 8 }],
  width: 64,
  height: 64,
  sizes: [64, 96, 128],
  prompts: ['a red circle on a blue background'],
  defaults: { prompt: 'a red circle on a blue background', negativePrompt: '', steps: 20, guidanceScale: 5, scheduler: 'euler', seed: 1 },
};

describe('the page state in the URL', () => {
  it('round-trips every choice and keeps origin and catalog as they are', () => {
    const url = new URL('http://localhost/web/demo/?origin=http%3A%2F%2Fx&steps=3');
    const c = { ...defaultChoices(catalog), prompt: 'a small yellow triangle at the top left on a purple background', negativePrompt: 'stripes', steps: 12, guidanceScale: 7.5, scheduler: 'ddim' as const, seed: 42, size: 96, tag: 'pastel', device: 'wasm' as const, loras: [{ name: 'pastel', scale: 0.5 }] };
    writeChoices(url, c);
    expect(url.searchParams.get('origin')).toBe('http://x');
    expect(readChoices(url.searchParams, catalog)).toEqual({ choices: c, problems: [] });
  });

  it('names each value it cannot use in one line, with what it uses instead', () => {
    const params = new URLSearchParams('steps=abc&guidance=99&scheduler=warp&seed=-1&size=100&tag=nope&device=gpu&lora=pastel:9&lora=stripes:1&prompt=');
    const { choices, problems } = readChoices(params, catalog);
    expect(choices).toEqual({ ...defaultChoices(catalog), loras: [{ name: 'pastel', scale: 1 }] });
    expect(problems).toEqual([
      'The link\'s prompt="" is empty; using "a red circle on a blue background".',
      'The link\'s steps="abc" is not a whole number from 1 to 150; using 20.',
      'The link\'s seed="-1" is not a whole number from 0 to 2⁵³; using 1.',
      'The link\'s guidance="99" is not a number from 0 to 30; using 5.',
      'The link\'s scheduler="warp" is not one of euler, euler-ancestral, ddim, dpm++2m, lcm; using euler.',
      'The link\'s size="100" is not one of 64, 96, 128; using 64.',
      'The link\'s tag="nope" is not one of this model\'s tags (latest, pastel); using latest.',
      'The link\'s device="gpu" is not one of auto, webgpu, wasm; using auto.',
      'The link\'s lora="pastel:9" has a scale that is not a number from -1 to 2; using pastel:1.',
      'The link\'s lora="stripes:1" names no LoRA this model has (pastel); using none for it.',
    ]);
  });
});

describe('errors in words a user can act on', () => {
  const ctx = { origin: 'http://localhost:8787', model: 'sample', tag: 'latest', device: 'auto' };
  it.each([
    [new FuseloadError('network', 'http://localhost:8787/tags/sample/latest.json: TypeError: Failed to fetch'), 'The edge worker at http://localhost:8787 does not answer — is `npm start` running?'],
    [new FuseloadError('network', 'http://localhost:8787/blobs/sha256/ab: HTTP 503'), 'The edge worker at http://localhost:8787 answered with an error (HTTP 503) — see the `npm start` terminal for why, then try again.'],
    [new FuseloadError('not-found', 'http://localhost:8787/tags/sample/latest.json: HTTP 404'), 'The edge worker at http://localhost:8787 has no model "sample" with the tag "latest" — pick another tag, or run `npm start` again to publish it.'],
    [new FuseloadError('bad-input', 'steps: must be an integer from 1 to 150, got 0'), 'Steps: must be an integer from 1 to 150, got 0.'],
    [new FuseloadError('quota', 'QuotaExceededError'), "This browser's storage is full — press Clear cache, or free some disk space, and generate again."],
  ])('%s', (error, text) => {
    const explained = explainError(error, ctx);
    expect(explained.text).toBe(text);
    expect(explained.detail).toBe(`${error.code}: ${error.message}`);
  });
});

describe('the latent preview', () => {
  it('learns a linear map from latents to the decoded colours, and uses it', () => {
    // Four latent channels on a 2×2 grid; the "decoder" paints each 4×4 block with a linear function of them.
    const shape = { channels: 4, width: 2, height: 2 };
    const latents = Float32Array.from([0.1, -0.5, 0.9, 0.3, 0.2, 0.8, -0.4, 0.1, -0.7, 0.4, 0.5, -0.2, 0.6, 0.0, -0.3, 0.7]);
    const colour = (i: number) => [0, 1, 2].map((k) => 128 + 60 * latents[k * 4 + i] - 30 * latents[12 + i]);
    const image = { width: 8, height: 8, data: new Uint8ClampedArray(8 * 8 * 4) };
    for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) image.data.set([...colour((y >> 2) * 2 + (x >> 2)), 255], (y * 8 + x) * 4);
    const preview = new LatentPreview();
    expect(preview.render(latents, shape).length).toBe(16);
    preview.learn(latents, shape, image);
    expect(preview.fitted).toBe(true);
    const rgba = preview.render(latents, shape);
    for (let i = 0; i < 4; i++) for (let k = 0; k < 3; k++) expect(Math.abs(rgba[i * 4 + k] - colour(i)[k])).toBeLessThanOrEqual(8);
  });
});
