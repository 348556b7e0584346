/**
 * The demo page: a text-to-image generator in plain DOM over the browser runtime (web/index.ts),
 * which runs in a worker (generator-worker.ts) so the page paints every step. It reads the
 * catalog `npm start` writes, loads the chosen tag (plus any load-time LoRA overlays) from the
 * edge, generates from the prompt with a step-by-step preview, draws the image large, and says
 * in plain words where it ran and where every byte came from.
 *
 * Hooks for the end-to-end test: `#status[data-state]` (idle | loading | running | done |
 * stopped | error), `data-runs` (finished generations), `data-busy` (false once no generation is
 * queued), `data-step` (`7/20`); `#provider[data-provider]`, `#overlays`, `#cache[data-blobs]`,
 * `#sources[data-network-blobs][data-network-bytes][data-store-blobs][data-memory-blobs]`,
 * `#notice` (what the link held that the page could not use).
 * Query: `?origin=` and `?catalog=` override the catalog's; every choice (choices.ts) is kept in
 * the URL so a reload or a shared link shows the same image.
 */
import { manifestBlobs, type Role } from '../../common/manifest-walk.ts';
import type { GenerateResult, LoraOverlay, PipelineInfo, ProgressEvent } from '../../common/pipeline.ts';
import type { DemoCatalog, DemoLora } from './catalog.ts';
import { type Choices, type DemoDevice, LORA_SCALE_RANGE, readChoices, writeChoices } from './choices.ts';
import { explainError } from './explain.ts';
import { GeneratorClient } from './generator-client.ts';
import { LatentPreview } from './latent-preview.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  prompt: $<HTMLTextAreaElement>('prompt'),
  examples: $('examples'),
  vocabulary: $('vocabulary'),
  negative: $<HTMLInputElement>('negative'),
  steps: $<HTMLInputElement>('steps'),
  guidance: $<HTMLInputElement>('guidance'),
  scheduler: $<HTMLSelectElement>('scheduler'),
  size: $<HTMLSelectElement>('size'),
  seed: $<HTMLInputElement>('seed'),
  reseed: $<HTMLButtonElement>('reseed'),
  tag: $<HTMLSelectElement>('tag'),
  device: $<HTMLSelectElement>('device'),
  loras: $<HTMLFieldSetElement>('loras'),
  generate: $<HTMLButtonElement>('generate'),
  stop: $<HTMLButtonElement>('stop'),
  clearCache: $<HTMLButtonElement>('clear-cache'),
  canvas: $<HTMLCanvasElement>('image'),
  status: $('status'),
  progress: $<HTMLProgressElement>('progress'),
  progressText: $('progress-text'),
  error: $('error'),
  notice: $('notice'),
  save: $<HTMLAnchorElement>('save'),
  provider: $('provider'),
  components: $('components'),
  fallbacks: $('fallbacks'),
  sources: $('sources'),
  timings: $('timings'),
  overlays: $('overlays'),
  fingerprint: $('fingerprint'),
  cache: $('cache'),
  webgpu: $('webgpu'),
  origin: $('origin'),
};

type State = 'idle' | 'loading' | 'running' | 'done' | 'stopped' | 'error';
const params = new URLSearchParams(location.search);

