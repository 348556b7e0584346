/**
 * The generation server (successor of the original `handler.py`), Web Standards only; the
 * Node adapter is in ./node.ts.
 *
 *   POST /v1/generate  Content-Type: application/json
 *     {model, tag? (default latest) | fingerprint, loras?: [{digest | url, scale, alpha?}], seed?, width?, height?,
 *      prompt?, negativePrompt?, steps?, guidanceScale?, scheduler?}   (the last five: text-to-image only)
 *     → 200 image/png (X-Fuseload-Fingerprint, X-Fuseload-Provider, X-Fuseload-Pipeline-Cache)
 *   GET /healthz → {ok, providers, queue, pixels, pipelines}
 *
 * Errors are JSON `{error: <code>, message: <one line>}`: 400 bad request, 404 unknown model,
 * 405 (+ Allow) a method a path does not take, 413 body or picture too large, 415 not JSON,
 * 422 a LoRA that does not fit the model, 501 unsupported, 502 origin trouble, 503 +
 * Retry-After when the queue is full, 504 past the generation deadline. A message never
 * carries the origin's URL (the server log has it).
 *
 * Each generation runs under one signal: the client's (it left: the work stops) and the
 * deadline's (`generationTimeoutMs`), passed into the load and the generation, so a stalled
 * origin or a gone client frees its slot.
 */
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { isDigest, isHex } from '../../common/digest.ts';
import { badInput, type FuseloadErrorCode, isFuseloadError } from '../../common/errors.ts';
import { isName } from '../../common/keys.ts';
import { shownUrl } from '../../common/loader/bounded-read.ts';
import type { Device, LoadPipelineOptions, Pipeline, Provider } from '../../common/pipeline.ts';
import { Admission } from './admission.ts';
import { DEFAULT_LIMITS, pixelBudgetOf, type ServerLimits } from './limits.ts';
import { renderPng, rgbaToPng } from './render.ts';

export { DEFAULT_LIMITS, type ServerLimits } from './limits.ts';

export interface ServerOptions {
  /** Where artifacts are served: http(s) or file, with no credentials, query or fragment. */
  origin: string;
  loadPipeline: (options: LoadPipelineOptions) => Promise<Pipeline>;
  device?: Device;
  /** Providers this install can run, for /healthz. */
  providers: Provider[];
  limits?: Partial<ServerLimits>;
  log?: (line: string) => void;
  /**
   * Accept `loras[].url` (the server then fetches any http(s) URL a client names). Default false:
   * LoRAs by digest only, from `origin`.
   */
  loraUrls?: boolean;
}

/**
 * What the server asks of a text-to-image pipeline: DESIGN.md's `p.generate(...)`, declared
 * here with only the fields the server passes and reads, so it holds whatever else the
 * runtime's own type grows.
 */
export interface TextToImageRequest {
  prompt: string;
  negativePrompt?: string;
  steps?: number;
  guidanceScale?: number;
  scheduler?: string;
  seed: number;
  width: number;
  height: number;
  signal?: AbortSignal;
  onStep?: (...progress: never[]) => void;
}

export interface RgbaImage {
  width: number;
  height: number;
  /** width × height × 4 bytes, row-major RGBA. */
  data: Uint8ClampedArray;
}

export interface TextToImageGenerator {
  generate(request: TextToImageRequest): Promise<{ image: RgbaImage }>;
}

/** `info.kind` as the pipeline interface has it; a pipeline without one is a plain graph. */
interface KindInfo {
  readonly kind?: 'graph' | 'text-to-image';
}

function asTextToImage(pipeline: Pipeline): (Pipeline & TextToImageGenerator) | null {
  const info: KindInfo = pipeline.info;
  if (info.kind !== 'text-to-image') return null;
  const candidate = pipeline as Pipeline & Partial<TextToImageGenerator>;
  return typeof candidate.generate === 'function' ? (candidate as Pipeline & TextToImageGenerator) : null;
}

/** Fields that only a text-to-image pipeline takes. */
const TEXT_TO_IMAGE_FIELDS = ['prompt', 'negativePrompt', 'steps', 'guidanceScale', 'scheduler'] as const;

