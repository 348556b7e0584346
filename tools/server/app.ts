/**
 * The generation server (successor of the original `handler.py`), Web Standards only; the
 * Node adapter is in ./node.ts.
 *
 *   POST /v1/generate {model, tag | fingerprint, loras?: [{digest | url, scale, alpha?}], seed?, width?, height?}
 *     → 200 image/png (X-Fuseload-Fingerprint, X-Fuseload-Provider, X-Fuseload-Pipeline-Cache)
 *   GET /healthz → {ok, providers, pipelines}
 *
 * Errors are JSON `{error: <code>, message: <one line>}`: 400 bad request, 404 unknown model,
 * 413 body too large, 422 a LoRA that does not fit the model, 501 unsupported, 502 origin trouble,
 * 503 + Retry-After when the generation queue is full.
 */
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import pLimit from 'p-limit';
import { z } from 'zod';
import { isDigest, isHex } from '../../common/digest.ts';
import { type FuseloadErrorCode, isFuseloadError } from '../../common/errors.ts';
import { isName } from '../../common/keys.ts';
import type { Device, LoadPipelineOptions, Pipeline, Provider } from '../../common/pipeline.ts';
import { renderPng } from './render.ts';

export interface ServerLimits {
  /** Largest width and height in pixels. Default 512. */
  maxSide: number;
  /** Width and height must be multiples of this (the sample's latent is 1/1 scale; 8 keeps VAEs happy). Default 8. */
  sideMultiple: number;
  /** Request body bytes. Default 16 KiB. */
  maxBodyBytes: number;
  /** Generations running at once. Default 1 (one GPU, one session at a time). */
  concurrency: number;
  /** Generations waiting beyond those; one more is refused with 503. Default 8. */
  queue: number;
  /** LoRAs per request. Default 8. */
  maxLoras: number;
  /**
   * Pipelines (model × LoRA set × scales) kept warm; the least recently used one past this is
   * disposed, so a client cycling through LoRA scales cannot pile up sessions. Default 4.
   */
  maxPipelines: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxSide: 512,
  sideMultiple: 8,
  maxBodyBytes: 16 * 1024,
  concurrency: 1,
  queue: 8,
  maxLoras: 8,
  maxPipelines: 4,
};

export interface ServerOptions {
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

function requestSchema(limits: ServerLimits) {
  const side = z
    .number()
    .int()
    .min(limits.sideMultiple)
    .max(limits.maxSide)
    .refine((n) => n % limits.sideMultiple === 0, `must be a multiple of ${limits.sideMultiple}`);
  const name = z.string().refine(isName, 'must be a name ([A-Za-z0-9][A-Za-z0-9._-]*)');
  const lora = z
    .strictObject({
      digest: z.string().refine((s) => isDigest(s) || isHex(s), 'must be sha256:<64 lowercase hex>').optional(),
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
      fingerprint: z.string().refine((s) => isDigest(s) || isHex(s), 'must be sha256:<64 lowercase hex>').optional(),
      loras: z.array(lora).max(limits.maxLoras).default([]),
      seed: z.number().int().min(0).max(2 ** 32 - 1).default(0),
      width: side.default(Math.min(64, limits.maxSide)),
      height: side.default(Math.min(64, limits.maxSide)),
    })
    .refine((r) => (r.tag === undefined) !== (r.fingerprint === undefined), {
      message: 'give exactly one of tag or fingerprint',
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
};

interface CachedPipeline {
  model: string;
  fingerprint: string;
  provider: Provider;
  generations: number;
}

export function createServerApp(options: ServerOptions) {
  const limits = { ...DEFAULT_LIMITS, ...options.limits };
  const schema = requestSchema(limits);
  const queue = pLimit(limits.concurrency);
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
  const app = new Hono();

  const fail = (code: FuseloadErrorCode | 'busy' | 'too-large' | 'not-found', message: string, status: ContentfulStatusCode) =>
    new Response(JSON.stringify({ error: code, message }), { status, headers: { 'Content-Type': 'application/json' } });

  app.get('/healthz', (c) =>
    c.json({ ok: true, device, providers: options.providers, queue: { running: queue.activeCount, waiting: queue.pendingCount }, pipelines: [...pipelines.values()].map((p) => p.stats) }),
  );

  app.post(
    '/v1/generate',
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
      if (queue.activeCount + queue.pendingCount >= limits.concurrency + limits.queue) {
        c.header('Retry-After', '1');
        return new Response(JSON.stringify({ error: 'busy', message: `server busy: ${queue.activeCount} generating, ${queue.pendingCount} waiting` }), {
          status: 503,
          headers: { 'Content-Type': 'application/json', 'Retry-After': '1' },
        });
      }
      const started = performance.now();
      try {
        const { png, pipeline } = await queue(async () => {
          const pipeline = await options.loadPipeline({
            origin: options.origin,
            model: request.model,
            tag: request.tag,
            fingerprint: request.fingerprint,
            loras: request.loras,
            device,
          });
          try {
            return { png: await renderPng(pipeline, request), pipeline };
          } catch (e) {
            await pipeline.dispose();
            throw e;
          }
        });
        const info = pipeline.info;
        const key = `${info.fingerprint}|${info.provider}|${info.overlays.map((o) => `${o.digest}*${o.scale}`).join('+')}|${request.loras.map((l) => l.alpha ?? '').join('+')}`;
        hold(key, pipeline).generations++;
        log(`generate model=${request.model} ${request.width}x${request.height} seed=${request.seed} provider=${info.provider} pipelineCache=${info.fromPipelineCache} ${Math.round(performance.now() - started)}ms`);
        return new Response(png as Uint8Array<ArrayBuffer>, {
          headers: {
            'Content-Type': 'image/png',
            'X-Fuseload-Fingerprint': info.fingerprint,
            'X-Fuseload-Provider': info.provider,
            'X-Fuseload-Pipeline-Cache': info.fromPipelineCache ? 'hit' : 'miss',
          },
        });
      } catch (e) {
        if (isFuseloadError(e)) {
          log(`generate model=${request.model} failed: ${e.code}: ${e.message}`);
          return fail(e.code, e.message, STATUS[e.code] ?? 500);
        }
        log(`generate model=${request.model} internal error: ${(e as Error)?.stack ?? String(e)}`);
        return fail('engine', 'internal error (see server log)', 500);
      }
    },
  );

  app.notFound(() => fail('not-found', 'no such endpoint (POST /v1/generate, GET /healthz)', 404));
  app.onError((e) => {
    log(`internal error: ${e.stack ?? e.message}`);
    return fail('engine', 'internal error (see server log)', 500);
  });
  return app;
}