const PART_NAMES: Partial<Record<Role, string>> = {
  text_encoder: 'text encoder',
  text_encoder_2: 'second text encoder',
  unet: 'UNet',
  transformer: 'transformer',
  vae_decoder: 'VAE decoder',
  vae_encoder: 'VAE encoder',
  model: 'model',
};
const PROVIDER_NAMES: Record<string, string> = { webgpu: 'WebGPU (graphics card)', wasm: 'WASM (processor)', cuda: 'CUDA', cpu: 'CPU' };
const deviceName = (p: string) => ({ webgpu: 'WebGPU', wasm: 'WASM', cuda: 'CUDA', cpu: 'CPU' })[p] ?? p;
const partName = (role: string | undefined) => (role ? (PART_NAMES[role as Role] ?? role) : 'model');
const providerName = (p: string) => PROVIDER_NAMES[p] ?? p;

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let i = -1;
  do {
    n /= 1024;
    i++;
  } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`;
}

function setStatus(state: State, text: string): void {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showError(e: unknown): void {
  const explained = explainError(e, { origin, model: catalog?.model ?? '', tag: ui.tag.value, device: ui.device.value });
  ui.error.hidden = false;
  ui.error.replaceChildren(explained.text);
  ui.error.dataset.code = explained.code;
  if (explained.detail && explained.detail !== explained.text) {
    const detail = document.createElement('small');
    detail.textContent = `Details: ${explained.detail}`;
    ui.error.append(detail);
  }
}

// ---------------------------------------------------------------------------------------
// Controls

interface LoraControl {
  lora: DemoLora;
  toggle: HTMLInputElement;
  scale: HTMLInputElement;
  value: HTMLOutputElement;
}

function loraControls(loras: DemoLora[], onChange: () => void): LoraControl[] {
  return loras.map((lora) => {
    const row = document.createElement('div');
    row.className = 'lora';
    const label = document.createElement('label');
    const toggle = document.createElement('input');
    toggle.type = 'checkbox';
    toggle.id = `lora-${lora.name}`;
    toggle.dataset.digest = lora.digest;
    const format = document.createElement('small');
    format.textContent = lora.format;
    label.append(toggle, `${lora.name} `, format);
    if (lora.style) label.title = lora.style;
    const value = document.createElement('output');
    const scale = document.createElement('input');
    scale.type = 'range';
    scale.id = `lora-${lora.name}-scale`;
    scale.min = String(LORA_SCALE_RANGE.min);
    scale.max = String(LORA_SCALE_RANGE.max);
    scale.step = '0.05';
    scale.value = String(lora.defaultScale);
    scale.disabled = true;
    scale.setAttribute('aria-label', `${lora.name} scale`);
    const show = () => (value.textContent = `×${Number(scale.value).toFixed(2)}`);
    show();
    toggle.addEventListener('change', () => {
      scale.disabled = !toggle.checked;
      onChange();
    });
    scale.addEventListener('input', show);
    // `change` fires when the thumb is released: one regeneration per move, not per pixel.
    scale.addEventListener('change', onChange);
    row.append(label, value, scale);
    if (lora.style) {
      const style = document.createElement('small');
      style.className = 'style';
      style.textContent = lora.style;
      row.append(style);
    }
    ui.loras.append(row);
    return { lora, toggle, scale, value };
  });
}

let catalog: DemoCatalog;
let origin: string;
let controls: LoraControl[] = [];

/** The choices as the form shows them now. */
function formChoices(): Choices {
  const seed = Math.max(0, Math.floor(Number(ui.seed.value) || 0));
  return {
    prompt: ui.prompt.value,
    negativePrompt: ui.negative.value,
    steps: Number(ui.steps.value),
    guidanceScale: Number(ui.guidance.value),
    scheduler: ui.scheduler.value as Choices['scheduler'],
    seed,
    size: Number(ui.size.value),
    tag: ui.tag.value,
    device: ui.device.value as DemoDevice,
    loras: controls.filter((c) => c.toggle.checked).map((c) => ({ name: c.lora.name, scale: Number(c.scale.value) })),
  };
}

function showChoices(c: Choices): void {
  ui.prompt.value = c.prompt;
  ui.negative.value = c.negativePrompt;
  ui.steps.value = String(c.steps);
  ui.guidance.value = String(c.guidanceScale);
  ui.scheduler.value = c.scheduler;
  ui.seed.value = String(c.seed);
  ui.size.value = String(c.size);
  ui.tag.value = c.tag;
  ui.device.value = c.device;
  for (const control of controls) {
    const on = c.loras.find((l) => l.name === control.lora.name);
    control.toggle.checked = !!on;
    control.scale.disabled = !on;
    control.scale.value = String(on?.scale ?? control.lora.defaultScale);
    control.scale.dispatchEvent(new Event('input'));
  }
}

function saveChoices(c: Choices): void {
  const url = new URL(location.href);
  writeChoices(url, c);
  history.replaceState(null, '', url);
}

// ---------------------------------------------------------------------------------------
// Generation: one at a time; a change made while one runs queues exactly one more.

let busy = false;
let again = false;
let runs = 0;
const generator = new GeneratorClient();
const preview = new LatentPreview();

function overlays(c: Choices): LoraOverlay[] {
  return c.loras.map((l) => {
    const lora = catalog.loras.find((x) => x.name === l.name)!;
    return { digest: lora.digest, scale: l.scale, ...(lora.alpha === undefined ? {} : { alpha: lora.alpha }) };
  });
}

function requestGenerate(): void {
  if (busy) {
    again = true;
    return;
  }
  void generateLoop();
}

async function generateLoop(): Promise<void> {
  busy = true;
  ui.status.dataset.busy = 'true';
  // Clearing releases the sessions a run may be using: not while one is in flight.
  ui.clearCache.disabled = true;
  ui.stop.disabled = false;
  try {
    do {
      again = false;
      await generate();
    } while (again);
  } finally {
    busy = false;
    ui.status.dataset.busy = 'false';
    ui.clearCache.disabled = false;
    ui.stop.disabled = true;
  }
}

async function generate(): Promise<void> {
  const c = formChoices();
  saveChoices(c);
  const loras = overlays(c);
  ui.error.hidden = true;
  ui.progress.value = 0;
  ui.status.dataset.step = '';
  setStatus('loading', `Loading ${catalog.model}:${c.tag}${loras.length ? ` with ${c.loras.map((l) => l.name).join(' and ')}` : ''}…`);

  const sizes = new Map<string, number>();
  const started = performance.now();
  const onProgress = (e: ProgressEvent) => {
    if (e.phase !== 'manifest') sizes.set(e.file, e.total);
    if (e.phase === 'session' || e.phase === 'overlay') {
      ui.progressText.textContent = e.phase === 'overlay' ? `Laying the LoRA over the ${partName(e.component)}…` : `Preparing the ${partName(e.component)}…`;
      return;
    }
    const agg = e.aggregate;
    if (!agg || agg.total === 0) return;
    ui.progress.max = agg.total;
    ui.progress.value = agg.loaded;
    const seconds = (performance.now() - started) / 1000;
    ui.progressText.textContent = `Downloading: ${formatBytes(agg.loaded)} of ${formatBytes(agg.total)} · ${formatBytes(agg.loaded / Math.max(seconds, 0.001))}/s`;
  };

  try {
    let latentShape: { channels: number; width: number; height: number } | null = null;
    let lastLatents: Float32Array | undefined;
    const { result, info, loadMs, transferMs } = await generator.generate(
      {
        load: { origin, model: catalog.model, tag: c.tag, device: c.device, loras },
        options: {
          prompt: c.prompt,
          ...(c.negativePrompt.trim() ? { negativePrompt: c.negativePrompt } : {}),
          steps: c.steps,
          guidanceScale: c.guidanceScale,
          scheduler: c.scheduler,
          seed: c.seed,
          width: c.size,
          height: c.size,
        },
      },
      {
        onProgress,
        onLoaded: (provider) => {
          setStatus('running', `Drawing on ${providerName(provider)}…`);
          ui.progress.max = c.steps;
          ui.progress.value = 0;
          ui.progressText.textContent = `step 0/${c.steps}`;
        },
        onStep: (step, steps, latents) => {
          ui.progress.value = step;
          ui.status.dataset.step = `${step}/${steps}`;
          ui.progressText.textContent = `step ${step}/${steps}`;
          if (!latents) return;
          lastLatents = latents;
          latentShape ??= shapeOf(latents, c.size);
          if (latentShape) drawRgba(preview.render(latents, latentShape), latentShape.width, latentShape.height);
        },
      },
    );
    const ran = performance.now();
    drawRgba(result.image.data, result.image.width, result.image.height);
    if (lastLatents && latentShape) preview.learn(lastLatents, latentShape, result.image);
    showInfo(info, sizes, result, { load: loadMs, transfer: transferMs });
    ui.save.href = ui.canvas.toDataURL('image/png');
    ui.save.download = `fuseload-${c.tag}-${c.seed}.png`;
    ui.save.hidden = false;
    runs++;
    ui.status.dataset.runs = String(runs);
    setStatus('done', `Done: seed ${result.seed}, ${result.steps} steps (${result.scheduler}) in ${formatMs(ran - started)}${result.promptTruncated ? ' — the prompt was cut to the model\'s length' : ''}`);
  } catch (e) {
    if ((e as { code?: string }).code === 'aborted') {
      setStatus('stopped', `Stopped${ui.status.dataset.step ? ` after step ${ui.status.dataset.step}` : ''}.`);
      ui.progressText.textContent = '\u00a0';
      // The worker was ended; the fresh one answers once it has started, which need not hold up the page.
      void showCache();
      return;
    } else {
      showError(e);
      ui.progressText.textContent = runs ? 'The picture is the previous one.' : '\u00a0';
      setStatus('error', 'Could not generate: see below');
    }
  }
  await showCache();
}

/** The latents' [C, H, W] for an image of side `size`: C·H·W = length with H = W = size / factor. */
function shapeOf(latents: Float32Array, size: number): { channels: number; width: number; height: number } | null {
  for (const factor of [8, 16, 4, 2, 1, 32]) {
    const side = size / factor;
    const channels = latents.length / (side * side);
    if (Number.isInteger(side) && Number.isInteger(channels) && channels >= 1 && channels <= 16) return { channels, width: side, height: side };
  }
  return null;
}

function drawRgba(data: Uint8ClampedArray, width: number, height: number): void {
  ui.canvas.width = width;
  ui.canvas.height = height;
  ui.canvas.getContext('2d')!.putImageData(new ImageData(new Uint8ClampedArray(data), width, height), 0, 0);
}

// ---------------------------------------------------------------------------------------
// What happened, in words

function showInfo(info: PipelineInfo, sizes: Map<string, number>, r: GenerateResult, ms: { load: number; transfer: number }): void {
  ui.provider.dataset.provider = info.provider;
  const passedOver = info.fallbacks.find((f) => f.component === 'unet' || f.component === undefined) ?? info.fallbacks[0];
  ui.provider.textContent =
    ui.device.value === 'auto' && passedOver ? `${providerName(info.provider)} — auto passed ${deviceName(passedOver.provider)} over (see Fallbacks)` : providerName(info.provider);

  const parts = Object.entries(info.components).map(([role, c]) => `${partName(role)}: ${deviceName(c!.provider)}`);
  ui.components.textContent = parts.join(' · ') || '–';

  // The same reason for every part reads once, naming the parts.
  const grouped = new Map<string, string[]>();
  for (const f of info.fallbacks) {
    const key = `${f.provider}\u0000${f.reason}`;
    grouped.set(key, [...(grouped.get(key) ?? []), partName(f.component)]);
  }
  ui.fallbacks.textContent = grouped.size
    ? [...grouped].map(([key, roles]) => {
        const [provider, reason] = key.split('\u0000');
        return `${deviceName(provider)} passed over for the ${roles.join(', ')}: ${reason}`;
      }).join('\n')
    : 'none';

  // Sizes: the manifest's for graphs, shards and assets, the catalog's for LoRA files, progress events' for the rest.
  for (const ref of manifestBlobs(info.manifest)) sizes.set(ref.digest, ref.size);
  for (const lora of catalog.loras) sizes.set(lora.digest, lora.size);
  const by = { memory: { blobs: 0, bytes: 0 }, store: { blobs: 0, bytes: 0 }, network: { blobs: 0, bytes: 0 } };
  for (const [digest, source] of Object.entries(info.sources)) {
    by[source].blobs++;
    by[source].bytes += sizes.get(digest) ?? 0;
  }
  const seconds = ms.transfer / 1000;
  const rate = info.bytesFetched > 0 ? ` at ${formatBytes(info.bytesFetched / Math.max(seconds, 0.001))}/s` : '';
  const files = (n: number) => `${n} file${n === 1 ? '' : 's'}`;
  ui.sources.textContent =
    `${formatBytes(info.bytesFetched)} downloaded from the edge worker (${files(by.network.blobs)}${rate}) · ` +
    `${formatBytes(by.store.bytes)} from this browser's cache (${files(by.store.blobs)}) · ${formatBytes(by.memory.bytes)} already in memory (${files(by.memory.blobs)})` +
    (info.fromPipelineCache ? ' · the loaded model was reused' : '');
  Object.assign(ui.sources.dataset, {
    networkBlobs: String(by.network.blobs),
    networkBytes: String(info.bytesFetched),
    storeBlobs: String(by.store.blobs),
    memoryBlobs: String(by.memory.blobs),
    pipelineCache: String(info.fromPipelineCache),
  });
  const fromCache = by.store.bytes + by.memory.bytes;
  ui.progressText.textContent = `step ${r.steps}/${r.steps} · ${formatBytes(fromCache + info.bytesFetched)} of model: ${formatBytes(info.bytesFetched)} downloaded, ${formatBytes(fromCache)} from cache`;

  ui.overlays.textContent = info.overlays.length
    ? info.overlays
        .map((o) => {
          const name = catalog.loras.find((l) => l.digest === o.digest)?.name ?? o.digest.slice(0, 19);
          const where = Object.keys(o.components).map(partName).join(' and ');
          return `${name} ×${o.scale} (${o.matched} weights changed${where ? ` in the ${where}` : ''})`;
        })
        .join(', ')
    : 'none';
  const t = r.timings;
  ui.timings.textContent =
    `loading ${formatMs(ms.load)} · prompt ${formatMs(t.textMs)} · ${r.steps} steps ${formatMs(t.denoiseMs)} (${formatMs(t.denoiseMs / r.steps)} each, ${r.unetCalls} UNet runs) · decoding ${formatMs(t.decodeMs)}`;
  const tag = catalog.tags.find((x) => x.fingerprint === info.fingerprint)?.tag ?? ui.tag.value;
  ui.fingerprint.textContent = `${catalog.model}:${tag} · ${info.fingerprint.slice(7, 19)}…`;
  ui.fingerprint.title = info.fingerprint;
}