function requestSchema(limits: ServerLimits) {
  const side = z
    .number()
    .int()
    .min(limits.sideMultiple)
    .max(limits.maxSide)
    .refine((n) => n % limits.sideMultiple === 0, `must be a multiple of ${limits.sideMultiple}`);
  const name = z.string().refine(isName, 'must be a name ([A-Za-z0-9][A-Za-z0-9._-]*)');
  const digest = z.string().refine((s) => isDigest(s) || isHex(s), 'must be sha256:<64 lowercase hex>');
  const lora = z
    .strictObject({
      digest: digest.optional(),
      url: z.url({ protocol: /^https?$/ }).optional(),
      scale: z.number().finite().min(-10).max(10).default(1),
      /** PEFT adapters: their adapter_config.json lora_alpha. */
      alpha: z.number().finite().positive().optional(),
    })
    .refine((l) => (l.digest === undefined) !== (l.url === undefined), 'give exactly one of digest or url');
  return z
    .strictObject({
      model: name,
      tag: name.optional(),
      fingerprint: digest.optional(),
      loras: z.array(lora).max(limits.maxLoras).default([]),
      seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
      /** Defaults depend on the pipeline: 64 for a graph; for text-to-image its native size (`info.imageSize`, else 512), at most --max-side. */
      width: side.optional(),
      height: side.optional(),
      prompt: z.string().min(1).max(1000).optional(),
      negativePrompt: z.string().max(1000).optional(),
      steps: z.number().int().min(1).max(100).optional(),
      guidanceScale: z.number().finite().min(0).max(30).optional(),
      scheduler: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be a scheduler name').optional(),
    })
    .refine((r) => r.tag === undefined || r.fingerprint === undefined, {
      message: 'give exactly one of tag or fingerprint (tag defaults to latest)',
      path: ['tag'],
    });
}

export type GenerateRequest = z.infer<ReturnType<typeof requestSchema>>;

const STATUS: Record<FuseloadErrorCode, ContentfulStatusCode> = {
  'bad-input': 400,
  'not-found': 404,
  'digest-mismatch': 502,
  unsupported: 501,
  'shape-mismatch': 422,
  network: 502,
  aborted: 503,
  quota: 507,
  engine: 500,
  auth: 502,
  'too-large': 502, // the origin's answer was over a cap; a client's own body is 413 below
};

type ErrorCode = FuseloadErrorCode | 'busy' | 'timeout' | 'method-not-allowed' | 'unsupported-media-type';

interface CachedPipeline {
  model: string;
  fingerprint: string;
  provider: Provider;
  generations: number;
}

/**
 * The origin as given, checked: a URL the server may fetch from, with no credentials in it
 * (they would end up in logs and error paths) and nothing after the path. Trailing `/` dropped.
 */
export function checkOrigin(origin: string, flag = '--origin'): string {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    throw badInput(flag, 'not a URL (want http://host:port or https://host, the edge worker or any origin serving the layout)');
  }
  if (url.username || url.password) {
    throw badInput(flag, 'must not carry credentials (user:password@); serve public artifacts, or private ones through a signing edge');
  }
  if (!['http:', 'https:', 'file:'].includes(url.protocol)) throw badInput(flag, `${url.protocol} is not http:, https: or file:`);
  if (url.search || url.hash) throw badInput(flag, 'must be a base URL, without ?query or #fragment');
  return origin.replace(/\/+$/, '');
}

/** A 4xx decided after the pipeline is loaded (when its kind is known). */
class RequestError extends Error {
  constructor(readonly response: Response) {
    super('request error');
  }
}

