/**
 * Load-time overlay bench (Node runtime: disk store, onnxruntime-node on CPU, a local HTTP origin):
 *
 *   npx tsx test/bench/overlay.ts [--mib 256] [--dtype float16|float32] [--runs 5] [--gbit 1] [--keep]
 *
 * Two artifacts: the sample model with its LoRAs, and a synthetic base of ≥ --mib MiB (a chain
 * of [H, H] MatMuls, weights stored as --dtype) with two rank-16 kohya LoRAs on every layer.
 * For each:
 * - cold: a fresh runtime and an empty store, the base until usable (no store writes counted);
 * - switch: the same runtime, the base in memory, a new LoRA set or new scales until usable
 *   (median of --runs; the first switch to the second LoRA includes downloading it);
 * - switch_ratio = switch / cold (target ≤ 0.2); bytes_ratio = most bytes one switch fetched /
 *   the artifact's size (counted at the origin).
 * Also the same switch with every weight merged in JavaScript, for comparison, and both loads
 * again over a link of --gbit Gbit/s shared by all requests (the origin here is localhost,
 * faster than any network a browser or server downloads a model over).
 * Last line: `BENCH overlay switch_ratio=… bytes_ratio=…` (the large base's figures).
 */
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Digest, digestHex, sha256 } from '../../common/digest.ts';
import { createLoader } from '../../common/loader/index.ts';
import { f32ToBytes, f32ToF16 } from '../../common/lora/dtype.ts';
import { tagKey } from '../../common/keys.ts';
import type { LoraOverlay, ProgressEvent } from '../../common/pipeline.ts';
import { encodeSafetensors, type SafetensorsInput } from '../../common/safetensors.ts';
import { mulberry32 } from '../../common/sample-input.ts';
import { build } from '../../tools/build/build.ts';
import { GraphBuilder } from '../../tools/onnx/builder.ts';
import { DTYPE_CODES, encodeModel, setExternal } from '../../tools/onnx/model.ts';
import { createNodeRuntime } from '../../tools/runtime/index.ts';
import { OrtNodeEngine } from '../../tools/runtime/ort-engine.ts';
import { DiskStore } from '../../tools/store/disk-store.ts';
import { type Origin, startOrigin } from '../support/origin.ts';
import { overlayArtifacts } from '../support/overlay-artifacts.ts';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    dtype: { type: 'string', default: 'float16' },
    runs: { type: 'string', default: '5' },
    /** Also measure over a link of this many Gbit/s (0: skip). */
    gbit: { type: 'string', default: '1' },
    keep: { type: 'boolean', default: false },
  },
});
const targetMib = Number(values.mib);
const dtype = values.dtype as 'float16' | 'float32';
const runs = Number(values.runs);
const HIDDEN = 4096;
const RANK = 16;

