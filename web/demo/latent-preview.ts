/**
 * A live preview from the latents after each step, without running the VAE decoder: each
 * latent cell becomes one pixel through a linear map from its channels to RGB. The map is
 * learnt from every finished image (least squares of the image's pixel blocks on the final
 * latents, as the "latent to RGB" factors other UIs ship are fitted), so it fits this VAE;
 * until one exists the first three channels are shown, each stretched to its range. No DOM.
 */

export interface LatentShape {
  channels: number;
  width: number;
  height: number;
}

export class LatentPreview {
  /** rgb[k] = Σ_c map[k][c] · latent[c] + map[k][channels]. */
  #map: number[][] | null = null;

  get fitted(): boolean {
    return this.#map !== null;
  }

  /** RGBA bytes, one pixel per latent cell. */
  render(latents: Float32Array, s: LatentShape): Uint8ClampedArray {
    const plane = s.width * s.height;
    const out = new Uint8ClampedArray(plane * 4);
    const map = this.#map?.length === 3 && this.#map[0].length === s.channels + 1 ? this.#map : null;
    const range = map ? null : channelRanges(latents, s.channels, plane);
    for (let i = 0; i < plane; i++) {
      for (let k = 0; k < 3; k++) {
        let v: number;
        if (map) {
          v = map[k][s.channels];
          for (let c = 0; c < s.channels; c++) v += map[k][c] * latents[c * plane + i];
        } else {
          const c = Math.min(k, s.channels - 1);
          const [lo, hi] = range![c];
          v = hi > lo ? ((latents[c * plane + i] - lo) / (hi - lo)) * 255 : 128;
        }
        out[i * 4 + k] = v;
      }
      out[i * 4 + 3] = 255;
    }
    return out;
  }

  /** Learns the map from the final latents and the decoded image (RGBA, `factor` pixels per cell). */
  learn(latents: Float32Array, s: LatentShape, image: { width: number; height: number; data: Uint8ClampedArray }): void {
    const fx = image.width / s.width;
    const fy = image.height / s.height;
    if (!Number.isInteger(fx) || !Number.isInteger(fy)) return;
    const n = s.channels + 1;
    const plane = s.width * s.height;
    // Normal equations with a little ridge: (XᵀX + λI) A = XᵀY, X = [latent channels, 1], Y = the block's mean RGB.
    const xtx = Array.from({ length: n }, () => new Float64Array(n));
    const xty = Array.from({ length: n }, () => new Float64Array(3));
    const x = new Float64Array(n);
    for (let cy = 0; cy < s.height; cy++) {
      for (let cx = 0; cx < s.width; cx++) {
        const i = cy * s.width + cx;
        for (let c = 0; c < s.channels; c++) x[c] = latents[c * plane + i];
        x[s.channels] = 1;
        const rgb = [0, 0, 0];
        for (let py = cy * fy; py < (cy + 1) * fy; py++) {
          for (let px = cx * fx; px < (cx + 1) * fx; px++) {
            const at = (py * image.width + px) * 4;
            for (let k = 0; k < 3; k++) rgb[k] += image.data[at + k];
          }
        }
        for (let k = 0; k < 3; k++) rgb[k] /= fx * fy;
        for (let a = 0; a < n; a++) {
          for (let b = 0; b < n; b++) xtx[a][b] += x[a] * x[b];
          for (let k = 0; k < 3; k++) xty[a][k] += x[a] * rgb[k];
        }
      }
    }
    for (let a = 0; a < n; a++) xtx[a][a] += 1e-3 * plane;
    const solved = solve(xtx, xty);
    if (solved) this.#map = [0, 1, 2].map((k) => solved.map((row) => row[k]));
  }
}

function channelRanges(latents: Float32Array, channels: number, plane: number): [number, number][] {
  const out: [number, number][] = [];
  for (let c = 0; c < channels; c++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = c * plane; i < (c + 1) * plane; i++) {
      lo = Math.min(lo, latents[i]);
      hi = Math.max(hi, latents[i]);
    }
    out.push([lo, hi]);
  }
  return out;
}

/** Gauss–Jordan with partial pivoting: A X = B for a small square A; null when singular. */
function solve(a: Float64Array[], b: Float64Array[]): number[][] | null {
  const n = a.length;
  const m = a.map((row, i) => [...row, ...b[i]]);
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(m[r][col]) > Math.abs(m[pivot][col])) pivot = r;
    if (Math.abs(m[pivot][col]) < 1e-12) return null;
    [m[col], m[pivot]] = [m[pivot], m[col]];
    for (let r = 0; r < n; r++) {
      if (r === col) continue;
      const f = m[r][col] / m[col][col];
      for (let k = col; k < m[r].length; k++) m[r][k] -= f * m[col][k];
    }
  }
  return m.map((row, i) => row.slice(n).map((v) => v / m[i][i]));
}
