/**
 * GET and HEAD of one object: meta from the edge cache or R2, a plan from the
 * request's headers, then the body from wherever is cheapest.
 */
import type { Context } from 'hono';
import { cacheUrl, matchFull, matchRange, putFull } from './cache.ts';
import type { EdgeBindings } from './env.ts';
import { fullHeaders, partialHeaders, validatorHeaders, type ObjectHeaderOptions } from './headers.ts';
import { metaFromCached, metaFromR2, type ObjectMeta } from './object-meta.ts';
import { needsMetaFirst, planResponse, type ResponsePlan } from './plan.ts';
import { isImmutable, type ObjectRoute } from './routes.ts';

type EdgeContext = Context<EdgeBindings>;

function notFound(): Response {
  return new Response('Not Found\n', { status: 404, headers: { 'Cache-Control': 'no-store' } });
}

/** 304, 412 and 416 carry no body; 304 keeps the validators and Cache-Control (RFC 9110 §15.4.5). */
function bodilessAnswer(route: ObjectRoute, meta: ObjectMeta, plan: ResponsePlan, options: ObjectHeaderOptions): Response | null {
  if (plan.status === 304) return new Response(null, { status: 304, headers: validatorHeaders(route.object, meta, options) });
  if (plan.status === 412) return new Response(null, { status: 412 });
  if (plan.status === 416) {
    return new Response(null, { status: 416, headers: { 'Content-Range': `bytes */${meta.size}`, 'Accept-Ranges': 'bytes' } });
  }
  return null;
}

/** HEAD: bucket.head() only, never a body read; the same headers GET would send. */
async function serveHead(c: EdgeContext, route: ObjectRoute, options: ObjectHeaderOptions): Promise<Response> {
  const object = await c.env.ARTIFACTS.head(route.key);
  if (!object) return notFound();
  const meta = metaFromR2(route.object, object);
  const plan = planResponse('HEAD', c.req.raw.headers, meta);
  return bodilessAnswer(route, meta, plan, options) ?? new Response(null, { headers: fullHeaders(route.object, meta, options) });
}

/** GET answered from a cached full response; undefined when the cache cannot serve it. */
async function serveFromCache(c: EdgeContext, route: ObjectRoute, url: string, options: ObjectHeaderOptions): Promise<Response | undefined> {
  const cached = await matchFull(url);
  if (!cached) return undefined;
  const meta = metaFromCached(cached.headers);
  if (!meta) {
    await cached.body?.cancel();
    return undefined;
  }
  const plan = planResponse('GET', c.req.raw.headers, meta);
  if (plan.status === 200) return new Response(cached.body, { headers: fullHeaders(route.object, meta, options) });
  await cached.body?.cancel();
  if (plan.status === 206) {
    const part = await matchRange(url, plan.start, plan.end);
    if (!part) return undefined; // evicted between the two lookups
    return new Response(part.body, { status: 206, headers: partialHeaders(route.object, meta, plan.start, plan.end, options) });
  }
  return bodilessAnswer(route, meta, plan, options) ?? undefined;
}

/** GET from R2; a full 200 of an immutable object also goes into the edge cache. */
async function serveFromBucket(c: EdgeContext, route: ObjectRoute, url: string, options: ObjectHeaderOptions): Promise<Response> {
  const bucket = c.env.ARTIFACTS;
  const headers = c.req.raw.headers;
  // A plain GET: one get() gives meta and body. A range or a precondition: meta first, then a body
  // only if one is sent.
  const first = needsMetaFirst('GET', headers) ? await bucket.head(route.key) : await bucket.get(route.key);
  if (!first) return notFound();
  const meta = metaFromR2(route.object, first);
  const plan = planResponse('GET', headers, meta);
  const firstBody = 'body' in first ? (first as R2ObjectBody).body : null;
  if (plan.status === 206) {
    const part = await bucket.get(route.key, {
      range: { offset: plan.start, length: plan.end - plan.start + 1 },
      onlyIf: { etagMatches: first.etag },
    });
    if (part && 'body' in part) {
      return new Response((part as R2ObjectBody).body, {
        status: 206,
        headers: partialHeaders(route.object, meta, plan.start, plan.end, options),
      });
    }
    // The object (a tag) changed between head and get: the whole new body is a valid answer.
    return serveWhole(c, route, url, options, null);
  }
  if (plan.status === 200) return serveWhole(c, route, url, options, firstBody ? { meta, body: firstBody } : null);
  await firstBody?.cancel();
  return bodilessAnswer(route, meta, plan, options) ?? notFound();
}

async function serveWhole(
  c: EdgeContext,
  route: ObjectRoute,
  url: string,
  options: ObjectHeaderOptions,
  have: { meta: ObjectMeta; body: ReadableStream } | null,
): Promise<Response> {
  let meta = have?.meta;
  let body = have?.body;
  if (!meta || !body) {
    const object = await c.env.ARTIFACTS.get(route.key);
    if (!object) return notFound();
    meta = metaFromR2(route.object, object);
    body = object.body;
  }
  if (isImmutable(route.object)) {
    const [toClient, toCache] = body.tee();
    // The cached copy is always `public`: the Cache API refuses `private`, and access is checked before lookup.
    c.executionCtx.waitUntil(putFull(url, new Response(toCache, { headers: fullHeaders(route.object, meta) })));
    body = toClient;
  }
  return new Response(body, { headers: fullHeaders(route.object, meta, options) });
}

/** The handler for a resolved route (c.var.route), GET or HEAD. */
export async function serveObject(c: EdgeContext): Promise<Response> {
  const route = c.var.route;
  const options: ObjectHeaderOptions = { private: Boolean(c.env.SIGNING_SECRET) };
  if (c.req.raw.method === 'HEAD') return serveHead(c, route, options);
  const url = cacheUrl(c.req.url, route.key);
  if (isImmutable(route.object)) {
    const hit = await serveFromCache(c, route, url, options);
    if (hit) return hit;
  }
  return serveFromBucket(c, route, url, options);
}
