/**
 * Schedulers against diffusers: published values (SD 1.5's σ_max, DDIM's 981…1, SD-Turbo's
 * single t=999, LCM's 999/759/499/259) and trajectories from an independent numpy port of
 * diffusers' formulas (test/fixtures/generate/schedulers_ref.py → schedulers-ref.json).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isFuseloadError } from '../../common/errors.ts';
import {
  createScheduler,
  EulerScheduler,
  resolveSchedulerName,
  schedulerNameForClass,
  type Scheduler,
  type SchedulerName,
} from '../../common/generate/schedulers/index.ts';

interface RefCase {
  label: string;
  scheduler: SchedulerName;
  config: Record<string, unknown>;
  steps: number;
  timesteps: number[];
  init_noise_sigma: number;
  sigmas?: number[];
  sample: number[];
  noise: number[][] | null;
  trajectory: number[][];
}
const ref = JSON.parse(readFileSync(new URL('../fixtures/generate/schedulers-ref.json', import.meta.url), 'utf8')) as {
  n: number;
  sd15_training_sigma_max: number;
  cases: RefCase[];
};

const SD15 = {
  _class_name: 'PNDMScheduler',
  _diffusers_version: '0.6.0',
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  trained_betas: null,
  clip_sample: false,
};
const SD_TURBO = { ...SD15, _class_name: 'EulerDiscreteScheduler', timestep_spacing: 'trailing', interpolation_type: 'linear' };

/** The numpy reference's stand-in UNet, in float32. */
function model(x: Float32Array, t: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let k = 0; k < x.length; k++) out[k] = 0.8 * x[k] + 0.1 * Math.sin(0.37 * k + t / 250);
  return out;
}

function run(s: Scheduler, sample: number[], noise: number[][] | null): Float32Array[] {
  let x: Float32Array = Float32Array.from(sample);
  const out: Float32Array[] = [];
  s.timesteps.forEach((t, i) => {
    const m = model(s.scaleModelInput(x, i), t);
    x = s.step(m, i, x, noise ? Float32Array.from(noise[i]) : undefined);
    out.push(x);
  });
  return out;
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, atol: number, what: string) {
  expect(actual.length, what).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const tol = atol + rtol * Math.abs(expected[i]);
    if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
      throw new Error(`${what}[${i}]: ${actual[i]} is not within ${tol.toExponential(2)} of ${expected[i]}`);
    }
  }
}

describe('values diffusers publishes', () => {
  it('SD 1.5: σ_max 14.6146 at t=999, and SD-Turbo takes one step at t=999 from σ_max', () => {
    expect(ref.sd15_training_sigma_max).toBeCloseTo(14.6146, 4);
    const turbo = createScheduler(SD_TURBO, 1) as EulerScheduler;
    expect(turbo.name).toBe('euler');
    expect(turbo.timesteps).toEqual([999]);
    expect(turbo.sigmas[0]).toBeCloseTo(14.6146, 4);
    expect(turbo.sigmas[1]).toBe(0);
    expect(turbo.initNoiseSigma).toBeCloseTo(14.6146, 4);
  });

  it('SD 1.5 read as Euler is "leading" with offset 1 (PNDM defaults), so init_noise_sigma is √(σ²+1)', () => {
    const euler = createScheduler(SD15, 50, { name: 'euler' }) as EulerScheduler;
    expect(euler.timesteps.slice(0, 3)).toEqual([981, 961, 941]);
    expect(euler.initNoiseSigma).toBeCloseTo(Math.sqrt(euler.sigmas[0] ** 2 + 1), 6);
  });

  it('DDIM, 50 steps, leading + steps_offset 1: 981, 961, …, 1', () => {
    const ddim = createScheduler(SD15, 50, { name: 'ddim' });
    expect(ddim.timesteps).toEqual(Array.from({ length: 50 }, (_, i) => 981 - 20 * i));
    expect(ddim.initNoiseSigma).toBe(1);
  });

  it('LCM, 4 steps from the 50-step distillation schedule: 999, 759, 499, 259', () => {
    expect(createScheduler({ _class_name: 'LCMScheduler' }, 4).timesteps).toEqual([999, 759, 499, 259]);
  });

  it('trailing spacing for one step is t=999 for every scheduler that spaces', () => {
    for (const name of ['euler', 'euler-ancestral', 'ddim', 'dpm++2m'] as const) {
      expect(createScheduler(SD_TURBO, 1, { name }).timesteps, name).toEqual([999]);
    }
  });

  it('linspace spacing: Euler keeps fractional timesteps, DDIM rounds half to even', () => {
    const cfg = { ...SD_TURBO, timestep_spacing: 'linspace' };
    const euler = createScheduler(cfg, 4, { name: 'euler' });
    expect(euler.timesteps).toEqual([999, 666, 333, 0]);
    expect(createScheduler(cfg, 7, { name: 'euler' }).timesteps[1]).toBeCloseTo(832.5, 4);
    expect(createScheduler(cfg, 7, { name: 'ddim' }).timesteps).toEqual([999, 832, 666, 500, 333, 166, 0]);
  });
});

