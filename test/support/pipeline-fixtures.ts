/**
 * The real-exporter pipeline fixtures (test/fixtures/pipeline, made by make_fixtures.py) as the
 * Node tests read them: raw tensors, a component's fixture inputs as feeds, and the comparison
 * with torch's outputs.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { Role } from '../../common/manifest.ts';
import type { EngineSession, Feeds } from '../../common/pipeline.ts';

export const FIX = new URL('../fixtures/pipeline/', import.meta.url).pathname;
export const fixtures = JSON.parse(await readFile(join(FIX, 'fixtures.json'), 'utf8'));

export async function raw(rel: string, int = false): Promise<Float32Array | Int32Array> {
  const b = await readFile(join(FIX, rel));
  const copy = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return int ? new Int32Array(copy) : new Float32Array(copy);
}

/** A component's fixture inputs (sd-tiny by default) as feeds. */
export async function feedsFor(role: Role, pipeline = 'sd-tiny'): Promise<Feeds> {
  const c = fixtures.pipelines[pipeline].components[role];
  const feeds: Feeds = {};
  for (const i of c.inputs) feeds[i.name] = { type: i.dtype, dims: i.shape, data: await raw(c.inputs_data[i.name], i.dtype === 'int32') };
  return feeds;
}

/** Largest |a − b| / (1 + |b|); Infinity when the lengths differ. */
export function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = a.length === b.length ? 0 : Infinity;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  return worst;
}

/** Runs `session` on the role's fixture inputs; each named output equals its reference file within 1e-4. */
export async function expectOutputs(session: EngineSession, role: Role, expected: Record<string, string>): Promise<void> {
  const out = await session.run(await feedsFor(role));
  for (const [name, rel] of Object.entries(expected)) expect(maxRel(out[name].data as Float32Array, await raw(rel)), `${role}.${name}`).toBeLessThan(1e-4);
}
