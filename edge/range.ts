/**
 * RFC 9110 §14 byte ranges. range-parser does the arithmetic; the rules it does not
 * know are ours: an invalid spec (`5-2`) or a malformed header means the header is
 * ignored (200 whole), and a suffix longer than the object selects all of it.
 *
 * Several ranges: also 200 with the whole body. RFC 9110 lets a server ignore Range,
 * our loaders only ever ask for one range, and a multipart/byteranges answer would cost
 * one R2 read per part and defeat the single cached full response. Browsers' fetch
 * cannot split multipart bodies anyway.
 */
import rangeParser from 'range-parser';

export type RangeDecision =
  /** Serve the whole body with 200 (no Range, malformed, other unit, several ranges). */
  | { kind: 'whole' }
  /** Serve bytes start..end (inclusive) with 206. */
  | { kind: 'single'; start: number; end: number }
  /** 416 with `Content-Range: bytes *\/<size>`. */
  | { kind: 'unsatisfiable' };

/** Longer headers are not worth parsing: no loader sends one. */
const MAX_HEADER_LENGTH = 256;
const SPEC_RE = /^(?:(\d+)-(\d*)|-(\d+))$/;

export function decideRange(header: string | null, size: number): RangeDecision {
  if (header === null || header.length > MAX_HEADER_LENGTH) return { kind: 'whole' };
  const unit = /^bytes=(.*)$/i.exec(header.trim());
  if (!unit) return { kind: 'whole' };
  // Empty list elements are allowed and skipped (RFC 9110 §5.6.1).
  const specs = unit[1].split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (specs.length !== 1) return { kind: 'whole' };
  const m = SPEC_RE.exec(specs[0]);
  if (!m) return { kind: 'whole' };
  let spec = specs[0];
  if (m[1] !== undefined && m[2] !== '' && Number(m[2]) < Number(m[1])) return { kind: 'whole' };
  if (m[3] !== undefined && Number(m[3]) > size && size > 0) spec = `-${size}`;
  const parsed = rangeParser(size, `bytes=${spec}`);
  if (parsed === -2) return { kind: 'whole' };
  if (parsed === -1 || parsed.length !== 1) return { kind: 'unsatisfiable' };
  return { kind: 'single', start: parsed[0].start, end: parsed[0].end };
}