describe('trajectories against the numpy port of diffusers', () => {
  for (const c of ref.cases) {
    it(c.label, () => {
      const s = createScheduler(c.config, c.steps, { name: c.scheduler });
      expect(s.name).toBe(c.scheduler);
      expectClose(s.timesteps, c.timesteps, 1e-6, 1e-3, 'timesteps');
      expect(s.initNoiseSigma).toBeCloseTo(c.init_noise_sigma, 4);
      if (c.sigmas) expectClose((s as unknown as { sigmas: number[] }).sigmas, c.sigmas, 1e-5, 1e-6, 'sigmas');
      const got = run(s, c.sample, c.noise);
      got.forEach((x, i) => expectClose(x, c.trajectory[i], 2e-4, 2e-5, `step ${i}`));
    });
  }
});

describe('v_prediction', () => {
  it('x₀ from v: Euler and DDIM land on the clean sample when the model is exact', () => {
    // A "model" that knows x₀ = 0.3 everywhere and returns the exact v for the noisy sample.
    const cfg = { ...SD15, _class_name: 'DDIMScheduler', prediction_type: 'v_prediction', set_alpha_to_one: true };
    const x0 = 0.3;
    const ddim = createScheduler(cfg, 10);
    let x: Float32Array = new Float32Array(8).fill(2);
    for (let i = 0; i < 10; i++) {
      const t = ddim.timesteps[i];
      // v = √ᾱ ε − √(1−ᾱ) x₀, with ε from x = √ᾱ x₀ + √(1−ᾱ) ε
      const a = alphaBar(t);
      const v = x.map((xi) => Math.sqrt(a) * ((xi - Math.sqrt(a) * x0) / Math.sqrt(1 - a)) - Math.sqrt(1 - a) * x0);
      x = ddim.step(v, i, x);
    }
    expectClose(x, new Float32Array(8).fill(x0), 1e-4, 1e-4, 'ddim x');

    const euler = createScheduler({ ...cfg, _class_name: 'EulerDiscreteScheduler' }, 10) as EulerScheduler;
    let y: Float32Array = new Float32Array(8).fill(2 * euler.initNoiseSigma);
    for (let i = 0; i < 10; i++) {
      const sigma = euler.sigmas[i];
      // The model sees x/√(σ²+1) = √ᾱ x₀ + √(1−ᾱ) ε, i.e. the VP sample at this σ.
      const a = 1 / (sigma * sigma + 1);
      const xin = euler.scaleModelInput(y, i);
      const v = xin.map((xi) => Math.sqrt(a) * ((xi - Math.sqrt(a) * x0) / Math.sqrt(1 - a)) - Math.sqrt(1 - a) * x0);
      y = euler.step(v, i, y);
    }
    expectClose(y, new Float32Array(8).fill(x0), 1e-4, 1e-4, 'euler x');
  });
});

