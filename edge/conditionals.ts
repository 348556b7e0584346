/**
 * RFC 9110 §13 preconditions, evaluated in the order of §13.2.2, against the
 * object's meta (never against R2's own onlyIf, which ignores what it cannot parse
 * and has no If-Range).
 */
import type { ObjectMeta } from './object-meta.ts';

export type PreconditionOutcome = 'proceed' | 'not-modified' | 'failed';

interface EntityTag {
  weak: boolean;
  opaque: string;
}

const ETAG_RE = /^(W\/)?("[\x21\x23-\x7e\x80-\xff]*")$/;

function parseEntityTag(value: string): EntityTag | null {
  const m = ETAG_RE.exec(value.trim());
  return m ? { weak: m[1] !== undefined, opaque: m[2] } : null;
}

/** `*` or a list of entity-tags; garbage elements are dropped (they match nothing). */
function parseEntityTagList(header: string): '*' | EntityTag[] {
  if (header.trim() === '*') return '*';
  return header
    .split(',')
    .map(parseEntityTag)
    .filter((t): t is EntityTag => t !== null);
}

/** Strong comparison: both strong and the same opaque tag. */
export function strongMatch(a: EntityTag, b: EntityTag): boolean {
  return !a.weak && !b.weak && a.opaque === b.opaque;
}

/** Weak comparison: the same opaque tag, W/ or not. */
export function weakMatch(a: EntityTag, b: EntityTag): boolean {
  return a.opaque === b.opaque;
}

/** IMF-fixdate, RFC 850 and asctime: the three forms §5.6.7 says to accept. */
const HTTP_DATE_RES = [
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/,
  /^(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT$/,
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/,
];

/**
 * An HTTP-date, or null when absent or invalid (then the header is ignored, §13.1.3).
 * Date.parse alone is too lenient: it reads "1" as the year 2001.
 */
export function parseHttpDate(value: string | null): Date | null {
  if (value === null) return null;
  const trimmed = value.trim();
  if (!HTTP_DATE_RES.some((re) => re.test(trimmed))) return null;
  const date = new Date(trimmed.endsWith('GMT') ? trimmed : `${trimmed} GMT`);
  return Number.isNaN(date.getTime()) ? null : date;
}

function anyMatch(header: string, current: EntityTag, match: typeof strongMatch): boolean {
  const tags = parseEntityTagList(header);
  return tags === '*' || tags.some((t) => match(t, current));
}

/**
 * If-Match / If-Unmodified-Since → 412; If-None-Match / If-Modified-Since → 304
 * (GET and HEAD are the only methods that reach here).
 */
export function evaluatePreconditions(headers: Headers, meta: ObjectMeta): PreconditionOutcome {
  const current = parseEntityTag(meta.etag) ?? { weak: false, opaque: meta.etag };
  const ifMatch = headers.get('If-Match');
  if (ifMatch !== null) {
    if (!anyMatch(ifMatch, current, strongMatch)) return 'failed';
  } else {
    const since = parseHttpDate(headers.get('If-Unmodified-Since'));
    if (since && meta.lastModified.getTime() > since.getTime()) return 'failed';
  }
  const ifNoneMatch = headers.get('If-None-Match');
  if (ifNoneMatch !== null) {
    if (anyMatch(ifNoneMatch, current, weakMatch)) return 'not-modified';
  } else {
    const since = parseHttpDate(headers.get('If-Modified-Since'));
    if (since && meta.lastModified.getTime() <= since.getTime()) return 'not-modified';
  }
  return 'proceed';
}

/**
 * If-Range (§13.1.5): the Range applies only when the validator still matches —
 * a strong entity-tag, or a date equal to Last-Modified. Otherwise send the whole body.
 */
export function ifRangeHolds(headers: Headers, meta: ObjectMeta): boolean {
  const value = headers.get('If-Range');
  if (value === null) return true;
  const trimmed = value.trim();
  if (trimmed.startsWith('"') || trimmed.startsWith('W/')) {
    const tag = parseEntityTag(trimmed);
    const current = parseEntityTag(meta.etag);
    return tag !== null && current !== null && strongMatch(tag, current);
  }
  const date = parseHttpDate(trimmed);
  return date !== null && date.getTime() === meta.lastModified.getTime();
}
