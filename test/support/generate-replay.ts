/**
 * The bare loop test/bench/generate.ts measures generate() against: the very session calls one
 * generate made (recorded from its pipeline's sessions' `run`), replayed in order with the same
 * feeds and nothing else. Runtime-neutral: the Node bench and the browser harness both use it.
 */
import type { EngineSession, Feeds, GenerateOptions, Pipeline } from '../../common/pipeline.ts';

export interface GenerateTimes {
  /** ms per image, each generate() call. */
  generateMs: number[];
  /** ms per image spent inside the pipeline's session calls during generate() (`run` and `runDevice`; not the loop's own graphs). */
  inCallsMs: number[];
  /** ms per image, the recorded session calls replayed. */
  bareMs: number[];
  /** Session calls per image. */
  sessionCalls: number;
  deviceResident: boolean;
}

type Run = EngineSession['run'];

/**
 * One generate with every session call recorded, `warmup` untimed rounds (JIT, caches), then
 * `images` rounds of generate vs replay. Sessions stay wrapped while generate runs, to tell the
 * time spent inside their calls (`inCallsMs`) from the loop's own; the replay calls them bare.
 */
export async function timeGenerate(p: Pipeline, options: GenerateOptions, images: number, { warmup = 2 }: { warmup?: number } = {}): Promise<GenerateTimes> {
  const calls: { run: Run; feeds: Feeds }[] = [];
  const restore: (() => void)[] = [];
  let recording = true;
  let inCalls = 0;
  for (const session of Object.values(p.sessions) as EngineSession[]) {
    const run = session.run.bind(session);
    const own = Object.prototype.hasOwnProperty.call(session, 'run');
    const original = session.run;
    (session as { run: Run }).run = async (feeds) => {
      if (recording) calls.push({ run, feeds });
      const t = performance.now();
      try {
        return await run(feeds);
      } finally {
        inCalls += performance.now() - t;
      }
    };
    restore.push(() => (own ? ((session as { run: Run }).run = original) : delete (session as { run?: Run }).run));
    const runDevice = session.runDevice;
    if (runDevice) {
      (session as { runDevice: typeof runDevice }).runDevice = async (feeds, keep, read) => {
        const t = performance.now();
        try {
          return await runDevice.call(session, feeds, keep, read);
        } finally {
          inCalls += performance.now() - t;
        }
      };
      restore.push(() => ((session as { runDevice: typeof runDevice }).runDevice = runDevice));
    }
  }
  const generateMs: number[] = [];
  const inCallsMs: number[] = [];
  const bareMs: number[] = [];
  let deviceResident: boolean;
  try {
    deviceResident = (await p.generate(options)).deviceResident;
    recording = false;
    const generate = async () => {
      inCalls = 0;
      const t = performance.now();
      await p.generate(options);
      return [performance.now() - t, inCalls];
    };
    const replay = async () => {
      const t = performance.now();
      for (const c of calls) await c.run(c.feeds);
      return performance.now() - t;
    };
    for (let i = -warmup; i < images; i++) {
      // Side by side, first one then the other first, so drift in the machine's speed lands on both alike.
      let generated: number, inside: number, bare: number;
      if (i % 2 === 0) {
        [generated, inside] = await generate();
        bare = await replay();
      } else {
        bare = await replay();
        [generated, inside] = await generate();
      }
      if (i < 0) continue;
      generateMs.push(generated);
      inCallsMs.push(inside);
      bareMs.push(bare);
    }
  } finally {
    for (const r of restore) r();
  }
  return { generateMs, inCallsMs, bareMs, sessionCalls: calls.length, deviceResident };
}

/** Two ways to generate, timed image by image side by side, in turn first (so drift in the machine's speed lands on both alike), after `warmup` rounds. */
export async function timeAlternating(p: Pipeline, a: GenerateOptions, b: GenerateOptions, images: number, warmup = 1): Promise<{ aMs: number[]; bMs: number[] }> {
  const aMs: number[] = [];
  const bMs: number[] = [];
  const time = async (o: GenerateOptions) => {
    const t = performance.now();
    await p.generate(o);
    return performance.now() - t;
  };
  for (let i = -warmup; i < images; i++) {
    let ta: number, tb: number;
    if (i % 2 === 0) {
      ta = await time(a);
      tb = await time(b);
    } else {
      tb = await time(b);
      ta = await time(a);
    }
    if (i < 0) continue;
    aMs.push(ta);
    bMs.push(tb);
  }
  return { aMs, bMs };
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