describe('DPM++ 2M', () => {
  it('is the default for SD 1.5 (PNDM) and steps 941, 894, …, 48 for 20 steps (leading + offset)', () => {
    const s = createScheduler(SD15, 20);
    expect(s.name).toBe('dpm++2m');
    expect(s.timesteps[0]).toBe(941);
    expect(s.timesteps.at(-1)).toBe(48);
    expect(new Set(s.timesteps.slice(1).map((t, i) => s.timesteps[i] - t))).toEqual(new Set([47]));
  });

  it('refuses steps out of order (it keeps a history)', () => {
    const s = createScheduler(SD15, 5);
    const x = new Float32Array(4);
    s.step(x, 0, x);
    expect(() => s.step(x, 2, x)).toThrow(/out of order/);
  });
});

describe('configs', () => {
  it('maps _class_name to a scheduler, PNDM and LMS to DPM++ 2M', () => {
    expect(schedulerNameForClass('EulerDiscreteScheduler')).toBe('euler');
    expect(schedulerNameForClass('EulerAncestralDiscreteScheduler')).toBe('euler-ancestral');
    expect(schedulerNameForClass('DDIMScheduler')).toBe('ddim');
    expect(schedulerNameForClass('DPMSolverMultistepScheduler')).toBe('dpm++2m');
    expect(schedulerNameForClass('LCMScheduler')).toBe('lcm');
    expect(schedulerNameForClass('PNDMScheduler')).toBe('dpm++2m');
    expect(schedulerNameForClass('LMSDiscreteScheduler')).toBe('dpm++2m');
    expect(schedulerNameForClass('SomethingNew')).toBe('euler');
    expect(resolveSchedulerName({ _class_name: 'LCMScheduler' })).toBe('lcm');
  });

  it('an unknown scheduler name is a one-line bad-input error naming "scheduler"', () => {
    const e = catchError(() => createScheduler(SD15, 4, { name: 'heun' as SchedulerName }));
    expect(isFuseloadError(e) && e.code).toBe('bad-input');
    expect((e as Error).message).toMatch(/^scheduler: "heun" is not one of euler, euler-ancestral, ddim, dpm\+\+2m, lcm$/);
  });

  it('a bad config value names the file and the key', () => {
    const e = catchError(() => createScheduler({ ...SD15, beta_schedule: 'quadratic' }, 4, { name: 'euler' }));
    expect((e as Error).message).toBe(
      'scheduler_config.json: beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2, got "quadratic"',
    );
    expect(() => createScheduler({ ...SD15, num_train_timesteps: 0 }, 4, { name: 'ddim' })).toThrow(/num_train_timesteps/);
    expect(() => createScheduler({ ...SD15, trained_betas: [0.1] }, 4, { name: 'ddim' })).toThrow(/trained_betas/);
  });

  it('options this port lacks are refused, not ignored', () => {
    const e = catchError(() => createScheduler({ _class_name: 'EulerDiscreteScheduler', use_beta_sigmas: true }, 4));
    expect(isFuseloadError(e) && e.code).toBe('unsupported');
    expect(() => createScheduler({ _class_name: 'DPMSolverMultistepScheduler', algorithm_type: 'dpmsolver' }, 4)).toThrow(/dpmsolver/);
  });

  it('trained_betas replace the beta schedule', () => {
    const betas = Array.from({ length: 1000 }, (_, i) => 0.0001 + (i * (0.02 - 0.0001)) / 999);
    const a = createScheduler({ _class_name: 'DDIMScheduler', trained_betas: betas }, 5);
    const b = createScheduler({ _class_name: 'DDIMScheduler', beta_schedule: 'linear' }, 5);
    const x = Float32Array.from([0.5, -1, 2]);
    expectClose(a.step(x, 0, x), b.step(x, 0, x), 1e-6, 1e-7, 'sample');
  });

  it('LCM refuses more steps than its distillation schedule', () => {
    expect(() => createScheduler({ _class_name: 'LCMScheduler' }, 51)).toThrow(/^steps: LCM takes at most original_inference_steps \(50\) steps/);
  });

  it('steps must be a positive integer', () => {
    expect(() => createScheduler(SD15, 0)).toThrow(/^steps: /);
  });
});

function alphaBar(t: number): number {
  let acc = 1;
  for (let i = 0; i <= t; i++) {
    const b = Math.fround(Math.sqrt(0.00085) + (i * (Math.sqrt(0.012) - Math.sqrt(0.00085))) / 999) ** 2;
    acc *= 1 - b;
  }
  return acc;
}

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}