const work = await mkdtemp(join(tmpdir(), 'fuseload-bench-overlay-'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const quiet = { warn: () => {} };

interface Subject {
  name: string;
  dir: string;
  model: string;
  fingerprint: Digest;
  bytes: number;
  /** Two LoRA sets to switch between; scales are varied per run so every switch builds anew. */
  setA: (scale: number) => LoraOverlay[];
  setB: (scale: number) => LoraOverlay[];
  layers: number;
}

/** ≥ targetMib of [HIDDEN, HIDDEN] weights, MatMul'd in a chain (Cast to fp32 when stored fp16), and two LoRAs. */
async function largeSubject(): Promise<Subject> {
  const size = dtype === 'float16' ? 2 : 4;
  const tensorBytes = HIDDEN * HIDDEN * size;
  const layers = Math.ceil((targetMib * 2 ** 20) / tensorBytes);
  const src = join(work, 'large-src');
  await mkdir(src, { recursive: true });
  const g = new GraphBuilder();
  let x = g.input('x', { dtype: 'float32', dims: [1, HIDDEN] });
  const data = await open(join(src, 'base.weights'), 'w');
  const rand = mulberry32(7);
  const row = new Float32Array(HIDDEN * HIDDEN);
  for (let i = 0; i < layers; i++) {
    for (let j = 0; j < row.length; j++) row[j] = (rand() - 0.5) / 32;
    await data.write(f32ToBytes(row, dtype));
    const name = `onnx::MatMul_${1000 + i}`;
    g.initializers.push({ name, dims: [HIDDEN, HIDDEN], dataType: DTYPE_CODES[dtype] });
    setExternal(g.initializers[i], { location: 'base.weights', offset: i * tensorBytes, length: tensorBytes });
    const w = dtype === 'float32' ? name : g.op('Cast', [name], { to: DTYPE_CODES.float32 }, `/layers.${i}/mlp/proj/Cast`);
    x = g.op('MatMul', [x, w], {}, `/layers.${i}/mlp/proj/MatMul`);
  }
  await data.close();
  g.rename(x, 'y');
  g.output('y', { dtype: 'float32', dims: [1, HIDDEN] });
  await writeFile(join(src, 'base.onnx'), encodeModel(g.model()));
  const out = join(work, 'large-artifact');
  const report = await build({ base: join(src, 'base.onnx'), name: 'large', out, store: null });
  await tag(out, 'large', report.fingerprint);
  const loras: Digest[] = [];
  for (const seed of [1, 2]) {
    const t: Record<string, SafetensorsInput> = {};
    const r = mulberry32(seed);
    const small = new Float32Array(RANK * HIDDEN);
    for (let i = 0; i < layers; i++) {
      const key = `lora_unet_layers_${i}_mlp_proj`;
      for (let j = 0; j < small.length; j++) small[j] = (r() - 0.5) / 16;
      t[`${key}.lora_down.weight`] = { dtype: 'F16', shape: [RANK, HIDDEN], data: f32ToF16(small) };
      for (let j = 0; j < small.length; j++) small[j] = (r() - 0.5) / 16;
      t[`${key}.lora_up.weight`] = { dtype: 'F16', shape: [HIDDEN, RANK], data: f32ToF16(small) };
      t[`${key}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(RANK) };
    }
    const bytes = encodeSafetensors(t);
    const digest = await sha256(bytes);
    await writeFile(join(out, 'blobs', 'sha256', digestHex(digest)), bytes);
    loras.push(digest);
  }
  await rm(src, { recursive: true, force: true });
  return {
    name: `large (${layers} × ${dtype} [${HIDDEN}, ${HIDDEN}], rank-${RANK} LoRA on every layer)`,
    dir: out,
    model: 'large',
    fingerprint: report.fingerprint,
    bytes: report.graph.size + report.bytes,
    setA: (s) => [{ digest: loras[0], scale: s }],
    setB: (s) => [{ digest: loras[1], scale: s }, { digest: loras[0], scale: -s / 2 }],
    layers,
  };
}

async function sampleSubject(): Promise<Subject> {
  const fx = await overlayArtifacts([]);
  return {
    name: 'sample (kohya warm / diffusers detail + PEFT cool)',
    dir: fx.dir,
    model: 'sample',
    fingerprint: fx.base.fingerprint,
    bytes: fx.base.manifest.graph.size + fx.base.manifest.shards.reduce((n, s) => n + s.size, 0),
    setA: (s) => [{ digest: fx.loras.warm.digest, scale: s }],
    setB: (s) => [{ digest: fx.loras.detail.digest, scale: s }, { digest: fx.loras.cool.digest, scale: s, alpha: fx.coolAlpha }],
    layers: fx.base.manifest.tensors.filter((t) => t.module).length,
  };
}

async function tag(dir: string, model: string, fingerprint: Digest) {
  const path = join(dir, tagKey(model, 'latest'));
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, JSON.stringify({ manifest: fingerprint }));
}

/** fetch over one shared link of `bytesPerSecond`: each body chunk waits for its slot on it. */
function throttledFetch(bytesPerSecond: number): typeof fetch {
  let linkFree = 0;
  return async (input, init) => {
    const response = await fetch(input, init);
    if (!response.body) return response;
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) return controller.close();
        linkFree = Math.max(performance.now(), linkFree) + (value.byteLength / bytesPerSecond) * 1000;
        const wait = linkFree - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const value = await fn();
  return [performance.now() - t, value];
}

type Runtime = Pick<ReturnType<typeof createNodeRuntime>, 'loadPipeline' | 'flush'>;

/** Cold load time and switch times, with `fetch` for every request (the link). */
async function measure(subject: Subject, origin: Origin, tag: string, fetchFn: typeof fetch | undefined, withJs: boolean) {
  const opts = (loras?: LoraOverlay[]) => ({ origin: origin.url, model: subject.model, fingerprint: subject.fingerprint, device: 'cpu' as const, loras });
  // Cold: empty store, fresh runtime (median of runs).
  const cold: number[] = [];
  for (let i = 0; i < Math.min(runs, 3); i++) {
    const root = join(work, `cold-${subject.model}-${tag}-${i}`);
    const rt = createNodeRuntime({ storeRoot: root, fetch: fetchFn, ...quiet });
    const [ms, p] = await time(() => rt.loadPipeline(opts()));
    cold.push(ms);
    await p.dispose();
    await rt.flush();
    await rm(root, { recursive: true, force: true });
  }

  const switches = async (rt: Runtime) => {
    let current = await rt.loadPipeline(opts());
    const first = await time(() => rt.loadPipeline(opts(subject.setA(1))));
    await current.dispose();
    current = first[1];
    await rt.flush();
    const times: number[] = [];
    /** ms until the engine session began (fetch + merge), the rest is session creation. */
    const toSession: number[] = [];
    let maxBytes = 0;
    for (let i = 0; i < runs; i++) {
      const set = i % 2 === 0 ? subject.setB(0.5 + i / 10) : subject.setA(0.5 + i / 10);
      origin.reset();
      const started = performance.now();
      let sessionAt = 0;
      const onProgress = (e: ProgressEvent) => void (e.phase === 'session' && e.loaded === 0 && !sessionAt && (sessionAt = performance.now() - started));
      const [ms, p] = await time(() => rt.loadPipeline({ ...opts(set), onProgress }));
      toSession.push(sessionAt);
      if (p.info.fromPipelineCache) throw new Error('a switch came from the pipeline cache');
      maxBytes = Math.max(maxBytes, origin.bytesServed());
      times.push(ms);
      await current.dispose();
      current = p;
      await rt.flush();
    }
    await current.dispose();
    return { first: first[0], median: median(times), toSession: median(toSession), maxBytes };
  };
  const node = await switches(createNodeRuntime({ storeRoot: join(work, `switch-${subject.model}-${tag}`), fetch: fetchFn, ...quiet }));
  let js: typeof node | undefined;
  if (withJs) {
    const jsStore = new DiskStore(join(work, `switch-js-${subject.model}-${tag}`), {});
    js = await switches(createLoader({ engine: new OrtNodeEngine({ fileOf: (b) => jsStore.fileOf(b) }), store: jsStore, overlayOrtMinElements: Number.POSITIVE_INFINITY, ...quiet }));
  }
  return { cold: median(cold), node, js };
}

try {
  const subjects = [await sampleSubject()];
  if (targetMib > 0) subjects.push(await largeSubject());
  const gbit = Number(values.gbit);
  const f = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);
  let last = '';
  for (const s of subjects) {
    const origin = await startOrigin({ root: s.dir });
    try {
      if (values.keep) console.log(`${s.dir} ${s.fingerprint} ${JSON.stringify(s.setA(1))}`);
      console.log(`${s.name}: artifact ${(s.bytes / 2 ** 20).toFixed(1)} MiB, ${s.layers} LoRA targets; medians of ${runs}`);
      const local = await measure(s, origin, 'local', undefined, true);
      const ratio = local.node.median / local.cold;
      const bytesRatio = local.node.maxBytes / s.bytes;
      console.log(`  localhost: cold load ${f(local.cold)}; first overlay ${f(local.node.first)}; switch ${f(local.node.median)} → ratio ${ratio.toFixed(3)} (target ≤ 0.2)`);
      console.log(`    of a switch: LoRA fetch + merge ${f(local.node.toSession)}, then engine session creation ${f(local.node.median - local.node.toSession)}`);
      console.log(`  bytes fetched by a switch ≤ ${local.node.maxBytes} B = ${(bytesRatio * 100).toFixed(3)} % of the artifact`);
      console.log(`  the same switch with every weight merged in JavaScript: ${f(local.js!.median)} → ratio ${(local.js!.median / local.cold).toFixed(3)}`);
      last = `BENCH overlay switch_ratio=${ratio.toFixed(3)} bytes_ratio=${bytesRatio.toFixed(5)} switch_ms=${local.node.median.toFixed(0)} cold_ms=${local.cold.toFixed(0)} js_switch_ratio=${(local.js!.median / local.cold).toFixed(3)}`;
      if (gbit > 0) {
        const link = await measure(s, origin, 'link', throttledFetch((gbit * 1e9) / 8), false);
        const r = link.node.median / link.cold;
        console.log(`  over a ${gbit} Gbit/s link: cold load ${f(link.cold)}; switch ${f(link.node.median)} → ratio ${r.toFixed(3)}`);
        last += ` switch_ratio_${gbit}gbit=${r.toFixed(3)}`;
      }
      last += ` base_mib=${(s.bytes / 2 ** 20).toFixed(0)} dtype=${s.model === 'large' ? dtype : 'float32'}`;
    } finally {
      await origin.close();
    }
  }
  console.log(last);
} finally {
  if (values.keep) console.log(`kept ${work}`);
  else await rm(work, { recursive: true, force: true });
}