export function createServerApp(options: ServerOptions) {
  const limits: ServerLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const origin = checkOrigin(options.origin);
  const pixelBudget = pixelBudgetOf(limits);
  const schema = requestSchema(limits);
  const admission = new Admission({ concurrency: limits.concurrency, queue: limits.queue, pixelBudget });
  const device = options.device ?? 'auto';
  const log = options.log ?? (() => {});
  /** Held pipelines, least recently used first (Map keeps insertion order), with their stats. */
  const pipelines = new Map<string, { pipeline: Pipeline; stats: CachedPipeline }>();

  /** Keeps one handle per key; extra handles and the least recently used past the limit are disposed. */
  function hold(key: string, pipeline: Pipeline): CachedPipeline {
    const held = pipelines.get(key);
    if (held) {
      pipelines.delete(key);
      pipelines.set(key, held);
      if (held.pipeline !== pipeline) void pipeline.dispose();
      return held.stats;
    }
    const { info } = pipeline;
    const stats: CachedPipeline = { model: info.manifest.name, fingerprint: info.fingerprint, provider: info.provider, generations: 0 };
    pipelines.set(key, { pipeline, stats });
    for (const [oldest, entry] of pipelines) {
      if (pipelines.size <= limits.maxPipelines) break;
      pipelines.delete(oldest);
      void entry.pipeline.dispose();
    }
    return stats;
  }

  /** A message fit for a client: the origin's URL (and so its host and any path) stays server-side. */
  const originForms = [...new Set([origin, shownUrl(origin).replace(/\/$/, '')])].filter(Boolean).sort((a, b) => b.length - a.length);
  const forClient = (message: string) => originForms.reduce((m, form) => m.split(form).join('<origin>'), message);

  const fail = (code: ErrorCode, message: string, status: ContentfulStatusCode, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify({ error: code, message: forClient(message) }), { status, headers: { 'Content-Type': 'application/json', ...headers } });

  const notAllowed = (allow: string) => (c: { req: { method: string; path: string } }) =>
    fail('method-not-allowed', `${c.req.method} ${c.req.path}: not allowed (use ${allow})`, 405, { Allow: allow });

  const app = new Hono();

  // GET also answers HEAD (Hono runs the GET handler without the body).
  app.get('/healthz', (c) =>
    c.json({
      ok: true,
      device,
      providers: options.providers,
      queue: { running: admission.running, waiting: admission.waiting },
      pixels: { inFlight: admission.pixelsInFlight, budget: pixelBudget },
      pipelines: [...pipelines.values()].map((p) => p.stats),
    }),
  );
  app.all('/healthz', notAllowed('GET, HEAD'));

  app.post(
    '/v1/generate',
    async (c, next) => {
      const type = c.req.header('Content-Type') ?? '';
      if (type.split(';')[0].trim().toLowerCase() !== 'application/json') {
        return fail('unsupported-media-type', `request body: Content-Type must be application/json (got ${type ? `"${type.slice(0, 100)}"` : 'none'})`, 415);
      }
      await next();
    },
    bodyLimit({
      maxSize: limits.maxBodyBytes,
      onError: () => fail('too-large', `request body: larger than ${limits.maxBodyBytes} bytes`, 413),
    }),
    async (c) => {
      let json: unknown;
      try {
        json = await c.req.json();
      } catch {
        return fail('bad-input', 'request body: not valid JSON', 400);
      }
      const parsed = schema.safeParse(json);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const field = issue.path.length ? issue.path.join('.') : 'request body';
        return fail('bad-input', `${field}: ${issue.message}`, 400);
      }
      const request = parsed.data;
      const byUrl = request.loras.findIndex((l) => l.url !== undefined);
      if (byUrl >= 0 && !options.loraUrls) return fail('bad-input', `loras.${byUrl}.url: this server loads LoRAs by digest from its origin only`, 400);

      // Admission by area: unknown sides count at the most a default can be (a pipeline's native size, within --max-side).
      const fallbackSide = limits.maxSide;
      const cost = (request.width ?? fallbackSide) * (request.height ?? fallbackSide);
      if (cost > pixelBudget) {
        return fail('too-large', `width × height: ${cost} pixels is more than this server's budget of ${pixelBudget} pixels at once (serve --pixel-budget)`, 413);
      }
      if (!admission.hasRoom()) {
        return fail('busy', `server busy: ${admission.running} generating, ${admission.waiting} waiting`, 503, { 'Retry-After': '1' });
      }

      // One signal for the load and the generation: the client leaving, or the deadline. A plain
      // timer, cleared with the answer: a timer per request left running for minutes adds up.
      const client = c.req.raw.signal;
      const stop = new AbortController();
      let timedOut = false;
      const deadline = setTimeout(() => {
        timedOut = true;
        stop.abort(new Error(`not finished within ${limits.generationTimeoutMs} ms`));
      }, limits.generationTimeoutMs);
      const clientLeft = () => stop.abort(client.reason);
      if (client.aborted) clientLeft();
      else client.addEventListener('abort', clientLeft, { once: true });
      const { signal } = stop;
      const started = performance.now();
      const what = `generate model=${request.model}`;
      try {
        const release = await admission.enter(cost, signal);
        const work = generate(request, signal);
        // The slot is freed when the work itself ends (the signal makes a load or a
        // generation end early); the answer may go out before, at the deadline.
        work.finally(release).catch(() => {});
        const result = await untilAborted(work, signal);
        const { info } = result.pipeline;
        log(`${what} ${result.width}x${result.height} seed=${request.seed} provider=${info.provider} pipelineCache=${info.fromPipelineCache} ${Math.round(performance.now() - started)}ms`);
        return new Response(result.png as Uint8Array<ArrayBuffer>, {
          headers: {
            'Content-Type': 'image/png',
            'X-Fuseload-Fingerprint': info.fingerprint,
            'X-Fuseload-Provider': info.provider,
            'X-Fuseload-Pipeline-Cache': info.fromPipelineCache ? 'hit' : 'miss',
          },
        });
      } catch (e) {
        const ms = Math.round(performance.now() - started);
        if (timedOut && !client.aborted) {
          log(`${what} timed out after ${ms}ms${isFuseloadError(e) ? `: ${e.message}` : ''}`);
          return fail('timeout', `generation: not finished within ${limits.generationTimeoutMs / 1000} s (serve --timeout); stopped`, 504);
        }
        if (client.aborted) {
          log(`${what}: client went away after ${ms}ms; stopped`);
          return fail('aborted', 'request aborted by the client', 503);
        }
        if (e instanceof RequestError) return e.response;
        if (isFuseloadError(e)) {
          log(`${what} failed: ${e.code}: ${e.message}`);
          return fail(e.code, e.message, STATUS[e.code] ?? 500);
        }
        log(`${what} internal error: ${(e as Error)?.stack ?? String(e)}`);
        return fail('engine', 'internal error (see server log)', 500);
      } finally {
        clearTimeout(deadline);
        client.removeEventListener('abort', clientLeft);
      }
    },
  );
  app.all('/v1/generate', notAllowed('POST'));

  /** Load (or reuse) the pipeline, then one picture, under `signal`. */
  async function generate(request: GenerateRequest, signal: AbortSignal) {
    const pipeline = await options.loadPipeline({
      origin,
      model: request.model,
      tag: request.fingerprint === undefined ? (request.tag ?? 'latest') : undefined,
      fingerprint: request.fingerprint,
      loras: request.loras,
      device,
      signal,
    });
    const { info } = pipeline;
    const key = `${info.fingerprint}|${info.provider}|${info.overlays.map((o) => `${o.digest}*${o.scale}`).join('+')}|${request.loras.map((l) => l.alpha ?? '').join('+')}`;
    let picture: { png: Uint8Array; width: number; height: number };
    try {
      picture = await render(pipeline, request, signal);
    } catch (e) {
      // A request the pipeline cannot take still leaves a good pipeline: keep it warm.
      if (e instanceof RequestError) hold(key, pipeline);
      else await pipeline.dispose();
      throw e;
    }
    hold(key, pipeline).generations++;
    return { ...picture, pipeline };
  }

  /** One picture from a loaded pipeline: `generate` for text-to-image, the sample's feeds for a graph. */
  async function render(pipeline: Pipeline, request: GenerateRequest, signal: AbortSignal) {
    const textToImage = asTextToImage(pipeline);
    if (textToImage) {
      if (request.prompt === undefined) throw new RequestError(fail('bad-input', `prompt: required by ${request.model}, a text-to-image pipeline`, 400));
      // What `p.generate` makes by itself (the pipeline's native size), within this server's limit.
      const side = Math.min(pipeline.info.imageSize ?? 512, limits.maxSide);
      const width = request.width ?? side;
      const height = request.height ?? side;
      const { image } = await textToImage.generate({
        prompt: request.prompt,
        negativePrompt: request.negativePrompt,
        steps: request.steps,
        guidanceScale: request.guidanceScale,
        scheduler: request.scheduler,
        seed: request.seed,
        width,
        height,
        signal,
      });
      if (image.width !== width || image.height !== height || image.data.length !== width * height * 4) {
        throw new Error(`${request.model}: generate returned a ${image.width}x${image.height} image (${image.data.length} bytes) for ${width}x${height}`);
      }
      return { png: rgbaToPng(image), width, height };
    }
    const extra = TEXT_TO_IMAGE_FIELDS.find((f) => request[f] !== undefined);
    if (extra) {
      throw new RequestError(
        fail('bad-input', `${extra}: ${request.model} is a graph pipeline; ${TEXT_TO_IMAGE_FIELDS.join(', ')} apply to text-to-image pipelines only`, 400),
      );
    }
    const width = request.width ?? Math.min(64, limits.maxSide);
    const height = request.height ?? Math.min(64, limits.maxSide);
    return { png: await renderPng(pipeline, { seed: request.seed, width, height }), width, height };
  }

  app.notFound(() => fail('not-found', 'no such endpoint (POST /v1/generate, GET /healthz)', 404));
  app.onError((e) => {
    log(`internal error: ${e.stack ?? e.message}`);
    return fail('engine', 'internal error (see server log)', 500);
  });
  return app;
}

/**
 * `work`, or its signal's abort — whichever comes first — so a response goes out at the
 * deadline even if something under the work ignores the signal. The slot is released only
 * when `work` itself settles (see above): no two runs share a slot.
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
