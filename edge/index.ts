/**
 * fuseload edge worker: R2 → HTTP for the three artifact key shapes, with ranges,
 * conditionals, CORS, the Workers cache and optional signed URLs.
 */
import { Hono, type MiddlewareHandler } from 'hono';
import { ALLOWED_METHODS, artifactCors } from './cors.ts';
import type { EdgeBindings } from './env.ts';
import { resolveObjectRoute } from './routes.ts';
import { serveObject } from './serve.ts';
import { requireSignature } from './signing.ts';

export type { EdgeEnv } from './env.ts';

/** 405 with Allow for anything but GET and HEAD (OPTIONS is answered by CORS). */
export const onlyGetAndHead = (): MiddlewareHandler<EdgeBindings> => async (c, next) => {
  const method = c.req.raw.method;
  if (method === 'GET' || method === 'HEAD') return next();
  return c.text('Method Not Allowed\n', 405, { Allow: ALLOWED_METHODS.join(', ') });
};

/** 404 for any path that is not one of the three key shapes; never a bucket read. */
export const objectRoute = (): MiddlewareHandler<EdgeBindings> => async (c, next) => {
  const route = resolveObjectRoute(new URL(c.req.url).pathname);
  if (!route) return c.text('Not Found\n', 404, { 'Cache-Control': 'no-store' });
  c.set('route', route);
  return next();
};

export const app = new Hono<EdgeBindings>();
app.use('*', artifactCors());
app.use('*', onlyGetAndHead());
app.use('*', objectRoute());
app.use('*', requireSignature());
app.get('*', serveObject);
// Whatever went wrong, say nothing about it beyond the status: no stacks, no keys.
app.onError((err, c) => {
  console.error(`edge: ${c.req.method} failed: ${err.name}`);
  return c.text('Internal Server Error\n', 500);
});

export default app;
