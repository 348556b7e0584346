/**
 * The demo page: plain DOM over the browser runtime (web/index.ts). It reads the catalog
 * `npm start` writes, loads the chosen tag (plus any load-time LoRA overlays) from the edge,
 * runs the sample model and draws its image, and shows where every byte came from.
 *
 * Hooks for the end-to-end test: `#status[data-state]` (idle | loading | running | done | error),
 * `data-runs` (finished generations) and `data-busy` (false once no generation is queued),
 * `#provider[data-provider]`, `#overlays`, `#cache[data-blobs]`,
 * `#sources[data-network-blobs][data-network-bytes][data-store-blobs][data-memory-blobs]`.
 * Query: `?origin=` and `?catalog=` override the catalog's; `tag`, `device`, `seed` and
 * `lora=<name>:<scale>` (repeated) hold the choices, kept in the URL so a reload or a shared
 * link shows the same image.
 */
import { imageToRgba, sampleFeeds } from '../../common/sample-input.ts';
import { manifestBlobs } from '../../common/manifest.ts';
import { cacheInfo, clearCache, type Device, loadPipeline, type LoraOverlay, type Pipeline, type PipelineInfo, type ProgressEvent, webgpuAdapter } from '../index.ts';
import type { DemoCatalog, DemoLora } from './catalog.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  tag: $<HTMLSelectElement>('tag'),
  device: $<HTMLSelectElement>('device'),
  seed: $<HTMLInputElement>('seed'),
  reseed: $<HTMLButtonElement>('reseed'),
  loras: $<HTMLFieldSetElement>('loras'),
  generate: $<HTMLButtonElement>('generate'),
  clearCache: $<HTMLButtonElement>('clear-cache'),
  canvas: $<HTMLCanvasElement>('image'),
  status: $('status'),
  progress: $<HTMLProgressElement>('progress'),
  progressText: $('progress-text'),
  error: $('error'),
  provider: $('provider'),
  fallbacks: $('fallbacks'),
  webgpu: $('webgpu'),
  fingerprint: $('fingerprint'),
  sources: $('sources'),
  overlays: $('overlays'),
  timings: $('timings'),
  cache: $('cache'),
  origin: $('origin'),
};

type State = 'idle' | 'loading' | 'running' | 'done' | 'error';
const params = new URLSearchParams(location.search);

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

function setStatus(state: State, text: string): void {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showError(e: unknown): void {
  const err = e as Error & { code?: string };
  ui.error.hidden = false;
  ui.error.textContent = err.code ? `${err.code}: ${err.message}` : String(err?.message ?? e);
  ui.error.dataset.code = err.code ?? '';
}

// ---------------------------------------------------------------------------------------
// LoRA controls: a toggle and a scale slider each; any change regenerates.

interface LoraControl {
  lora: DemoLora;
  toggle: HTMLInputElement;
  scale: HTMLInputElement;
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
    label.append(toggle, `${lora.name} `);
    const format = document.createElement('small');
    format.textContent = lora.format;
    label.append(format);
    const value = document.createElement('output');
    const scale = document.createElement('input');
    scale.type = 'range';
    scale.id = `lora-${lora.name}-scale`;
    scale.min = '-1';
    scale.max = '2';
    scale.step = '0.05';
    scale.value = String(lora.defaultScale);
    scale.disabled = true;
    const show = () => (value.textContent = Number(scale.value).toFixed(2));
    show();
    toggle.addEventListener('change', () => {
      scale.disabled = !toggle.checked;
      onChange();
    });
    scale.addEventListener('input', show);
    // `change` fires when the thumb is released: one regeneration per move, not per pixel.
    scale.addEventListener('change', onChange);
    row.append(label, value, scale);
    ui.loras.append(row);
    return { lora, toggle, scale };
  });
}

// ---------------------------------------------------------------------------------------
// Generation: one at a time; a change made while one runs queues exactly one more.

let catalog: DemoCatalog;
let origin: string;
let controls: LoraControl[] = [];
let busy = false;
let again = false;
let runs = 0;
/** Pipeline handles kept alive so switching back is a pipeline-cache hit; the oldest is released past the cap. */
const held = new Map<string, Pipeline>();
const HELD_MAX = 6;

function overlays(): LoraOverlay[] {
  return controls
    .filter((c) => c.toggle.checked)
    .map((c) => ({ digest: c.lora.digest, scale: Number(c.scale.value), ...(c.lora.alpha === undefined ? {} : { alpha: c.lora.alpha }) }));
}

async function keep(key: string, pipeline: Pipeline): Promise<void> {
  const previous = held.get(key);
  held.delete(key);
  held.set(key, pipeline);
  // The new handle keeps the shared session alive, so releasing the old one costs nothing.
  if (previous && previous !== pipeline) await previous.dispose();
  while (held.size > HELD_MAX) {
    const [oldest, p] = held.entries().next().value as [string, Pipeline];
    held.delete(oldest);
    await p.dispose();
  }
}