/** The details describe the last generation; after Clear cache there is none to describe. */
function resetInfo(): void {
  for (const el of [ui.provider, ui.components, ui.fallbacks, ui.sources, ui.timings, ui.overlays, ui.fingerprint]) {
    el.textContent = '–';
    el.title = '';
  }
  delete ui.provider.dataset.provider;
  for (const key of Object.keys(ui.sources.dataset)) delete ui.sources.dataset[key];
}

async function showCache(): Promise<void> {
  try {
    const info = await generator.cacheInfo();
    ui.cache.textContent = info.count ? `${info.count} files, ${formatBytes(info.bytes)}` : 'empty';
    ui.cache.dataset.blobs = String(info.count);
  } catch (e) {
    ui.cache.textContent = `unavailable (${(e as Error).message})`;
  }
}

// ---------------------------------------------------------------------------------------

async function readCatalog(): Promise<DemoCatalog> {
  const url = new URL(params.get('catalog') ?? 'catalog.json', location.href);
  let res: Response;
  try {
    res = await fetch(url, { cache: 'no-store' });
  } catch {
    throw new Error(`The demo's catalog (${url.pathname}) did not load: the page's server does not answer — is \`npm start\` running?`);
  }
  if (!res.ok) throw new Error(`The demo's catalog (${url.pathname}) did not load (HTTP ${res.status}) — start the demo with \`npm start\`, which writes it.`);
  const json = (await res.json()) as DemoCatalog;
  if (!json || !Array.isArray(json.tags) || !json.defaults || !Array.isArray(json.sizes)) {
    throw new Error(`The demo's catalog (${url.pathname}) is from another version of the demo — stop \`npm start\` and run it again.`);
  }
  return json;
}

