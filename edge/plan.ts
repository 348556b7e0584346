/**
 * What to answer for a request, from the object's meta alone: preconditions first
 * (RFC 9110 §13.2.2), then If-Range and Range. No I/O, so every source of meta
 * (R2 head, R2 get, a cached response) gets the same answer.
 */
import { evaluatePreconditions, ifRangeHolds } from './conditionals.ts';
import type { ObjectMeta } from './object-meta.ts';
import { decideRange } from './range.ts';

export type ResponsePlan =
  | { status: 200 }
  | { status: 206; start: number; end: number }
  | { status: 304 }
  | { status: 412 }
  | { status: 416 };

export function planResponse(method: string, headers: Headers, meta: ObjectMeta): ResponsePlan {
  const precondition = evaluatePreconditions(headers, meta);
  if (precondition === 'failed') return { status: 412 };
  if (precondition === 'not-modified') return { status: 304 };
  // Range is defined for GET only (RFC 9110 §14.2); HEAD describes the whole object.
  if (method !== 'GET' || !ifRangeHolds(headers, meta)) return { status: 200 };
  const range = decideRange(headers.get('Range'), meta.size);
  if (range.kind === 'single') return { status: 206, start: range.start, end: range.end };
  if (range.kind === 'unsatisfiable') return { status: 416 };
  return { status: 200 };
}

const PRECONDITIONS = ['If-Match', 'If-None-Match', 'If-Modified-Since', 'If-Unmodified-Since'];

/**
 * True when the answer may be anything but the whole body — a 206 (Range), or a 304/412 (a
 * precondition) — so the object's meta is read (R2 head) before deciding whether to read a body.
 * A body opened and then cancelled is wasted R2 work, and workerd logs each one ("pump canceled").
 */
export function needsMetaFirst(method: string, headers: Headers): boolean {
  return method === 'GET' && (headers.has('Range') || PRECONDITIONS.some((h) => headers.has(h)));
}