async function releaseAll(): Promise<void> {
  const all = [...held.values()];
  held.clear();
  await Promise.all(all.map((p) => p.dispose()));
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
  try {
    do {
      again = false;
      await generate();
    } while (again);
  } finally {
    busy = false;
    ui.status.dataset.busy = 'false';
    ui.clearCache.disabled = false;
  }
}

/** Mirrors the choices into the URL without a navigation. */
function saveChoices(seed: number): void {
  const url = new URL(location.href);
  for (const name of ['tag', 'device', 'seed', 'lora']) url.searchParams.delete(name);
  url.searchParams.set('tag', ui.tag.value);
  url.searchParams.set('device', ui.device.value);
  url.searchParams.set('seed', String(seed));
  for (const c of controls) if (c.toggle.checked) url.searchParams.append('lora', `${c.lora.name}:${c.scale.value}`);
  history.replaceState(null, '', url);
}

function restoreChoices(): void {
  if (catalog.tags.some((t) => t.tag === params.get('tag'))) ui.tag.value = params.get('tag')!;
  const device = params.get('device');
  if (device === 'auto' || device === 'webgpu' || device === 'wasm') ui.device.value = device;
  if (params.has('seed')) ui.seed.value = params.get('seed')!;
  for (const entry of params.getAll('lora')) {
    const [name, scale] = entry.split(':');
    const control = controls.find((c) => c.lora.name === name);
    if (!control) continue;
    control.toggle.checked = true;
    control.scale.disabled = false;
    if (scale !== undefined && Number.isFinite(Number(scale))) control.scale.value = scale;
    control.scale.dispatchEvent(new Event('input'));
  }
}

async function generate(): Promise<void> {
  const tag = ui.tag.value;
  const device = ui.device.value as Device;
  const loras = overlays();
  const seed = Math.max(0, Math.floor(Number(ui.seed.value) || 0));
  saveChoices(seed);
  ui.error.hidden = true;
  ui.progress.value = 0;
  setStatus('loading', `Loading ${catalog.model}:${tag}${loras.length ? ` + ${loras.length} overlay(s)` : ''}…`);

  const sizes = new Map<string, number>();
  const started = performance.now();
  // The rate is over the transfer, not the whole load (session creation is not download time).
  let bytesDoneAt = started;
  const onProgress = (e: ProgressEvent) => {
    if (e.phase !== 'manifest') sizes.set(e.file, e.total);
    if (e.phase === 'download' || e.phase === 'verify') bytesDoneAt = performance.now();
    const agg = e.aggregate;
    if (!agg || agg.total === 0) return;
    ui.progress.max = agg.total;
    ui.progress.value = agg.loaded;
    const seconds = (performance.now() - started) / 1000;
    ui.progressText.textContent = `${formatBytes(agg.loaded)} / ${formatBytes(agg.total)} · ${formatBytes(agg.loaded / Math.max(seconds, 0.001))}/s · ${e.phase}`;
  };

  try {
    const pipeline = await loadPipeline({ origin, model: catalog.model, tag, device, loras, onProgress });
    const loaded = performance.now();
    await keep(`${tag}|${device}|${JSON.stringify(loras)}`, pipeline);
    setStatus('running', `Running on ${pipeline.info.provider}…`);
    const output = await pipeline.run(sampleFeeds({ seed, width: catalog.width, height: catalog.height }));
    const ran = performance.now();
    draw(output.image);
    showInfo(pipeline.info, sizes, { load: loaded - started, run: ran - loaded, transfer: bytesDoneAt - started });
    runs++;
    ui.status.dataset.runs = String(runs);
    setStatus('done', `Done: seed ${seed} on ${pipeline.info.provider} in ${((ran - started) / 1000).toFixed(2)} s`);
  } catch (e) {
    showError(e);
    ui.progressText.textContent = held.size ? 'The image is the previous one.' : '\u00a0';
    setStatus('error', 'Failed: see below');
  }
  await showCache();
}

function draw(image: Parameters<typeof imageToRgba>[0] | undefined): void {
  if (!image) throw new Error('the model returned no `image` output');
  const rgba = imageToRgba(image);
  ui.canvas.width = rgba.width;
  ui.canvas.height = rgba.height;
  const ctx = ui.canvas.getContext('2d')!;
  ctx.putImageData(new ImageData(new Uint8ClampedArray(rgba.data), rgba.width, rgba.height), 0, 0);
}

