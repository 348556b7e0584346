/**
 * Pixel statistics of a generated sample image, defined as tools/sample/train/evaluate.py
 * defines them (so a figure here means what it means in the trainer's report):
 *
 *   palette    sample_palette.json's colours; nearest = smallest Euclidean RGB distance
 *   background the most frequent nearest colour of the outer 3-pixel frame; bgRgb = the
 *              per-channel median of the frame pixels that voted for it
 *   mask       pixels with |rgb − bgRgb| > 60; the shape region is its largest 4-connected component
 *   color      the most frequent nearest colour of the mask pixels, the background's excluded
 *   fill       |component| / its bounding box's area: square ≥ 0.86 > circle ≥ 0.64 > triangle
 *   interior   the fraction of mask pixels in the central half (each axis) of that box   (outline LoRA)
 *   saturation the mean over all pixels of (max − min) / max of RGB (HSV S)               (pastel LoRA)
 *   bgVar      the mean over channels of the variance of the frame pixels                 (stripes LoRA)
 */
export interface Palette {
  colors: Record<string, [number, number, number]>;
}

export interface ImageMeasure {
  background: string;
  color: string | null;
  shape: string | null;
  fill: number;
  interior: number;
  saturation: number;
  bgVar: number;
  /** The shape region's centre, in pixels. */
  centroid: [number, number] | null;
}

const MASK_DIST = 60;
const SQUARE_MIN = 0.86;
const CIRCLE_MIN = 0.64;

/** `rgb`: width × height pixels, 3 values each (0–255), row by row. */
export function measureImage(rgb: ArrayLike<number>, width: number, height: number, palette: Palette): ImageMeasure {
  const names = Object.keys(palette.colors);
  const pal = names.map((n) => palette.colors[n]);
  const px = (i: number): [number, number, number] => [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]];
  const nearest = (p: [number, number, number]) => {
    let best = 0;
    let bestD = Infinity;
    for (const [k, c] of pal.entries()) {
      const d = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2;
      if (d < bestD) [best, bestD] = [k, d];
    }
    return best;
  };

  const frame: number[] = [];
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) if (x < 3 || y < 3 || x >= width - 3 || y >= height - 3) frame.push(y * width + x);
  const votes = frame.map((i) => nearest(px(i)));
  const counts = new Array(names.length).fill(0);
  for (const v of votes) counts[v]++;
  const bg = argmax(counts);
  const voters = frame.filter((_, k) => votes[k] === bg).map(px);
  const bgRgb = [0, 1, 2].map((ch) => median(voters.map((p) => p[ch])));

  const n = width * height;
  const mask = new Uint8Array(n);
  let saturation = 0;
  for (let i = 0; i < n; i++) {
    const p = px(i);
    mask[i] = Math.hypot(p[0] - bgRgb[0], p[1] - bgRgb[1], p[2] - bgRgb[2]) > MASK_DIST ? 1 : 0;
    const mx = Math.max(...p);
    saturation += mx > 0 ? (mx - Math.min(...p)) / mx : 0;
  }
  saturation /= n;
  const bgVar = [0, 1, 2].map((ch) => variance(frame.map((i) => rgb[3 * i + ch]))).reduce((a, b) => a + b, 0) / 3;
  const result: ImageMeasure = { background: names[bg], color: null, shape: null, fill: 0, interior: 0, saturation, bgVar, centroid: null };
  const maskCount = mask.reduce((a, b) => a + b, 0);
  if (maskCount < 4) return result;

  const comp = largestComponent(mask, width, height);
  const colourVotes = new Array(names.length).fill(0);
  for (let i = 0; i < n; i++) if (mask[i]) colourVotes[nearest(px(i))]++;
  colourVotes[bg] = -1;
  result.color = names[argmax(colourVotes)];

  let [x0, y0, x1, y1, size, sx, sy] = [width, height, 0, 0, 0, 0, 0];
  for (let i = 0; i < n; i++) {
    if (!comp[i]) continue;
    const x = i % width;
    const y = Math.floor(i / width);
    [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x + 1), Math.max(y1, y + 1)];
    size++;
    sx += x + 0.5;
    sy += y + 0.5;
  }
  result.centroid = [sx / size, sy / size];
  result.fill = size / ((y1 - y0) * (x1 - x0));
  result.shape = result.fill >= SQUARE_MIN ? 'square' : result.fill >= CIRCLE_MIN ? 'circle' : 'triangle';
  const qy = (y1 - y0) / 4;
  const qx = (x1 - x0) / 4;
  // numpy's round is half-to-even; Python's slice bounds [round(y0 + qy), round(y1 - qy)).
  const [iy0, iy1, ix0, ix1] = [roundHalfEven(y0 + qy), roundHalfEven(y1 - qy), roundHalfEven(x0 + qx), roundHalfEven(x1 - qx)];
  let inner = 0;
  let innerSet = 0;
  for (let y = iy0; y < iy1; y++) {
    for (let x = ix0; x < ix1; x++) {
      inner++;
      innerSet += mask[y * width + x];
    }
  }
  result.interior = inner ? innerSet / inner : 0;
  return result;
}

function largestComponent(mask: Uint8Array, width: number, height: number): Uint8Array {
  const label = new Int32Array(mask.length);
  let best = 0;
  let bestSize = 0;
  let current = 0;
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || label[start]) continue;
    current++;
    const stack = [start];
    label[start] = current;
    let size = 0;
    while (stack.length) {
      const i = stack.pop()!;
      size++;
      const x = i % width;
      const y = Math.floor(i / width);
      for (const [nx, ny] of [[x, y - 1], [x, y + 1], [x - 1, y], [x + 1, y]]) {
        if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
        const j = ny * width + nx;
        if (mask[j] && !label[j]) {
          label[j] = current;
          stack.push(j);
        }
      }
    }
    if (size > bestSize) [best, bestSize] = [current, size];
  }
  return Uint8Array.from(label, (l) => (l === best && best > 0 ? 1 : 0));
}

function argmax(values: number[]): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function variance(values: number[]): number {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