function setupForm(): void {
  for (const t of catalog.tags) {
    const label = t.merged.length ? `${t.tag} — with ${t.merged.map((m) => `${m.name} ×${m.scale}`).join(' + ')} merged in` : `${t.tag} — the base model`;
    ui.tag.append(new Option(label, t.tag));
  }
  for (const [i, side] of catalog.sizes.entries()) ui.size.append(new Option(`${side}×${side}${i === 0 ? ' (trained)' : ''}`, String(side)));
  for (const prompt of catalog.prompts) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'example';
    b.textContent = prompt;
    b.addEventListener('click', () => {
      ui.prompt.value = prompt;
      requestGenerate();
    });
    ui.examples.append(b);
  }
  const v = catalog.vocabulary;
  ui.vocabulary.textContent = v ? `It knows: ${v.colors.join(', ')}; ${v.shapes.join(', ')}; ${v.sizes.join(', ')}; ${v.positions.join(', ')}.` : '';
  ui.vocabulary.title = v?.grammar ?? '';
  controls = loraControls(catalog.loras, requestGenerate);
}

async function start(): Promise<void> {
  try {
    catalog = await readCatalog();
  } catch (e) {
    ui.error.hidden = false;
    ui.error.textContent = (e as Error).message;
    setStatus('error', 'No catalog');
    return;
  }
  origin = params.get('origin') ?? catalog.origin;
  ui.origin.textContent = origin;
  setupForm();
  const { choices, problems } = readChoices(params, catalog);
  showChoices(choices);
  if (problems.length) {
    ui.notice.hidden = false;
    ui.notice.replaceChildren(...problems.map((p) => Object.assign(document.createElement('div'), { textContent: p })));
  }

  for (const el of [ui.tag, ui.device, ui.seed, ui.steps, ui.guidance, ui.scheduler, ui.size]) el.addEventListener('change', requestGenerate);
  ui.generate.addEventListener('click', requestGenerate);
  ui.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      requestGenerate();
    }
  });
  ui.negative.addEventListener('keydown', (e) => void (e.key === 'Enter' && requestGenerate()));
  ui.reseed.addEventListener('click', () => {
    ui.seed.value = String(Math.floor(Math.random() * 2 ** 32));
    requestGenerate();
  });
  ui.stop.addEventListener('click', () => {
    again = false;
    generator.stop();
  });
  ui.clearCache.addEventListener('click', async () => {
    if (busy) return;
    busy = true;
    ui.clearCache.disabled = true;
    ui.generate.disabled = true;
    try {
      await generator.clearCache();
      resetInfo();
      ui.progress.value = 0;
      ui.progressText.textContent = '\u00a0';
      ui.error.hidden = true;
      setStatus('idle', 'Cache cleared: the next generation downloads the model again.');
    } catch (e) {
      showError(e);
    } finally {
      await showCache();
      busy = false;
      ui.clearCache.disabled = false;
      ui.generate.disabled = false;
      // A change made while clearing asked for a run: do it now.
      if (again) requestGenerate();
    }
  });

  const gpu = await generator.webgpuAdapter().catch((e: Error) => ({ available: false, reason: e.message }) as Awaited<ReturnType<GeneratorClient['webgpuAdapter']>>);
  ui.webgpu.textContent = gpu.available
    ? `${[gpu.vendor, gpu.architecture].filter(Boolean).join(' ') || 'an unnamed adapter'}${gpu.software ? ' — a software emulation, slower than WASM' : ''}${gpu.shaderF16 ? ' (fp16 shaders)' : ''}`
    : `not available: ${gpu.reason}`;
  await showCache();
  requestGenerate();
}

void start();
