/**
 * Plain pixel statistics of the sample's images (no learned classifier), the same measures as
 * tools/sample/train/evaluate.py, so "the model draws what you ask" is a number:
 *
 * - border: the outer 3-pixel frame; background = the most frequent nearest-palette colour of
 *   its pixels, bg_rgb = per-channel median of the border pixels that voted for it;
 * - mask: pixels farther than 60 from bg_rgb; the shape = its largest 4-connected component;
 * - colour: the most frequent nearest-palette colour of the mask (background excluded);
 * - fill: component / bounding box: square ≥ 0.86 > circle ≥ 0.64 > triangle;
 * - interior: mask fraction in the central half of the box (outline LoRA lowers it);
 * - saturation: mean HSV saturation (pastel LoRA lowers it);
 * - bgVar: mean per-channel variance of the border (stripes LoRA raises it).
 */
export interface Palette {
  colors: Record<string, [number, number, number]>;
}

export interface ImageMeasure {
  background: string;
  color: string | null;
  shape: 'circle' | 'square' | 'triangle' | null;
  fill: number;
  interior: number;
  saturation: number;
  bgVar: number;
}

const MASK_DIST = 60;
const SQUARE_MIN = 0.86;
const CIRCLE_MIN = 0.64;

/** `rgba`: width × height × 4 bytes, as `generate()` returns them. */
export function measureImage(rgba: ArrayLike<number>, width: number, height: number, palette: Palette): ImageMeasure {
  const names = Object.keys(palette.colors);
  const pal = names.map((n) => palette.colors[n]);
  const px = (i: number): [number, number, number] => [rgba[i * 4], rgba[i * 4 + 1], rgba[i * 4 + 2]];
  const nearest = (p: [number, number, number]) => {
    let best = 0;
    let bestD = Infinity;
    pal.forEach((c, k) => {
      const d = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2;
      if (d < bestD) [best, bestD] = [k, d];
    });
    return best;
  };
  const n = width * height;
  const border: number[] = [];
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) if (x < 3 || y < 3 || x >= width - 3 || y >= height - 3) border.push(y * width + x);
  const votes = border.map((i) => nearest(px(i)));
  const counts = new Array(names.length).fill(0);
  for (const v of votes) counts[v]++;
  const bg = counts.indexOf(Math.max(...counts));
  const median = (vals: number[]) => {
    const s = [...vals].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  const voters = border.filter((_, k) => votes[k] === bg);
  const bgRgb = [0, 1, 2].map((c) => median(voters.map((i) => rgba[i * 4 + c])));
  const mask = new Uint8Array(n);
  let sat = 0;
  for (let i = 0; i < n; i++) {
    const [r, g, b] = px(i);
    if (Math.sqrt((r - bgRgb[0]) ** 2 + (g - bgRgb[1]) ** 2 + (b - bgRgb[2]) ** 2) > MASK_DIST) mask[i] = 1;
    const mx = Math.max(r, g, b);
    const mn = Math.min(r, g, b);
    sat += mx > 0 ? (mx - mn) / mx : 0;
  }
  let bgVar = 0;
  for (let c = 0; c < 3; c++) {
    const vals = border.map((i) => rgba[i * 4 + c]);
    const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
    bgVar += vals.reduce((a, v) => a + (v - mean) ** 2, 0) / vals.length;
  }
  const result: ImageMeasure = { background: names[bg], color: null, shape: null, fill: 0, interior: 0, saturation: sat / n, bgVar: bgVar / 3 };
  const maskCount = mask.reduce((a, b) => a + b, 0);
  if (maskCount < 4) return result;

  // Largest 4-connected component of the mask.
  const label = new Int32Array(n);
  let bestLabel = 0;
  let bestSize = 0;
  let current = 0;
  for (let start = 0; start < n; start++) {
    if (!mask[start] || label[start]) continue;
    current++;
    const stack = [start];
    label[start] = current;
    let size = 0;
    while (stack.length) {
      const i = stack.pop()!;
      size++;
      const x = i % width;
      const y = (i - x) / width;
      for (const [xx, yy] of [[x - 1, y], [x + 1, y], [x, y - 1], [x, y + 1]]) {
        if (xx < 0 || yy < 0 || xx >= width || yy >= height) continue;
        const j = yy * width + xx;
        if (mask[j] && !label[j]) {
          label[j] = current;
          stack.push(j);
        }
      }
    }
    if (size > bestSize) [bestLabel, bestSize] = [current, size];
  }
  const colorCounts = new Array(names.length).fill(0);
  for (let i = 0; i < n; i++) if (mask[i]) colorCounts[nearest(px(i))]++;
  colorCounts[bg] = -1;
  result.color = names[colorCounts.indexOf(Math.max(...colorCounts))];
  let [x0, y0, x1, y1] = [width, height, 0, 0];
  for (let i = 0; i < n; i++) {
    if (label[i] !== bestLabel) continue;
    const x = i % width;
    const y = (i - x) / width;
    [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x + 1), Math.max(y1, y + 1)];
  }
  const fill = bestSize / ((y1 - y0) * (x1 - x0));
  result.fill = fill;
  result.shape = fill >= SQUARE_MIN ? 'square' : fill >= CIRCLE_MIN ? 'circle' : 'triangle';
  // numpy's round() is round-half-even; the box quarters are the same either way for whole sides except at .5.
  const qy = (y1 - y0) / 4;
  const qx = (x1 - x0) / 4;
  const roundEven = (v: number) => {
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  };
  const [iy0, iy1, ix0, ix1] = [roundEven(y0 + qy), roundEven(y1 - qy), roundEven(x0 + qx), roundEven(x1 - qx)];
  let inner = 0;
  let innerCount = 0;
  for (let y = iy0; y < iy1; y++) for (let x = ix0; x < ix1; x++) {
    innerCount++;
    inner += mask[y * width + x];
  }
  result.interior = innerCount ? inner / innerCount : 0;
  return result;
}
