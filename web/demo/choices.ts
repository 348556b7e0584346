/**
 * The page's choices and their place in the URL (`?prompt=…&steps=20&lora=pastel:1`), so a
 * reload or a shared link shows the same image. Reading a link checks every value and says, in
 * one line each, which ones it could not use and what it used instead. No DOM.
 */
import { GENERATE_LIMITS } from '../../common/generate/options.ts';
import { SCHEDULER_NAMES, type SchedulerName } from '../../common/generate/schedulers/types.ts';
import type { DemoCatalog } from './catalog.ts';

export type DemoDevice = 'auto' | 'webgpu' | 'wasm';
export const DEVICES: readonly DemoDevice[] = ['auto', 'webgpu', 'wasm'];
/** The overlay sliders' range. */
export const LORA_SCALE_RANGE = { min: -1, max: 2 } as const;

export interface Choices {
  prompt: string;
  negativePrompt: string;
  steps: number;
  guidanceScale: number;
  scheduler: SchedulerName;
  seed: number;
  /** Square side in pixels, one of the catalog's sizes. */
  size: number;
  tag: string;
  device: DemoDevice;
  /** Load-time overlays by catalog name. */
  loras: { name: string; scale: number }[];
}

/** URL parameter names; `origin` and `catalog` (where to load from) are not choices and stay as they are. */
const KEYS = ['prompt', 'negative', 'steps', 'guidance', 'scheduler', 'seed', 'size', 'tag', 'device', 'lora'] as const;

export function defaultChoices(catalog: DemoCatalog): Choices {
  const d = catalog.defaults;
  return {
    prompt: d.prompt,
    negativePrompt: d.negativePrompt,
    steps: d.steps,
    guidanceScale: d.guidanceScale,
    scheduler: d.scheduler,
    seed: d.seed,
    size: catalog.width,
    tag: catalog.tags.some((t) => t.tag === 'latest') ? 'latest' : catalog.tags[0].tag,
    device: 'auto',
    loras: [],
  };
}

/** Reads the choices a link holds over the defaults; `problems` has one line per value it could not use. */
export function readChoices(params: URLSearchParams, catalog: DemoCatalog): { choices: Choices; problems: string[] } {
  const c = defaultChoices(catalog);
  const problems: string[] = [];
  const bad = (key: string, raw: string, want: string, used: string) =>
    problems.push(`The link's ${key}=${JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}…` : raw)} ${want}; using ${used}.`);

  const prompt = params.get('prompt');
  if (prompt !== null) {
    if (prompt.trim() === '') bad('prompt', prompt, 'is empty', `"${c.prompt}"`);
    else if (prompt.length > GENERATE_LIMITS.maxPromptChars) bad('prompt', prompt, `is longer than ${GENERATE_LIMITS.maxPromptChars} characters`, `"${c.prompt}"`);
    else c.prompt = prompt;
  }
  const negative = params.get('negative');
  if (negative !== null) {
    if (negative.length > GENERATE_LIMITS.maxPromptChars) bad('negative', negative, `is longer than ${GENERATE_LIMITS.maxPromptChars} characters`, 'none');
    else c.negativePrompt = negative;
  }
  const int = (key: string, min: number, max: number, fallback: number): number => {
    const raw = params.get(key);
    if (raw === null) return fallback;
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isSafeInteger(n) || n < min || n > max) {
      bad(key, raw, `is not a whole number from ${min} to ${max === Number.MAX_SAFE_INTEGER ? '2⁵³' : max}`, String(fallback));
      return fallback;
    }
    return n;
  };
  c.steps = int('steps', 1, GENERATE_LIMITS.maxSteps, c.steps);
  c.seed = int('seed', 0, Number.MAX_SAFE_INTEGER, c.seed);
  const guidance = params.get('guidance');
  if (guidance !== null) {
    const g = Number(guidance);
    if (guidance.trim() === '' || !Number.isFinite(g) || g < 0 || g > GENERATE_LIMITS.maxGuidanceScale) {
      bad('guidance', guidance, `is not a number from 0 to ${GENERATE_LIMITS.maxGuidanceScale}`, String(c.guidanceScale));
    } else c.guidanceScale = g;
  }
  const scheduler = params.get('scheduler');
  if (scheduler !== null) {
    if ((SCHEDULER_NAMES as readonly string[]).includes(scheduler)) c.scheduler = scheduler as SchedulerName;
    else bad('scheduler', scheduler, `is not one of ${SCHEDULER_NAMES.join(', ')}`, c.scheduler);
  }
  const size = params.get('size');
  if (size !== null) {
    if (catalog.sizes.includes(Number(size)) && size.trim() !== '') c.size = Number(size);
    else bad('size', size, `is not one of ${catalog.sizes.join(', ')}`, String(c.size));
  }
  const tag = params.get('tag');
  if (tag !== null) {
    if (catalog.tags.some((t) => t.tag === tag)) c.tag = tag;
    else bad('tag', tag, `is not one of this model's tags (${catalog.tags.map((t) => t.tag).join(', ')})`, c.tag);
  }
  const device = params.get('device');
  if (device !== null) {
    if ((DEVICES as readonly string[]).includes(device)) c.device = device as DemoDevice;
    else bad('device', device, `is not one of ${DEVICES.join(', ')}`, c.device);
  }
  for (const entry of params.getAll('lora')) {
    const at = entry.lastIndexOf(':');
    const name = at < 0 ? entry : entry.slice(0, at);
    const rawScale = at < 0 ? undefined : entry.slice(at + 1);
    const lora = catalog.loras.find((l) => l.name === name);
    if (!lora) {
      bad('lora', entry, `names no LoRA this model has (${catalog.loras.map((l) => l.name).join(', ')})`, 'none for it');
      continue;
    }
    let scale = lora.defaultScale;
    if (rawScale !== undefined) {
      const s = Number(rawScale);
      if (rawScale.trim() === '' || !Number.isFinite(s) || s < LORA_SCALE_RANGE.min || s > LORA_SCALE_RANGE.max) {
        bad('lora', entry, `has a scale that is not a number from ${LORA_SCALE_RANGE.min} to ${LORA_SCALE_RANGE.max}`, `${name}:${scale}`);
      } else scale = s;
    }
    c.loras = [...c.loras.filter((l) => l.name !== name), { name, scale }];
  }
  return { choices: c, problems };
}

/** Writes the choices into `url`'s query, keeping its other parameters (origin, catalog). */
export function writeChoices(url: URL, c: Choices): void {
  for (const key of KEYS) url.searchParams.delete(key);
  const p = url.searchParams;
  p.set('prompt', c.prompt);
  if (c.negativePrompt) p.set('negative', c.negativePrompt);
  p.set('steps', String(c.steps));
  p.set('guidance', String(c.guidanceScale));
  p.set('scheduler', c.scheduler);
  p.set('seed', String(c.seed));
  p.set('size', String(c.size));
  p.set('tag', c.tag);
  p.set('device', c.device);
  for (const l of c.loras) p.append('lora', `${l.name}:${l.scale}`);
}
