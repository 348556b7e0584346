/**
 * The demo's generator, in a dedicated worker: loads pipelines through the browser runtime
 * (web/index.ts: IndexedDB cache, Web Locks, onnxruntime-web) and generates, posting progress,
 * every step's latents and the result to the page (generator-protocol.ts). Off the page's
 * thread, so the page paints each step and its buttons answer while the UNet runs.
 */
/// <reference lib="webworker" />
import { cacheInfo, clearCache, loadPipeline, type Pipeline, webgpuAdapter } from '../index.ts';
import type { FromWorker, Generated, SerializedError, ToWorker } from './generator-protocol.ts';

declare const self: DedicatedWorkerGlobalScope;

/** Pipeline handles kept alive so switching back is a pipeline-cache hit; the oldest is released past the cap. */
const held = new Map<string, Pipeline>();
const HELD_MAX = 6;

function post(message: FromWorker, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

async function keep(key: string, pipeline: Pipeline): Promise<void> {
  const previous = held.get(key);
  held.delete(key);
  held.set(key, pipeline);
  // The new handle keeps the shared sessions alive, so releasing the old one costs nothing.
  if (previous && previous !== pipeline) await previous.dispose();
  while (held.size > HELD_MAX) {
    const [oldest, p] = held.entries().next().value as [string, Pipeline];
    held.delete(oldest);
    await p.dispose();
  }
}

async function generate(message: Extract<ToWorker, { type: 'generate' }>): Promise<Generated> {
  const { id, load, options } = message;
  const started = performance.now();
  let transferEnd = started;
  const pipeline = await loadPipeline({
    ...load,
    onProgress: (event) => {
      if (event.phase === 'download' || event.phase === 'verify') transferEnd = performance.now();
      post({ id, type: 'progress', event });
    },
  });
  const loadMs = performance.now() - started;
  await keep(JSON.stringify(load), pipeline);
  post({ id, type: 'loaded', provider: pipeline.info.provider });
  const result = await pipeline.generate({
    ...options,
    onStep: ({ step, steps, latents }) => {
      // A copy: the loop's array is read-only to us, and this one is handed over whole. Latents
      // kept on the GPU are not read back for a preview (that would cost what the preview saves).
      const copy = latents instanceof Float32Array ? latents.slice() : undefined;
      post({ id, type: 'step', step, steps, latents: copy }, copy ? [copy.buffer] : []);
    },
  });
  return { result, info: pipeline.info, loadMs, transferMs: transferEnd - started };
}

async function releaseAll(): Promise<void> {
  const all = [...held.values()];
  held.clear();
  await Promise.all(all.map((p) => p.dispose()));
}

function serialize(e: unknown): SerializedError {
  const err = e as Error & { code?: unknown };
  return { name: err?.name ?? 'Error', message: String(err?.message ?? e), ...(typeof err?.code === 'string' ? { code: err.code } : {}) };
}

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  try {
    switch (message.type) {
      case 'generate': {
        const value = await generate(message);
        post({ id: message.id, type: 'done', value }, [value.result.image.data.buffer]);
        return;
      }
      case 'cache-info':
        return post({ id: message.id, type: 'done', value: await cacheInfo() });
      case 'clear-cache':
        await releaseAll();
        await clearCache();
        return post({ id: message.id, type: 'done', value: null });
      case 'adapter':
        return post({ id: message.id, type: 'done', value: await webgpuAdapter() });
    }
  } catch (e) {
    post({ id: message.id, type: 'error', error: serialize(e) });
  }
};