function showInfo(info: PipelineInfo, sizes: Map<string, number>, ms: { load: number; run: number; transfer: number }): void {
  ui.provider.textContent = info.provider;
  ui.provider.dataset.provider = info.provider;
  ui.fallbacks.textContent = info.fallbacks.length ? info.fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('\n') : 'none';
  ui.fingerprint.textContent = info.fingerprint;

  // Sizes: the manifest's for graph and shards, the catalog's for LoRA files, progress events' for the rest.
  for (const ref of manifestBlobs(info.manifest)) sizes.set(ref.digest, ref.size);
  for (const lora of catalog.loras) sizes.set(lora.digest, lora.size);
  const by = { memory: { blobs: 0, bytes: 0 }, store: { blobs: 0, bytes: 0 }, network: { blobs: 0, bytes: 0 } };
  for (const [digest, source] of Object.entries(info.sources)) {
    by[source].blobs++;
    by[source].bytes += sizes.get(digest) ?? 0;
  }
  const seconds = ms.transfer / 1000;
  const rate = info.bytesFetched > 0 ? ` at ${formatBytes(info.bytesFetched / Math.max(seconds, 0.001))}/s` : '';
  ui.sources.textContent =
    `network ${by.network.blobs} (${formatBytes(info.bytesFetched)}${rate}) · IndexedDB ${by.store.blobs} (${formatBytes(by.store.bytes)}) · memory ${by.memory.blobs} (${formatBytes(by.memory.bytes)})` +
    (info.fromPipelineCache ? ' · session from the pipeline cache' : '');
  Object.assign(ui.sources.dataset, {
    networkBlobs: String(by.network.blobs),
    networkBytes: String(info.bytesFetched),
    storeBlobs: String(by.store.blobs),
    memoryBlobs: String(by.memory.blobs),
    pipelineCache: String(info.fromPipelineCache),
  });
  const fromCache = by.store.bytes + by.memory.bytes;
  ui.progressText.textContent = `${formatBytes(fromCache + info.bytesFetched)} loaded: ${formatBytes(info.bytesFetched)} from the network${rate}, ${formatBytes(fromCache)} from cache`;
  ui.overlays.textContent = info.overlays.length
    ? info.overlays.map((o) => `${catalog.loras.find((l) => l.digest === o.digest)?.name ?? o.digest.slice(0, 19)} ×${o.scale} (${o.matched} keys)`).join(', ')
    : 'none';
  ui.timings.textContent = `load ${ms.load.toFixed(0)} ms · run ${ms.run.toFixed(0)} ms`;
}

async function showCache(): Promise<void> {
  try {
    const info = await cacheInfo();
    ui.cache.textContent = `${info.count} blobs, ${formatBytes(info.bytes)}`;
    ui.cache.dataset.blobs = String(info.count);
  } catch (e) {
    ui.cache.textContent = `unavailable (${(e as Error).message})`;
  }
}

// ---------------------------------------------------------------------------------------

async function readCatalog(): Promise<DemoCatalog> {
  const url = new URL(params.get('catalog') ?? 'catalog.json', location.href);
  const res = await fetch(url, { cache: 'no-store' });
  if (!res.ok) throw new Error(`${url.pathname}: HTTP ${res.status} (start the demo with \`npm start\`, which writes it)`);
  return (await res.json()) as DemoCatalog;
}

async function start(): Promise<void> {
  try {
    catalog = await readCatalog();
  } catch (e) {
    showError(e);
    setStatus('error', 'No catalog');
    return;
  }
  origin = params.get('origin') ?? catalog.origin;
  ui.origin.textContent = origin;
  for (const t of catalog.tags) {
    const option = new Option(t.merged.length ? `${t.tag} (base + ${t.merged.map((m) => `${m.name} ×${m.scale}`).join(' + ')})` : `${t.tag} (base)`, t.tag);
    ui.tag.append(option);
  }
  controls = loraControls(catalog.loras, requestGenerate);
  restoreChoices();

  ui.tag.addEventListener('change', requestGenerate);
  ui.device.addEventListener('change', requestGenerate);
  ui.seed.addEventListener('change', requestGenerate);
  ui.generate.addEventListener('click', requestGenerate);
  ui.reseed.addEventListener('click', () => {
    ui.seed.value = String(Math.floor(Math.random() * 1e6));
    requestGenerate();
  });
  ui.clearCache.addEventListener('click', async () => {
    if (busy) return;
    busy = true;
    ui.clearCache.disabled = true;
    try {
      await releaseAll();
      await clearCache();
      setStatus('idle', 'Cache cleared: the next load downloads everything');
    } catch (e) {
      showError(e);
    } finally {
      await showCache();
      busy = false;
      ui.clearCache.disabled = false;
      // A change made while clearing asked for a run: do it now.
      if (again) requestGenerate();
    }
  });

  const gpu = await webgpuAdapter();
  ui.webgpu.textContent = gpu.available
    ? `adapter ${[gpu.vendor, gpu.architecture].filter(Boolean).join(' ') || '(unnamed)'}${gpu.shaderF16 ? ', shader-f16' : ''}`
    : `not available: ${gpu.reason}`;
  await showCache();
  requestGenerate();
}

void start();
