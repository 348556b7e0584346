/** CORS for browsers loading artifacts from any origin (hono's cors middleware). */
import { cors } from 'hono/cors';

export const ALLOWED_METHODS = ['GET', 'HEAD', 'OPTIONS'] as const;

/** `*` origin, preflight answered with 204; what a range loader needs to read and send. */
export const artifactCors = () =>
  cors({
    origin: '*',
    allowMethods: [...ALLOWED_METHODS],
    allowHeaders: ['Range', 'If-None-Match', 'If-Match', 'If-Range', 'If-Modified-Since', 'Authorization'],
    exposeHeaders: ['Content-Range', 'Content-Length', 'ETag', 'Accept-Ranges'],
    maxAge: 86400,
  });
